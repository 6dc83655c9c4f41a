"""Filesystem entries as layers describe them, read from tar streams.

A layer is read once, in order; each tar member becomes an :class:`Entry` (or a whiteout).
File bodies are read only when the caller asks (to compare content with the base, or to let
an inspector look at a small file); otherwise the tar reader skips them.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import zlib
from collections.abc import Callable, Iterator
from typing import IO

from nestbuild._image.tarstream import Member, TarStream
from nestbuild._util.record import Record
from nestbuild.errors import LayerError


@functools.cache
def read_errors() -> tuple[type[BaseException], ...]:
    """What a corrupt or truncated stream raises, from tar or from a decompressor.

    A function, used as ``except read_errors()`` (evaluated only when something is raised):
    importing the decompressors for their exception classes would cost every validate of a
    containers-storage image, whose layers are never decompressed, ~10 ms."""
    import tarfile

    errors: list[type[BaseException]] = [tarfile.TarError, EOFError, OSError, zlib.error]
    try:
        from isal import isal_zlib

        errors.append(isal_zlib.error)  # type: ignore[arg-type]  # a class; stubs say instance
    except ImportError:  # pragma: no cover - a dependency
        pass
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - a dependency, but keep reading other layers
        pass
    return tuple(errors)


WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
#: Files up to this size are shown to content inspectors (secret detection).
INSPECT_LIMIT = 256 * 1024
CHUNK = 1 << 20

FILE, DIR, SYMLINK, HARDLINK, CHAR, BLOCK, FIFO = (
    "file", "dir", "symlink", "hardlink", "char", "block", "fifo",
)
#: tar's type flags (POSIX ustar; the values of tarfile's REGTYPE ... FIFOTYPE).
_TYPES = {
    b"0": FILE,
    b"\0": FILE,
    b"7": FILE,
    b"5": DIR,
    b"2": SYMLINK,
    b"1": HARDLINK,
    b"3": CHAR,
    b"4": BLOCK,
    b"6": FIFO,
}
XATTR_PAX_PREFIX = "SCHILY.xattr."


class Entry(Record):
    """One file-tree entry of a layer (or of a base index), with its metadata."""

    __slots__ = (
        "devmajor",
        "devminor",
        "digest",
        "gid",
        "layer",
        "link",
        "mode",
        "path",
        "size",
        "type",
        "uid",
        "xattrs",
    )
    path: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    #: sha256 hex of the content (regular files), when it was computed.
    digest: str | None
    #: Symlink target, or for hardlinks the absolute path of the target.
    link: str
    xattrs: dict[str, bytes]
    devmajor: int
    devminor: int
    layer: int

    def __init__(self, path: str, type: str, mode: int, uid: int, gid: int, size: int = 0,
                 digest: str | None = None, link: str = "",
                 xattrs: dict[str, bytes] | None = None, devmajor: int = 0, devminor: int = 0,
                 layer: int = -1) -> None:
        self.path = path
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.digest = digest
        self.link = link
        self.xattrs = {} if xattrs is None else xattrs
        self.devmajor = devmajor
        self.devminor = devminor
        self.layer = layer

    @property
    def is_file(self) -> bool:
        return self.type in (FILE, HARDLINK)


class Whiteout(Record):
    """``path`` is deleted; with ``opaque`` only its lower-layer children are."""

    __slots__ = ("layer", "opaque", "path")
    path: str
    opaque: bool
    layer: int

    def __init__(self, path: str, opaque: bool, layer: int) -> None:
        self.path = path
        self.opaque = opaque
        self.layer = layer


class Unsafe(Record):
    """A tar member that must not be applied: it would write outside the root."""

    __slots__ = ("layer", "path", "reason")
    path: str
    reason: str
    layer: int

    def __init__(self, path: str, reason: str, layer: int) -> None:
        self.path = path
        self.reason = reason
        self.layer = layer


Item = Entry | Whiteout | Unsafe
#: Asked before a file body is read: should its digest be computed?
WantDigest = Callable[[Entry], bool]
#: Shown the content of small files as they go by (secret detection).
Inspector = Callable[[Entry, bytes], None]


def normalize(name: str) -> str | None:
    """The absolute path a tar member names, or None if it climbs out of the root."""
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            return None
        parts.append(comp)
    return "/" + "/".join(parts)


def link_escapes(path: str, target: str) -> bool:
    """True if a relative symlink at ``path`` climbs above the root before descending."""
    if target.startswith("/"):
        return any(c == ".." for c in target.split("/")) and normalize(target) is None
    depth = path.count("/") - 1  # components of the link's directory
    for comp in target.split("/"):
        if comp == "..":
            depth -= 1
            if depth < 0:
                return True
        elif comp not in ("", "."):
            depth += 1
    return False


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_layer(
    fileobj: IO[bytes],
    layer: int,
    *,
    seekable: bool,
    want_digest: WantDigest,
    inspect: Inspector | None = None,
    what: str = "layer",
) -> Iterator[Item]:
    """Yield the entries of one layer's tar stream in order."""
    stream = TarStream(fileobj, seekable=seekable, what=what)
    try:
        for member in stream:
            item = _convert(member, layer)
            if isinstance(item, Entry) and item.type == FILE and item.size:
                small = inspect is not None and item.size <= INSPECT_LIMIT
                if small or want_digest(item):
                    _read_body(stream, member, item, inspect if small else None)
            elif isinstance(item, Entry) and item.type == FILE:
                item.digest = _EMPTY_DIGEST
            yield item
    except read_errors() as exc:
        raise LayerError(f"{what}: corrupt or truncated tar ({exc})") from None


_EMPTY_DIGEST = hashlib.sha256(b"").hexdigest()


def _read_body(stream: TarStream, member: Member, entry: Entry,
               inspect: Inspector | None) -> None:
    h = hashlib.sha256()
    kept: list[bytes] = []
    for chunk in stream.body(member):
        h.update(chunk)
        if inspect is not None:
            kept.append(chunk)
    entry.digest = h.hexdigest()
    if inspect is not None:
        inspect(entry, b"".join(kept))


def _convert(m: Member, layer: int) -> Item:
    path = normalize(m.name)
    if path is None:
        return Unsafe("/" + m.name.lstrip("/"), "path contains '..'", layer)
    base = posixpath.basename(path)
    if base.startswith(WHITEOUT_PREFIX):
        parent = posixpath.dirname(path)
        if base == OPAQUE_MARKER:
            return Whiteout(parent, True, layer)
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            # '.wh...' would delete the parent's parent; other '.wh..wh.' names are aufs
            # metadata no OCI layer should carry: refuse rather than guess (fail closed)
            return Unsafe(path, f"malformed whiteout {base!r}", layer)
        return Whiteout(posixpath.join(parent, name), False, layer)
    kind = _TYPES.get(m.type)
    if kind is None:
        return Unsafe(path, f"unsupported tar entry type {m.type!r}", layer)
    entry = Entry(path, kind, m.mode & 0o7777, m.uid, m.gid, layer=layer)
    if kind == FILE:
        entry.size = m.size
    elif kind == SYMLINK:
        entry.link = m.linkname
    elif kind == HARDLINK:
        target = normalize(m.linkname)
        if target is None:
            return Unsafe(path, f"hard link to {m.linkname!r} leaves the root", layer)
        entry.link = target
    elif kind in (CHAR, BLOCK):
        entry.devmajor, entry.devminor = m.devmajor, m.devminor
    if m.pax_headers:
        for key, value in m.pax_headers.items():
            if key.startswith(XATTR_PAX_PREFIX):
                entry.xattrs[key[len(XATTR_PAX_PREFIX):]] = value.encode(
                    "utf-8", "surrogateescape"
                )
    return entry


#: The item a tar member is, for readers that stream members themselves (deploy).
item_of = _convert
