"""The packages an analysed image has installed: in the final image, and in its base alone.

The SBOM and the package lints need the package database of the merged tree, not of one layer.
The analysis already knows, for every path, which layer holds its final version (the overlay
for derived paths, the cached base index for the base's), so the database is read from that one
layer instead of scanning the image: a derived image whose layers do not touch the database
costs one base layer, read once per validation. The same goes for ``os-release``, which names
the distribution a package URL needs.

Files are checked only for rpm databases (dpkg's status file does not list them). A file rpm
did not put on disk by design (``%ghost``, excluded documentation, another package's
replacement) is not expected on disk.
"""

from __future__ import annotations

import posixpath
from functools import cached_property
from typing import TYPE_CHECKING, Final, Protocol

from nestbuild._image.tarstream import TarStream
from nestbuild._image.tree import DIR, FILE, HARDLINK, SYMLINK, Entry, normalize
from nestbuild._pkgdb import dpkg, rpmdb
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.header import Header, parse_package
from nestbuild._util.record import Record, Value

if TYPE_CHECKING:
    from nestbuild._image.source import ImageSource
    from nestbuild._pkgdb.model import Package

#: rpm header tags (rpmtag.h): per-file flags and install states.
FILESTATES, FILEFLAGS = 1029, 1037
#: RPMFILE_GHOST: the file is the package's but not in its payload.
GHOST = 1 << 6
#: RPMFILE_STATE_NORMAL; the others (replaced, not installed, net-shared, wrong colour) are
#: files rpm deliberately did not write.
STATE_NORMAL = 0
OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
MAX_OS_RELEASE = 64 * 1024
#: Symlinks followed while resolving one path (the kernel's own limit).
MAX_LINKS = 40
#: Every file that may hold an image's package database (a sqlite log too), absolute: here,
#: not beside the package list (validation.packages), as every validate asks where it is.
CANDIDATES = frozenset(
    [f"/{d}/{name}" for d in rpmdb.RPM_DIRS for name, _ in rpmdb.RPM_FILES]
    + [f"/{d}/rpmdb.sqlite-wal" for d in rpmdb.RPM_DIRS]
    + [f"/{p}" for p in dpkg.STATUS_PATHS])


class Tree(Protocol):
    """A merged file tree that says which layer holds each path (overlay, base index)."""

    def get(self, path: str) -> Entry | None: ...


class Installed(Value):
    """One installed package, and the files its database says are on disk (rpm only)."""

    _hidden = ("on_disk",)
    package: Final[Package]
    #: Paths rpm wrote (not ghosts, not excluded): what must exist for the package to work.
    on_disk: Final[tuple[str, ...]]

    def __init__(self, package: Package, on_disk: tuple[str, ...] = ()) -> None:
        self.package = package
        self.on_disk = on_disk

    @property
    def key(self) -> tuple[str, str, str]:
        return self.package.name, self.package.evr, self.package.arch


class Database(Value):
    """An image's package database as read: where it is, its format and its packages."""

    path: Final[str]
    format: Final[rpmdb.Format]
    packages: Final[tuple[Installed, ...]]

    def __init__(self, path: str, format: rpmdb.Format,
                 packages: tuple[Installed, ...]) -> None:
        self.path = path
        self.format = format
        self.packages = packages


class OsRelease(Value):
    """``ID`` and ``VERSION_ID`` of os-release: the distribution, for package URLs."""

    id: Final[str]
    version_id: Final[str]

    def __init__(self, id: str = "", version_id: str = "") -> None:
        self.id = id
        self.version_id = version_id

    @property
    def distro(self) -> str:
        return f"{self.id}-{self.version_id}" if self.id and self.version_id else self.id


def locate(tree: Tree) -> rpmdb.DbLocation | None:
    """The database file of a merged tree (rpmdb's order of preference), among the files
    that may hold one (:data:`CANDIDATES`)."""
    present = set()
    for path in CANDIDATES:
        e = tree.get(path)
        if e is not None and e.type in (FILE, HARDLINK):
            present.add(path.lstrip("/"))
    return rpmdb.locate(present)


def read_database(image: ImageSource, tree: Tree, *, files: bool = True) -> Database | None:
    """The package database of ``tree`` (the image's merged tree, or its base's), read from
    the layer that holds its final version; None when the tree has none."""
    where = locate(tree)
    if where is None:
        return None
    path = "/" + where.path
    data = read_file(image, tree, path, limit=rpmdb.MAX_DB)
    if where.format == "dpkg":
        found = dpkg.parse_status(data, what=f"{image.ref}: {path}")
        return Database(path, "dpkg", tuple(Installed(p) for p in found))
    wal = read_file(image, tree, "/" + where.wal, limit=rpmdb.MAX_DB) if where.wal else None
    what = f"{image.ref}: {path}"
    out = []
    for hnum, blob in rpmdb.read_headers(data, wal=wal or None, what=what):
        pkg = parse_package(blob, what=f"{what}: package {hnum}", files=files)
        out.append(Installed(pkg, _on_disk(blob, pkg, f"{what}: package {hnum}")
                             if files else ()))
    return Database(path, where.format, tuple(out))


def _on_disk(blob: bytes, pkg: Package, what: str) -> tuple[str, ...]:
    h = Header(blob, what=what)
    flags = h.ints(FILEFLAGS) or ()
    states = h.ints(FILESTATES) or ()
    n = len(pkg.files)
    if (flags and len(flags) != n) or (states and len(states) != n):
        raise PackageDbError(f"{what}: {n} files, {len(flags)} flags, {len(states)} states")
    return tuple(path for i, path in enumerate(pkg.files)
                 if not (flags and flags[i] & GHOST)
                 and not (states and states[i] != STATE_NORMAL))


def read_os_release(image: ImageSource, tree: Tree) -> OsRelease:
    """The image's os-release (``/etc`` wins over ``/usr/lib``, as systemd reads them)."""
    for path in OS_RELEASE:
        resolved = resolve(tree, path)
        e = tree.get(resolved) if resolved else None
        if e is None or e.type not in (FILE, HARDLINK):
            continue
        text = read_file(image, tree, resolved or path, limit=MAX_OS_RELEASE)
        fields = {}
        for line in text.decode("utf-8", "replace").splitlines():
            key, eq, value = line.partition("=")
            if eq and key.strip().isidentifier():
                fields[key.strip()] = value.strip().strip("\"'")
        return OsRelease(fields.get("ID", ""), fields.get("VERSION_ID", ""))
    return OsRelease()


def read_file(image: ImageSource, tree: Tree, path: str, *, limit: int) -> bytes:
    """A regular file's final content, read from the one layer that holds it."""
    e = tree.get(path)
    if e is None or e.type not in (FILE, HARDLINK):
        raise PackageDbError(f"{image.ref}: {path} is not a regular file")
    if e.size > limit:
        raise PackageDbError(f"{image.ref}: {path}: {e.size} bytes (limit {limit})")
    wanted = path
    for _ in range(2):  # a hard link names a file earlier in the same layer
        data, link = _from_layer(image, e.layer, wanted, limit)
        if data is not None:
            return data
        if link is None:
            break
        wanted = link
    raise PackageDbError(f"{image.ref}: {path} is not in layer {e.layer}, which the "
                         "image's index says holds it")


def _from_layer(image: ImageSource, layer: int, path: str,
                limit: int) -> tuple[bytes | None, str | None]:
    """(content, None) of ``path`` in the layer, or (None, target) for a hard link."""
    found: tuple[bytes | None, str | None] = (None, None)
    with image.open_layer(layer) as stream:
        tar = TarStream(stream.fileobj, seekable=stream.seekable,
                        what=f"{image.ref} layer {layer}")
        for m in tar:
            if normalize(m.name) != path:
                continue
            if m.type in (b"0", b"\0", b"7"):
                if m.size > limit:
                    raise PackageDbError(f"{image.ref}: {path}: {m.size} bytes (limit {limit})")
                found = (b"".join(tar.body(m)), None)
            elif m.type == b"1":
                found = (None, normalize(m.linkname))
            # later members of the same name win, as when unpacking
        stream.finish()  # what the SBOM and the lints state must come from proven bytes
    return found


def resolve(tree: Tree, path: str) -> str | None:
    """``path`` with every symlink on the way followed (/lib/x -> /usr/lib/x); the last
    component is followed too. None when a loop or a non-directory is in the way."""
    parts = [p for p in path.split("/") if p]
    done = "/"
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            done = posixpath.dirname(done.rstrip("/")) or "/"
            continue
        if name == ".":
            continue
        here = posixpath.join(done, name)
        e = tree.get(here)
        if e is not None and e.type == SYMLINK:
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = e.link
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                done = "/"
            continue
        if parts and e is not None and e.type != DIR:
            return None
        done = here
    return done


def exists(tree: Tree, path: str) -> bool:
    """Whether ``path`` names something in the tree: symlinks on the way are followed, the
    last component is not (as lstat): a package's symlink is there even when it dangles in
    the image, as ``/ostree -> sysroot/ostree`` does until a node deploys it."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name:
        return True
    where = resolve(tree, parent or "/")
    return where is not None and tree.get(posixpath.join(where, name)) is not None


class ImagePackages(Record):
    """What the package lints read, computed on first use: the final image's database and its
    base's, and the image's os-release. ``base`` is None for an image without one."""

    image: ImageSource
    final: Tree
    base: Tree | None

    def __init__(self, image: ImageSource, final: Tree, base: Tree | None) -> None:
        self.image = image
        self.final = final
        self.base = base

    @cached_property
    def installed(self) -> Database | None:
        return read_database(self.image, self.final)

    @cached_property
    def base_installed(self) -> Database | None:
        if self.base is None:
            return None
        if not self.database_changed():
            return self.installed
        return read_database(self.image, self.base)

    def database_changed(self) -> bool:
        """Whether the derived layers wrote the database (or there is no base)."""
        if self.base is None:
            return True
        mine = locate(self.final)
        if mine is None:
            return False
        theirs = self.base.get("/" + mine.path)
        now = self.final.get("/" + mine.path)
        return theirs is None or now is None or now.layer != theirs.layer

    def added(self) -> list[Installed]:
        """Packages in the final database that the base's does not have (same name, version
        and architecture count as the same package)."""
        final = self.installed
        if final is None:
            return []
        if not self.database_changed():
            return []
        before = self.base_installed
        have = {p.key for p in before.packages} if before is not None else set()
        return [p for p in final.packages if p.key not in have]

    @cached_property
    def owned(self) -> frozenset[str]:
        """Every path the final database lists, ghosts included (they are the package's)."""
        db = self.installed
        return frozenset(f for p in (db.packages if db else ()) for f in p.package.files)
