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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from nestbuild._image.blob import PositionedReader
from nestbuild.errors import LayerError

#: tar-split records decoded per json call (one call for a batch is several times faster than
#: one per record; the batch bounds what a layer with millions of entries holds at once).
_BATCH = 4096
#: A file body the reader reads whole is handed to the follower up to this size; a larger
#: one is handed over by name, and the follower reads it.
KEEP_BODY = 8 << 20

#: Told of each segment of the stream once, in order: (bytes, None, size) for tar-split's own
#: bytes; (data, path, size) for a file body, with data None when the reader did not read it
#: whole (skipped it, or it exceeds :data:`KEEP_BODY`).
Follower = Callable[[bytes | None, bytes | None, int], None]


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
        self._follower: Follower | None = None
        self._told = 0  # where the last segment told to the follower ends
        self._body: list[bytes] = []  # the current body as read, from its start
        self._body_len = 0

    def follow(self, follower: Follower) -> None:
        """Tell ``follower`` every segment as the reader moves past it: a validating push
        compresses the layer from what validation reads, and reads only what it skipped."""
        self._follower = follower

    def finish_following(self) -> None:
        """Tell the follower the segments the reader never reached (the end padding)."""
        while not self._eof and self._advance():  # each advance tells the segment it leaves
            pass

    def _tell(self) -> None:
        follower = self._follower
        if follower is None or self._seg_end <= self._told:
            return
        self._told = self._seg_end
        size = self._seg_end - self._seg_start
        if self._seg_path is None:
            follower(self._seg_bytes, None, size)
            return
        whole = self._body_len == size
        follower(b"".join(self._body) if whole else None, self._seg_path, size)

    def _keep(self, offset: int, data: bytes) -> None:
        """Remember a body as it is read from its start, for the follower."""
        if offset != self._body_len or self._body_len + len(data) > KEEP_BODY:
            self._body_len = -1  # not read whole from here on: the follower reads it
            self._body = []
            return
        self._body.append(data)
        self._body_len += len(data)

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
        if self._follower is not None:
            self._tell()
            self._body, self._body_len = [], 0
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
            if self._follower is not None and self._body_len >= 0:
                self._keep(offset, data)
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
                raise _missing(self._seg_path, exc) from None
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
            raise _short(self._seg_path)
        if offset + n == self._seg_end - self._seg_start:  # the whole body: done with it
            f.close()
            self._seg_file = None
        return data

    def _whole_file(self, n: int) -> bytes:
        """A whole body through the file descriptor alone: no file object is made for it
        (a layer has thousands of small files, and the object costs more than the read)."""
        assert self._seg_path is not None
        return b"".join(file_chunks(self._seg_path, n, n))

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._seg_file is not None:
            self._seg_file.close()
        self._meta.close()
        super().close()


def file_chunks(path: bytes, size: int, chunk: int) -> Iterator[bytes]:
    """A layer file's first ``size`` bytes (what the tar holds of it), ``chunk`` at most at a
    time, through its file descriptor alone; a file that is gone or shorter than tar-split
    recorded is a LayerError. The reader's bodies and a push's follower both read this way."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise _missing(path, exc) from None
    try:
        left = size
        while left:
            data = os.read(fd, min(left, chunk))
            if not data:
                raise _short(path)
            left -= len(data)
            yield data
    finally:
        os.close(fd)


def _missing(path: bytes, exc: OSError) -> LayerError:
    return LayerError(f"layer file {os.fsdecode(path)} is missing ({exc})")


def _short(path: bytes) -> LayerError:
    return LayerError(f"layer file {os.fsdecode(path)} is shorter than recorded")


def _chain_one(
    first: tuple[bytes | None, bytes | None, int],
    rest: Iterator[tuple[bytes | None, bytes | None, int]],
) -> Iterator[tuple[bytes | None, bytes | None, int]]:
    yield first
    yield from rest
