"""The package list of an image, from its package database, for the push attestation.

Nodes are audited by what is installed on them; attaching the list to the signed image lets
anyone answer "which nodes run openssl 3.0.x" from the registry alone. The database is read
natively (:mod:`nestbuild._pkgdb`): rpm's sqlite, Berkeley DB or ndb file (bootc images keep
it under ``/usr/lib/sysimage/rpm``) or dpkg's status file (an ostree-native Debian image keeps
it under ``/usr/lib/sysimage/dpkg``). Only the layer that holds the database is read: layers
are looked at from the top, and the first one with the file (not deleted by a layer above it)
is the one a node sees. An image without a database (the mini base) gets no package
attestation, and push says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nestbuild._image.source import ImageSource
from nestbuild._image.tarstream import TarStream
from nestbuild._image.tree import DIR, Entry, Whiteout, item_of
from nestbuild._pkgdb.dpkg import MAX_STATUS, parse_status
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import Kind, Package
from nestbuild._pkgdb.rpmdb import (
    MAX_DB,
    DbLocation,
    Format,
    locate,
    read_rpmdb,
)
from nestbuild.validation.installed import CANDIDATES

PREDICATE_TYPE = "https://nestbuild.dev/packages/v1"

def _ancestors(paths: Iterable[str]) -> frozenset[str]:
    out = set()
    for p in paths:
        while (p := p.rpartition("/")[0]):
            out.add(p)
    return frozenset(out)


#: Their directories: a whiteout or a non-directory there hides what lower layers have below.
ANCESTORS = _ancestors(CANDIDATES)


def is_candidate(path: str) -> bool:
    """Whether ``path`` (absolute) may be part of a package database."""
    return path in CANDIDATES


@dataclass(frozen=True)
class FoundDb:
    """The database file an image's tree holds: where, its bytes, the layer they came from."""

    location: DbLocation
    data: bytes
    wal: bytes | None
    layer: int


@dataclass(frozen=True)
class PackageDb:
    """An image's installed packages, in name order (then architecture)."""

    format: Format
    path: str
    layer: int
    packages: tuple[Package, ...]

    @property
    def kind(self) -> Kind:
        return "deb" if self.format == "dpkg" else "rpm"


def found_in(files: Mapping[str, bytes], layer: int) -> FoundDb | None:
    """The database among ``files`` (absolute path -> content, as the final tree has them),
    by rpm's and dpkg's own precedence (:func:`nestbuild._pkgdb.rpmdb.locate`)."""
    where = locate({p.lstrip("/") for p in files})
    if where is None:
        return None
    wal = files.get(f"/{where.wal}") if where.wal else None
    return FoundDb(where, files[f"/{where.path}"], wal, layer)


def parse(found: FoundDb, *, what: str = "image") -> PackageDb:
    """The packages of a database file's content (PackageDbError on anything malformed)."""
    where = found.location
    label = f"{what}: /{where.path}"
    if where.format == "dpkg":
        packages = parse_status(found.data, what=label)
    else:
        packages = sorted(read_rpmdb(found.data, wal=found.wal, what=label, files=False),
                          key=lambda p: (p.name, p.arch, p.evr))
    return PackageDb(where.format, "/" + where.path, found.layer, tuple(packages))


def find_database(src: ImageSource) -> FoundDb | None:
    """The database file of the top-most layer that has one a node would see."""
    hidden: set[str] = set()  # prefixes lower layers may not provide
    for i in reversed(range(len(src.manifest.layers))):
        with src.open_layer(i) as layer:
            what = f"{src.ref} layer {i}"
            files, gone = _scan(TarStream(layer.fileobj, seekable=layer.seekable, what=what),
                                i, hidden, what)
            if files:
                layer.finish()  # what the attestation states must come from proven bytes
                return found_in(files, i)
        hidden |= gone
    return None


def _hidden(path: str, hidden: set[str]) -> bool:
    return any(path == h or path.startswith(h + "/") for h in hidden)


def _scan(tar: TarStream, layer: int, hidden: set[str],
          what: str) -> tuple[dict[str, bytes], set[str]]:
    """(database files of this layer, what it hides in the layers below)."""
    files: dict[str, bytes] = {}
    gone: set[str] = set()
    for m in tar:
        item = item_of(m, layer)
        path = item.path
        if path not in CANDIDATES and path not in ANCESTORS:
            continue
        if isinstance(item, Whiteout):
            gone.add(path)  # an opaque directory or a deletion: lower layers' copies are gone
            continue
        if not isinstance(item, Entry) or _hidden(path, hidden):
            continue
        if path in CANDIDATES and item.type == "file":
            limit = MAX_STATUS if path.endswith("/status") else MAX_DB
            if m.size > limit:
                raise PackageDbError(f"{what}: {path} is {m.size} bytes "
                                     f"(limit {limit})")
            files[path] = b"".join(tar.body(m))
        elif item.type != DIR:
            gone.add(path)  # a symlink or another non-file hides the path below it
    return files, gone


def read_packages(src: ImageSource) -> PackageDb | None:
    """The image's installed packages, or None when it has no package database."""
    found = find_database(src)
    return None if found is None else parse(found, what=str(src.ref))


def entries(packages: Iterable[Package]) -> list[dict[str, str]]:
    """The attestation's package entries: name, version as its tool prints it, architecture."""
    return [{"name": p.name, "version": p.evr, "architecture": p.arch} for p in packages]


def package_list(src: ImageSource) -> dict[str, Any] | None:
    """The attestation predicate, or None when the image has no package database."""
    db = read_packages(src)
    return None if db is None else predicate(db.format, db.packages, str(src.ref))


def predicate(format: Format, packages: Iterable[Package], image: str) -> dict[str, Any]:
    """The attestation predicate of a database already read (as push reads it for the SBOM):
    its packages in the order :func:`parse` gives them."""
    listed = list(packages)
    if format != "dpkg":
        listed.sort(key=lambda p: (p.name, p.arch, p.evr))
    return {"format": "dpkg" if format == "dpkg" else "rpm", "image": image,
            "count": len(listed), "packages": entries(listed)}
