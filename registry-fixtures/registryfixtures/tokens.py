"""A Docker-token-spec auth server (stdlib ``http.server`` in a thread) for ``token`` mode.

It is the one server here that is not the real thing, so it keeps to what distribution and
Docker Hub do: Basic credentials (GET) or a password grant (POST) in, an ES256 JWT whose
``access`` claim lists the granted actions out.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from registryfixtures.errors import RegistryError
from registryfixtures.pki import Pki, issue, new_key, write_cert, write_key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parse_scope(scope: str) -> tuple[str, str, list[str]]:
    """Split ``repository:name/x:pull,push`` into (type, name, actions)."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if not kind or not name:
        raise ValueError(f"malformed scope {scope!r}")
    return kind, name, [a for a in actions.split(",") if a]


@dataclass(frozen=True)
class TokenGrant:
    """What the token service issued, for tests that assert on requested scopes."""

    account: str | None
    service: str
    requested: tuple[str, ...]
    granted: tuple[dict[str, Any], ...]


class _Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that does the TLS handshake in the handler thread, not accept()."""

    daemon_threads = True
    tls_context: ssl.SSLContext | None = None

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls_context is not None:
            sock = self.tls_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class TokenService:
    """Docker-token-spec auth server: Basic credentials in, ES256 JWT with ``access`` out.

    A valid user gets every action it asks for; no credentials gets a token with no access
    (like Docker Hub's anonymous tokens); wrong credentials get 401. Served over HTTPS when
    a server certificate is given. Signing uses a self-signed certificate sent in ``x5c``;
    the registry trusts it through ``rootcertbundle``.
    """

    def __init__(
        self,
        directory: Path,
        users: Mapping[str, str],
        *,
        service: str = "nestbuild-test-registry",
        issuer: str = "nestbuild-test-token-service",
        tls: Pki | None = None,
        ttl: int = 300,
    ) -> None:
        self.directory = directory
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.ttl = ttl
        self.tls = tls
        self.log_path = directory / "token-service.log"
        self.signing_cert = directory / "token-signing.crt"
        self.signing_key_path = directory / "token-signing.key"
        self.grants: list[TokenGrant] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._key = new_key()
        self._cert_der = b""

    @property
    def port(self) -> int:
        if self._server is None:
            raise RegistryError("token service is not running")
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/token"

    def start(self) -> Self:
        """Write the signing certificate and serve on a free loopback port in a thread."""
        if self._server is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        cert = issue("nestbuild test token signer", self._key, None, self._key)
        write_cert(self.signing_cert, cert)
        write_key(self.signing_key_path, self._key)
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        server = _Server(("127.0.0.1", 0), self._handler_class())
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            server.tls_context = ctx
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name="token-service", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def make_token(self, subject: str, access: list[dict[str, Any]]) -> str:
        """Sign a registry JWT (ES256; the signature is raw r||s as JWS requires)."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service,
                  "exp": now + self.ttl, "nbf": now - 5, "iat": now,
                  "jti": secrets.token_hex(16), "access": access}
        signing_input = ".".join(
            _b64url(json.dumps(part, separators=(",", ":")).encode())
            for part in (header, claims))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def issue(self, account: str | None, service: str, scopes: list[str]) -> dict[str, Any]:
        """Grant ``scopes`` to ``account`` (nothing for anonymous) and return the response."""
        access: list[dict[str, Any]] = []
        if account is not None:
            for scope in scopes:
                kind, name, actions = parse_scope(scope)
                access.append({"type": kind, "name": name, "actions": actions})
        token = self.make_token(account or "", access)
        with self._lock:
            self.grants.append(TokenGrant(account, service, tuple(scopes), tuple(access)))
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"token": token, "access_token": token, "expires_in": self.ttl,
                "issued_at": issued}

    def _log(self, line: str) -> None:
        with self._lock, self.log_path.open("a") as log:
            log.write(line + "\n")

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(self.timeout)
                    try:
                        self.request.do_handshake()
                    except (OSError, ssl.SSLError) as exc:
                        service._log(f"TLS handshake failed: {exc}")
                        raise
                super().setup()

            def log_message(self, format: str, *args: Any) -> None:
                service._log(format % args)

            def _reply(self, status: int, body: dict[str, Any],
                       extra: Mapping[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def _answer(self, user: str | None, password: str | None,
                        params: Mapping[str, list[str]]) -> None:
                if urllib.parse.urlsplit(self.path).path != "/token":
                    self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
                    return
                if user is not None and service.users.get(user) != password:
                    self._reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                                  "message": "bad credentials"}]},
                                {"WWW-Authenticate": 'Basic realm="token"'})
                    return
                scopes = [s for item in params.get("scope", []) for s in item.split()]
                svc = (params.get("service") or [service.service])[0]
                try:
                    body = service.issue(user, svc, scopes)
                except ValueError as exc:
                    self._reply(400, {"errors": [{"code": "INVALID_SCOPE",
                                                  "message": str(exc)}]})
                    return
                self._reply(200, body)

            def do_GET(self) -> None:
                params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user: str | None = None
                password: str | None = None
                header = self.headers.get("Authorization", "")
                if header.lower().startswith("basic "):
                    try:
                        raw = base64.b64decode(header[6:].strip()).decode()
                    except (ValueError, UnicodeDecodeError):
                        raw = ":"
                    user, _, password = raw.partition(":")
                self._answer(user, password, params)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                grant = (form.get("grant_type") or [""])[0]
                if grant != "password":
                    self._reply(400, {"error": "unsupported_grant_type"})
                    return
                user = (form.get("username") or [""])[0]
                password = (form.get("password") or [""])[0]
                self._answer(user, password, form)

        return Handler
