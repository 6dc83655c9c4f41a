"""The Debian base (base-images/debian): built for real with mmdebstrap (cached rootfs), it
has the layout of a bootable ostree base and passes validate's base checks; the
debian-marker example on it passes the default policy. Booting it:
tests/integration/test_boot.py."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import yaml

from nestbuild._cli.main import main
from nestbuild._image import open_image
from nestbuild._image.tree import DIR, SYMLINK
from nestbuild._tools import buildah
from nestbuild.building import baseimage
from nestbuild.signing import keys
from nestbuild.validation import packages
from nestbuild.validation.policy import preset
from nestbuild.validation.validate import analyze, validate
from tests.fixtures.common import persistent_cache
from tests.fixtures.debian import DEBIAN_MARKER
from tests.fixtures.registry import Registry

#: The only finding the base has: Debian 12's ostree (2022.7) cannot mount composefs.
EXPECTED_BASE_FINDINGS = {("baseimage-composefs", "warning", "/usr/lib/ostree/prepare-root.conf")}


def test_debian_base_passes_the_base_checks(debian_base: baseimage.BuiltBase) -> None:
    report = validate(debian_base.tag, as_base=True)
    assert report.passed
    assert {(f.rule, f.severity, f.path) for f in report.findings} == EXPECTED_BASE_FINDINGS


def test_debian_base_layout(debian_base: baseimage.BuiltBase) -> None:
    kver = debian_base.kernel
    labels = open_image(debian_base.tag).config.labels
    assert labels["containers.bootc"] == "1" and labels["ostree.bootable"] == "true"
    assert labels["ostree.linux"] == kver and kver.endswith("-amd64")
    tree = analyze(debian_base.tag, as_base=True).overlay
    for path in (f"/usr/lib/modules/{kver}/vmlinuz", f"/usr/lib/modules/{kver}/initramfs.img",
                 "/usr/lib/ostree/prepare-root.conf", "/usr/lib/ostree/ostree-prepare-root",
                 "/usr/lib/systemd/systemd", "/usr/bin/containerd", "/usr/lib/os-release",
                 "/usr/lib/systemd/system/nestbuild-boot-report.service"):
        e = tree.get(path)
        assert e is not None and e.is_file, path
    initramfs = tree.get(f"/usr/lib/modules/{kver}/initramfs.img")
    assert initramfs is not None and initramfs.size > 10 << 20  # a real (generic) dracut image
    assert len([e for e in tree.below("/usr/lib/modules") if e.path.endswith(".ko")]) > 1000
    for link, target in (("/bin", "usr/bin"), ("/lib", "usr/lib"), ("/sbin", "usr/sbin"),
                         ("/ostree", "sysroot/ostree"), ("/var/lib/dpkg",
                                                         "../../usr/lib/sysimage/dpkg")):
        e = tree.get(link)
        assert e is not None and e.type == SYMLINK and e.link == target, link
    sysroot = tree.get("/sysroot")
    assert sysroot is not None and sysroot.type == DIR
    assert [e.path for e in tree.below("/boot")] == []
    assert [e.path for e in tree.below("/var") if e.type not in (DIR, SYMLINK)] == []
    assert tree.get("/usr/etc") is None and tree.get("/etc/os-release") is not None


def test_rebuild_reuses_the_cached_rootfs(debian_base: baseimage.BuiltBase) -> None:
    tag = f"localhost/nestbuild-test/debian-again:{uuid.uuid4().hex[:8]}"
    messages: list[str] = []
    try:
        again = baseimage.build_base("debian", tag=tag, rootfs_cache=persistent_cache(
            "base-rootfs"), progress=messages.append)
        assert any(m.startswith("using the cached root filesystem") for m in messages)
        assert again.image_id == debian_base.image_id  # reproducible from the same tarball
    finally:
        buildah.remove_image(tag)  # by name: the image is shared with the session's base


def test_rootfs_key_follows_what_builds_the_rootfs(tmp_path: Path) -> None:
    src = baseimage.recipes_dir() / "debian"
    copy = tmp_path / "debian"
    shutil.copytree(src, copy, symlinks=True)
    recipe = baseimage.Recipe("debian", "", copy)
    key = baseimage.rootfs_key(recipe, recipe.load())
    spec = recipe.load()
    spec["labels"]["extra"] = "x"  # applied on every build: not part of the rootfs
    assert baseimage.rootfs_key(recipe, spec) == key
    hook = copy / "hooks" / "ostree-layout.sh"
    hook.write_text(hook.read_text() + "\n# changed\n")
    assert baseimage.rootfs_key(recipe, recipe.load()) != key
    spec = recipe.load()
    spec["rootfs"]["mmdebstrap"]["include"].append("less")
    hook.write_text((src / "hooks" / "ostree-layout.sh").read_text())
    assert baseimage.rootfs_key(recipe, spec) != key
    assert baseimage.rootfs_key(recipe, recipe.load()) == key


def test_debian_marker_example_passes_the_default_policy(debian_marker: str) -> None:
    expected = yaml.safe_load((DEBIAN_MARKER / "expected.yaml").read_text())
    assert expected["base"] == "debian"
    report = validate(debian_marker, policy=preset(expected["policy"]))
    got = sorted((f.rule, f.severity, f.path) for f in report.findings)
    assert got == sorted((f["rule"], f["severity"], f["path"]) for f in expected["findings"])
    assert report.passed is expected["passed"]
    assert report.base is not None and report.base.found_by == "annotation"
    assert [c.path for c in report.changes] == ["/etc/nestbuild-marker"]


def test_signed_push_attests_the_package_list(debian_marker: str, registry: Registry,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("NESTBUILD_PASSWORD", "pw")
    key, pub = keys.write_key_pair(tmp_path / "k", b"pw")
    dest = f"{registry.host}/debian/marker:v1"
    assert main(["push", debian_marker, dest, "--sign-key", str(key), "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", f"docker://{dest}", "--key", str(pub), "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)["manifests"][0]["attestations"]
    assert {a["predicate_type"] for a in found if a["verified"]} == {
        "https://nestbuild.dev/validation/v1", packages.PREDICATE_TYPE,
        "https://spdx.dev/Document"}
    listed = packages.package_list(open_image(debian_marker))
    assert listed is not None
    names = {p["name"] for p in listed["packages"]}
    assert {"systemd", "containerd", "ostree"} <= names
    # what push attested is that list, in dpkg's order
    assert main(["download", "attestation", f"docker://{dest}", "--predicate-type",
                 packages.PREDICATE_TYPE]) == 0
    [statement] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert statement["predicate"] == listed
