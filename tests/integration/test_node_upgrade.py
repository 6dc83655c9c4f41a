"""`nestbuild node upgrade`, the per-node step of a rollout, on a real ostree sysroot standing
for a node: real signed images from a TLS registry, the real health command, the node's record
in its /var. Run here as the engines run it on a node (not over ssh)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nestbuild.node import deploy
from tests.fixtures.cli import Result, nestbuild
from tests.fixtures.fleet import HEALTH_CMD, FleetImages, MakeFleet

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas" /
                     "node-upgrade.schema.json").read_text())


def upgrade(images: FleetImages, sysroot: Path, image: str, *args: str) -> Result:
    ref = images.refs.get(image, image)
    return nestbuild("node", "upgrade", ref, "--via", "ostree", "--sysroot", sysroot,
                     "--trust", images.trust, *images.registry_args(), *args,
                     env={**os.environ, **images.env()})


def report(r: Result) -> dict[str, Any]:
    """The step's JSON, checked against the published schema."""
    assert r.stdout, r.stderr[-3000:]
    doc: dict[str, Any] = json.loads(r.stdout)
    jsonschema.validate(doc, SCHEMA)
    return doc


def layout(sysroot: Path) -> list[tuple[str, int, str | None, bool]]:
    """The sysroot's deployments (checksum, serial, digest, default), in order."""
    return [(d.checksum, d.serial, d.digest, d.default) for d in deploy.deployments(sysroot)]


def default_digest(sysroot: Path) -> str | None:
    return next((d.digest for d in deploy.deployments(sysroot) if d.default), None)


def one_line_error(r: Result) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture
def node(make_fleet: MakeFleet) -> Path:
    """One node on v1: its sysroot."""
    return next(iter(make_fleet(1, "v1").nodes.values()))


def test_moves_to_v2_healthy_then_is_a_no_op(node: Path, fleet_images: FleetImages) -> None:
    v1, v2 = fleet_images.digest("v1"), fleet_images.digest("v2")
    r = upgrade(fleet_images, node, "v2", "--health-cmd", HEALTH_CMD, "--format", "json")
    doc = report(r)
    assert r.returncode == 0, doc
    assert (doc["state"], doc["moved"], doc["target"], doc["previous"], doc["booted"]) == \
        ("healthy", True, v2, v1, v2)
    assert doc["health"]["ok"] is True
    assert {c["check"] for c in doc["health"]["checks"]} == {"booted", f"cmd: {HEALTH_CMD}"}
    assert default_digest(node) == v2
    before = layout(node)

    again = upgrade(fleet_images, node, "v2", "--health-cmd", HEALTH_CMD, "--format", "json")
    doc = report(again)
    assert again.returncode == 0, doc
    assert (doc["state"], doc["moved"], doc["booted"]) == ("healthy", False, v2)
    assert doc["health"]["ok"] is True
    assert layout(node) == before  # no new deployment


def test_unhealthy_target_is_rolled_back_and_not_taken_again(
        node: Path, fleet_images: FleetImages) -> None:
    v1, bad = fleet_images.digest("v1"), fleet_images.digest("bad")
    r = upgrade(fleet_images, node, "bad", "--health-cmd", HEALTH_CMD,
                "--rollback-on-failure", "--health-timeout", "2s", "--format", "json")
    doc = report(r)
    assert r.returncode == 1, doc
    assert (doc["state"], doc["target"], doc["previous"], doc["booted"]) == \
        ("rolled-back", bad, v1, v1)
    assert default_digest(node) == v1
    failed = [c for c in doc["health"]["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == [f"cmd: {HEALTH_CMD}"]
    assert failed[0]["output"] and failed[0]["attempts"] >= 1
    record = node / "ostree" / "deploy" / "nestos" / "var" / "lib" / "nestbuild" / "upgrade.json"
    kept = json.loads(record.read_text())
    assert kept["target"] == bad and kept["phase"] == "rolled-back"
    before = layout(node)

    again = upgrade(fleet_images, node, "bad", "--health-cmd", HEALTH_CMD,
                    "--rollback-on-failure", "--health-timeout", "2s", "--format", "json")
    doc = report(again)
    assert again.returncode == 1, doc
    assert (doc["state"], doc["booted"]) == ("rolled-back", v1)
    assert layout(node) == before  # bad was not deployed again
    assert default_digest(node) == v1


def test_unhealthy_without_rollback_stays(node: Path, fleet_images: FleetImages) -> None:
    bad = fleet_images.digest("bad")
    r = upgrade(fleet_images, node, "bad", "--health-cmd", HEALTH_CMD, "--health-timeout", "2s",
                "--format", "json")
    doc = report(r)
    assert r.returncode == 1, doc
    assert (doc["state"], doc["booted"], doc["health"]["ok"]) == ("unhealthy", bad, False)
    assert default_digest(node) == bad


def test_a_rollback_cut_short_is_finished_by_the_next_run(node: Path,
                                                          fleet_images: FleetImages) -> None:
    """The run that decided to roll back stopped before it did (its record says
    rolling-back, the node still runs the target): the next run makes the rollback."""
    v1, bad = fleet_images.digest("v1"), fleet_images.digest("bad")
    upgrade(fleet_images, node, "bad", "--health-cmd", HEALTH_CMD, "--health-timeout", "1s")
    assert default_digest(node) == bad
    record = node / "ostree" / "deploy" / "nestos" / "var" / "lib" / "nestbuild" / "upgrade.json"
    record.write_text(json.dumps({"target": bad, "phase": "rolling-back", "previous": v1}))
    r = upgrade(fleet_images, node, "bad", "--health-cmd", HEALTH_CMD, "--rollback-on-failure",
                "--format", "json")
    doc = report(r)
    assert r.returncode == 1, doc
    assert (doc["state"], doc["booted"], doc["moved"]) == ("rolled-back", v1, False)
    assert default_digest(node) == v1


def test_check_changes_nothing(node: Path, fleet_images: FleetImages) -> None:
    before = layout(node)
    r = upgrade(fleet_images, node, "v2", "--check", "--format", "json")
    doc = report(r)
    assert r.returncode == 0, doc
    assert doc["state"] == "checked" and doc["moved"] is False
    assert doc["checks"] and all(c["ok"] for c in doc["checks"]), doc["checks"]
    assert [c["name"] for c in doc["checks"]] == ["signature", "bootable", "architecture",
                                                  "room"]
    assert doc["booted"] == fleet_images.digest("v1")
    assert layout(node) == before
    assert not (node / "ostree" / "deploy" / "nestos" / "var" / "lib" / "nestbuild"
                / "upgrade.json").exists()


def test_a_tag_is_refused(node: Path, fleet_images: FleetImages) -> None:
    before = layout(node)
    line = one_line_error(upgrade(fleet_images, node, f"{fleet_images.repo}:v2", "-q"))
    assert "digest" in line
    assert layout(node) == before


def test_foreign_image_is_refused(node: Path, fleet_images: FleetImages) -> None:
    before = layout(node)
    line = one_line_error(upgrade(fleet_images, node, "foreign", "--health-cmd", HEALTH_CMD,
                                   "-q"))
    assert "refused" in line
    assert layout(node) == before
    assert default_digest(node) == fleet_images.digest("v1")


def test_a_damaged_record_is_one_line(node: Path, fleet_images: FleetImages) -> None:
    record = node / "ostree" / "deploy" / "nestos" / "var" / "lib" / "nestbuild" / "upgrade.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text('{"target": "sha256:')
    before = layout(node)
    line = one_line_error(upgrade(fleet_images, node, "v2", "-q"))
    assert "upgrade.json" in line
    assert layout(node) == before
