"""The fast push path: layers from containers-storage compressed with every core while they
upload, in chunks that resume. What users rely on: the registry holds exactly what the
manifest says, every gzip reader (skopeo's, Python's gzip and zlib) reads it back to the
layer's diff ID, a layer that no longer matches its diff ID is never committed, a validating
push reads each new layer from storage once (compressing behind validation's read), and
progress shows each blob while it is being made."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

import nestbuild
from nestbuild._image import open_image
from nestbuild._image.source import LayerStream, StorageSource, _store
from nestbuild._registry.client import RegistryClient
from nestbuild._tools import buildah, run
from nestbuild._util.progress import Transfer
from nestbuild.building.baseimage import BuiltBase
from nestbuild.errors import LayerError
from nestbuild.shipping.upload import upload
from tests.fixtures.images import unique_tag
from tests.fixtures.registry import FaultProxy, Registry

pytestmark = [pytest.mark.registry, pytest.mark.skopeo, pytest.mark.buildah]

#: Small chunks, so a layer of a few MiB goes up in many PATCHes while it is compressed.
CHUNK = 256 << 10


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob-info cache of these tests' own: what they push must not make the session's
    other pushes mount (or skip) the mini base's layers."""
    monkeypatch.setenv("NESTBUILD_CACHE", str(tmp_path / "cache"))


def _repo() -> str:
    return f"test/{uuid.uuid4().hex[:10]}"


def _payload_image(base: BuiltBase, tmp: Path, where: str = "/opt/payload/") -> str:
    """The mini base plus one layer of ~3 MiB: random bytes and compressible text."""
    ctx = tmp / f"ctx-{uuid.uuid4().hex[:6]}"
    (ctx / "payload").mkdir(parents=True)
    (ctx / "payload" / "random.bin").write_bytes(os.urandom(2 << 20))
    (ctx / "payload" / "text.txt").write_text("".join(f"line {i} of the payload\n"
                                                      for i in range(60_000)))
    (ctx / "Containerfile").write_text(f"FROM {base.tag}\nCOPY payload/ {where}\n")
    tag = unique_tag("speedpath")
    buildah.bud(ctx / "Containerfile", ctx, tag)
    return tag


@pytest.fixture
def payload_image(mini_base: BuiltBase, tmp_path: Path) -> Iterator[str]:
    tag = _payload_image(mini_base, tmp_path)
    yield tag
    buildah.remove_image(tag)


def test_a_streamed_push_is_read_back_by_skopeo_python_gzip_and_zlib(
        registry: Registry, payload_image: str, tmp_path: Path) -> None:
    name = _repo()
    with RegistryClient(registry.host, chunk_size=CHUNK) as c:
        result = upload(payload_image, f"{registry.host}/{name}:v1", client=c, quiet=True)
    src = open_image(payload_image)
    client = RegistryClient(registry.host)
    raw, _ = client.get_manifest(name, result.digest) or (b"", "")
    manifest = json.loads(raw)
    config = json.loads(client.get_blob(name, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == src.config.diff_ids
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
        out = tmp_path / "blob"
        with out.open("wb") as f:
            client.download_blob(name, layer["digest"], f, layer["size"])
        blob = out.read_bytes()
        assert len(blob) == layer["size"]
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        # one gzip stream every reader takes, to the layer's own bytes
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id
        assert "sha256:" + hashlib.sha256(zlib.decompress(blob, 31)).hexdigest() == diff_id
        assert blob[4:8] == b"\0\0\0\0"  # no mtime: the same layer compresses the same
    # skopeo (containers/image) copies it out, checking every digest on the way
    run.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
             f"docker://{registry.host}/{name}:v1", f"oci:{tmp_path / 'oci'}:v1"],
            what="skopeo copy")
    copied = open_image(f"oci:{tmp_path / 'oci'}:v1")
    assert copied.config.diff_ids == src.config.diff_ids
    # pushed again with an empty blob-info cache: the same bytes, the same digests
    other = _repo()
    again = upload(payload_image, f"{registry.host}/{other}:v1", quiet=True)
    assert again.digest == result.digest


def test_a_broken_chunk_resumes_while_the_layer_is_still_being_compressed(
        fault_proxy: FaultProxy, registry: Registry, payload_image: str) -> None:
    name = _repo()
    fault_proxy.reset_after(100_000, count=2, method="PATCH")
    with RegistryClient(fault_proxy.host, backoff=0.01, chunk_size=CHUNK) as c:
        result = upload(payload_image, f"{fault_proxy.host}/{name}:v1", client=c, quiet=True)
    assert sum(r.method == "PATCH" and r.status is None for r in fault_proxy.requests) == 2
    direct = RegistryClient(registry.host)
    for blob in result.blobs:
        assert direct.has_blob(name, blob.digest)
    sent = fault_proxy.blob_upload_bytes(name)
    assert sent < sum(b.size for b in result.blobs) + 2 * CHUNK + 10_000


def test_a_layer_that_no_longer_matches_its_diff_id_is_never_committed(
        fault_proxy: FaultProxy, registry: Registry, mini_base: BuiltBase,
        tmp_path: Path) -> None:
    tag = _payload_image(mini_base, tmp_path)
    try:
        _corrupt_last_layer(tag)
        name = _repo()
        with RegistryClient(fault_proxy.host, backoff=0.01, chunk_size=CHUNK) as c, \
                pytest.raises(LayerError, match="does not match its diff ID"):
            upload(tag, f"{fault_proxy.host}/{name}:v1", client=c, quiet=True)
        assert RegistryClient(registry.host).get_manifest(name, "v1") is None
        records = fault_proxy.requests
        # chunks went up while it was compressed, but no upload was finished with a digest
        # for the corrupt layer, and its session was cancelled
        assert any(r.method == "PATCH" and r.path.startswith(f"/v2/{name}/") for r in records)
        commits = [r for r in records if r.method == "PUT" and "digest=" in r.path
                   and r.path.startswith(f"/v2/{name}/blobs/uploads/")]
        assert len(commits) <= 1  # at most the base layer, never the corrupt one
        assert any(r.method == "DELETE" and r.path.startswith(f"/v2/{name}/blobs/uploads/")
                   for r in records)
    finally:
        buildah.remove_image(tag)


def _corrupt_last_layer(tag: str) -> None:
    """Flip one byte of the last layer's random file in the store (same size: only the
    content hash can tell)."""
    diff_id = open_image(tag).config.diff_ids[-1]
    store = _store()
    layer_id = store.layer_for(diff_id)
    assert layer_id is not None
    victim = next((store.diff_dir(layer_id)).rglob("random.bin"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often each layer (by diff ID) is read from containers-storage."""
    counts: Counter[str] = Counter()
    real = StorageSource.open_layer

    def counting(self: StorageSource, index: int,
                 what: str | None = None) -> AbstractContextManager[LayerStream]:
        counts[self.config.diff_ids[index]] += 1
        return real(self, index, what)

    monkeypatch.setattr(StorageSource, "open_layer", counting)
    return counts


def test_a_validating_push_reads_each_new_layer_from_storage_once(
        fault_proxy: FaultProxy, registry: Registry, mini_base: BuiltBase, tmp_path: Path,
        opened: Counter[str], monkeypatch: pytest.MonkeyPatch) -> None:
    tag = _payload_image(mini_base, tmp_path, "/etc/payload/")
    try:
        src = open_image(tag)
        new = src.config.diff_ids[-1]
        name = _repo()
        result = nestbuild.push(nestbuild.PushOptions(
            image=tag, destination=f"{fault_proxy.host}/{name}:v1", quiet=True))
        assert result.report is not None and result.report.passed
        # validation read the new layer, and the upload sent what that read compressed
        assert opened[new] == 1
        client = RegistryClient(registry.host)
        raw, _ = client.get_manifest(name, result.digest) or (b"", "")
        layer = json.loads(raw)["layers"][-1]["digest"]
        blob = client.get_blob(name, layer)
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == new
        run.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                 f"docker://{registry.host}/{name}:v1", f"oci:{tmp_path / 'oci'}:v1"],
                what="skopeo copy")
        assert open_image(f"oci:{tmp_path / 'oci'}:v1").config.diff_ids == src.config.diff_ids
        # the same image again, to another repository: its compressed form is known, so the
        # layer is read by validation alone and its blob mounted
        opened.clear()
        again = nestbuild.push(nestbuild.PushOptions(
            image=tag, destination=f"{fault_proxy.host}/{_repo()}:v1", quiet=True))
        assert again.digest == result.digest and opened[new] == 1
        assert {b.status for b in again.blobs if b.digest == layer} == {"mounted"}
        # compressed while it uploads (no validation, nothing known): the same blob, byte for
        # byte, as compressed behind validation's read
        monkeypatch.setenv("NESTBUILD_CACHE", str(tmp_path / "other-cache"))
        plain = nestbuild.push(nestbuild.PushOptions(
            image=tag, destination=f"{registry.host}/{_repo()}:v1", validate=False,
            quiet=True))
        assert plain.digest == result.digest
        assert {b.status for b in plain.blobs if b.digest == layer} == {"uploaded"}
    finally:
        buildah.remove_image(tag)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_a_validating_push_compressed_otherwise_is_read_back_by_skopeo(
        registry: Registry, mini_base: BuiltBase, tmp_path: Path, compression: str) -> None:
    tag = _payload_image(mini_base, tmp_path, "/etc/payload/")
    try:
        name = _repo()
        result = nestbuild.push(nestbuild.PushOptions(
            image=tag, destination=f"{registry.host}/{name}:v1", compression=compression,
            quiet=True))
        client = RegistryClient(registry.host)
        raw, _ = client.get_manifest(name, result.digest) or (b"", "")
        layer = json.loads(raw)["layers"][-1]
        suffix = {"zstd": "+zstd", "none": ""}[compression]
        assert layer["mediaType"] == f"application/vnd.oci.image.layer.v1.tar{suffix}"
        blob = client.get_blob(name, layer["digest"])
        if compression == "zstd":
            import zstandard

            blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == open_image(tag).config.diff_ids[-1]
        run.run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                 f"docker://{registry.host}/{name}:v1", f"oci:{tmp_path / 'oci'}:v1"],
                what="skopeo copy")
        assert open_image(f"oci:{tmp_path / 'oci'}:v1").config.diff_ids == \
            open_image(tag).config.diff_ids
    finally:
        buildah.remove_image(tag)


def test_a_validating_push_of_a_corrupt_layer_commits_nothing(
        fault_proxy: FaultProxy, registry: Registry, mini_base: BuiltBase,
        tmp_path: Path) -> None:
    tag = _payload_image(mini_base, tmp_path, "/etc/payload/")
    try:
        _corrupt_last_layer(tag)
        name = _repo()
        with pytest.raises(LayerError, match="does not match its diff ID"):
            nestbuild.push(nestbuild.PushOptions(
                image=tag, destination=f"{fault_proxy.host}/{name}:v1", quiet=True))
        assert RegistryClient(registry.host).get_manifest(name, "v1") is None
        records = [r for r in fault_proxy.requests if r.path.startswith(f"/v2/{name}/")]
        commits = [r for r in records if r.method == "PUT" and "digest=" in r.path]
        assert len(commits) <= 1  # at most the base layer, never the corrupt one
        started = sum(r.method == "POST" for r in records)
        cancelled = sum(r.method == "DELETE" for r in records)
        assert started - len(commits) == cancelled  # every other upload session cancelled
    finally:
        buildah.remove_image(tag)


def test_progress_shows_a_blob_from_the_start_and_speaks_up_when_piped() -> None:
    out = io.StringIO()
    with Transfer("pushing x", stream=out, plain_every=0.05) as t:
        bar = t.blob("layer 1 (abc)", 10 << 20, "compressing, uploading")
        assert "layer 1 (abc) compressing, uploading (10.0 MiB)" in out.getvalue()
        bar.advance(4 << 20)
        bar.sent(1 << 20)
        time.sleep(0.3)
        bar.finish("uploaded", name="def", size=3 << 20)
        time.sleep(0.15)
    lines = out.getvalue().splitlines()
    ticks = [line for line in lines if "4.0 MiB/10.0 MiB" in line]
    assert ticks and "1.0 MiB sent" in ticks[0] and "/s)" in ticks[0]
    assert lines[-1] == "  layer 1 (abc) -> def 3.0 MiB uploaded"
    # nothing about a finished blob after its last line
    assert not any("4.0 MiB/10.0 MiB" in line for line in lines[lines.index(lines[-1]):])
