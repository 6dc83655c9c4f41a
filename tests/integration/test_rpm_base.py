"""The rpm base, built for real: an rpm database the real rpm reads, layers chunked as
rpm-ostree chunks them, a derived image nestbuild accepts, and a second version that upgrades,
adds and removes packages as designed."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._cli.main import main
from nestbuild._image.model import LABEL_FINAL_DIFFID, LABEL_LINUX
from nestbuild._tools import buildah, run
from nestbuild.building import rpmbase
from tests.fixtures.common import persistent_cache
from tests.fixtures.images import unique_tag

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.skopeo]

#: What version 2 changes, as base-images/rpm/packages.yaml declares it.
UPGRADED = {"kernel-core", "kernel-modules", "openssl-libs", "crun", "glibc", "tzdata",
            "nestbuild-release"}
ADDED = {"jq"}
REMOVED = {"skopeo"}
#: recipe.yaml's max-layers: package layers, after the layer of directories.
PACKAGE_LAYERS = 24
SPECIAL = {rpmbase.INITRAMFS, rpmbase.UNPACKAGED}


def rpm(root: Path, *args: str) -> str:
    """The real rpm on the image's database, where bootc images keep it."""
    return run.run(["rpm", "--root", str(root), "--dbpath", "/usr/lib/sysimage/rpm", *args],
                   what="querying the rpm base").stdout.decode()


def installed(root: Path) -> dict[str, str]:
    out = rpm(root, "-qa", "--qf", r"%{NAME} %{VERSION}-%{RELEASE}\n")
    return dict(line.split(" ", 1) for line in out.splitlines())


def manifest_of(ref: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(
        run.run(["skopeo", "inspect", "--raw", f"containers-storage:{ref}"]).stdout)
    return data


def layers(ref: str) -> list[dict[str, object]]:
    found = manifest_of(ref)["layers"]
    assert isinstance(found, list)
    return found


def components(layer: dict[str, object]) -> list[str] | None:
    annotations = layer.get("annotations") or {}
    assert isinstance(annotations, dict)
    value = annotations.get(rpmbase.CONTENT_ANNOTATION)
    return None if value is None else [c for c in str(value).split(",") if c]


def layer_names(base: rpmbase.BuiltRpmBase, digest: str) -> set[str]:
    blob = base.layout.path / "blobs" / "sha256" / digest.split(":", 1)[1]
    with tarfile.open(fileobj=io.BytesIO(blob.read_bytes())) as tar:
        return {m.name for m in tar.getmembers() if not m.isdir()}


@pytest.fixture(scope="module")
def roots(rpm_bases: dict[int, rpmbase.BuiltRpmBase]) -> Iterator[dict[int, Path]]:
    """Each version's root filesystem, mounted from local storage (all its layers applied)."""
    ctrs = {v: buildah.from_image(b.tag) for v, b in rpm_bases.items()}
    try:
        yield {v: buildah.mount(ctr) for v, ctr in ctrs.items()}
    finally:
        for ctr in ctrs.values():
            buildah.remove(ctr)


def test_the_real_rpm_reads_the_database_where_bootc_images_keep_it(
        rpm_bases: dict[int, rpmbase.BuiltRpmBase], roots: dict[int, Path]) -> None:
    recipe = rpmbase.load_recipe()
    root = roots[1]
    # one sqlite file, as Fedora's; no journal or lock left from the build
    assert sorted(p.name for p in (root / "usr/lib/sysimage/rpm").iterdir()) == ["rpmdb.sqlite"]
    assert installed(root) == {p.name: p.release_in(1).evr for p in recipe.packages_in(1)}
    assert len(installed(root)) == 50
    # every file of every package reached the image intact (content, mode, owner, links)
    assert rpm(root, "-Va", "--nomtime") == ""
    assert rpm(root, "-qf", "/usr/bin/sh").startswith("busybox-")
    assert rpm(root, "-q", "--whatprovides", "oci-runtime").startswith("crun-1.17-1")
    kernel = rpm_bases[1].kernel
    assert kernel == "6.11.4-301.nb.x86_64"
    assert rpm(root, "-qf", f"/usr/lib/modules/{kernel}/vmlinuz").startswith("kernel-core-")
    assert (root / f"usr/lib/modules/{kernel}/initramfs.img").is_file()
    assert (root / "bin").readlink() == Path("usr/bin")
    assert (root / "usr/lib/ostree/prepare-root.conf").is_file()


def test_layers_are_chunked_as_rpm_ostree_chunks_them(
        rpm_bases: dict[int, rpmbase.BuiltRpmBase], roots: dict[int, Path]) -> None:
    base = rpm_bases[1]
    found = layers(base.tag)
    assert len(found) == 1 + PACKAGE_LAYERS
    # the first layer stands for the ostree commit: directories only, no components
    assert components(found[0]) is None
    assert layer_names(base, str(found[0]["digest"])) == set()
    bins = [components(layer) for layer in found[1:]]
    assert all(b is not None for b in bins)
    flat = [c for b in bins for c in b or []]
    assert len(flat) == len(set(flat)), "a component in two layers"
    assert set(flat) == set(installed(roots[1])) | SPECIAL
    # the largest packages alone, the rest shared, the two rpm-ostree components together,
    # and the last layer reserved (empty) for packages a later version adds
    assert ["podman"] in bins and ["busybox"] in bins
    assert any(b is not None and len(b) >= 3 for b in bins)
    assert sorted(SPECIAL) in bins
    assert bins[-1] == []
    assert tuple(tuple(b or []) for b in bins) == base.layout.structure
    # a layer holds exactly its packages' files (rpm -ql), plus parent directories
    podman = next(str(layer["digest"]) for layer in found if components(layer) == ["podman"])
    assert layer_names(base, podman) == {"usr/bin/podman"}
    special = next(str(layer["digest"]) for layer in found
                   if components(layer) == sorted(SPECIAL))
    held = layer_names(base, special)
    assert f"usr/lib/modules/{base.kernel}/initramfs.img" in held
    assert "usr/lib/sysimage/rpm/rpmdb.sqlite" in held
    config = json.loads(run.run(["skopeo", "inspect", "--config",
                                 f"containers-storage:{base.tag}"]).stdout)
    labels = config["config"]["Labels"]
    assert labels["containers.bootc"] == "1" and labels["ostree.bootable"] == "true"
    assert labels[LABEL_LINUX] == base.kernel
    assert labels[LABEL_FINAL_DIFFID] == config["rootfs"]["diff_ids"][-1]
    # history names each layer as ostree-ext names chunks
    history = [h["created_by"] for h in config["history"]]
    assert history[1:3] == ["busybox", "podman"]  # the largest first
    assert history[-2:] == ["rpmostree-unpackaged-content and initramfs",
                            "Reserved for new packages"]
    assert [h for h in history if h.count(" and ") >= 2]  # shared: "a and b and c"


def test_validate_accepts_a_derived_image(
        rpm_bases: dict[int, rpmbase.BuiltRpmBase], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    base = rpm_bases[1]
    (tmp_path / "Containerfile").write_text(
        f"FROM {base.tag}\nRUN echo 'managed by nestbuild' > /etc/motd\n")
    tag = unique_tag("rpm-derived")
    buildah.bud(tmp_path / "Containerfile", tmp_path, tag)
    try:
        capsys.readouterr()
        assert main(["validate", tag, "--format", "json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["base"]["layers"] == 1 + PACKAGE_LAYERS
        paths = {c["path"] for c in report["changes"]}
        assert "/etc/motd" in paths
        assert not any(f["severity"] == "error" for f in report["findings"])
    finally:
        buildah.remove_image(tag)
    assert main(["validate", "--as-base", base.tag, "--format", "json"]) == 0
    capsys.readouterr()


def test_version_2_upgrades_adds_and_removes_as_designed(
        rpm_bases: dict[int, rpmbase.BuiltRpmBase], roots: dict[int, Path]) -> None:
    old, new = installed(roots[1]), installed(roots[2])
    assert set(new) - set(old) == ADDED
    assert set(old) - set(new) == REMOVED
    assert {n for n in set(old) & set(new) if old[n] != new[n]} == UPGRADED
    assert (old["openssl-libs"], new["openssl-libs"]) == ("3.2.2-2", "3.2.2-3")
    # the upgrade's changelog entries are on top; the old ones stay below them
    log_old = rpm(roots[1], "-q", "--changelog", "openssl-libs")
    log_new = rpm(roots[2], "-q", "--changelog", "openssl-libs")
    assert "CVE-2024-6119" not in log_old and "CVE-2024-5535" in log_old
    assert log_new.index("CVE-2024-6119") < log_new.index("CVE-2024-5535")
    assert log_new.startswith("* Wed Sep 04 2024 ")
    assert log_new.endswith(log_old)
    assert rpm_bases[2].kernel == "6.11.5-300.nb.x86_64"
    assert not (roots[2] / f"usr/lib/modules/{rpm_bases[1].kernel}").exists()
    assert rpm(roots[2], "-Va", "--nomtime") == ""

    # version 2 keeps version 1's layers: the removed package leaves its layer (now empty),
    # the added one takes the reserved last layer, and a layer of unchanged packages is
    # the same blob, which a node that has version 1 does not fetch again
    v1, v2 = layers(rpm_bases[1].tag), layers(rpm_bases[2].tag)
    assert len(v2) == len(v1)
    for a, b in zip(v1[1:], v2[1:], strict=True):
        before, after = set(components(a) or []), set(components(b) or [])
        assert after == (before - REMOVED) | (ADDED if a is v1[-1] else set())
        changed = (before | after) & (UPGRADED | ADDED | REMOVED | {rpmbase.UNPACKAGED})
        assert (a["digest"] == b["digest"]) == (not changed), sorted(before)
    unchanged = sum(a["digest"] == b["digest"] for a, b in zip(v1, v2, strict=True))
    assert unchanged == 15  # of 25: a node updating from version 1 fetches 10 layers


def test_base_build_rpm_builds_the_newest_version(rpm_bases: dict[int, rpmbase.BuiltRpmBase],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # the session's cache, so that the command reuses the packages and layouts built for it
    monkeypatch.setenv("NESTBUILD_CACHE", str(persistent_cache()))
    tag = unique_tag("rpm-cli")
    try:
        capsys.readouterr()
        assert main(["base", "build", "rpm", "--tag", tag, "--format", "json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out == {"name": "rpm", "tag": tag, "image_id": rpm_bases[2].image_id,
                       "kernel": rpm_bases[2].kernel}
    finally:
        buildah.remove_image(tag)
