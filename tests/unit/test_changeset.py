"""The changeset: whiteouts, hardlinks, metadata, identical rewrites, transports, compression."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild.errors import ImageError, LayerError
from nestbuild.validation.validate import analyze, diff
from tests.ocibuilder import Layer, bootable_base, derived, write_image


def changes_of(tmp_path: Path, derived_layers: list[Layer], base_extra: Layer | None = None,
               **kw: object) -> dict[str, tuple[str, tuple[str, ...]]]:
    _base_ref, image_ref = derived(tmp_path / "layout", [bootable_base(base_extra)],
                                  derived_layers, **kw)  # type: ignore[arg-type]
    report = diff(None, image_ref)
    return {c.path: (c.kind, c.details) for c in report.changes}


def test_added_modified_deleted_and_metadata(tmp_path: Path) -> None:
    layer = (Layer().dir("/etc").file("/etc/motd", b"new motd\n").file("/etc/new.conf", b"x")
             .whiteout("/etc/group").file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o700))
    assert changes_of(tmp_path, [layer]) == {
        "/etc/motd": ("modified", ("content",)),
        "/etc/new.conf": ("added", ()),
        "/etc/group": ("deleted", ()),
        "/usr/bin/tool": ("metadata", ("mode",)),
    }


def test_identical_rewrite_and_directory_mtime_are_not_changes(tmp_path: Path) -> None:
    layer = Layer()
    layer.dir("/etc", mtime=1).dir("/usr", mtime=2).file("/etc/motd", b"base motd\n", mtime=5)
    assert changes_of(tmp_path, [layer]) == {}


def test_owner_xattr_type_and_link_target(tmp_path: Path) -> None:
    layer = (Layer().file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", uid=5)
             .file("/etc/group", b"root:x:0:\n", xattrs={"user.note": b"x"})
             .symlink("/bin", "usr/sbin").dir("/etc/motd"))
    assert changes_of(tmp_path, [layer]) == {
        "/etc/passwd": ("metadata", ("owner",)),
        "/etc/group": ("metadata", ("xattrs",)),
        "/bin": ("modified", ("target",)),
        "/etc/motd": ("modified", ("type", "mode")),
    }


def test_whiteout_of_directory_deletes_its_base_children(tmp_path: Path) -> None:
    base_extra = Layer().dir("/etc/app").file("/etc/app/a", b"a").file("/etc/app/b", b"b")
    layer = Layer().whiteout("/etc/app")
    assert changes_of(tmp_path, [layer], base_extra) == {
        "/etc/app": ("deleted", ()), "/etc/app/a": ("deleted", ()), "/etc/app/b": ("deleted", ()),
    }


def test_opaque_directory_hides_lower_layers_but_keeps_its_own(tmp_path: Path) -> None:
    base_extra = Layer().dir("/etc/app").file("/etc/app/a", b"a").file("/etc/app/b", b"b")
    first = Layer().file("/etc/app/c", b"c")
    second = Layer().opaque("/etc/app").file("/etc/app/b", b"b").file("/etc/app/d", b"d")
    assert changes_of(tmp_path, [first, second], base_extra) == {
        "/etc/app/a": ("deleted", ()),
        "/etc/app/d": ("added", ()),
    }


def test_delete_then_readd_identical_is_no_change(tmp_path: Path) -> None:
    first = Layer().whiteout("/etc/motd")
    second = Layer().file("/etc/motd", b"base motd\n")
    assert changes_of(tmp_path, [first, second]) == {}


def test_hardlink_takes_the_content_of_its_target(tmp_path: Path) -> None:
    # A hardlink to a base file with the same content as the base's copy is not a change.
    base_extra = Layer().file("/etc/copy", b"base motd\n")
    layer = Layer().hardlink("/etc/copy", "/etc/motd").hardlink("/etc/other", "/etc/motd")
    assert changes_of(tmp_path, [layer], base_extra) == {"/etc/other": ("added", ())}


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_compressed_layers(tmp_path: Path, compression: str) -> None:
    layer = Layer().file("/etc/motd", b"other\n")
    assert changes_of(tmp_path, [layer], compression=compression) == {
        "/etc/motd": ("modified", ("content",)),
    }


def test_base_from_annotation_then_final_diffid_then_none(tmp_path: Path) -> None:
    base_ref, image_ref = derived(tmp_path / "l", [bootable_base()],
                                  [Layer().file("/etc/a", b"a")])
    a = analyze(image_ref)
    assert a.base is not None and (a.base.found_by, a.base.layers) == ("annotation", 1)

    _, plain = derived(tmp_path / "m", [bootable_base()], [Layer().file("/etc/a", b"a")],
                       annotate=False)
    a = analyze(plain)
    assert a.base is None
    assert {c.path for c in a.changes} >= {"/etc/a", "/etc/motd", "/usr/bin/tool"}
    assert any("no base found" in n for n in a.notes)

    a = analyze(plain, base_ref)
    assert a.base is not None and a.base.found_by == "--base"
    assert [c.path for c in a.changes] == ["/etc/a"]


def test_final_diffid_label_splits_the_layers(tmp_path: Path) -> None:
    import hashlib

    base_layer = bootable_base()
    final = "sha256:" + hashlib.sha256(base_layer.tar()).hexdigest()
    labels = {"containers.bootc": "1", "ostree.final-diffid": final}
    write_image(tmp_path, [base_layer, Layer().file("/etc/a", b"a")], labels=labels)
    a = analyze(f"oci:{tmp_path}")
    assert a.base is not None and (a.base.found_by, a.base.layers) == ("ostree.final-diffid", 1)
    assert [c.path for c in a.changes] == ["/etc/a"]


def test_squashed_image_falls_back_to_full_comparison(tmp_path: Path) -> None:
    base = bootable_base()
    write_image(tmp_path / "base", [base])
    squashed = bootable_base(Layer().file("/etc/a", b"a"))
    squashed.members = [m for m in squashed.members if m[0].name != "etc/motd"]
    write_image(tmp_path / "img", [squashed])
    a = analyze(f"oci:{tmp_path / 'img'}", f"oci:{tmp_path / 'base'}")
    assert any("comparing full trees" in n for n in a.notes)
    assert {c.path: c.kind for c in a.changes} == {"/etc/a": "added", "/etc/motd": "deleted"}


def test_base_index_is_cached(tmp_path: Path) -> None:
    import os

    _, image_ref = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/a", b"a")])
    analyze(image_ref)
    cache = Path(os.environ["NESTBUILD_CACHE"]) / "base-index"
    files = {p: p.stat().st_mtime_ns for p in cache.glob("*.sqlite")}
    assert files
    messages: list[str] = []
    analyze(image_ref, progress=messages.append)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.sqlite")} == files
    assert not any("indexing the base" in m for m in messages)


def test_oci_archive(tmp_path: Path) -> None:
    import tarfile

    derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/a", b"a")])
    archive = tmp_path / "img.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tmp_path / "l", arcname=".")
    a = analyze(f"oci-archive:{archive}:derived")
    assert [c.path for c in a.changes] == ["/etc/a"]


def _last_layer_blob(image_ref: str) -> Path:
    from nestbuild._image import open_image

    src = open_image(image_ref)
    digest = src.manifest.layers[-1].digest.split(":")[1]
    return Path(src.ref.name) / "blobs" / "sha256" / digest


def test_corrupt_and_truncated_layers_are_refused(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 400
    _, image_ref = derived(tmp_path / "gz", [bootable_base()],
                           [Layer().file("/etc/a", payload)], compression="gzip")
    blob = _last_layer_blob(image_ref)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(LayerError):
        analyze(image_ref)

    _, image_ref = derived(tmp_path / "raw", [bootable_base()], [Layer().file("/etc/a", payload)])
    blob = _last_layer_blob(image_ref)
    blob.write_bytes(blob.read_bytes()[:50_000])
    with pytest.raises(LayerError, match="truncated"):
        analyze(image_ref)


def test_unbootable_image_and_missing_image(tmp_path: Path) -> None:
    write_image(tmp_path, [Layer().file("/etc/a", b"a")], labels={})
    with pytest.raises(ImageError, match="not a bootable OS image"):
        analyze(f"oci:{tmp_path}")
    with pytest.raises(ImageError, match="no such directory"):
        analyze(f"oci:{tmp_path / 'nope'}")
    with pytest.raises(ImageError, match="no image tagged"):
        analyze(f"oci:{tmp_path}:v9")


def test_docker_v2s2_manifest_and_gzip_layer_media_types(tmp_path: Path) -> None:
    import gzip
    import hashlib
    import json

    from nestbuild._image.layout import LayoutWriter
    from nestbuild._image.model import DOCKER_CONFIG, DOCKER_MANIFEST, Descriptor

    w = LayoutWriter(tmp_path)
    layers, diff_ids = [], []
    for layer in (bootable_base(), Layer().file("/etc/motd", b"docker\n")):
        raw = layer.tar()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layers.append(w.add_bytes(gzip.compress(raw),
                                  "application/vnd.docker.image.rootfs.diff.tar.gzip"))
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Labels": {"containers.bootc": "1"}},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdesc = w.add_bytes(json.dumps(config).encode(), DOCKER_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "digest": cdesc.digest,
                           "size": cdesc.size},
                "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size}
                           for d in layers]}
    mdesc = w.add_bytes(json.dumps(manifest).encode(), DOCKER_MANIFEST)
    w.tag(Descriptor(DOCKER_MANIFEST, mdesc.digest, mdesc.size), "v2s2")
    write_image(tmp_path, [bootable_base()], tag="base")
    a = analyze(f"oci:{tmp_path}:v2s2", f"oci:{tmp_path}:base")
    assert [(c.path, c.kind) for c in a.changes] == [("/etc/motd", "modified")]
