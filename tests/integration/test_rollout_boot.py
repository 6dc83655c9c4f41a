"""Nodes whose reboot is real: `nestbuild node upgrade --boot` boots each ostree sysroot under
qemu (software emulation) after it moved it, and the health gate reads what came up on the
serial console: the deployment that booted, the units that failed, the image's marker. A bad
image is rolled back after a real boot and the rollback is booted too; then `nestbuild
rollout` on Ansible moves the same nodes, each step booting its node.

Boots are slow (a minute or more each), so one test walks through the whole story: five boots.
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

    # B: the bad image boots degraded; the node is rolled back and the rollback booted
    r = step(nodes, "node-b", "bad")  # the table and the progress lines
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert r.stdout.startswith(f"rolled-back: {bad} (was {v1})"), r.stdout
    assert f"FAIL  systemd\n      system state degraded (failed: {BROKEN_UNIT})" in r.stdout, \
        r.stdout
    checksum = {digest: cs for cs, _, digest in deployments(nodes.nodes["node-b"])}
    booted = re.findall(r"booting nestos ([0-9a-f]{12}) under qemu", r.stderr)
    assert booted == [checksum[bad][:12], checksum[v1][:12]], r.stderr
    assert nodes.default_digest("node-b") == v1
    after = deployments(nodes.nodes["node-b"])

    # B again: the rolled-back target is not taken again (no deploy, no boot)
    r = step(nodes, "node-b", "bad", "--format", "json")
    assert r.returncode == 1, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert (out["state"], out["booted"], out["previous"], out["moved"]) == (
        "rolled-back", v1, v1, False)
    failed = {k: v for k, v in checks(out["health"]).items() if not v[0]}
    assert failed == {"systemd": (False, f"system state degraded (failed: {BROKEN_UNIT})")}
    assert deployments(nodes.nodes["node-b"]) == after

    # the same nodes through the rollout on Ansible: every step boots its node, A again too
    state = tmp_path / "rollout.json"
    r = nestbuild("rollout", f"docker://{images.repo}:good", "--inventory", nodes.inventory,
                  "--trust", images.trust, "--state", state, "--format", "json",
                  *images.registry_args(), "--canary", "0", "--max-unavailable", "2",
                  "--max-failures", "1", "--no-preflight", "--health-cmd", HEALTH_CMD,
                  "--health-timeout", "30s", env=nodes.ansible_env(), timeout=1800)
    assert r.returncode in (0, 1) and r.stdout, r.stderr[-3000:]
    report = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["status"] == "completed", json.dumps(report, indent=1)[-6000:]
    assert sorted(report["moved"]) == ["node-a", "node-b"]
    for name in ("node-a", "node-b"):
        node = report["nodes"][name]
        assert (node["state"], node["booted"]) == ("healthy", good)
        assert checks(node["step"]["health"])["systemd"] == (True, "running")  # booted
        assert nodes.default_digest(name) == good
    assert report["nodes"]["node-b"]["step"]["moved"] is True
    assert report["nodes"]["node-a"]["step"]["moved"] is False
