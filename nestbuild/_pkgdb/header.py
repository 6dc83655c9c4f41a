"""rpm's header blob: the per-package record in every rpm database backend.

The blob as a database stores it (rpm's ``lib/header.c``, the LSB "Header Structure" minus the
8-byte magic prefix): big-endian ``il`` (index entries) and ``dl`` (data bytes), then ``il``
16-byte entries ``(tag, type, offset, count)``, then the data store. Every entry is checked
against the store before it is read: the blob comes from an image and may be hostile.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild._util.record import Value

# entry types
NULL, CHAR, INT8, INT16, INT32, INT64, STRING, BIN, STRING_ARRAY, I18NSTRING = range(10)
_INT_SIZE = {CHAR: 1, INT8: 1, INT16: 2, INT32: 4, INT64: 8}
_INT_CODE = {1: "B", 2: "H", 4: "I", 8: "Q"}

# tags read here
NAME, VERSION, RELEASE, EPOCH = 1000, 1001, 1002, 1003
BUILDTIME, INSTALLTIME, SIZE, LICENSE = 1006, 1008, 1009, 1014
ARCH, OLDFILENAMES, SOURCERPM = 1022, 1027, 1044
CHANGELOGTIME, CHANGELOGNAME, CHANGELOGTEXT = 1080, 1081, 1082
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
LONGSIZE = 5009

#: rpm's own limits (hdrchkTags, hdrchkData): more is corrupt, not just big.
MAX_ENTRIES = 0xFFFF
MAX_DATA = 0x0FFFFFFF
#: Largest element count nestbuild materialises for one entry (file lists of the biggest
#: packages are ~100k).
MAX_COUNT = 1 << 20

_ENTRY = struct.Struct(">iIiI")  # tag, type, offset, count (rpm's offsets are signed)


class Entry(Value):
    tag: Final[int]
    type: Final[int]
    offset: Final[int]
    count: Final[int]

    def __init__(self, tag: int, type: int, offset: int, count: int) -> None:
        self.tag = tag
        self.type = type
        self.offset = offset
        self.count = count


class Header:
    """A parsed header: typed access to its entries, each checked on read."""

    def __init__(self, blob: bytes, *, what: str = "rpm header") -> None:
        self.what = what
        if len(blob) < 8:
            raise PackageDbError(f"{what}: truncated ({len(blob)} bytes)")
        il, dl = struct.unpack_from(">II", blob, 0)
        if il == 0 or il > MAX_ENTRIES:
            raise PackageDbError(f"{what}: {il} index entries (limit {MAX_ENTRIES})")
        if dl > MAX_DATA:
            raise PackageDbError(f"{what}: {dl} bytes of data (limit {MAX_DATA})")
        start = 8 + 16 * il
        if start + dl > len(blob):
            raise PackageDbError(
                f"{what}: says {il} entries and {dl} data bytes, has {len(blob)} bytes")
        self._blob = blob
        self._start = start
        self._end = start + dl
        self._entries: dict[int, Entry] = {}
        for i in range(il):
            tag, typ, offset, count = _ENTRY.unpack_from(blob, 8 + 16 * i)
            if typ > I18NSTRING:
                raise PackageDbError(f"{what}: tag {tag} has unknown type {typ}")
            if offset < 0 or offset > dl:
                raise PackageDbError(f"{what}: tag {tag} points outside the data store")
            if count == 0 and typ != NULL:
                raise PackageDbError(f"{what}: tag {tag} has no elements")
            # 61-63 are region markers and 100 the i18n table: structure, not content
            self._entries.setdefault(tag, Entry(tag, typ, offset, count))

    def __contains__(self, tag: int) -> bool:
        return tag in self._entries

    def _entry(self, tag: int, types: tuple[int, ...]) -> Entry | None:
        entry = self._entries.get(tag)
        if entry is None:
            return None
        if entry.type not in types:
            raise PackageDbError(f"{self.what}: tag {tag} has type {entry.type}")
        if entry.count > MAX_COUNT:
            raise PackageDbError(f"{self.what}: tag {tag} has {entry.count} elements")
        return entry

    def ints(self, tag: int) -> tuple[int, ...] | None:
        """The unsigned integers of an integer entry (rpm's INT32 times are unsigned)."""
        entry = self._entry(tag, tuple(_INT_SIZE))
        if entry is None:
            return None
        size = _INT_SIZE[entry.type]
        start = self._start + entry.offset
        if start + size * entry.count > self._end:
            raise PackageDbError(f"{self.what}: tag {tag} runs past the data store")
        return struct.unpack_from(f">{entry.count}{_INT_CODE[size]}", self._blob, start)

    def integer(self, tag: int) -> int | None:
        values = self.ints(tag)
        return values[0] if values else None

    def strings(self, tag: int) -> tuple[str, ...] | None:
        """A string array (an I18NSTRING's translations, the C locale's first)."""
        entry = self._entry(tag, (STRING, STRING_ARRAY, I18NSTRING))
        if entry is None:
            return None
        if entry.type == STRING and entry.count != 1:
            raise PackageDbError(f"{self.what}: string tag {tag} has {entry.count} elements")
        if entry.count > self._end - self._start - entry.offset:
            raise PackageDbError(f"{self.what}: tag {tag} runs past the data store")
        return tuple(self._iter_strings(entry))

    def string(self, tag: int) -> str | None:
        values = self.strings(tag)
        return values[0] if values else None

    def _iter_strings(self, entry: Entry) -> Iterator[str]:
        blob = self._blob
        pos = self._start + entry.offset
        for _ in range(entry.count):
            end = blob.find(b"\0", pos, self._end)
            if end < 0:
                raise PackageDbError(f"{self.what}: tag {entry.tag} has an unterminated string")
            yield blob[pos:end].decode("utf-8", "replace")
            pos = end + 1



def parse_package(blob: bytes, *, what: str = "rpm header", files: bool = True) -> Package:
    """The package a header blob describes; ``files=False`` skips the file list."""
    h = Header(blob, what=what)
    name = h.string(NAME)
    version = h.string(VERSION)
    release = h.string(RELEASE)
    if not name or version is None or release is None:
        raise PackageDbError(f"{what}: no name, version or release")
    what = f"{what} ({name})"
    h.what = what
    size = h.integer(LONGSIZE)
    if size is None:
        size = h.integer(SIZE) or 0
    return Package(
        name=name,
        epoch=h.integer(EPOCH),
        version=version,
        release=release,
        arch=h.string(ARCH) or "",
        size=size,
        license=h.string(LICENSE) or "",
        source=h.string(SOURCERPM) or "",
        changelog=_changelog(h),
        kind="rpm",
        buildtime=h.integer(BUILDTIME),
        installtime=h.integer(INSTALLTIME),
        files=_files(h) if files else (),
    )


def _changelog(h: Header) -> tuple[ChangelogEntry, ...]:
    times = h.ints(CHANGELOGTIME) or ()
    names = h.strings(CHANGELOGNAME) or ()
    texts = h.strings(CHANGELOGTEXT) or ()
    if not len(times) == len(names) == len(texts):
        raise PackageDbError(f"{h.what}: changelog has {len(times)} times, {len(names)} names "
                             f"and {len(texts)} texts")
    return tuple(ChangelogEntry(time=t, author=n, text=x, version=_entry_version(n))
                 for t, n, x in zip(times, names, texts, strict=True))


def _entry_version(name: str) -> str | None:
    """The version a changelog line names: ``Jane <j@example.org> - 1.2-3`` gives 1.2-3."""
    _, mail, rest = name.rpartition(">")
    if not mail:
        return None
    rest = rest.strip().removeprefix("-").strip()
    return rest.split()[0] if rest else None


def _files(h: Header) -> tuple[str, ...]:
    basenames = h.strings(BASENAMES)
    if basenames is None:
        return h.strings(OLDFILENAMES) or ()
    dirnames = h.strings(DIRNAMES) or ()
    indexes = h.ints(DIRINDEXES) or ()
    if len(indexes) != len(basenames):
        raise PackageDbError(f"{h.what}: {len(basenames)} file names, {len(indexes)} dir indexes")
    if indexes and max(indexes) >= len(dirnames):
        raise PackageDbError(f"{h.what}: a file's directory index is out of range")
    return tuple(dirnames[i] + b for i, b in zip(indexes, basenames, strict=True))
