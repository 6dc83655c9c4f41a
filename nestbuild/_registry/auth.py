"""Registry credentials, found where skopeo and podman find them, and ``login``/``logout``.

Lookup order (containers/image ``pkg/docker/config``): ``--authfile``, else
``REGISTRY_AUTH_FILE``, else ``$XDG_RUNTIME_DIR/containers/auth.json`` (root without it:
``/run/containers/0/auth.json``); then, only when no file was named explicitly,
``~/.config/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
In each file ``credHelpers[host]`` beats ``auths``, and ``credsStore`` is asked last. Entries
keyed by ``host/namespace`` match the most specific repository first, as containers/image does.

Credentials are never logged: messages name the file (or helper) they came from, never the
secret.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Final

from nestbuild._util import userfile
from nestbuild._util.record import Value
from nestbuild.errors import UsageError


class Credentials(Value):
    _hidden = ("password",)
    username: Final[str]
    password: Final[str]
    #: Where they came from (a file path or ``docker-credential-NAME``), for messages.
    source: Final[str]

    def __init__(self, username: str, password: str, source: str) -> None:
        self.username = username
        self.password = password
        self.source = source

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, source={self.source!r})"


class Lookup(Value):
    """The outcome of a credential search: what was found and every place that was asked."""

    credentials: Final[Credentials | None]
    consulted: Final[tuple[str, ...]]

    def __init__(self, credentials: Credentials | None, consulted: tuple[str, ...]) -> None:
        self.credentials = credentials
        self.consulted = consulted

    def describe(self) -> str:
        places = ", ".join(self.consulted) or "no credential files"
        return f"looked in {places}"


def default_authfile() -> Path:
    """Where ``login`` writes by default (podman's choice)."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "containers" / "auth.json"
    return Path(f"/run/containers/{os.getuid()}/auth.json")


def search_path(authfile: Path | None) -> list[Path]:
    """The files consulted, in order; an explicit file (flag or env) is the only one."""
    if authfile is not None:
        return [authfile]
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return [Path(os.environ["REGISTRY_AUTH_FILE"])]
    home = Path.home()
    xdg_config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    docker_dir = os.environ.get("DOCKER_CONFIG")
    docker = Path(docker_dir) / "config.json" if docker_dir else home / ".docker" / "config.json"
    return [default_authfile(), xdg_config / "containers" / "auth.json", docker]


def _keys_for(host: str, repo: str | None) -> list[str]:
    """auth.json keys that apply to ``host/repo``, most specific first."""
    keys: list[str] = []
    if repo:
        parts = repo.split("/")
        for i in range(len(parts), 0, -1):
            keys.append(f"{host}/{'/'.join(parts[:i])}")
    keys += [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/",
             f"https://{host}/v2/"]
    if host == "docker.io":
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    return keys


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read credentials ({exc.strerror})") from None
    if not data.strip():
        return {}
    return userfile.json_object(data, str(path), UsageError, "an auth file")


def _decode(entry: object, source: str) -> Credentials | None:
    if not isinstance(entry, dict):
        return None
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise UsageError(f"{source}: an 'auth' entry is not base64 of USER:PASSWORD") from None
        if not sep:
            raise UsageError(f"{source}: an 'auth' entry is not base64 of USER:PASSWORD")
        return Credentials(user, password, source)
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials("<token>", token, source)
    return None


def _helper(name: str, host: str) -> Credentials | None:
    # imported here: most lookups never run a helper, and every command looks up
    from nestbuild._tools import run

    binary = f"docker-credential-{name}"
    if not name or "/" in name or "\0" in name:  # a name, never a path to some program
        raise UsageError(f"credential helper {binary!r} is not a helper name")
    try:
        proc = run.run([binary, "get"], input=host.encode(), timeout=30, check=False,
                       secret=True)
    except run.NotInstalled:
        raise UsageError(f"credential helper {binary} is configured but not installed") from None
    except run.CannotRun as exc:  # there, but not a program this user may run
        raise UsageError(f"credential helper {binary} cannot run ({exc.reason})") from None
    except run.TimedOut:
        raise UsageError(f"credential helper {binary} did not answer in 30 s") from None
    if proc.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        doc = json.loads(proc.stdout)
    except (ValueError, RecursionError):
        doc = None
    user = doc.get("Username") if isinstance(doc, dict) else None
    secret = doc.get("Secret") if isinstance(doc, dict) else None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise UsageError(f"credential helper {binary} returned something unreadable")
    return Credentials(user, secret, binary)


def lookup(host: str, repo: str | None = None, *, authfile: Path | None = None) -> Lookup:
    """Credentials for ``host`` (and ``repo``), and every place that was consulted."""
    consulted: list[str] = []
    for path in search_path(authfile):
        doc = _load(path)
        consulted.append(str(path))
        if doc is None:
            continue
        helpers = doc.get("credHelpers") or {}
        if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
            found = _helper(helpers[host], host)
            if found:
                return Lookup(found, tuple(consulted))
        auths = doc.get("auths") or {}
        if isinstance(auths, dict):
            for key in _keys_for(host, repo):
                found = _decode(auths.get(key), str(path))
                if found:
                    return Lookup(found, tuple(consulted))
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            found = _helper(store, host)
            if found:
                return Lookup(found, tuple(consulted))
    return Lookup(None, tuple(consulted))


def _write_private(path: Path, doc: dict[str, Any]) -> None:
    """Atomically, 0600 from the first byte (a credential file is never briefly readable)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    from nestbuild._util.atomic import write_atomic

    write_atomic(path, json.dumps(doc, indent=2).encode() + b"\n", 0o600, fsync=True)


def store(host: str, username: str, password: str, *, authfile: Path | None = None) -> Path:
    """Record credentials for ``host`` in an auth.json (other entries are kept); its path."""
    path = authfile or default_authfile()
    doc = _load(path) or {}
    auths = doc.setdefault("auths", {})
    if not isinstance(auths, dict):
        raise UsageError(f"{path}: 'auths' must be a JSON object")
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    auths[host] = {"auth": token}
    _write_private(path, doc)
    return path


def remove(host: str, *, authfile: Path | None = None) -> Path | None:
    """Forget ``host``; the file it was removed from, or None if it was not there."""
    path = authfile or default_authfile()
    doc = _load(path)
    if not doc or not isinstance(doc.get("auths"), dict) or host not in doc["auths"]:
        return None
    del doc["auths"][host]
    _write_private(path, doc)
    return path
