"""Byte streams for layer blobs: decompression, digest checks and file windows.

Layers are never held in memory: uncompressed blobs stay seekable so tar reading can skip file
contents (as ``tar -t`` does); compressed ones are decompressed as a stream.
"""

from __future__ import annotations

import hashlib
import io
from typing import IO, BinaryIO

from nestbuild.errors import LayerError

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class PositionedReader(io.RawIOBase):
    """A read-only, seekable raw stream that tracks its own position in ``_pos``."""

    _pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos


class Window(PositionedReader):
    """A seekable read-only view of ``size`` bytes at ``offset`` of another file."""

    def __init__(self, f: BinaryIO, offset: int, size: int) -> None:
        self._f = f
        self._offset = offset
        self._size = size
        self._pos = 0

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._offset + self._pos)
        data = self._f.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


class HashingReader(io.RawIOBase):
    """Hashes what passes through, so a streamed blob's digest is checked at no extra read."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self._f.read(len(buf))
        n = len(data)
        buf[:n] = data
        self._hash.update(data)
        self.count += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the reader above left unread."""
        while True:
            data = self._f.read(CHUNK)
            if not data:
                break
            self._hash.update(data)
            self.count += len(data)

    def check(self, expected_digest: str, expected_size: int | None, what: str,
              label: str = "blob") -> None:
        """Compare what was read with the digest (and size) that names it."""
        if expected_size is not None and self.count != expected_size:
            raise LayerError(
                f"{what}: {label} is {self.count} bytes, the manifest says {expected_size} "
                "(truncated or corrupt)"
            )
        digest = "sha256:" + self._hash.hexdigest()
        if digest != expected_digest:
            raise LayerError(f"{what}: {label} digest is {digest}, expected {expected_digest}")

    def check_diff_id(self, diff_id: str, what: str) -> None:
        """Compare an uncompressed stream with the diff_id its image's config names."""
        digest = "sha256:" + self._hash.hexdigest()
        if digest != diff_id:
            raise LayerError(f"{what}: the layer's content is {digest}, not the diff_id "
                             f"{diff_id} its image's config names")

    def finish(self, expected_digest: str, expected_size: int | None, what: str) -> None:
        """Read to the end and compare digest and size with the descriptor."""
        self.drain()
        self.check(expected_digest, expected_size, what)


def check_whole(f: IO[bytes], expected_digest: str, expected_size: int, what: str) -> None:
    """Hash a seekable blob from its start, in one sequential pass.

    Tar reading seeks past file bodies, so the bytes it used are no proof of the blob's
    digest; a sequential sha256 pass costs far less than reading it member by member.
    """
    f.seek(0)
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    count = 0
    while n := f.readinto(view):  # type: ignore[attr-defined]
        h.update(view[:n])
        count += n
    if count != expected_size:
        raise LayerError(f"{what}: blob is {count} bytes, the manifest says {expected_size} "
                         "(truncated or corrupt)")
    digest = "sha256:" + h.hexdigest()
    if digest != expected_digest:
        raise LayerError(f"{what}: blob digest is {digest}, expected {expected_digest}")


def compression_of(head: bytes, media_type: str) -> str:
    """``gzip``, ``zstd`` or ``none``; the bytes win over the media type, which may lie."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if media_type.endswith(("+gzip", ".gzip")) or media_type.endswith(("+zstd", ".zstd")):
        return "none" if len(head) >= 4 else "unknown"
    return "none"


def decompressor(raw: IO[bytes], compression: str) -> IO[bytes]:
    if compression == "gzip":
        # ISA-L inflates about twice as fast as zlib, with the same checks (CRC, length);
        # imported here so commands that never read a layer do not pay for it.
        from isal import igzip

        return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[no-untyped-call,return-value]
    if compression == "zstd":
        import zstandard

        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        return reader
    return raw
