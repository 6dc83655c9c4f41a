"""Real OCI registries on loopback, for nestbuild's tests, the demo and benchmarks.

Debian's ``docker-registry`` (distribution 2.8.2) is started from a generated config in a
private directory, in one of three modes: ``plain`` (HTTP, no auth), ``tls`` (HTTPS with a
per-run CA + htpasswd Basic auth) and ``token`` (HTTPS + Bearer tokens from a small token
service in this process). :class:`FaultProxy` sits in front of a registry to inject resets,
error statuses and latency, and counts the bytes that reach the registry.

One module per concept: ``pki`` (certificates), ``tokens`` (the token service), ``registry``
(the process), ``proxy`` (the fault proxy), ``cli`` (``serve``). Everything users need is
re-exported here. The servers need only the standard library, ``cryptography`` and ``pyyaml``,
so the package also runs as a script: ``python registry-fixtures/registryfixtures serve``.
To seed or read a registry, :meth:`Registry.client` gives nestbuild's own client.
"""

from __future__ import annotations

from registryfixtures.errors import RegistryError
from registryfixtures.pki import Pki, make_pki
from registryfixtures.proxy import FaultProxy, RequestRecord
from registryfixtures.registry import AuthKind, Mode, Registry
from registryfixtures.tokens import TokenGrant, TokenService, parse_scope

__all__ = [
    "AuthKind",
    "FaultProxy",
    "Mode",
    "Pki",
    "Registry",
    "RegistryError",
    "RequestRecord",
    "TokenGrant",
    "TokenService",
    "make_pki",
    "parse_scope",
]
