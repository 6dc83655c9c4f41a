"""`nestbuild rollout` for real: Ansible moves a fleet of ostree-sysroot nodes over a real
sshd, in waves, through the per-node step, with health gates and rollback."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.fixtures.cli import nestbuild
from tests.fixtures.fleet import HEALTH_CMD, Fleet, FleetImages, MakeFleet

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ansible]

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas" /
                     "rollout.schema.json").read_text())


def rollout(fleet: Fleet, image: str, *args: str, state: Path, check: bool = False
            ) -> tuple[int, dict]:
    r = nestbuild("rollout", f"docker://{fleet.images.refs[image].split('@')[0]}:{image}"
                  if image in fleet.images.refs else image,
                  "--inventory", fleet.inventory, "--trust", fleet.images.trust,
                  "--state", state, "--format", "json", *fleet.images.registry_args(), *args,
                  env=fleet.ansible_env(), check=False)
    assert r.returncode in (0, 1) and r.stdout, r.stderr[-3000:]
    report = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    if check:
        assert r.returncode == 0, json.dumps(report, indent=1)[-6000:]
    return r.returncode, report


def test_a_small_fleet_moves_in_waves(make_fleet: MakeFleet, fleet_images: FleetImages,
                                      tmp_path: Path) -> None:
    fleet = make_fleet(4)
    _, report = rollout(fleet, "v2", "--max-unavailable", "2", "--health-cmd", HEALTH_CMD,
                           state=tmp_path / "state.json", check=True)
    assert report["status"] == "completed"
    assert fleet.digests() == dict.fromkeys(fleet.nodes, fleet_images.digest("v2"))
