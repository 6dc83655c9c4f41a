"""A validating push compresses each containers-storage layer behind validation's read: the
compressor is told every segment of the replayed tar, with the bytes the reader read and the
names of the bodies it skipped. What users rely on: the compressed blob is the layer's exact
tar whatever the reader read or skipped, memory stays bounded, and storage that no longer
matches its diff ID is refused."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from nestbuild._image import tarsplit
from nestbuild._image.tarsplit import TarSplitStream
from nestbuild._image.tree import read_layer
from nestbuild.errors import LayerError
from nestbuild.shipping import upload

FILES = {
    "etc/small.conf": b"key=value\n",
    "etc/empty": b"",
    "usr/lib/big.bin": os.urandom(3 << 20) + b"end",
    "usr/lib/mid.txt": b"".join(b"line %d\n" % i for i in range(40_000)),
    "var/lib/tiny": b"x" * 513,
}


def _store_layer(tmp: Path) -> tuple[Path, Path, bytes]:
    """A layer as containers-storage keeps it: the unpacked files and a tar-split file
    (headers and padding as raw bytes, bodies by name); and the tar it replays to."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    root = tmp / "diff"
    records: list[dict[str, object]] = []
    at = 0
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for member in tar.getmembers():
            records.append({"type": 2, "payload": base64.b64encode(
                raw[at:member.offset_data]).decode()})
            records.append({"type": 1, "name": member.name, "size": member.size})
            path = root / member.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(FILES[member.name])
            at = member.offset_data + member.size
    records.append({"type": 2, "payload": base64.b64encode(raw[at:]).decode()})
    split = tmp / "layer.tar-split.gz"
    with gzip.open(split, "wb") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return split, root, raw


def _told(stream: TarSplitStream) -> list[tuple[bytes | None, bytes | None, int]]:
    told: list[tuple[bytes | None, bytes | None, int]] = []
    stream.follow(lambda data, path, size: told.append((data, path, size)))
    return told


def _replay(told: list[tuple[bytes | None, bytes | None, int]]) -> bytes:
    out = b""
    for data, path, size in told:
        out += data if data is not None else Path(os.fsdecode(path or b"")).read_bytes()[:size]
    return out


def test_the_follower_is_told_the_whole_tar_once_whether_bodies_are_read_or_skipped(
        tmp_path: Path) -> None:
    split, root, raw = _store_layer(tmp_path)
    # a reader that skips bodies (as validation does for big files)
    with TarSplitStream(split, root) as stream:
        told = _told(stream)
        names = [item.path for item in read_layer(stream, 0, seekable=True,  # type: ignore[arg-type]
                                                  want_digest=lambda _e: False,
                                                  inspect=lambda _e, _d: None)]
        stream.finish_following()
    assert names and _replay(told) == raw
    skipped = {os.fsdecode(p or b"").rsplit("/diff/", 1)[1] for d, p, _ in told
               if p is not None and d is None}
    assert "usr/lib/big.bin" in skipped  # read by the compressor, not the reader
    assert "etc/small.conf" not in skipped  # small files are inspected: handed over as read
    # a reader that reads everything: every body handed over as read
    with TarSplitStream(split, root) as stream:
        told = _told(stream)
        assert stream.read(-1) == raw
        stream.finish_following()
    assert _replay(told) == raw
    assert all(d is not None for d, _, _ in told)


def test_a_body_larger_than_the_follower_may_hold_is_handed_over_by_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split, root, raw = _store_layer(tmp_path)
    monkeypatch.setattr(tarsplit, "KEEP_BODY", 1 << 20)
    with TarSplitStream(split, root) as stream:
        told = _told(stream)
        while stream.read(64 << 10):
            pass
        stream.finish_following()
    assert _replay(told) == raw
    assert [size for d, p, size in told if p is not None and d is None] == [
        len(FILES["usr/lib/big.bin"])]


@pytest.mark.parametrize("limit", [upload.FOLLOW_LIMIT, 4096])
def test_the_compressed_layer_is_the_exact_tar_behind_a_validating_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    monkeypatch.setenv("NESTBUILD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(upload, "FOLLOW_LIMIT", limit)  # 4096: the reader outruns it
    split, root, raw = _store_layer(tmp_path)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    follower = upload._Follower("gzip", diff_id, "test layer")
    with TarSplitStream(split, root) as stream:
        stream.follow(follower.take)
        for _ in read_layer(stream, 0, seekable=True,  # type: ignore[arg-type]
                            want_digest=lambda e: e.path.endswith("mid.txt"),
                            inspect=lambda _e, _d: None):
            pass
        stream.finish_following()
    follower.end()
    digest, size = follower.spool.result()
    blob = follower.spool.read_at(0, size)
    follower.close()
    assert gzip.decompress(blob) == raw
    assert digest == "sha256:" + hashlib.sha256(blob).hexdigest()


def test_storage_that_no_longer_matches_its_diff_id_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NESTBUILD_CACHE", str(tmp_path / "cache"))
    split, root, raw = _store_layer(tmp_path)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    big = root / "usr/lib/big.bin"
    data = bytearray(big.read_bytes())
    data[100] ^= 1  # skipped by the reader: only the compressor reads it
    big.write_bytes(bytes(data))
    follower = upload._Follower("gzip", diff_id, "test layer")
    with TarSplitStream(split, root) as stream:
        stream.follow(follower.take)
        for _ in read_layer(stream, 0, seekable=True,  # type: ignore[arg-type]
                            want_digest=lambda _e: False):
            pass
        stream.finish_following()
    follower.end()
    with pytest.raises(LayerError, match="does not match its diff ID"):
        follower.spool.result()
    follower.close()


@pytest.mark.parametrize("damage", ["truncated", "removed"])
def test_a_layer_file_short_of_or_missing_from_storage_is_refused_on_both_paths(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    # the reader reads small bodies itself; the follower reads the ones it skipped: each says
    # which file of local storage no longer holds what tar-split recorded
    monkeypatch.setenv("NESTBUILD_CACHE", str(tmp_path / "cache"))
    split, root, raw = _store_layer(tmp_path)
    why = "is shorter than recorded" if damage == "truncated" else "is missing"
    for name, wanted in (("var/lib/tiny", True), ("usr/lib/big.bin", False)):
        victim = root / name
        saved = victim.read_bytes()
        if damage == "truncated":
            victim.write_bytes(saved[:-1])
        else:
            victim.unlink()
        follower = upload._Follower("gzip", "sha256:" + hashlib.sha256(raw).hexdigest(),
                                    "test layer")
        with TarSplitStream(split, root) as stream:
            stream.follow(follower.take)
            if wanted:  # the reader reads this body: it fails there
                with pytest.raises(LayerError, match=f"layer file .*{name} {why}"):
                    for _ in read_layer(stream, 0, seekable=True,  # type: ignore[arg-type]
                                        want_digest=lambda _e: True):
                        pass
            else:  # skipped by the reader: the compressor fails, and nothing is committed
                for _ in read_layer(stream, 0, seekable=True,  # type: ignore[arg-type]
                                    want_digest=lambda _e: False):
                    pass
                stream.finish_following()
                follower.end()
                with pytest.raises(LayerError, match=f"layer file .*{name} {why}"):
                    follower.spool.result()
        follower.close()
        victim.write_bytes(saved)
