"""How to reach a registry, as skopeo's flags say it: one value every command passes down.

Kept apart from the client so that holding one costs no import of requests and oras.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Final

from nestbuild._util.record import Value

if TYPE_CHECKING:
    from nestbuild._registry.client import RegistryClient


class RegistryAccess(Value):
    authfile: Final[Path | None]
    cert_dir: Final[Path | None]
    tls_verify: Final[bool]
    #: None: plain HTTP only for a loopback registry without TLS (or --tls-verify=false).
    insecure_http: Final[bool | None]

    def __init__(self, authfile: Path | None = None, cert_dir: Path | None = None,
                 tls_verify: bool = True, insecure_http: bool | None = None) -> None:
        self.authfile = authfile
        self.cert_dir = cert_dir
        self.tls_verify = tls_verify
        self.insecure_http = insecure_http

    def client(self, host: str) -> RegistryClient:
        from nestbuild._registry.client import RegistryClient

        return RegistryClient(host, authfile=self.authfile, cert_dir=self.cert_dir,
                              tls_verify=self.tls_verify, insecure_http=self.insecure_http)
