"""Exceptions and the exit codes they map to.

Every error a user can cause is a ``NestbuildError``: the CLI prints its message as one line
and exits with its ``exit_code``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
#: The command ran and the image failed policy (validate) or verification.
EXIT_FAILED = 1
#: The input was unusable: a missing image, a malformed file, a missing tool.
EXIT_INPUT = 2


class NestbuildError(Exception):
    """An error with a one-line cause meant for the user."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: Optional extra text (a log tail) shown below the one-line cause.
        self.detail = detail


class UsageError(NestbuildError):
    """Bad command-line arguments or configuration."""


class ImageError(NestbuildError):
    """An image that cannot be found or read."""


class LayerError(ImageError):
    """A layer that is corrupt, truncated or malicious."""


class PolicyFileError(NestbuildError):
    """A policy file that cannot be parsed; the message names file and line."""


class ToolError(NestbuildError):
    """An external tool that is missing or failed."""
