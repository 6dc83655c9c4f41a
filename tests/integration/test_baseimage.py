"""The mini base, built for real: what a bootc node and a Containerfile RUN step need."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nestbuild._tools import buildah, run
from nestbuild.building import baseimage
from nestbuild.building.baseimage import BuiltBase
from nestbuild.errors import UsageError
from tests.fixtures.images import BuildImage, unique_tag

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.skopeo]

KVER = "6.1.0-nestbuild-mini"
APPLETS = ["sh", "ls", "cat", "echo", "mkdir", "rm", "cp", "mv", "ln", "chmod", "chown",
           "touch", "sed", "grep", "printf", "test", "true", "false", "id", "install", "find",
           "stat"]


def image_config(ref: str) -> dict[str, object]:
    out = run.run(["skopeo", "inspect", "--config", f"containers-storage:{ref}"]).stdout
    config: dict[str, object] = json.loads(out)
    return config


@pytest.fixture(scope="module")
def mini_root(mini_base: BuiltBase) -> Iterator[Path]:
    with buildah.working_container(mini_base.tag) as ctr:
        root = buildah.mount(ctr)
        yield root
        buildah.umount(ctr)


def test_recipes_are_listed_with_description_and_path() -> None:
    recipes = {r.name: r for r in baseimage.list_recipes()}
    mini = recipes["mini"]
    assert mini.path == baseimage.recipes_dir() / "mini"
    assert "busybox" in mini.description


def test_unknown_recipe_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no base recipe 'nope'"):
        baseimage.build_base("nope")


def test_config_labels_env_and_architecture(mini_base: BuiltBase) -> None:
    assert mini_base.kernel == KVER
    assert buildah.image_exists(mini_base.tag)
    cfg = image_config(mini_base.tag)
    assert cfg["architecture"] == "amd64" and cfg["os"] == "linux"
    inner = cfg["config"]
    assert isinstance(inner, dict)
    labels = inner["Labels"]
    assert labels["containers.bootc"] == "1"
    assert labels["ostree.bootable"] == "true"
    assert labels["ostree.linux"] == KVER
    assert any(e.startswith("PATH=") and "/usr/bin" in e for e in inner["Env"])
    rootfs = cfg["rootfs"]
    assert isinstance(rootfs, dict) and len(rootfs["diff_ids"]) == 1


def test_merged_usr_and_ostree_symlinks(mini_root: Path) -> None:
    links = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
             "ostree": "sysroot/ostree", "var/run": "../run",
             "etc/os-release": "../usr/lib/os-release"}
    for path, target in links.items():
        assert os.readlink(mini_root / path) == target, path


def test_kernel_initramfs_and_modules(mini_root: Path) -> None:
    modules = mini_root / "usr/lib/modules"
    assert sorted(p.name for p in modules.iterdir()) == [KVER]
    kdir = modules / KVER
    assert (kdir / "vmlinuz").stat().st_size > 0
    assert (kdir / "initramfs.img").stat().st_size > 0
    kos = sorted(str(p.relative_to(kdir)) for p in kdir.rglob("*.ko"))
    assert len(kos) >= 2 and "kernel/drivers/net/dummy.ko" in kos
    deps = (kdir / "modules.dep").read_text()
    assert all(f"{ko}:" in deps for ko in kos)


def test_top_level_layout_and_modes(mini_root: Path) -> None:
    for d, mode in {"sysroot": 0o755, "boot": 0o755, "run": 0o755, "tmp": 0o1777,
                    "proc": 0o555, "sys": 0o555, "dev": 0o755, "var/tmp": 0o1777}.items():
        st = (mini_root / d).lstat()
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == mode, d
    for empty in ["boot", "run", "tmp", "proc", "sys", "dev", "sysroot", "var/tmp"]:
        assert list((mini_root / empty).iterdir()) == [], empty
    assert sorted(p.name for p in (mini_root / "var").iterdir()) == ["run", "tmp"]
    tmpfiles = "".join(p.read_text() for p in (mini_root / "usr/lib/tmpfiles.d").iterdir())
    assert "/var/tmp" in tmpfiles
    assert not (mini_root / "etc/hostname").exists()
    assert not (mini_root / "usr/local/bin").exists()
    assert not (mini_root / "usr/etc").exists()  # bootc's fatal etc-usretc lint
    prepare_root = (mini_root / "usr/lib/ostree/prepare-root.conf").read_text()
    assert "[composefs]" in prepare_root


def test_accounts_are_root_and_nobody_only(mini_root: Path) -> None:
    users = [line.split(":")[0] for line in (mini_root / "etc/passwd").read_text().splitlines()]
    groups = [line.split(":")[0] for line in (mini_root / "etc/group").read_text().splitlines()]
    assert users == ["root", "nobody"] and groups == ["root", "nobody"]
    shadow = mini_root / "etc/shadow"
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o600
    assert "NAME=" in (mini_root / "usr/lib/os-release").read_text()


def test_root_owned_no_setuid_fixed_mtimes(mini_root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(mini_root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            where = os.path.join(dirpath, name)
            assert (st.st_uid, st.st_gid) == (0, 0), where
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), where
            assert st.st_mtime == baseimage.SOURCE_DATE_EPOCH, where


def test_busybox_and_its_applets(mini_root: Path) -> None:
    busybox = mini_root / "usr/bin/busybox"
    assert busybox.is_file() and not busybox.is_symlink()
    for applet in APPLETS:
        assert os.readlink(mini_root / "usr/bin" / applet) == "busybox", applet


def test_run_steps_work_on_the_base(build_image: BuildImage) -> None:
    applets = " ".join(a for a in APPLETS if a not in {"sh", "test", "true", "false"})
    tag = build_image(
        "ARG BASE\nFROM ${BASE}\n"
        "RUN set -e; for a in " + applets + "; do command -v $a >/dev/null; done; "
        "mkdir -p /etc/x && echo ok > /etc/x/f && test \"$(cat /etc/x/f)\" = ok && id -u\n")
    assert buildah.image_exists(tag)


def test_rebuild_is_reproducible_and_quick(mini_base: BuiltBase) -> None:
    tag = unique_tag("mini-again")
    start = time.monotonic()
    again = baseimage.build_base("mini", tag=tag)
    elapsed = time.monotonic() - start
    try:
        assert again.image_id == mini_base.image_id
        assert image_config(tag)["rootfs"] == image_config(mini_base.tag)["rootfs"]
        assert elapsed < 5, f"mini base took {elapsed:.2f}s"
    finally:
        buildah.remove_image(tag)  # by name: the image is the session's mini base


def test_recipe_dir_override_and_generic_recipe(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A copied recipe with another kernel version builds through NESTBUILD_BASE_IMAGES."""
    shutil.copytree(baseimage.recipes_dir() / "mini", tmp_path / "tiny", symlinks=True)
    spec = yaml.safe_load((tmp_path / "tiny/recipe.yaml").read_text())
    spec["kernel"] = "6.6.6-tiny"
    spec["description"] = "a copy"
    (tmp_path / "tiny/recipe.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("NESTBUILD_BASE_IMAGES", str(tmp_path))
    assert [(r.name, r.description) for r in baseimage.list_recipes()] == [("tiny", "a copy")]
    tag = unique_tag("tiny")
    built = baseimage.build_base("tiny", tag=tag)
    try:
        assert built.kernel == "6.6.6-tiny"
        inner = image_config(tag)["config"]
        assert isinstance(inner, dict) and inner["Labels"]["ostree.linux"] == "6.6.6-tiny"
        with buildah.working_container(tag) as ctr:
            root = buildah.mount(ctr)
            assert (root / "usr/lib/modules/6.6.6-tiny/vmlinuz").is_file()
            assert not (root / "usr/lib/modules/{kernel}").exists()
    finally:
        buildah.remove_image(tag)
