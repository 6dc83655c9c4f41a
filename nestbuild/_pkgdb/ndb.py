"""Read-only reader of rpm's ndb package file, ``Packages.db`` (rpm >= 4.16, ``--enable-ndb``).

openEuler's rpm makes ndb its database backend, so openEuler 22.03 LTS systems and NestOS
images built from them keep their packages here (with ``Index.db`` and ``*.idx`` files, which
are indexes and not needed). The layout, all little-endian (rpm's ``lib/backend/ndb/rpmpkg.c``):
a 32-byte file header (``RpmP``, version 0, generation, number of slot pages, next package
index); slot pages of 4096 bytes holding 16-byte slots (``Slot``, package index, block offset,
block count; offset 0 is a free slot); blobs in 16-byte blocks: a 16-byte head (``BlbS``,
package index, generation, length), the header blob, padding, and a 12-byte tail (Adler-32 of
everything before it, length, ``BlbE``). Every slot, head and tail is checked, the checksum
included, before a blob is returned.
"""

from __future__ import annotations

import struct
import zlib

from nestbuild._pkgdb.errors import PackageDbError

MAGIC = b"RpmP"
SLOT_MAGIC = b"Slot"
HEAD_MAGIC = b"BlbS"
TAIL_MAGIC = b"BlbE"
PAGE = 4096
BLOCK = 16
SLOT = 16
HEADER = 32
HEAD, TAIL = 16, 12
#: Largest blob read (one rpm header).
MAX_BLOB = 64 << 20


def is_ndb(data: bytes) -> bool:
    return data[:4] == MAGIC


def blobs(data: bytes, *, what: str = "ndb Packages.db") -> list[tuple[int, bytes]]:
    """(package index, header blob) of every used slot, in package index order."""
    if len(data) < HEADER or not is_ndb(data):
        raise PackageDbError(f"{what}: not an rpm ndb package file")
    version, _generation, slotpages, _next = struct.unpack_from("<4I", data, 4)
    if version != 0:
        raise PackageDbError(f"{what}: version {version} (only 0 is known)")
    if len(data) % BLOCK:
        raise PackageDbError(f"{what}: {len(data)} bytes is not whole blocks")
    if slotpages == 0 or slotpages * PAGE > len(data):
        raise PackageDbError(f"{what}: {slotpages} slot pages in {len(data)} bytes")
    first_blob_block = slotpages * PAGE // BLOCK
    blocks = len(data) // BLOCK
    out: dict[int, bytes] = {}
    budget = len(data)  # blobs do not overlap, so together they fit in the file
    for off in range(HEADER, slotpages * PAGE, SLOT):
        magic = data[off:off + 4]
        pkgidx, blkoff, blkcnt = struct.unpack_from("<3I", data, off + 4)
        if magic != SLOT_MAGIC:
            raise PackageDbError(f"{what}: bad slot at byte {off}")
        if blkoff == 0:
            continue  # free
        if not pkgidx or not blkcnt or blkoff < first_blob_block or blkoff + blkcnt > blocks:
            raise PackageDbError(f"{what}: slot for package {pkgidx} is out of bounds")
        if pkgidx in out:
            raise PackageDbError(f"{what}: two slots for package {pkgidx}")
        budget -= blkcnt * BLOCK
        if budget < 0:
            raise PackageDbError(f"{what}: blobs add up to more than the file")
        out[pkgidx] = _blob(data, pkgidx, blkoff, blkcnt, what)
    return sorted(out.items())


def _blob(data: bytes, pkgidx: int, blkoff: int, blkcnt: int, what: str) -> bytes:
    start, end = blkoff * BLOCK, (blkoff + blkcnt) * BLOCK
    if blkcnt * BLOCK < HEAD + TAIL:
        raise PackageDbError(f"{what}: package {pkgidx}: blob too small")
    magic = data[start:start + 4]
    idx, _generation, length = struct.unpack_from("<3I", data, start + 4)
    if magic != HEAD_MAGIC or idx != pkgidx:
        raise PackageDbError(f"{what}: package {pkgidx}: bad blob head")
    if length > MAX_BLOB:
        raise PackageDbError(f"{what}: package {pkgidx}: blob of {length} bytes")
    if (HEAD + length + TAIL + BLOCK - 1) // BLOCK != blkcnt:
        raise PackageDbError(f"{what}: package {pkgidx}: blob length does not fit its slot")
    checksum, tail_length = struct.unpack_from("<2I", data, end - TAIL)
    if data[end - 4:end] != TAIL_MAGIC or tail_length != length:
        raise PackageDbError(f"{what}: package {pkgidx}: bad blob tail")
    if zlib.adler32(data[start:end - TAIL]) != checksum:
        raise PackageDbError(f"{what}: package {pkgidx}: checksum mismatch")
    return data[start + HEAD:start + HEAD + length]
