"""The one error the fixtures raise."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A fixture server could not be started or answered unexpectedly."""
