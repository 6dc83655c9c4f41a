"""The lean tar reader agrees with Python's tarfile on every header format layers use."""

from __future__ import annotations

import io
import tarfile

import pytest

from nestbuild._image.tarstream import TarStream
from nestbuild.errors import LayerError

LONG = "usr/share/" + "/".join(["d" * 40] * 6) + "/file.txt"


def make(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        ti = tarfile.TarInfo(LONG)
        ti.size, ti.uid, ti.gid, ti.mode = 5, 1000, 2000, 0o4755
        tf.addfile(ti, io.BytesIO(b"hello"))
        ti = tarfile.TarInfo("etc/link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../" + LONG
        tf.addfile(ti)
        ti = tarfile.TarInfo("big-uid")
        ti.uid = 3_000_000 if fmt != tarfile.USTAR_FORMAT else 7
        tf.addfile(ti, io.BytesIO(b""))
        ti = tarfile.TarInfo("dev/null2")
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
        tf.addfile(ti)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("seekable", [True, False])
def test_matches_tarfile(fmt: int, seekable: bool) -> None:
    data = make(fmt)
    want = [(m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname, m.devmajor, m.devminor)
            for m in tarfile.open(fileobj=io.BytesIO(data))]  # noqa: SIM115
    stream = TarStream(io.BytesIO(data), seekable=seekable, what="t")
    got = []
    for m in stream:
        got.append((m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname, m.devmajor,
                    m.devminor))
        if m.name == LONG:
            assert b"".join(stream.body(m)) == b"hello"
    assert got == want


def test_ustar_prefix_and_pax_xattrs() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(tarfile.TarInfo("a" * 90 + "/" + "b" * 90), io.BytesIO(b""))
    (m,) = list(TarStream(io.BytesIO(buf.getvalue()), seekable=True, what="t"))
    assert m.name == "a" * 90 + "/" + "b" * 90

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("bin/ping")
        ti.pax_headers = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}
        tf.addfile(ti, io.BytesIO(b""))
    (m,) = list(TarStream(io.BytesIO(buf.getvalue()), seekable=False, what="t"))
    assert m.pax_headers["SCHILY.xattr.security.capability"] == "\x01\x00\x00\x02"


def test_corruption_and_truncation() -> None:
    data = bytearray(make(tarfile.PAX_FORMAT))
    data[5] ^= 0x01
    with pytest.raises(LayerError, match="checksum"):
        list(TarStream(io.BytesIO(bytes(data)), seekable=True, what="t"))
    good = make(tarfile.GNU_FORMAT)
    with pytest.raises(LayerError, match="truncated"):
        list(TarStream(io.BytesIO(good[:1100]), seekable=True, what="t"))
    with pytest.raises(LayerError, match="truncated"):
        s = TarStream(io.BytesIO(good[:1100]), seekable=False, what="t")
        for m in s:
            list(s.body(m))
