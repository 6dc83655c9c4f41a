"""Every example Containerfile, built for real with buildah on the mini base, gives exactly
the findings its expected.yaml lists."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nestbuild.building.baseimage import BuiltBase
from nestbuild.validation.policy import preset
from nestbuild.validation.validate import validate
from tests.fixtures.images import EXAMPLES, BuildImage

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.buildah]

NAMES = sorted(
    p.name for p in EXAMPLES.iterdir()
    if (p / "Containerfile").is_file()
    and yaml.safe_load((p / "expected.yaml").read_text()).get("base", "mini") == "mini"
)


def test_there_are_at_least_five_examples() -> None:
    assert len(NAMES) >= 5


@pytest.mark.parametrize("name", NAMES)
def test_example_findings(name: str, build_image: BuildImage, mini_base: BuiltBase) -> None:
    expected = yaml.safe_load((EXAMPLES / name / "expected.yaml").read_text())
    tag = build_image(EXAMPLES / name)
    runs = [(expected["policy"], expected)]
    if "packages" in expected:
        runs.append(("packages", expected["packages"]))
    for policy_name, want in runs:
        report = validate(tag, policy=preset(policy_name))
        got = sorted((f.rule, f.severity, f.path) for f in report.findings)
        assert got == sorted((f["rule"], f["severity"], f["path"]) for f in want["findings"]), (
            policy_name)
        assert report.passed is want["passed"]
        assert report.base is not None and report.base.found_by == "annotation"
        assert report.base.digest is not None


def test_mini_base_passes_base_checks(mini_base: BuiltBase) -> None:
    report = validate(mini_base.tag, as_base=True)
    assert report.findings == [] and report.passed


def test_buildah_base_annotation_and_derived_layers(build_image: BuildImage,
                                                    mini_base: BuiltBase) -> None:
    tag = build_image(EXAMPLES / "etc-config")
    report = validate(tag)
    assert report.base is not None and report.base.layers == 1
    assert {c.layer for c in report.changes} == {1}
    assert "/etc/motd" in {c.path for c in report.changes}


def test_a_failing_run_step_reports_the_log_tail(tmp_path: Path, mini_base: BuiltBase) -> None:
    from nestbuild._tools import buildah
    from nestbuild.errors import ToolError

    (tmp_path / "Containerfile").write_text(
        f"FROM {mini_base.tag}\nRUN echo building && echo no-such-thing >&2 && false\n")
    with pytest.raises(ToolError) as info:
        buildah.bud(tmp_path / "Containerfile", tmp_path, "localhost/nestbuild-test/fail:x")
    assert "no-such-thing" in (info.value.detail or "")


def test_base_is_found_by_digest_after_its_tag_moves(tmp_path: Path) -> None:
    import uuid

    from nestbuild._tools import buildah
    from nestbuild.building import baseimage

    tag = f"localhost/nestbuild-test/moving:{uuid.uuid4().hex[:8]}"
    baseimage.build_base("mini", tag=tag)  # reproducible: the same image as the session's
    derived = f"{tag}-derived"
    try:
        buildah.bud(EXAMPLES / "etc-config" / "Containerfile", EXAMPLES / "etc-config", derived,
                    build_args={"BASE": tag})
        buildah.add_files(tag, {"/etc/moved": (b"x", 0o644)}, created_by="test")  # tag moves
        report = validate(derived)
        assert report.base is not None and report.base.layers == 1
        assert report.notes == []
        assert "/etc/moved" not in {c.path for c in report.changes}
    finally:
        # by name only: the original base image is shared with the session's mini base
        buildah.remove_image(derived)
        buildah.remove_image(tag)
