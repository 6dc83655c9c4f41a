"""Read-only reader of a Berkeley DB hash file: rpm's ``Packages`` before its sqlite backend.

rpm up to 4.15 kept one record per package in ``/var/lib/rpm/Packages``, a Berkeley DB hash
database (key: the package's instance number, value: its header blob); RHEL 8 family systems,
Alibaba Cloud Linux 3 and what is built from it still do. Only what rpm writes is read: hash
pages with inline or overflow items, in either byte order, with or without page checksums
(not verified; the header is parsed with its own checks). Encrypted databases and duplicate
items are refused. Pages are walked in file order, not by bucket, so a half-written
or corrupt chain cannot loop; every page number and length is checked against the file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from nestbuild._pkgdb.errors import PackageDbError

HASH_MAGIC = 0x061561
P_HASH_UNSORTED, P_OVERFLOW, P_HASHMETA, P_HASH = 2, 7, 8, 13
H_KEYDATA, H_DUPLICATE, H_OFFPAGE, H_OFFDUP = 1, 2, 3, 4
PAGE_HEADER = 26
CHECKSUM_SIZE = 20
#: Largest value read (one rpm header); rpm's own limit on a header's data is 256 MiB.
MAX_VALUE = 64 << 20


def is_bdb_hash(data: bytes) -> bool:
    if len(data) < 72:
        return False
    return HASH_MAGIC in (struct.unpack_from("<I", data, 12)[0],
                          struct.unpack_from(">I", data, 12)[0])


def records(data: bytes, *, what: str = "Berkeley DB") -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) pair of the hash database, in page order."""
    if not is_bdb_hash(data):
        raise PackageDbError(f"{what}: not a Berkeley DB hash database")
    order = "<" if struct.unpack_from("<I", data, 12)[0] == HASH_MAGIC else ">"
    pagesize, encrypt, _type, metaflags = struct.unpack_from(f"{order}IBBB", data, 20)
    last_pgno = struct.unpack_from(f"{order}I", data, 32)[0]
    if pagesize < 512 or pagesize > 65536 or pagesize & (pagesize - 1):
        raise PackageDbError(f"{what}: page size {pagesize}")
    if encrypt:
        raise PackageDbError(f"{what}: encrypted databases are not supported")
    pages = min(last_pgno + 1, len(data) // pagesize)
    reader = _Reader(data, order, pagesize, pages, PAGE_HEADER
                     + (CHECKSUM_SIZE if metaflags & 1 else 0), what)
    for pgno in range(1, pages):
        if data[pgno * pagesize + 25] in (P_HASH, P_HASH_UNSORTED):
            yield from reader.page_items(pgno)


class _Reader:
    def __init__(self, data: bytes, order: str, pagesize: int, pages: int, overhead: int,
                 what: str) -> None:
        self.data, self.order, self.pagesize, self.pages = data, order, pagesize, pages
        self.overhead, self.what = overhead, what
        #: Each overflow page belongs to one value, so all values together fit in the file;
        #: more means chains share pages, which would multiply the memory a file costs.
        self.budget = len(data)

    def page_items(self, pgno: int) -> Iterator[tuple[bytes, bytes]]:
        base = pgno * self.pagesize
        entries = struct.unpack_from(f"{self.order}H", self.data, base + 20)[0]
        if entries % 2 or self.overhead + 2 * entries > self.pagesize:
            raise PackageDbError(f"{self.what}: page {pgno} has {entries} entries")
        offsets = struct.unpack_from(f"{self.order}{entries}H", self.data, base + self.overhead)
        for i in range(0, entries, 2):
            key = self.item(pgno, offsets, i)
            value = self.item(pgno, offsets, i + 1)
            yield key, value

    def item(self, pgno: int, offsets: tuple[int, ...], i: int) -> bytes:
        base = pgno * self.pagesize
        start = offsets[i]
        end = offsets[i - 1] if i else self.pagesize
        if not self.overhead + 2 * len(offsets) <= start < end <= self.pagesize:
            raise PackageDbError(f"{self.what}: page {pgno} item {i} is out of bounds")
        kind = self.data[base + start]
        if kind == H_KEYDATA:
            return self.data[base + start + 1:base + end]
        if kind == H_OFFPAGE:
            if end - start < 12:
                raise PackageDbError(f"{self.what}: page {pgno} item {i} is truncated")
            first, total = struct.unpack_from(f"{self.order}II", self.data, base + start + 4)
            return self.overflow(first, total)
        raise PackageDbError(f"{self.what}: page {pgno} item {i} has unsupported type {kind}")

    def overflow(self, pgno: int, total: int) -> bytes:
        """The value kept in a chain of overflow pages, each visited at most once."""
        if total > MAX_VALUE:
            raise PackageDbError(f"{self.what}: a value of {total} bytes (limit {MAX_VALUE})")
        self.budget -= total
        if self.budget < 0:
            raise PackageDbError(f"{self.what}: values add up to more than the file")
        parts: list[bytes] = []
        got = 0
        seen: set[int] = set()
        while got < total:
            if not 0 < pgno < self.pages or pgno in seen:
                raise PackageDbError(f"{self.what}: broken overflow chain at page {pgno}")
            seen.add(pgno)
            base = pgno * self.pagesize
            nxt, = struct.unpack_from(f"{self.order}I", self.data, base + 16)
            length, = struct.unpack_from(f"{self.order}H", self.data, base + 22)
            if self.data[base + 25] != P_OVERFLOW or \
                    length > self.pagesize - self.overhead or got + length > total:
                raise PackageDbError(f"{self.what}: bad overflow page {pgno}")
            parts.append(self.data[base + self.overhead:base + self.overhead + length])
            got += length
            if got < total and length == 0:
                raise PackageDbError(f"{self.what}: empty overflow page {pgno}")
            pgno = nxt
        return b"".join(parts)
