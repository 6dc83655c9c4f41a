"""Deploying images into a real ostree sysroot: layers, /etc, /var, origin, rollback."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nestbuild._image import open_image
from nestbuild._tools import ostree
from nestbuild.building.baseimage import BuiltBase
from nestbuild.node import deploy
from tests.fixtures.images import EXAMPLES, BuildImage

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ostree]


@pytest.fixture(autouse=True)
def _mutable_tmp(tmp_path: Path) -> Iterator[None]:
    """ostree marks deployment roots immutable; let pytest clean up after us."""
    yield
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], check=False,
                   stderr=subprocess.DEVNULL)


def deployed_etc(sysroot: Path, d: deploy.Deployment, name: str) -> Path:
    return sysroot / "ostree" / "deploy" / "nestos" / "deploy" / f"{d.checksum}.{d.serial}" / \
        "etc" / name


def test_deploy_update_and_rollback(tmp_path: Path, build_image: BuildImage,
                                    mini_base: BuiltBase) -> None:
    sysroot = tmp_path / "sysroot"
    v1 = build_image(EXAMPLES / "var-content-wrong")
    v2 = build_image(EXAMPLES / "etc-config")
    messages: list[str] = []
    first = deploy.deploy_image(open_image(v1), sysroot, "nestos", origin_ref="reg/node:v1",
                                progress=messages.append)
    assert first.default and first.digest == open_image(v1).digest
    assert first.image == "reg/node:v1"
    # /var content is seeded on first install only; /etc lands as the deployment's /etc
    assert (sysroot / "ostree/deploy/nestos/var/lib/node-agent/config.json").is_file()
    repo = ostree.repo_of(sysroot)
    assert ostree.has_ref(repo, deploy.LAYER_REF.format(
        open_image(mini_base.tag).config.diff_ids[0].split(":")[1]))
    assert list((sysroot / "boot" / "loader" / "entries").glob("*.conf"))

    messages.clear()
    second = deploy.deploy_image(open_image(v2), sysroot, "nestos", origin_ref="reg/node:v2",
                                 progress=messages.append)
    assert "1 new layer(s) imported, 1 already present" in messages  # only the new layer
    assert "Managed by the platform team" in deployed_etc(sysroot, second, "motd").read_text()
    now = deploy.deployments(sysroot)
    assert [(d.image, d.default, d.rollback) for d in now] == [
        ("reg/node:v2", True, False), ("reg/node:v1", False, True)]
    origin = (sysroot / "ostree/deploy/nestos/deploy" /
              f"{second.checksum}.{second.serial}.origin").read_text()
    assert f"ostree-image-signed:docker://reg/node:v2@{second.digest}" in origin

    back = deploy.rollback(sysroot, "nestos")
    assert back.image == "reg/node:v1"
    assert [(d.image, d.default, d.rollback) for d in deploy.deployments(sysroot)] == [
        ("reg/node:v1", True, False), ("reg/node:v2", False, True)]


def test_failed_deploy_leaves_the_sysroot_as_it_was(tmp_path: Path, build_image: BuildImage,
                                                   mini_base: BuiltBase) -> None:
    from nestbuild.errors import NestbuildError
    from tests.ocibuilder import Layer, write_image

    sysroot = tmp_path / "sysroot"
    deploy.deploy_image(open_image(build_image(EXAMPLES / "etc-config")), sysroot, "nestos",
                        origin_ref="reg/node:v1")
    before = deploy.deployments(sysroot)
    write_image(tmp_path / "bad", [Layer().dir("/etc").file("/etc/x", b"x")])  # no os-release
    with pytest.raises(NestbuildError, match="os-release"):
        deploy.deploy_image(open_image(f"oci:{tmp_path / 'bad'}"), sysroot, "nestos",
                            origin_ref="reg/bad:v1")
    write_image(tmp_path / "evil", [Layer().file("/etc/../../x", b"x")])
    with pytest.raises(NestbuildError, match="path contains"):
        deploy.deploy_image(open_image(f"oci:{tmp_path / 'evil'}"), sysroot, "nestos",
                            origin_ref="reg/evil:v1")
    assert deploy.deployments(sysroot) == before
    assert not (tmp_path / "x").exists()


def test_the_image_ref_and_commit_metadata_keep_their_names(tmp_path: Path,
                                                            build_image: BuildImage,
                                                            mini_base: BuiltBase) -> None:
    # sysroots deployed by earlier versions hold these names; renaming them orphans the ref
    sysroot = tmp_path / "sysroot"
    image = open_image(build_image(EXAMPLES / "etc-config"))
    done = deploy.deploy_image(image, sysroot, "nestos", origin_ref="reg/node:v1")
    repo = ostree.repo_of(sysroot)
    assert ostree.rev_parse(repo, "nestbuild/image/nestos") == done.checksum
    assert ostree.metadata(repo, done.checksum, "nestbuild.image") == "reg/node:v1"
    assert ostree.metadata(repo, done.checksum, "nestbuild.image-digest") == image.digest
