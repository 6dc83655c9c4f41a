"""A lean, streaming tar reader for layer scanning.

Python's tarfile builds a rich TarInfo per member and keeps them all; scanning a layer needs
only each header's fields, and the body only now and then. This reader parses the 512-byte
headers directly (ustar, GNU long names, PAX records, base-256 numbers), seeks over bodies on
seekable streams (as ``tar -t`` does) and reads through them otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO

from nestbuild._util.record import Record
from nestbuild.errors import LayerError

BLOCK = 512
_NUL = b"\0"
#: The largest GNU long name or PAX header accepted (Go's archive/tar has the same limit):
#: they are read into memory whole.
MAX_SPECIAL = 1 << 20
#: Entry types that have no content, whatever their size field says (POSIX; Go's archive/tar
#: and Python's tarfile skip no data after them, other readers do): one with a size is refused.
HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})
#: PAX records that hold a path: a NUL in one is refused, as Go's archive/tar refuses it.
_PAX_PATHS = frozenset({"path", "linkpath", "uname", "gname"})


class Member(Record):
    """One tar member's header, as the layer reader needs it."""

    __slots__ = (
        "devmajor",
        "devminor",
        "gid",
        "linkname",
        "mode",
        "name",
        "offset_data",
        "pax_headers",
        "size",
        "type",
        "uid",
    )
    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    linkname: str
    devmajor: int
    devminor: int
    pax_headers: dict[str, str]
    #: Offset of the body in the stream.
    offset_data: int

    def __init__(self, name: str, type: bytes, mode: int, uid: int, gid: int, size: int,
                 linkname: str, devmajor: int, devminor: int,
                 pax_headers: dict[str, str] | None = None, offset_data: int = 0) -> None:
        self.name = name
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.linkname = linkname
        self.devmajor = devmajor
        self.devminor = devminor
        self.pax_headers = {} if pax_headers is None else pax_headers
        self.offset_data = offset_data


def _str(raw: bytes) -> str:
    return raw.split(_NUL, 1)[0].decode("utf-8", "surrogateescape")


def _num(raw: bytes, what: str) -> int:
    """A header's number (size, mode, ids, device numbers): never negative."""
    if raw and raw[0] & 0x80:  # GNU base-256
        if raw[0] & 0x40:  # a negative number: no field read here may be one
            raise LayerError(f"{what}: corrupt tar header (a negative number)")
        return int.from_bytes(raw[1:], "big")
    text = raw.split(_NUL, 1)[0].strip()
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise LayerError(f"{what}: corrupt tar header (bad number {text!r})") from None


def _checksum_ok(header: bytes) -> bool:
    """The header's checksum, unsigned (POSIX) or signed (some old tars)."""
    stored = header[148:156].split(_NUL, 1)[0].strip()
    try:
        expected = int(stored, 8)
    except ValueError:
        return False
    rest = header[:148] + header[156:]
    unsigned = sum(rest) + 8 * 32
    if expected == unsigned:
        return True
    return expected == unsigned - 256 * sum(1 for b in rest if b > 127)


def _pax(data: bytes, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise LayerError(f"{what}: corrupt PAX header") from None
        if length <= 0:
            raise LayerError(f"{what}: corrupt PAX header")
        record = data[space + 1: pos + length - 1]  # drop the trailing newline
        key, _, value = record.partition(b"=")
        name = key.decode("utf-8", "surrogateescape")
        if name in _PAX_PATHS and _NUL in value:
            raise LayerError(f"{what}: corrupt PAX header (a NUL in {name})")
        out[name] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _pax_num(headers: dict[str, str], key: str, what: str) -> int:
    """A PAX record's decimal number (size, uid, gid): ASCII digits, at most 64 bits."""
    text = headers[key]
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise LayerError(f"{what}: corrupt PAX header ({key}={text[:30]!r})")
    return int(text)


class TarStream:
    """Iterate the members of a tar stream; ``body()`` reads the current member's content."""

    def __init__(self, f: IO[bytes], *, seekable: bool, what: str) -> None:
        self._f = f
        self._seekable = seekable
        self._what = what
        self._pos = 0
        self._next = 0  # offset of the next header
        self._total = -1
        if seekable:
            try:  # to tell a truncated blob early; forward-only streams cannot say
                self._total = f.seek(0, io.SEEK_END)
                f.seek(0)
            except (OSError, io.UnsupportedOperation):
                self._total = -1

    def _read_exact(self, n: int, at: int) -> bytes:
        if self._seekable:
            if self._pos != at:
                self._f.seek(at)
        elif at > self._pos:
            self._skip(at - self._pos)
        data = self._f.read(n)
        while len(data) < n:
            more = self._f.read(n - len(data))
            if not more:
                break
            data += more
        self._pos = at + len(data)
        return data

    def _skip(self, n: int) -> None:
        while n > 0:
            chunk = self._f.read(min(n, 1 << 20))
            if not chunk:
                raise LayerError(f"{self._what}: truncated tar (stream ended in a file body)")
            n -= len(chunk)
            self._pos += len(chunk)

    def _body_bytes(self, size: int, at: int) -> bytes:
        data = self._read_exact(size, at)
        if len(data) != size:
            raise LayerError(f"{self._what}: truncated tar (stream ended in a header record)")
        return data

    def __iter__(self) -> Iterator[Member]:
        long_name: str | None = None
        long_link: str | None = None
        pax: dict[str, str] = {}
        global_pax: dict[str, str] = {}
        while True:
            at = self._next
            header = self._read_exact(BLOCK, at)
            if not header or header == bytes(BLOCK):
                return
            if len(header) < BLOCK:
                raise LayerError(f"{self._what}: truncated tar (partial header)")
            if not _checksum_ok(header):
                raise LayerError(f"{self._what}: corrupt tar (bad header checksum at {at})")
            size = _num(header[124:136], self._what)
            typ = header[156:157] or b"0"
            data_at = at + BLOCK
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            self._next = data_at + padded
            if typ in (b"L", b"K", b"x", b"g"):
                if size > MAX_SPECIAL:
                    raise LayerError(f"{self._what}: corrupt tar (a {size}-byte "
                                     f"{'PAX header' if typ in b'xg' else 'long name'})")
                data = self._body_bytes(size, data_at)
                if typ == b"L":
                    long_name = _str(data)
                elif typ == b"K":
                    long_link = _str(data)
                elif typ == b"x":
                    pax.update(_pax(data, self._what))
                else:
                    global_pax.update(_pax(data, self._what))
                continue
            name = _str(header[0:100])
            if header[257:263] == b"ustar\x00":
                prefix = _str(header[345:500])
                if prefix:
                    name = prefix + "/" + name
            headers = {**global_pax, **pax} if global_pax else pax
            if long_name is not None:
                name = long_name
            if "path" in headers:
                name = headers["path"]
            linkname = long_link if long_link is not None else _str(header[157:257])
            if "linkpath" in headers:
                linkname = headers["linkpath"]
            if "size" in headers:
                size = _pax_num(headers, "size", self._what)
                self._next = data_at + (size + BLOCK - 1) // BLOCK * BLOCK
            uid = _pax_num(headers, "uid", self._what) if "uid" in headers else \
                _num(header[108:116], self._what)
            gid = _pax_num(headers, "gid", self._what) if "gid" in headers else \
                _num(header[116:124], self._what)
            if typ in HEADER_ONLY and size:
                # Readers disagree on whether content follows (Go's and Python's skip none,
                # others skip size bytes): what one hides the other applies. Refused.
                raise LayerError(f"{self._what}: corrupt tar ({name} is a type "
                                 f"{typ.decode('latin-1')!r} entry with {size} bytes of "
                                 "content)")
            file_size = size
            if self._total >= 0 and data_at + file_size > self._total:
                raise LayerError(f"{self._what}: truncated tar ({name} ends past the blob)")
            member = Member(
                name, typ, _num(header[100:108], self._what), uid, gid, file_size, linkname,
                _num(header[329:337], self._what), _num(header[337:345], self._what),
                headers, data_at,
            )
            long_name = long_link = None
            pax = {}
            yield member

    def body(self, member: Member, chunk: int = 1 << 20) -> Iterator[bytes]:
        """The current member's content, in chunks (call before advancing the iterator)."""
        remaining = member.size
        at = member.offset_data
        while remaining > 0:
            data = self._read_exact(min(chunk, remaining), at)
            if not data:
                raise LayerError(f"{self._what}: truncated tar (in the body of {member.name})")
            remaining -= len(data)
            at += len(data)
            yield data
