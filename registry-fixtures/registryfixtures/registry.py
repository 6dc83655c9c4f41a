"""The registry process: Debian's ``docker-registry`` (distribution 2.8.2) on 127.0.0.1,
started from a generated config (``templates/``) with its own storage, PKI and credentials.
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import string
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

import yaml

from registryfixtures.errors import RegistryError
from registryfixtures.pki import Pki, make_pki
from registryfixtures.tokens import TokenService

if TYPE_CHECKING:
    from nestbuild._registry.client import RegistryClient

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"

Mode = Literal["plain", "tls", "token"]
AuthKind = Literal["none", "htpasswd", "token"]


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


def log_tail(path: Path, limit: int = 3000) -> str:
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

    def client(self, host: str | None = None, **options: Any) -> RegistryClient:
        """nestbuild's own registry client, with this registry's CA, client certificate and
        credentials, for seeding and reading it in tests; ``host`` is another address of it
        (a :class:`FaultProxy`). ``options`` go to the client (``retries``, ``chunk_size``...).

        Imported here, not at the top: the fixtures also run as a script without nestbuild.
        """
        from nestbuild._registry.auth import Credentials
        from nestbuild._registry.client import RegistryClient

        host = host or self.host
        cert_dir = None
        if self.pki is not None:
            cert_dir = self.cert_dir if host == self.host else self.write_cert_dir(host)
        credentials = None
        if self.username is not None and self.password is not None:
            credentials = Credentials(self.username, self.password, "the test registry")
        return RegistryClient(host, cert_dir=cert_dir, credentials=credentials, **options)

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
                in_use = "address already in use" in log_tail(self.log_path)
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
                    f"{log_tail(self.log_path)}")
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
                    f"{log_tail(self.log_path)}")
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
