"""Nodes whose reboot is real: `nestbuild node upgrade --boot` boots each ostree sysroot under
qemu (software emulation) after it moved it, and the health gate reads what came up on the
serial console: the deployment that booted, the units that failed, the image's marker. One
node takes a good image by hand; on the other, `nestbuild rollout` on Ansible brings a bad
image, which is rolled back after its real boot, and the rollback is booted too.

Boots are slow (a minute or more each under software emulation), so one test walks through
the whole story in three boots.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nestbuild.node import deploy
from tests.fixtures.bootfleet import BROKEN_UNIT, BootNodes, MakeBootNodes
from tests.fixtures.cli import Result, nestbuild

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.qemu, pytest.mark.ansible]

#: Passes only when the image that booted carries the marker "good".
HEALTH_CMD = 'test "$NESTBUILD_BOOT_MARKER" = good'
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas" /
                     "rollout.schema.json").read_text())


def step(nodes: BootNodes, name: str, image: str, *args: str) -> Result:
    """One run of the per-node step on node ``name``, booting it under qemu."""
    return nestbuild("node", "upgrade", nodes.images.refs[image], "--via", "ostree",
                     "--sysroot", nodes.nodes[name], "--trust", nodes.images.trust, "--boot",
                     "--rollback-on-failure", "--health-cmd", HEALTH_CMD,
                     "--health-timeout", "30s", *nodes.images.registry_args(), *args,
                     env=nodes.images.env(), timeout=1800)


def checks(health: dict[str, Any]) -> dict[str, tuple[bool, str]]:
    return {c["check"]: (c["ok"], c["output"]) for c in health["checks"]}


def deployments(sysroot: Path) -> list[tuple[str, int, str | None]]:
    return [(d.checksum, d.serial, d.digest) for d in deploy.deployments(sysroot)]


def test_a_bad_image_is_rolled_back_after_a_real_boot(make_boot_nodes: MakeBootNodes,
                                                      tmp_path: Path) -> None:
    nodes = make_boot_nodes("node-a", "node-b")
    images = nodes.images
    v1, good, bad = (images.digest(n) for n in ("v1", "good", "bad"))

    # A: the good image boots, and the gate passes on what that boot showed
    r = step(nodes, "node-a", "good", "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert (out["state"], out["booted"], out["previous"], out["moved"]) == (
        "healthy", good, v1, True)
    assert checks(out["health"]) == {
        "booted": (True, f"booted {good}"), "systemd": (True, "running"),
        f"cmd: {HEALTH_CMD}": (True, "exit status 0")}
    assert nodes.default_digest("node-a") == good

    # B, through the rollout on Ansible: the bad image boots degraded, the node is rolled
    # back and the rollback booted
    state = tmp_path / "rollout.json"
    r = nestbuild("rollout", f"docker://{images.repo}:bad", "--inventory", nodes.inventory,
                  "--limit", "node-b", "--trust", images.trust, "--state", state,
                  "--format", "json", *images.registry_args(), "--no-preflight",
                  "--health-cmd", HEALTH_CMD, "--health-timeout", "30s",
                  env=nodes.ansible_env(), timeout=1800)
    assert r.returncode == 1 and r.stdout, r.stderr[-3000:]
    report = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["status"] == "failed" and report["rolledBack"] == ["node-b"], \
        json.dumps(report, indent=1)[-6000:]
    node = report["nodes"]["node-b"]
    assert (node["previous"], node["booted"]) == (v1, v1)
    failed = {k: v for k, v in checks(node["step"]["health"]).items() if not v[0]}
    assert failed == {"systemd": (False, f"system state degraded (failed: {BROKEN_UNIT})")}
    checksum = {digest: cs for cs, _, digest in deployments(nodes.nodes["node-b"])}
    booted = [re.match(r"booted deployment ([0-9a-f]{12})\.", n) for n in node["step"]["notes"]]
    assert [m.group(1) for m in booted if m] == [checksum[bad][:12], checksum[v1][:12]], \
        node["step"]["notes"]
    assert nodes.default_digest("node-b") == v1
    assert nodes.default_digest("node-a") == good  # not in --limit: untouched
    after = deployments(nodes.nodes["node-b"])

    # B again, by hand: the rolled-back target is not taken again (no deploy, no boot)
    r = step(nodes, "node-b", "bad", "--format", "json")
    assert r.returncode == 1, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert (out["state"], out["booted"], out["previous"], out["moved"]) == (
        "rolled-back", v1, v1, False)
    failed = {k: v for k, v in checks(out["health"]).items() if not v[0]}
    assert failed == {"systemd": (False, f"system state degraded (failed: {BROKEN_UNIT})")}
    assert not any("booted deployment" in n for n in out["notes"])
    assert deployments(nodes.nodes["node-b"]) == after
