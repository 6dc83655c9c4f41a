"""Talking to OCI registries: references, credentials and the distribution client.

The client (:class:`RegistryClient`) is what push, pull, sign and the ``docker://``
transport share; credentials are found as skopeo finds them (:mod:`nestbuild.registry.auth`).
"""

from nestbuild.registry.client import AuthError, DigestMismatch, RegistryClient, RegistryError
from nestbuild.registry.reference import RegistryRef, parse

__all__ = ["AuthError", "DigestMismatch", "RegistryClient", "RegistryError", "RegistryRef",
           "parse"]
