"""``nestbuild login`` and ``logout``: a registry's credentials in containers' auth.json.

Stored where skopeo, podman and nestbuild look (``RegistryAccess.authfile``,
REGISTRY_AUTH_FILE, or $XDG_RUNTIME_DIR/containers/auth.json), written 0600, and only after
the registry has accepted them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nestbuild._registry.access import RegistryAccess
from nestbuild.errors import UsageError

_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]{1,5})?")


@dataclass(frozen=True)
class StoredLogin:
    """A registry's entry in an auth file."""

    #: ``HOST[:PORT]``: the key the credentials are stored under.
    host: str
    #: The auth file that holds (login) or held (logout) them; None: no entry was there.
    authfile: Path | None


def registry_host(text: str) -> str:
    """``HOST[:PORT]`` of a registry named as ``login REGISTRY`` takes it (``docker://`` and a
    repository path dropped, as podman does)."""
    host = text.removeprefix("docker://").split("/")[0]
    if not _HOST.fullmatch(host):
        raise UsageError(f"{text!r}: not a registry name (HOST[:PORT])")
    return host


def login(
    registry: str,
    username: str,
    password: str | Callable[[], str],
    *,
    access: RegistryAccess | None = None,
) -> StoredLogin:
    """Check the credentials against ``registry``, then store them.

    ``password`` may be a callable (a prompt), asked only once the registry name and the user
    name are known to be usable. ``access`` says where the auth file is and how to reach the
    registry (TLS, certificates).
    """
    from nestbuild._registry import auth
    from nestbuild._registry.client import RegistryClient

    access = access or RegistryAccess()
    host = registry_host(registry)
    if not username:
        raise UsageError("--username is required (the password comes from stdin or a prompt)")
    creds = auth.Credentials(username, password() if callable(password) else password,
                             "the login command")
    with RegistryClient(host, cert_dir=access.cert_dir, tls_verify=access.tls_verify,
                        insecure_http=access.insecure_http, credentials=creds) as client:
        client.check_login()
    return StoredLogin(host, auth.store(host, creds.username, creds.password,
                                        authfile=access.authfile))


def logout(registry: str, *, authfile: Path | None = None) -> StoredLogin:
    """Remove ``registry``'s entry from the auth file ``login`` writes (``authfile`` None
    when there was none)."""
    from nestbuild._registry import auth

    host = registry_host(registry)
    return StoredLogin(host, auth.remove(host, authfile=authfile))
