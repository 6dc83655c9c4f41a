"""The one error a package database reader raises."""

from __future__ import annotations

from nestbuild.errors import ImageError


class PackageDbError(ImageError):
    """A package database (rpm header, rpmdb, dpkg status, changelog) that cannot be read.

    Image content is hostile: every malformed, truncated or oversized input ends here with a
    one-line cause, never as an IndexError, struct.error or UnicodeDecodeError.
    """
