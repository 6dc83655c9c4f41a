"""How to reach a registry, as skopeo's flags say it: one value every command passes down.

Kept apart from the client so that holding one costs no import of requests and oras.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nestbuild._registry.client import RegistryClient


@dataclass(frozen=True)
class RegistryAccess:
    authfile: Path | None = None
    cert_dir: Path | None = None
    tls_verify: bool = True
    #: None: plain HTTP only for a loopback registry without TLS (or --tls-verify=false).
    insecure_http: bool | None = None

    def client(self, host: str) -> RegistryClient:
        from nestbuild._registry.client import RegistryClient

        return RegistryClient(host, authfile=self.authfile, cert_dir=self.cert_dir,
                              tls_verify=self.tls_verify, insecure_http=self.insecure_http)
