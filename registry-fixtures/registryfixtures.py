"""Real OCI registries on loopback, for nestbuild's tests, the demo and benchmarks.

Debian's ``docker-registry`` (distribution 2.8.2) is started from a generated config in a
private directory, in one of three modes: ``plain`` (HTTP, no auth), ``tls`` (HTTPS with a
per-run CA + htpasswd Basic auth) and ``token`` (HTTPS + Bearer tokens from a small token
service in this process). :class:`FaultProxy` sits in front of a registry to inject resets,
error statuses and latency, and counts the bytes that reach the registry.

Only the standard library, ``cryptography`` and ``pyyaml`` are used, so the module also runs
as a script: ``python registry-fixtures/registryfixtures.py serve --mode tls``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import ctypes
import datetime
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "AuthKind",
    "FaultProxy",
    "Mode",
    "Pki",
    "Registry",
    "RegistryClient",
    "RegistryError",
    "RequestRecord",
    "Response",
    "TokenService",
    "make_pki",
    "parse_challenge",
    "parse_scope",
]

TEMPLATES = Path(__file__).resolve().parent / "templates"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_ACCEPT = ", ".join([
    OCI_MANIFEST, OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])

Mode = Literal["plain", "tls", "token"]
AuthKind = Literal["none", "htpasswd", "token"]


class RegistryError(RuntimeError):
    """A fixture server could not be started or answered unexpectedly."""


# --------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class Pki:
    """Files of a per-run CA, a server certificate for 127.0.0.1/localhost and a client cert."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nestbuild tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
    days: int = 30,
) -> x509.Certificate:
    """One X.509 certificate; SKI/AKI and key usage keep strict verifiers (Go, OpenSSL) happy."""
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(_key_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    signer_public = issuer_key.public_key()
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory: Path, client_name: str = "nestbuild-test-client") -> Pki:
    """Generate a CA plus server and client certificates (EC P-256, fast) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca = _issue("nestbuild test CA " + secrets.token_hex(4), ca_key, None, ca_key, ca=True)
    server_key = _new_key()
    server = _issue(
        "127.0.0.1", server_key, ca, ca_key,
        san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    client_key = _new_key()
    client = _issue(client_name, client_key, ca, ca_key,
                    usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pki = Pki(directory, directory / "ca.crt", directory / "ca.key",
              directory / "server.crt", directory / "server.key",
              directory / "client.cert", directory / "client.key")
    _write_cert(pki.ca_cert, ca)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.server_cert, server)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client)
    _write_key(pki.client_key, client_key)
    return pki


# --------------------------------------------------------------------------------------
# Token service


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
        self._key = _new_key()
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
        cert = _issue("nestbuild test token signer", self._key, None, self._key)
        _write_cert(self.signing_cert, cert)
        _write_key(self.signing_key_path, self._key)
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


# --------------------------------------------------------------------------------------
# The registry process


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _render(template: str, values: Mapping[str, object]) -> dict[str, Any]:
    """Fill a template with JSON-quoted values (valid YAML scalars) and parse it."""
    text = (TEMPLATES / template).read_text()
    quoted = {key: json.dumps(str(value)) for key, value in values.items()}
    loaded = yaml.safe_load(string.Template(text).substitute(quoted))
    if not isinstance(loaded, dict):
        raise RegistryError(f"template {template} is not a mapping")
    return loaded


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


_PR_SET_PDEATHSIG = 1
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - not glibc
    _LIBC = None


def _die_with_parent() -> None:
    """Runs in the child: SIGTERM it when the parent dies, so a killed pytest leaks nothing."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_LIVE: weakref.WeakSet[Registry] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for registry in list(_LIVE):
        registry.stop()


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


class Registry:
    """One ``docker-registry`` process on 127.0.0.1 with its own storage, config and PKI.

    ``mode`` picks the presets: ``plain`` = HTTP without auth; ``tls`` = HTTPS + htpasswd;
    ``token`` = HTTPS + Bearer tokens. ``tls``/``auth`` override a preset (e.g. htpasswd over
    plain HTTP); ``client_auth`` makes the registry require a client certificate.
    """

    def __init__(
        self,
        mode: Mode = "plain",
        *,
        root: Path | None = None,
        tls: bool | None = None,
        auth: AuthKind | None = None,
        client_auth: bool = False,
        port: int = 0,
        username: str | None = None,
        password: str | None = None,
        binary: str | None = None,
        startup_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        presets: dict[str, tuple[bool, AuthKind]] = {
            "plain": (False, "none"), "tls": (True, "htpasswd"), "token": (True, "token")}
        if mode not in presets:
            raise ValueError(f"unknown registry mode {mode!r}")
        self.mode = mode
        self.tls = presets[mode][0] if tls is None else tls
        self.auth: AuthKind = presets[mode][1] if auth is None else auth
        if client_auth and not self.tls:
            raise ValueError("client_auth needs tls")
        self.client_auth = client_auth
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="nestbuild-registry-")) if root is None else root
        self.storage_dir = self.root / "storage"
        self.log_path = self.root / "registry.log"
        self.config_path = self.root / "config.yml"
        self.certs_d = self.root / "certs.d"
        self.requested_port = port
        self.port = 0
        if self.auth == "none":
            self.username: str | None = username
            self.password: str | None = password
        else:
            self.username = username or "user-" + secrets.token_hex(3)
            self.password = password or secrets.token_urlsafe(18)
        self.binary = binary or shutil.which("docker-registry") or "/usr/bin/docker-registry"
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.startup_seconds: float | None = None
        self.pki: Pki | None = None
        self.token_service: TokenService | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses and credentials ----------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of image references."""
        if not self.port:
            raise RegistryError("registry is not started")
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def ca_cert(self) -> Path | None:
        return self.pki.ca_cert if self.pki is not None else None

    @property
    def cert_dir(self) -> Path:
        """``certs.d/HOST`` with ``ca.crt``, ``client.cert``, ``client.key`` (as containers use)."""
        return self.certs_d / self.host

    @property
    def token_realm(self) -> str | None:
        return self.token_service.realm if self.token_service is not None else None

    @property
    def auth_file(self) -> Path:
        """A containers/docker auth.json holding this registry's credentials (if any)."""
        return self.root / "auth.json"

    def auth_json(self, host: str | None = None) -> dict[str, Any]:
        """``{"auths": {host: {"auth": base64(user:pass)}}}`` for this registry."""
        if self.username is None or self.password is None:
            return {"auths": {}}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return {"auths": {host or self.host: {"auth": token}}}

    def write_cert_dir(self, host: str, certs_d: Path | None = None) -> Path:
        """Lay out ``certs.d/<host>/`` (e.g. for a proxy's host) with this registry's PKI."""
        if self.pki is None:
            raise RegistryError("registry has no TLS material")
        target = (certs_d or self.certs_d) / host
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.pki.ca_cert, target / "ca.crt")
        shutil.copyfile(self.pki.client_cert, target / "client.cert")
        shutil.copyfile(self.pki.client_key, target / "client.key")
        (target / "client.key").chmod(0o600)
        return target

    def ssl_context(self) -> ssl.SSLContext | None:
        """Client context that trusts only the per-run CA (and presents the client cert)."""
        if self.pki is None:
            return None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return ctx

    def client(self) -> RegistryClient:
        """A small HTTP client for seeding and reading this registry in tests."""
        return RegistryClient(self.url, username=self.username, password=self.password,
                              context=self.ssl_context())

    def stored_blobs(self) -> dict[str, int]:
        """Digest -> size of every blob in the filesystem storage (what actually landed)."""
        base = self.storage_dir / "docker" / "registry" / "v2" / "blobs"
        found: dict[str, int] = {}
        for data in base.glob("*/*/*/data"):
            found[f"{data.parent.parent.parent.name}:{data.parent.name}"] = data.stat().st_size
        return found

    # -- lifecycle --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def _prepare(self) -> dict[str, object]:
        """Write PKI, htpasswd, token service and return template values shared by attempts."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        values: dict[str, object] = {"storage_dir": self.storage_dir,
                                     "secret": secrets.token_hex(16)}
        if self.tls:
            self.pki = make_pki(self.root / "pki", self.username or "nestbuild-test-client")
            values.update(server_cert=self.pki.server_cert, server_key=self.pki.server_key,
                          ca_cert=self.pki.ca_cert)
        if self.auth == "htpasswd":
            assert self.username is not None and self.password is not None
            htpasswd = self.root / "htpasswd"
            htpasswd.write_text(_bcrypt_line(self.username, self.password))
            values.update(realm="nestbuild-test-registry", htpasswd=htpasswd)
        elif self.auth == "token":
            assert self.username is not None and self.password is not None
            service = TokenService(self.root / "token", {self.username: self.password},
                                   tls=self.pki)
            self.token_service = service.start()
            values.update(realm=service.realm, service=service.service,
                          issuer=service.issuer, rootcertbundle=service.signing_cert)
        return values

    def _config(self, values: Mapping[str, object]) -> dict[str, Any]:
        config = _render("config.yml", values)
        if self.tls:
            _merge(config, _render("tls.yml", values))
        if self.client_auth:
            _merge(config, _render("client-auth.yml", values))
        if self.auth == "htpasswd":
            _merge(config, _render("htpasswd.yml", values))
        elif self.auth == "token":
            _merge(config, _render("token.yml", values))
        return config

    def start(self) -> Self:
        """Start the registry and return once ``GET /v2/`` answers; raise with the log tail."""
        if self.running:
            return self
        if not Path(self.binary).exists():
            raise RegistryError(
                f"{self.binary} not found: apt-get install -y docker-registry apache2-utils")
        began = time.monotonic()
        try:
            self._launch(began)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def _launch(self, began: float) -> None:
        values = self._prepare()
        # distribution reads REGISTRY_* variables as config overrides (REGISTRY_AUTH_FILE,
        # meant for containers tools, would break auth): keep them away from it.
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        attempts = 1 if self.requested_port else 5
        for attempt in range(attempts):
            self.port = self.requested_port or _free_port()
            config = self._config({**values, "addr": f"127.0.0.1:{self.port}"})
            self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                    preexec_fn=_die_with_parent if self.die_with_parent else None)
            _LIVE.add(self)
            try:
                self._wait_ready(began + self.startup_timeout)
            except RegistryError:
                in_use = "address already in use" in _tail(self.log_path)
                self._terminate()
                if in_use and attempt + 1 < attempts:
                    continue  # a free port was taken between probing and binding
                raise
            if self.pki is not None:
                self.write_cert_dir(self.host)
            if self.username is not None:
                self.auth_file.write_text(json.dumps(self.auth_json(), indent=2) + "\n")
            return

    def _wait_ready(self, deadline: float) -> None:
        ctx = self.ssl_context()
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RegistryError(
                    f"docker-registry exited with {self._proc.returncode}:\n"
                    f"{_tail(self.log_path)}")
            conn: http.client.HTTPConnection
            if ctx is not None:
                conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=0.5,
                                                   context=ctx)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
            try:
                conn.request("GET", "/v2/")
                status = conn.getresponse().status
                if status in (200, 401):
                    return
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"docker-registry did not answer GET /v2/ on {self.port}:\n"
                    f"{_tail(self.log_path)}")
            time.sleep(0.01)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop(self) -> None:
        """Stop the registry and token service; delete the root only if we created it."""
        self._terminate()
        if self.token_service is not None:
            self.token_service.stop()
        _LIVE.discard(self)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        """Everything a demo script or benchmark needs, JSON-serialisable."""
        return {
            "mode": self.mode, "host": self.host, "url": self.url, "tls": self.tls,
            "auth": self.auth, "client_auth": self.client_auth,
            "ca_cert": str(self.ca_cert) if self.ca_cert else None,
            "cert_dir": str(self.cert_dir) if self.pki else None,
            "username": self.username, "password": self.password,
            "auth_file": str(self.auth_file) if self.username else None,
            "token_realm": self.token_realm, "storage_dir": str(self.storage_dir),
            "log_path": str(self.log_path), "config_path": str(self.config_path),
            "pid": self.pid, "startup_seconds": self.startup_seconds,
        }


def _bcrypt_line(username: str, password: str) -> str:
    """``user:$2y$...`` via ``htpasswd -Bbn`` (apache2-utils); distribution needs bcrypt."""
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        raise RegistryError("htpasswd not found: apt-get install -y apache2-utils")
    out = subprocess.run([htpasswd, "-Bbn", "-C", "5", username, password],
                         check=True, capture_output=True, text=True).stdout
    return out.strip() + "\n"


# --------------------------------------------------------------------------------------
# A tiny registry client (stdlib only) for seeding and checking registries in tests


@dataclass
class Response:
    """An HTTP response read completely."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)="([^"]*)"', rest)}
    return scheme.lower(), params


class RegistryClient:
    """Distribution API client that answers Basic and Bearer challenges like real clients."""

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 context: ssl.SSLContext | None = None, timeout: float = 30) -> None:
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.username = username
        self.password = password
        self.context = context
        self.timeout = timeout
        self._auth: str | None = None  # last Authorization that worked, tried first

    def _basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def raw(self, method: str, url: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None) -> Response:
        """One request without auth handling; ``url`` may be a path or an absolute URL."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme or self.scheme
        netloc = parts.netloc or self.netloc
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=self.timeout,
                                               context=self.context)
        else:
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout)
        try:
            conn.request(method, target, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def token(self, challenge: Mapping[str, str], scope: str | None = None) -> str:
        """Fetch a Bearer token from the challenge's realm (Basic credentials if known)."""
        query = {"service": challenge.get("service", "")}
        wanted = scope or challenge.get("scope")
        if wanted:
            query["scope"] = wanted
        url = challenge["realm"] + "?" + urllib.parse.urlencode(query)
        headers = {"Authorization": self._basic()} if self.username else {}
        resp = self.raw("GET", url, headers=headers)
        if resp.status != 200:
            raise RegistryError(f"token service said {resp.status}: {resp.body!r}")
        data = resp.json()
        return str(data.get("token") or data["access_token"])

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """A request that retries once with credentials after a 401 challenge."""
        hdrs = dict(headers or {})
        if self._auth is not None and "Authorization" not in hdrs:
            hdrs["Authorization"] = self._auth
        resp = self.raw(method, url, body, hdrs)
        if resp.status != 401:
            return resp
        scheme, params = parse_challenge(resp.header("WWW-Authenticate") or "")
        if scheme == "basic" and self.username is not None:
            hdrs["Authorization"] = self._basic()
        elif scheme == "bearer":
            hdrs["Authorization"] = "Bearer " + self.token(params)
        else:
            return resp
        resp = self.raw(method, url, body, hdrs)
        if resp.status != 401:
            self._auth = hdrs["Authorization"]
        return resp

    def ping(self) -> Response:
        return self.request("GET", "/v2/")

    def blob_exists(self, repo: str, digest: str) -> bool:
        return self.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200

    def push_blob(self, repo: str, data: bytes, *, chunk_size: int | None = None,
                  skip_existing: bool = False) -> str:
        """POST + (PATCH chunks) + PUT; returns the digest. Chunked when chunk_size is set;
        with ``skip_existing`` a HEAD first avoids re-sending a blob the registry has."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if skip_existing and self.blob_exists(repo, digest):
            return digest
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"",
                            {"Content-Length": "0"})
        if resp.status != 202:
            raise RegistryError(f"upload start: {resp.status} {resp.body!r}")
        location = resp.header("Location") or ""
        body = data
        if chunk_size:
            offset = 0
            while offset < len(data):
                piece = data[offset:offset + chunk_size]
                resp = self.request("PATCH", location, piece, {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}"})
                if resp.status != 202:
                    raise RegistryError(f"upload chunk: {resp.status} {resp.body!r}")
                location = resp.header("Location") or location
                offset += len(piece)
            body = b""
        sep = "&" if "?" in location else "?"
        resp = self.request("PUT", f"{location}{sep}digest={digest}", body,
                            {"Content-Type": "application/octet-stream"})
        if resp.status != 201:
            raise RegistryError(f"upload finish: {resp.status} {resp.body!r}")
        return digest

    def get_blob(self, repo: str, digest: str) -> Response:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}")

    def push_manifest(self, repo: str, reference: str, manifest: bytes,
                      media_type: str = OCI_MANIFEST) -> str:
        """PUT the exact bytes; returns the digest the registry reports."""
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}", manifest,
                            {"Content-Type": media_type})
        if resp.status != 201:
            raise RegistryError(f"manifest put: {resp.status} {resp.body!r}")
        return resp.header("Docker-Content-Digest") or (
            "sha256:" + hashlib.sha256(manifest).hexdigest())

    def get_manifest(self, repo: str, reference: str) -> Response:
        return self.request("GET", f"/v2/{repo}/manifests/{reference}",
                            headers={"Accept": MANIFEST_ACCEPT})

    def push_image(self, repo: str, tag: str, layers: list[bytes]) -> str:
        """Push a minimal OCI image (config + layers, skipping blobs already there)."""
        layer_descs = [{"mediaType": OCI_LAYER, "size": len(layer),
                        "digest": self.push_blob(repo, layer, skip_existing=True)}
                       for layer in layers]
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        }, sort_keys=True).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": len(config),
                       "digest": self.push_blob(repo, config, skip_existing=True)},
            "layers": layer_descs,
        }, sort_keys=True).encode()
        return self.push_manifest(repo, tag, manifest)


# --------------------------------------------------------------------------------------
# Fault-injecting proxy


@dataclass
class RequestRecord:
    """One HTTP request seen by the proxy (HTTP mode only)."""

    method: str
    path: str
    body_bytes: int = 0  # request-body payload bytes forwarded to the registry
    status: int | None = None  # registry's (or the injected) status; None when cut
    fault: str | None = None  # "reset", "status" or None


@dataclass
class _StatusFault:
    count: int
    status: int
    method: re.Pattern[str]
    path: re.Pattern[str]
    retry_after: int | None


@dataclass
class _ResetFault:
    count: int
    after: int
    method: re.Pattern[str]
    path: re.Pattern[str]


@dataclass
class _Head:
    start: str
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: bytes) -> _Head:
        lines = raw.decode("latin-1").split("\r\n")
        head = cls(lines[0].rstrip("\n"))
        for line in lines[1:]:
            line = line.rstrip("\n")
            if not line:
                continue
            name, _, value = line.partition(":")
            head.headers.append((name.strip(), value.strip()))
        return head

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def remove(self, name: str) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]

    def has_token(self, name: str, token: str) -> bool:
        return any(token in v.lower().replace(" ", "").split(",")
                   for k, v in self.headers if k.lower() == name.lower())

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")


class _Closed(Exception):
    """The peer closed or the stream is malformed: drop the connection."""


class _Reader:
    """Buffered reads on a socket without makefile(), so close() really closes the fd."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def readline(self, limit: int = 65536) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line = bytes(self.buf[:end + 1])
                del self.buf[:end + 1]
                return line
            if len(self.buf) > limit:
                raise _Closed("line too long")
            if not self._fill():
                line = bytes(self.buf)
                self.buf.clear()
                return line

    def read_some(self, limit: int) -> bytes:
        if not self.buf and not self._fill():
            return b""
        data = bytes(self.buf[:limit])
        del self.buf[:limit]
        return data

    def head(self) -> bytes | None:
        """Read a request/response head; None on a clean EOF before any byte."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self.readline()
            if not line:
                if lines:
                    raise _Closed("EOF inside a message head")
                return None
            if not lines and line.strip() == b"":
                continue
            lines.append(line)
            size += len(line)
            if size > 256 * 1024:
                raise _Closed("message head too large")
            if line.strip() == b"":
                return b"".join(lines)


_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE"}


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of a registry, with faults switchable at runtime.

    HTTP mode (a plain-HTTP registry) parses HTTP/1.1 so faults can target requests by
    method/path regex: ``fail_next`` answers with an error status, ``reset_after`` cuts a
    request body after N bytes with a TCP RST, ``set_latency`` delays each request, and
    :attr:`requests` records every request with its body bytes and status.

    Raw mode (a TLS registry; bytes stay encrypted end to end, so the CA and hostname still
    verify) only counts bytes, adds latency per chunk and resets a connection after N bytes
    of its client->registry stream (TLS records included); ``fail_next`` is not available.
    """

    def __init__(self, upstream: Registry | str, *, http_mode: bool | None = None,
                 scheme: str | None = None) -> None:
        if isinstance(upstream, Registry):
            self.upstream = upstream.host
            tls = upstream.tls
        else:
            self.upstream = upstream
            tls = scheme == "https"
        self.http_mode = (not tls) if http_mode is None else http_mode
        self.scheme = scheme or ("https" if tls else "http")
        up_host, _, up_port = self.upstream.rpartition(":")
        self._up_addr = (up_host, int(up_port))
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._threads: set[threading.Thread] = set()
        self._sockets: set[socket.socket] = set()
        self._stopping = threading.Event()
        self.port = 0
        self._latency = 0.0
        self._status_faults: list[_StatusFault] = []
        self._reset_faults: list[_ResetFault] = []
        self._raw_resets: list[list[int]] = []  # [after, count]
        self._requests: list[RequestRecord] = []
        self.bytes_upstream = 0  # every byte forwarded client -> registry
        self.bytes_downstream = 0  # every byte forwarded registry -> client
        self.connections = 0

    # -- addresses --------------------------------------------------------------------
    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    # -- fault configuration (thread-safe) --------------------------------------------
    def passthrough(self) -> None:
        """Drop all pending faults and latency."""
        with self._lock:
            self._status_faults.clear()
            self._reset_faults.clear()
            self._raw_resets.clear()
            self._latency = 0.0

    def set_latency(self, seconds: float) -> None:
        """Delay each request (HTTP mode) or each client chunk (raw mode) by ``seconds``."""
        with self._lock:
            self._latency = seconds

    def fail_next(self, count: int = 1, status: int = 500, *, method: str = ".*",
                  path: str = "", retry_after: int | None = None) -> None:
        """Answer the next ``count`` requests whose method fullmatches ``method`` and whose
        path+query contains a match of ``path`` with ``status`` (connection then closes)."""
        if not self.http_mode:
            raise RegistryError("status injection needs HTTP mode (plain-HTTP upstream)")
        with self._lock:
            self._status_faults.append(_StatusFault(
                count, status, re.compile(method), re.compile(path), retry_after))

    def reset_after(self, nbytes: int, count: int = 1, *, method: str = ".*",
                    path: str = r"/blobs/uploads/") -> None:
        """Reset (TCP RST, both sides) the next ``count`` matching requests whose body is
        longer than ``nbytes``, after forwarding exactly ``nbytes`` body bytes. In raw mode,
        the next ``count`` connections that send more than ``nbytes`` bytes."""
        with self._lock:
            if self.http_mode:
                self._reset_faults.append(_ResetFault(
                    count, nbytes, re.compile(method), re.compile(path)))
            else:
                self._raw_resets.append([nbytes, count])

    # -- counters ---------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def body_bytes_upstream(self) -> int:
        with self._lock:
            return sum(r.body_bytes for r in self._requests)

    def blob_upload_bytes(self, repo: str | None = None) -> int:
        """Request-body bytes sent to blob-upload URLs (POST/PATCH/PUT .../blobs/uploads/)."""
        pattern = re.compile(
            r"^/v2/" + (re.escape(repo) if repo else ".+") + r"/blobs/uploads/")
        with self._lock:
            return sum(r.body_bytes for r in self._requests if pattern.search(r.path))

    def reset_counters(self) -> None:
        with self._lock:
            self._requests.clear()
            self.bytes_upstream = 0
            self.bytes_downstream = 0
            self.connections = 0

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.port = int(listener.getsockname()[1])
        self._listener = listener
        self._stopping.clear()
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True)
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        self._stopping.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            sockets = list(self._sockets)
            threads = list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        listener = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            handler = self._serve_http if self.http_mode else self._serve_raw
            thread = threading.Thread(target=self._run, args=(handler, client), daemon=True)
            with self._lock:
                self.connections += 1
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    def _run(self, handler: Callable[[socket.socket], None], client: socket.socket) -> None:
        try:
            handler(client)
        except (OSError, _Closed, ValueError):
            pass
        finally:
            self._close(client)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _connect_upstream(self) -> socket.socket:
        sock = socket.create_connection(self._up_addr, timeout=60)
        sock.settimeout(None)
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _close(self, sock: socket.socket | None, *, rst: bool = False) -> None:
        if sock is None:
            return
        # shutdown() wakes a thread blocked in recv() on this socket (close() alone does
        # not); with SO_LINGER 0, SHUT_RD sends nothing and the close() then sends a RST.
        with contextlib.suppress(OSError):
            if rst:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)
            else:
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
        with self._lock:
            self._sockets.discard(sock)

    def _send_up(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self._lock:
            self.bytes_upstream += len(data)

    def _send_down(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        with self._lock:
            self.bytes_downstream += len(data)

    # -- raw mode ---------------------------------------------------------------------
    def _serve_raw(self, client: socket.socket, initial: bytes = b"") -> None:
        upstream = self._connect_upstream()
        cut = False
        if initial:
            self._send_up(upstream, initial)

        def pump_down() -> None:
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    self._send_down(client, data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_WR)

        down = threading.Thread(target=pump_down, daemon=True)
        down.start()
        sent = 0
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        upstream.shutdown(socket.SHUT_WR)
                    break
                with self._lock:
                    latency = self._latency
                if latency:
                    time.sleep(latency)
                limit = self._raw_cut_point(sent, len(data))
                if limit is not None:
                    self._send_up(upstream, data[:limit])
                    cut = True
                    break
                self._send_up(upstream, data)
                sent += len(data)
        finally:
            if cut:
                self._close(client, rst=True)
                self._close(upstream, rst=True)
            down.join(timeout=60)
            self._close(upstream)

    def _raw_cut_point(self, sent: int, size: int) -> int | None:
        with self._lock:
            for fault in self._raw_resets:
                after, count = fault
                if count > 0 and sent + size > after:
                    fault[1] -= 1
                    return max(0, after - sent)
        return None

    # -- HTTP mode --------------------------------------------------------------------
    def _match_status(self, method: str, path: str) -> _StatusFault | None:
        with self._lock:
            for fault in self._status_faults:
                if fault.count > 0 and fault.method.fullmatch(method) and fault.path.search(path):
                    fault.count -= 1
                    return fault
        return None

    def _reset_candidate(self, method: str, path: str) -> _ResetFault | None:
        with self._lock:
            for fault in self._reset_faults:
                if fault.count > 0 and fault.method.fullmatch(method) and fault.path.search(path):
                    return fault
        return None

    def _consume_reset(self, fault: _ResetFault) -> bool:
        with self._lock:
            if fault.count > 0:
                fault.count -= 1
                return True
        return False

    def _serve_http(self, client: socket.socket) -> None:
        reader = _Reader(client)
        if not reader._fill():
            return
        if reader.buf[0] == 0x16:
            # A TLS ClientHello (clients probe HTTPS first with --tls-verify=false): let the
            # registry answer it as it would, instead of waiting for a request line.
            self._serve_raw(client, bytes(reader.buf))
            return
        upstream: socket.socket | None = None
        up_reader: _Reader | None = None
        try:
            while True:
                raw = reader.head()
                if raw is None:
                    return
                head = _Head.parse(raw)
                parts = head.start.split(" ")
                if len(parts) < 3:
                    raise _Closed("bad request line")
                method, target, version = parts[0], parts[1], parts[2]
                record = RequestRecord(method, target)
                with self._lock:
                    self._requests.append(record)
                    latency = self._latency
                expect = head.has_token("Expect", "100-continue")
                framing = self._request_framing(head)
                status_fault = self._match_status(method, target)
                if status_fault is not None:
                    if not expect:
                        self._body(reader, None, framing, record, None, count=False)
                    self._inject(client, status_fault, record)
                    return
                if latency:
                    time.sleep(latency)
                if upstream is None:
                    upstream = self._connect_upstream()
                    up_reader = _Reader(upstream)
                assert up_reader is not None
                if expect:
                    head.remove("Expect")
                    if framing != 0:
                        self._send_down(client, b"HTTP/1.1 100 Continue\r\n\r\n")
                self._send_up(upstream, head.encode())
                reset = self._reset_candidate(method, target)
                if not self._body(reader, upstream, framing, record, reset, count=True):
                    record.fault = "reset"
                    self._close(client, rst=True)
                    self._close(upstream, rst=True)
                    return
                keep = self._relay_response(up_reader, client, method, record)
                if (not keep or head.has_token("Connection", "close")
                        or version == "HTTP/1.0"):
                    return
        finally:
            self._close(upstream)

    @staticmethod
    def _request_framing(head: _Head) -> int | None:
        """Body length, or None for chunked."""
        if head.has_token("Transfer-Encoding", "chunked"):
            return None
        length = head.get("Content-Length")
        return int(length) if length else 0

    def _body(self, reader: _Reader, upstream: socket.socket | None, framing: int | None,
              record: RequestRecord, reset: _ResetFault | None, *, count: bool) -> bool:
        """Forward (or, without upstream, discard) a request body; False when it was cut."""
        sent = 0

        def forward(data: bytes) -> None:
            if upstream is not None:
                self._send_up(upstream, data)

        def payload(remaining: int) -> bool:
            nonlocal sent, reset
            while remaining > 0:
                want = min(remaining, 65536)
                if reset is not None:
                    if sent >= reset.after:
                        if self._consume_reset(reset):
                            return False
                        reset = None
                    else:
                        want = min(want, reset.after - sent)
                data = reader.read_some(want)
                if not data:
                    raise _Closed("EOF inside a request body")
                forward(data)
                sent += len(data)
                remaining -= len(data)
                if count:
                    with self._lock:
                        record.body_bytes += len(data)
            return True

        if framing is not None:
            return payload(framing)
        while True:
            line = reader.readline()
            if not line:
                raise _Closed("EOF inside a chunked body")
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError as exc:
                raise _Closed("bad chunk size") from exc
            if size == 0:
                forward(line)
                while True:
                    trailer = reader.readline()
                    if not trailer:
                        raise _Closed("EOF inside trailers")
                    forward(trailer)
                    if trailer.strip() == b"":
                        return True
            if reset is not None and sent >= reset.after and self._consume_reset(reset):
                return False
            forward(line)
            if not payload(size):
                return False
            forward(reader.readline())

    def _inject(self, client: socket.socket, fault: _StatusFault,
                record: RequestRecord) -> None:
        code = _ERROR_CODES.get(fault.status, "UNKNOWN")
        body = json.dumps({"errors": [{"code": code, "message": "injected by FaultProxy",
                                       "detail": None}]}).encode()
        lines = [f"HTTP/1.1 {fault.status} {_REASONS.get(fault.status, 'Error')}",
                 "Content-Type: application/json", f"Content-Length: {len(body)}",
                 "Docker-Distribution-Api-Version: registry/2.0", "Connection: close"]
        if fault.retry_after is not None:
            lines.append(f"Retry-After: {fault.retry_after}")
        with self._lock:
            record.status = fault.status
            record.fault = "status"
        self._send_down(client, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def _relay_response(self, up: _Reader, client: socket.socket, method: str,
                        record: RequestRecord) -> bool:
        """Forward one response; return whether the connection may be reused."""
        while True:
            raw = up.head()
            if raw is None:
                raise _Closed("registry closed the connection")
            head = _Head.parse(raw)
            status = int(head.start.split(" ")[1])
            if 100 <= status < 200 and status != 101:
                self._send_down(client, raw)
                continue
            break
        with self._lock:
            record.status = status  # before the client can see the response
        self._send_down(client, raw)
        keep = not head.has_token("Connection", "close")
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return keep
        if head.has_token("Transfer-Encoding", "chunked"):
            while True:
                line = up.readline()
                if not line:
                    raise _Closed("EOF in chunked response")
                self._send_down(client, line)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        trailer = up.readline()
                        self._send_down(client, trailer)
                        if not trailer or trailer.strip() == b"":
                            return keep
                self._copy(up, client, size + 2)
        length = head.get("Content-Length")
        if length is not None:
            self._copy(up, client, int(length))
            return keep
        while data := up.read_some(65536):
            self._send_down(client, data)
        return False

    def _copy(self, src: _Reader, dst: socket.socket, size: int) -> None:
        while size > 0:
            data = src.read_some(min(size, 65536))
            if not data:
                raise _Closed("EOF in response body")
            self._send_down(dst, data)
            size -= len(data)


# --------------------------------------------------------------------------------------
# CLI


def _serve(args: argparse.Namespace) -> int:
    registry = Registry(args.mode, root=Path(args.root) if args.root else None,
                        port=args.port, client_auth=args.client_auth,
                        username=args.username, password=args.password)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy: FaultProxy | None = None
    with registry:
        info = registry.describe()
        if args.proxy:
            proxy = FaultProxy(registry).start()
            info["proxy"] = {"host": proxy.host, "url": proxy.url}
        print(json.dumps(info), flush=True)
        while not stop.wait(1):
            if not registry.running:
                print(_tail(registry.log_path), file=sys.stderr)
                return 1
        if proxy is not None:
            proxy.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``serve``: start a registry, print its details as one JSON line, run until killed."""
    parser = argparse.ArgumentParser(prog="registryfixtures", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a registry until SIGTERM/SIGINT")
    serve.add_argument("--mode", choices=["plain", "tls", "token"], default="plain")
    serve.add_argument("--port", type=int, default=0, help="default: a free port")
    serve.add_argument("--root", help="state directory (default: a temp dir, deleted)")
    serve.add_argument("--client-auth", action="store_true", help="require client certs")
    serve.add_argument("--username")
    serve.add_argument("--password")
    serve.add_argument("--proxy", action="store_true",
                       help="also start a pass-through FaultProxy in front")
    args = parser.parse_args(argv)
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
