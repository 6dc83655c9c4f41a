"""The package lints on derived images of the real rpm base, installed into with the real rpm.

A derived image whose rpm database claims a package whose files the image lacks (``rpm -i
--justdb``: what a broken dnf run leaves) is flagged; the same package installed for real is
not; a file added under /usr that no package owns is information in the packages preset, and
nothing in the default one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nestbuild._tools import buildah, run
from nestbuild.building import rpmbase
from tests.fixtures.cli import nestbuild as cli
from tests.fixtures.common import persistent_cache
from tests.fixtures.images import unique_tag

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.skopeo]


@pytest.fixture(scope="module")
def jq_rpm(rpm_bases: dict[int, rpmbase.BuiltRpmBase]) -> Path:
    """jq, which version 2 of the base adds: a real package version 1 does not have."""
    rpms = rpmbase.build_rpms(rpmbase.load_recipe(), 2, persistent_cache("rpm-base"),
                              lambda _msg: None)
    return next(p for p in rpms if p.name.startswith("jq-"))


def installed_with(base: str, rpm: Path, *rpm_args: str) -> str:
    """An image derived from ``base`` with ``rpm -i RPM_ARGS`` run on it by the real rpm."""
    tag = unique_tag("rpm-lint")
    ctr = buildah.from_image(base)
    try:
        root = buildah.mount(ctr)
        run.run(["rpm", "--root", str(root), "--dbpath", "/usr/lib/sysimage/rpm", "-i",
                 "--nodeps", *rpm_args, str(rpm)], what="installing jq")
        buildah.commit(ctr, tag)
    finally:
        buildah.remove(ctr)
    return tag


def findings(tag: str, *args: str) -> list[dict[str, Any]]:
    proc = cli("validate", tag, "--format", "json", *args)
    assert proc.returncode in (0, 1), proc.stderr
    found: list[dict[str, Any]] = json.loads(proc.stdout)["findings"]
    return found


@pytest.fixture(scope="module")
def images(rpm_bases: dict[int, rpmbase.BuiltRpmBase], jq_rpm: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    base = rpm_bases[1].tag
    made: dict[str, str] = {}
    try:
        made["justdb"] = installed_with(base, jq_rpm, "--justdb")
        made["installed"] = installed_with(base, jq_rpm)
        ctx = tmp_path_factory.mktemp("unowned")
        (ctx / "Containerfile").write_text(
            f"FROM {base}\nRUN printf '#!/bin/sh\\necho hi\\n' > /usr/bin/hello && "
            "chmod 755 /usr/bin/hello\n")
        made["unowned"] = unique_tag("rpm-unowned")
        buildah.bud(ctx / "Containerfile", ctx, made["unowned"])
        yield made
    finally:
        for tag in made.values():
            buildah.remove_image(tag)


def test_a_package_the_database_claims_but_the_image_lacks_is_flagged(
        images: dict[str, str]) -> None:
    found = [f for f in findings(images["justdb"], "--preset", "packages")
             if f["rule"] == "package-files-missing"]
    assert len(found) == 1, found
    assert found[0]["severity"] == "error"
    assert found[0]["message"].startswith("jq-") and "/usr/bin/jq" in found[0]["message"]
    # the same package installed for real: nothing missing, nothing unowned
    ok = findings(images["installed"], "--preset", "packages")
    assert not [f for f in ok if f["rule"] in ("package-files-missing", "unowned-file")], ok
    assert not [f for f in ok if f["severity"] == "error"], ok


def test_an_unowned_usr_file_is_information_in_the_packages_preset(
        images: dict[str, str], tmp_path: Path) -> None:
    found = findings(images["unowned"], "--preset", "packages")
    unowned = [f for f in found if f["rule"] == "unowned-file"]
    assert [(f["path"], f["severity"]) for f in unowned] == [("/usr/bin/hello", "info")]
    assert "package-files-missing" not in {f["rule"] for f in found}
    # off in the default preset (where /usr changes are path-policy errors anyway)
    assert "unowned-file" not in {f["rule"] for f in findings(images["unowned"])}
    # the layer budget and /usr growth come from the policy's settings
    policy = tmp_path / "policy.yaml"
    policy.write_text("extends: packages\nsettings:\n  max-layers: 3\n  max-usr-growth: 10\n")
    rules = {f["rule"]: f for f in findings(images["unowned"], "--policy", str(policy))}
    assert rules["layer-budget"]["severity"] == "warning"
    assert "max-layers is 3" in rules["layer-budget"]["message"]
    assert rules["usr-growth"]["path"] == "/usr"
    assert "layer-budget" not in {f["rule"] for f in found}  # 26 layers: under 127
    bad = tmp_path / "bad.yaml"
    bad.write_text("settings:\n  max-layers: lots\n")
    proc = cli("validate", images["unowned"], "--policy", str(bad))
    assert proc.returncode == 2 and f"{bad}:2: setting max-layers" in proc.stderr
