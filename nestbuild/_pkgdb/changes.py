"""Which changelog entries an upgrade brings: the entries newer than the old version.

The question ``nestbuild changelog OLD NEW`` answers per upgraded package. Entries are newest
first; the walk stops at the first entry for the old version or an older one. rpm changelog
lines usually name ``version-release`` without the epoch, so rpm entries are compared by
version and release only; Debian entries carry the full version and are compared in full.
An entry that names no version (rpm lines without one) is kept until an older one is found.
"""

from __future__ import annotations

from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild._pkgdb.vercmp import RpmEvr, compare_deb, compare_rpm_evr, parse_rpm_evr


def entries_since(new: Package, old: Package) -> tuple[ChangelogEntry, ...]:
    """The entries of ``new``'s changelog that are newer than ``old``'s version."""
    out = []
    for entry in new.changelog:
        if entry.version is not None and not _newer(entry.version, new, old):
            break
        out.append(entry)
    return tuple(out)


def _newer(version: str, new: Package, old: Package) -> bool:
    try:
        if new.kind == "deb":
            return compare_deb(version, old.evr) > 0
        theirs = parse_rpm_evr(version)
        mine = parse_rpm_evr(f"{old.version}-{old.release}")
        return compare_rpm_evr(RpmEvr(None, theirs.version, theirs.release), mine) > 0
    except PackageDbError:
        return True  # an entry whose version cannot be read is not proof of being older
