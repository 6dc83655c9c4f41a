"""A layer in containers-storage, read back as the exact tar stream it was stored from.

containers-storage keeps each layer unpacked (the overlay ``diff`` directory) plus a tar-split
file: the tar headers and padding as raw bytes, and the names and sizes of the file bodies.
Replaying it gives the layer's tar byte for byte (that is how storage computes its diff_id)
without copying the image anywhere. The stream is seekable forwards, so tar reading skips
file bodies without touching them, like ``tar -t``.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from nestbuild._image.blob import PositionedReader
from nestbuild.errors import LayerError

#: tar-split records decoded per json call (one call for a batch is several times faster than
#: one per record; the batch bounds what a layer with millions of entries holds at once).
_BATCH = 4096


class TarSplitStream(PositionedReader):
    """Replays a tar-split file over an unpacked layer directory.

    Headers come from the tar-split's own records; a file body is opened in the layer
    directory only when it is read (a tar reader that seeks over bodies opens none)."""

    def __init__(self, tar_split: Path, root: Path) -> None:
        self._root = os.fsencode(root)
        self._what = str(tar_split)
        self._meta: IO[bytes] = gzip.open(tar_split, "rb")  # type: ignore[assignment]  # noqa: SIM115
        self._entries = self._iter_entries()
        # The current segment: [start, end) and its source (bytes or a file path).
        self._seg_start = 0
        self._seg_end = 0
        self._seg_bytes: bytes | None = b""
        self._seg_path: bytes | None = None
        self._seg_file: IO[bytes] | None = None
        self._prev: tuple[int, int, bytes | None, bytes | None] | None = None
        self._pos = 0
        self._eof = False

    def _iter_entries(self) -> Iterator[tuple[bytes | None, bytes | None, int]]:
        while True:
            lines = [line for line in self._meta.readlines(_BATCH * 256) if line.strip()]
            if not lines:
                return
            try:
                batch = json.loads(b"[" + b",".join(lines) + b"]")
            except (ValueError, UnicodeDecodeError) as exc:
                raise LayerError(f"{self._what}: corrupt tar-split data ({exc})") from None
            for entry in batch:
                if not isinstance(entry, dict):
                    raise LayerError(f"{self._what}: corrupt tar-split data (not a record)")
                kind = entry.get("type")
                if kind == 2:
                    data = base64.b64decode(entry.get("payload") or "")
                    yield data, None, len(data)
                elif kind == 1:
                    size = int(entry.get("size") or 0)
                    if size:
                        name = entry.get("name") or ""
                        if isinstance(name, str):
                            raw_name = os.fsencode(name)
                        else:
                            raw_name = base64.b64decode(entry.get("name_raw") or "")
                        yield None, self._root + b"/" + raw_name.lstrip(b"/"), size

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("tar-split streams seek from the start only")
        self._pos = pos
        return pos

    def _advance(self) -> bool:
        if self._seg_file is not None:
            self._seg_file.close()
            self._seg_file = None
        self._prev = (self._seg_start, self._seg_end, self._seg_bytes, self._seg_path)
        try:
            data, path, size = next(self._entries)
        except StopIteration:
            self._eof = True
            return False
        self._seg_start = self._seg_end
        self._seg_end = self._seg_start + size
        self._seg_bytes, self._seg_path = data, path
        return True

    def _rewind_one(self) -> None:
        # tarfile peeks one byte back before the next header; keep the previous segment for it.
        if self._prev is None or self._pos < self._prev[0]:
            raise LayerError(f"{self._what}: cannot seek backwards in a tar-split stream")
        if self._seg_file is not None:
            self._seg_file.close()
            self._seg_file = None
        start, end, data, path = self._prev
        self._entries = _chain_one(
            (self._seg_bytes, self._seg_path, self._seg_end - self._seg_start), self._entries
        )
        self._seg_start, self._seg_end, self._seg_bytes, self._seg_path = start, end, data, path
        self._prev = None
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the current segment (a short read at its end, as a raw
        stream may: readers loop); the whole rest of the stream when ``size`` is negative."""
        if size < 0:
            return self.readall()
        if self._pos < self._seg_start:
            self._rewind_one()
        while self._pos >= self._seg_end:
            if self._eof or not self._advance():
                return b""
        offset = self._pos - self._seg_start
        n = min(size, self._seg_end - self._pos)
        if self._seg_bytes is not None:
            data = self._seg_bytes[offset : offset + n]
        else:
            data = self._file_read(offset, n)
        self._pos += len(data)
        return data

    def _file_read(self, offset: int, n: int) -> bytes:
        assert self._seg_path is not None
        f = self._seg_file
        if f is None and offset == 0 and n == self._seg_end - self._seg_start:
            return self._whole_file(n)  # the common case: a body read at once
        if f is None:
            try:
                f = self._seg_file = open(self._seg_path, "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise LayerError(f"layer file {os.fsdecode(self._seg_path)} is missing "
                                 f"({exc})") from None
            if offset:
                f.seek(offset)
        elif f.tell() != offset:
            f.seek(offset)
        data = f.read(n)
        while data is not None and len(data) < n:
            more = f.read(n - len(data))
            if not more:
                break
            data += more
        if data is None or len(data) != n:
            raise LayerError(f"layer file {os.fsdecode(self._seg_path)} is shorter than "
                             "recorded")
        if offset + n == self._seg_end - self._seg_start:  # the whole body: done with it
            f.close()
            self._seg_file = None
        return data

    def _whole_file(self, n: int) -> bytes:
        """A whole body through the file descriptor alone: no file object is made for it
        (a layer has thousands of small files, and the object costs more than the read)."""
        assert self._seg_path is not None
        try:
            fd = os.open(self._seg_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise LayerError(f"layer file {os.fsdecode(self._seg_path)} is missing "
                             f"({exc})") from None
        try:
            data = os.read(fd, n)
            while len(data) < n:
                more = os.read(fd, n - len(data))
                if not more:
                    break
                data += more
        finally:
            os.close(fd)
        if len(data) != n:
            raise LayerError(f"layer file {os.fsdecode(self._seg_path)} is shorter than "
                             "recorded")
        return data

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._seg_file is not None:
            self._seg_file.close()
        self._meta.close()
        super().close()


def _chain_one(
    first: tuple[bytes | None, bytes | None, int],
    rest: Iterator[tuple[bytes | None, bytes | None, int]],
) -> Iterator[tuple[bytes | None, bytes | None, int]]:
    yield first
    yield from rest
