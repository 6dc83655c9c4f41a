"""nestbuild._tools.buildah against the real buildah: containers, commits, builds, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from nestbuild._tools import buildah, run
from nestbuild.building.baseimage import BuiltBase
from nestbuild.errors import ToolError
from tests.fixtures.images import EXAMPLES, BuildImage, build_example, unique_tag

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.buildah, pytest.mark.skopeo]

MINI_EXAMPLES = sorted(
    p.name for p in EXAMPLES.iterdir()
    if (p / "Containerfile").is_file()
    and yaml.safe_load((p / "expected.yaml").read_text()).get("base", "mini") == "mini")


def containers() -> set[str]:
    """Names of buildah's working containers (``buildah from`` returns the name)."""
    out = run.run(["buildah", "containers", "--format", "{{.ContainerName}}"]).stdout.decode()
    return set(out.split())


def diff_ids(ref: str) -> list[str]:
    out = run.run(["skopeo", "inspect", "--config", f"containers-storage:{ref}"]).stdout
    ids: list[str] = json.loads(out)["rootfs"]["diff_ids"]
    return ids


def test_there_are_six_mini_examples() -> None:
    assert len(MINI_EXAMPLES) >= 6


def test_scratch_mount_config_commit_remove(tmp_path: Path) -> None:
    tag = unique_tag("manual")
    with buildah.working_container("scratch") as ctr:
        assert ctr in containers()
        root = buildah.mount(ctr)
        (root / "etc").mkdir()
        (root / "etc" / "hello").write_text("hi\n")
        buildah.config(ctr, labels={"a.b": "c"}, env={"X": "1"}, cmd="/usr/bin/sh")
        buildah.umount(ctr)
        image_id = buildah.commit(ctr, tag)
    assert ctr not in containers()
    try:
        assert len(image_id) == 64 and buildah.image_exists(tag)
        assert buildah.image_exists(image_id)
        out = run.run(["skopeo", "inspect", "--config", f"containers-storage:{tag}"]).stdout
        config = json.loads(out)["config"]
        assert config["Labels"]["a.b"] == "c" and "X=1" in config["Env"]
        assert config["Cmd"] == ["/usr/bin/sh"]
    finally:
        buildah.remove_image(tag)
    assert not buildah.image_exists(tag)


def test_from_scratch_and_remove() -> None:
    ctr = buildah.from_scratch()
    assert ctr in containers()
    buildah.remove(ctr)
    assert ctr not in containers()


def test_working_container_is_removed_when_the_body_fails() -> None:
    with pytest.raises(RuntimeError), buildah.working_container("scratch") as ctr:
        raise RuntimeError("boom")
    assert ctr not in containers()


def test_missing_image_is_a_tool_error() -> None:
    with pytest.raises(ToolError, match="creating a container from"):
        buildah.from_image(unique_tag("absent"))
    assert not buildah.image_exists(unique_tag("absent"))
    buildah.remove_image(unique_tag("absent"))  # no error for what is not there


@pytest.mark.parametrize("name", MINI_EXAMPLES)
def test_every_example_builds_on_the_mini_base(name: str, build_image: BuildImage,
                                               mini_base: BuiltBase) -> None:
    tag = build_image(EXAMPLES / name)
    layers = diff_ids(tag)
    base = diff_ids(mini_base.tag)
    assert layers[: len(base)] == base  # the base is kept, never squashed
    assert len(layers) == len(base) + 1  # without --layers: one layer for all the steps


def test_build_example_helper_and_build_args(mini_base: BuiltBase) -> None:
    tag = unique_tag("etc-config")
    try:
        image_id = build_example("etc-config", tag, base=mini_base.tag)
        assert buildah.image_exists(image_id) and buildah.image_exists(tag)
    finally:
        buildah.remove_image(tag)


def test_a_failing_run_step_gives_the_log_tail(tmp_path: Path, mini_base: BuiltBase) -> None:
    # A base name of its own: a container left behind would be named after it, and no other
    # (parallel) test creates containers with that name.
    base = unique_tag("failbase")
    run.run(["buildah", "tag", mini_base.tag, base])
    prefix = base.rsplit("/", 1)[1].split(":")[0]
    (tmp_path / "Containerfile").write_text(
        f"FROM {base}\n"
        "RUN echo to-stdout && echo to-stderr >&2 && exit 3\n")
    tag = unique_tag("fail")

    def leftovers() -> set[str]:
        return {c for c in containers() if c.startswith(prefix)}

    with pytest.raises(ToolError) as info:
        buildah.bud(tmp_path / "Containerfile", tmp_path, tag)
    err = info.value
    assert err.message.startswith(f"building {tag}: buildah exited with status")
    assert "to-stdout" in (err.detail or "") and "to-stderr" in (err.detail or "")
    assert "exit 3" in (err.detail or "")
    try:
        assert not leftovers()  # no working container left behind
        assert not buildah.image_exists(tag)
        with pytest.raises(ToolError):
            buildah.bud(tmp_path / "Containerfile", tmp_path, tag, layers=True)
        assert not leftovers()  # --layers needs --force-rm for that
    finally:
        run.run(["buildah", "rmi", base], check=False)  # the alias only, by name


def test_missing_containerfile(tmp_path: Path) -> None:
    with pytest.raises(ToolError, match="no such Containerfile"):
        buildah.bud(tmp_path / "Containerfile", tmp_path, unique_tag("none"))


def test_layers_keeps_one_layer_per_step(tmp_path: Path, mini_base: BuiltBase) -> None:
    (tmp_path / "Containerfile").write_text(
        "ARG BASE\nFROM ${BASE}\nRUN echo a > /etc/a\nRUN echo b > /etc/b\n")
    tag = unique_tag("layers")
    try:
        buildah.bud(tmp_path / "Containerfile", tmp_path, tag, layers=True,
                    build_args={"BASE": mini_base.tag})
        assert len(diff_ids(tag)) == len(diff_ids(mini_base.tag)) + 2
    finally:
        buildah.remove_image(tag)


def test_rebuilding_an_example_is_quick(mini_base: BuiltBase) -> None:
    tags = [unique_tag("again"), unique_tag("again")]
    try:
        times = []
        for tag in tags:
            start = time.monotonic()
            build_example("var-content-wrong", tag, base=mini_base.tag)
            times.append(time.monotonic() - start)
        assert max(times) < 10, times
        print(f"example build: {times[0]:.2f}s, again: {times[1]:.2f}s")
    finally:
        for tag in tags:
            buildah.remove_image(tag)
