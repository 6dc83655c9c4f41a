"""`nestbuild rollout` for real: Ansible moves a fleet of ostree-sysroot nodes over a real
sshd, in waves, through the per-node step, with health gates and rollback."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from nestbuild.node import deploy
from tests.fixtures.cli import nestbuild
from tests.fixtures.common import run_in_pty
from tests.fixtures.fleet import HEALTH_CMD, Fleet, FleetImages, MakeFleet

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.ansible]

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas" /
                     "rollout.schema.json").read_text())


def tagged(fleet: Fleet, image: str) -> str:
    """``docker://REPO:TAG``: the rollout resolves the tag itself."""
    return f"docker://{fleet.images.repo}:{image}"


def argv(fleet: Fleet, image: str, state: Path, *args: str | Path) -> list[str | Path]:
    return ["rollout", tagged(fleet, image), "--inventory", fleet.inventory,
            "--trust", fleet.images.trust, "--state", state, *fleet.images.registry_args(),
            *args]


def rollout(fleet: Fleet, image: str, *args: str | Path, state: Path, expect: int = 0
            ) -> dict[str, Any]:
    r = nestbuild(*argv(fleet, image, state, "--format", "json", *args),
                  env=fleet.ansible_env(), check=False)
    assert r.stdout, r.stderr[-3000:]
    report: dict[str, Any] = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    assert r.returncode == expect, json.dumps(report, indent=1)[-6000:]
    return report


def deployments(fleet: Fleet, name: str) -> list[tuple[str | None, int]]:
    return [(d.digest, d.serial) for d in deploy.deployments(fleet.nodes[name])]


def test_fifty_nodes_move_in_waves(make_fleet: MakeFleet, fleet_images: FleetImages,
                                   tmp_path: Path) -> None:
    fleet = make_fleet(50)
    v1, v2 = fleet_images.digest("v1"), fleet_images.digest("v2")
    state = tmp_path / "state.json"
    began = time.monotonic()
    report = rollout(fleet, "v2", "--max-unavailable", "10", "--health-cmd", HEALTH_CMD,
                     state=state)
    took = time.monotonic() - began
    assert report["status"] == "completed" and report["digest"] == v2
    assert [len(w["nodes"]) for w in report["waves"]] == [1, 10, 10, 10, 10, 9]
    assert report["waves"][0]["nodes"] == ["node01"]  # the canary: the inventory's first
    assert sorted(report["moved"]) == sorted(fleet.nodes)
    assert report["rolledBack"] == report["failed"] == report["notReached"] == []
    # the pre-flight read every node: all 50 run v1, and the changelog says what changes
    [group] = report["versions"]
    assert group["digest"] == v1 and group["count"] == 50
    assert group["changelog"] is not None
    # every node's default deployment is the target, its previous one kept for rollback,
    # each moved exactly once
    for name in fleet.nodes:
        assert deployments(fleet, name) == [(v2, 0), (v1, 0)], name
        node = report["nodes"][name]
        assert node["state"] == "healthy" and node["previous"] == v1 and node["booted"] == v2
        assert node["step"]["moved"] is True
    status = nestbuild("rollout", "status", "--state", state, "--format", "json", check=True)
    assert json.loads(status.stdout)["status"] == "completed"
    waves = len(report["waves"])
    print(f"\n50 nodes in {waves} waves: {took:.1f} s "
          f"(ceil(49 / 10) + 1 canary = {math.ceil(49 / 10) + 1} waves)")


def test_a_bad_image_is_rolled_back_on_the_canary_and_the_rollout_halts(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(50)
    v1, bad = fleet_images.digest("v1"), fleet_images.digest("bad")
    report = rollout(fleet, "bad", "--max-unavailable", "10", "--health-cmd", HEALTH_CMD,
                     "--health-timeout", "3s", "--no-preflight", state=tmp_path / "state.json",
                     expect=1)
    assert report["status"] == "halted"
    assert report["rolledBack"] == ["node01"] and report["moved"] == []
    assert sorted(report["notReached"]) == sorted(set(fleet.nodes) - {"node01"})
    canary = report["nodes"]["node01"]
    assert canary["previous"] == v1 and canary["booted"] == v1
    failed = [c for c in canary["step"]["health"]["checks"] if not c["ok"]]
    assert [c["check"] for c in failed] == [f"cmd: {HEALTH_CMD}"]
    # the canary runs v1 again (bad kept as the rollback deployment); nobody else was touched
    assert [d for d, _ in deployments(fleet, "node01")] == [v1, bad]
    for name in set(fleet.nodes) - {"node01"}:
        assert deployments(fleet, name) == [(v1, 0)], name
    # a halt is the rollout's decision, not an interruption: --resume does not undo it
    again = nestbuild(*argv(fleet, "bad", tmp_path / "state.json", "--resume"),
                      env=fleet.ansible_env(), check=False)
    assert again.returncode == 2 and "halted on purpose" in again.stderr, again.stderr


def test_a_rollout_killed_mid_wave_resumes_and_moves_nobody_twice(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(10)
    v1, v2 = fleet_images.digest("v1"), fleet_images.digest("v2")
    state = tmp_path / "state.json"
    cmd = [sys.executable, "-m", "nestbuild",
           *map(str, argv(fleet, "v2", state, "--max-unavailable", "3", "--no-preflight",
                          "--health-cmd", HEALTH_CMD))]
    proc = subprocess.Popen(cmd, env=fleet.ansible_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            seen = json.loads(state.read_text())
            healthy = [n for n, s in seen["nodes"].items() if s["state"] == "healthy"]
            if len(healthy) >= 2:  # the canary and at least one of wave 2: mid-rollout
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the rollout ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err.decode()[-2000:]
    interrupted = json.loads(state.read_text())
    assert interrupted["status"] == "interrupted"
    done_before = {n for n, s in interrupted["nodes"].items() if s["state"] == "healthy"}
    assert done_before and len(done_before) < 10
    assert "--resume" in interrupted["message"]

    report = rollout(fleet, "v2", "--resume", state=state)
    assert report["status"] == "completed"
    assert sorted(report["moved"]) == sorted(fleet.nodes)
    for name in fleet.nodes:
        # one deployment of v2 per node (a second would have serial 1, or three entries)
        assert deployments(fleet, name) == [(v2, 0), (v1, 0)], name
    for name in done_before:  # the resumed run did not even visit them
        assert report["nodes"][name]["finished"] == interrupted["nodes"][name]["finished"]
    done = rollout(fleet, "v2", "--resume", state=state)
    assert done["status"] == "completed" and "nothing to resume" in done["notes"][-1]


def test_an_image_signed_with_another_key_is_refused_before_any_node(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    state = tmp_path / "state.json"
    r = nestbuild(*argv(fleet, "foreign", state), env=fleet.ansible_env(), check=False)
    assert r.returncode == 1
    assert "refused by the nodes' policy" in r.stderr and "no node was touched" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not state.exists()
    for name in fleet.nodes:
        assert deployments(fleet, name) == [(fleet_images.digest("v1"), 0)]


def test_a_dry_run_shows_the_waves_and_what_changes_per_version(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(3)
    v1, v2 = fleet_images.digest("v1"), fleet_images.digest("v2")
    moved = fleet.ssh("node03", str(Path(sys.executable).parent / "nestbuild"), "rebase",
                      fleet_images.refs["v2"], "--via", "ostree", "--sysroot",
                      str(fleet.nodes["node03"]), "-q", *fleet_images.registry_args())
    assert moved.returncode == 0, moved.stderr
    report = rollout(fleet, "v2", "--dry-run", "--canary", "1", "--max-unavailable", "2",
                     state=tmp_path / "state.json")
    assert report["status"] == "dry-run"
    assert [w["nodes"] for w in report["waves"]] == [["node01"], ["node02", "node03"]]
    groups = {g["digest"]: g for g in report["versions"]}
    assert groups[v1]["nodes"] == ["node01", "node02"] and groups[v1]["changelog"]
    assert groups[v2]["nodes"] == ["node03"] and groups[v2]["changelog"] is None
    assert not (tmp_path / "state.json").exists()
    assert fleet.digests() == {"node01": v1, "node02": v1, "node03": v2}
    table = nestbuild(*argv(fleet, "v2", tmp_path / "state.json", "--dry-run",
                            "--max-unavailable", "2"),
                      env=fleet.ansible_env(), check=True).stdout
    assert "2 node(s) run sha256:" in table and "1 node(s) run the target already" in table
    assert "canary: node01" in table and "dry run: 3 node(s) in 2 wave(s)" in table


def test_the_emitted_playbook_runs_with_ansible_alone(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    out = tmp_path / "playbook"
    report = rollout(fleet, "v2", "--emit-playbook", out, "--health-cmd", HEALTH_CMD,
                     "--max-unavailable", "1", state=tmp_path / "state.json")
    assert report["status"] == "planned"
    assert {"rollout.yml", "vars.json"} <= {p.name for p in out.iterdir()}
    assert fleet.digests() == dict.fromkeys(fleet.nodes, fleet_images.digest("v1"))
    playbook = Path(sys.executable).parent / "ansible-playbook"
    r = subprocess.run([playbook, "-i", fleet.inventory, out / "rollout.yml",
                        "-e", f"@{out / 'vars.json'}"], env=fleet.ansible_env(),
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    assert r.returncode == 0, r.stdout[-3000:]
    assert fleet.digests() == dict.fromkeys(fleet.nodes, fleet_images.digest("v2"))


def test_drain_uncordons_the_node_also_when_it_fails(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    """No Kubernetes API server runs here: ``nestbuild_kubectl`` points at a script that
    stands in for kubectl and records what it was asked, on the controller, as kubectl
    would run."""
    fleet = make_fleet(2)
    calls = tmp_path / "kubectl.calls"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n")
    kubectl.chmod(0o755)
    with fleet.inventory.open("a") as f:
        f.write(f"\n[fleet:vars]\nnestbuild_kubectl={kubectl}\n")
    report = rollout(fleet, "bad", "--drain", "--health-cmd", HEALTH_CMD,
                     "--health-timeout", "3s", "--no-preflight", state=tmp_path / "state.json",
                     expect=1)
    assert report["rolledBack"] == ["node01"] and report["notReached"] == ["node02"]
    assert calls.read_text().splitlines() == [
        "drain node01 --ignore-daemonsets --delete-emptydir-data --timeout 600s",
        "uncordon node01"]


def test_planning_five_thousand_hosts_reaches_none_of_them(
        fleet_images: FleetImages, tmp_path: Path) -> None:
    """Hosts on TEST-NET-1 (192.0.2.0/24, never routed): any connection would fail the
    command; planning reads the inventory only."""
    inventory = tmp_path / "fleet.ini"
    lines = ["[nodes]"] + [f"node{i:04d} ansible_host=192.0.2.{i % 250 + 1}"
                           for i in range(5000)]
    inventory.write_text("\n".join([*lines, "[nodes:vars]", "nestbuild_via=bootc", ""]))
    began = time.monotonic()
    r = nestbuild("rollout", f"docker://{fleet_images.repo}:v2", "--inventory", inventory,
                  "--trust", fleet_images.trust, "--dry-run", "--no-preflight",
                  "--max-unavailable", "5%", "--format", "json",
                  *fleet_images.registry_args(), env={**os.environ}, check=True)
    took = time.monotonic() - began
    report = json.loads(r.stdout)
    assert [len(w["nodes"]) for w in report["waves"]][:3] == [1, 250, 250]
    assert sum(len(w["nodes"]) for w in report["waves"]) == 5000
    assert report["versions"] == [] and report["refused"] == {}
    print(f"\nplanning 5,000 hosts: {took:.2f} s (one process, registry check included)")


def test_on_a_terminal_the_waves_and_nodes_are_shown_live(
        make_fleet: MakeFleet, fleet_images: FleetImages, tmp_path: Path) -> None:
    fleet = make_fleet(2)
    code, out = run_in_pty([sys.executable, "-m", "nestbuild",
                            *map(str, argv(fleet, "v2", tmp_path / "state.json",
                                           "--no-preflight", "--health-cmd", HEALTH_CMD))],
                           [], env={**fleet.ansible_env(), "COLUMNS": "120"})
    text = out.decode(errors="replace")
    assert code == 0, text[-3000:]
    assert "canary  1/1 healthy" in text and "wave 2  1/1 healthy" in text
    assert "\x1b[" in text  # drawn in place with the terminal's controls, not as log lines
    assert "completed: 2 healthy" in text


def test_soak_holds_each_wave_before_the_next(make_fleet: MakeFleet, fleet_images: FleetImages,
                                              tmp_path: Path) -> None:
    fleet = make_fleet(3)
    report = rollout(fleet, "v2", "--soak", "4s", "--max-unavailable", "1", "--no-preflight",
                     state=tmp_path / "state.json")
    assert report["status"] == "completed" and report["options"]["soak"] == 4
    nodes = report["nodes"]
    for before, after in (("node01", "node02"), ("node02", "node03")):
        # the next wave starts only once the last one has finished and soaked
        assert nodes[after]["started"] - nodes[before]["finished"] >= 4, (before, after)


def test_the_kubernetes_engine_writes_plans_for_the_verified_digest(
        fleet_images: FleetImages, tmp_path: Path) -> None:
    """The whole command for Kubernetes: the tag resolved and verified as for Ansible, then
    system-upgrade-controller Plans (valid for the Plan CRD) that move nodes onto that digest
    with the same per-node step (no API server runs here: the Plans are the result)."""
    import yaml

    from tests.unit.test_rollout_kubernetes import errors

    out = tmp_path / "plans.yaml"
    r = nestbuild("rollout", f"docker://{fleet_images.repo}:v2", "--engine", "kubernetes",
                  "--emit-plan", out, "--trust", fleet_images.trust, "--canary", "1",
                  "--max-unavailable", "3", "--drain", "--soak", "1m",
                  "--health-cmd", HEALTH_CMD, "--format", "json",
                  *fleet_images.registry_args(), check=True)
    report = json.loads(r.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["engine"] == "kubernetes" and report["written"] == [str(out)]
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["Plan", "Plan"]
    for plan in docs:
        assert errors(plan) == [], plan["metadata"]["name"]
        assert plan["spec"]["cordon"] is True and "drain" in plan["spec"]
        assert any(fleet_images.refs["v2"] in arg for arg in plan["spec"]["upgrade"]["args"])
    assert docs[1]["spec"]["concurrency"] == 3
    refused = nestbuild("rollout", f"docker://{fleet_images.repo}:foreign", "--engine",
                        "kubernetes", "--emit-plan", tmp_path / "no.yaml", "--trust",
                        fleet_images.trust, *fleet_images.registry_args(), check=False)
    assert refused.returncode == 1 and not (tmp_path / "no.yaml").exists()
    percent = nestbuild("rollout", f"docker://{fleet_images.repo}:v2", "--engine",
                        "kubernetes", "--emit-plan", tmp_path / "p.yaml", "--max-unavailable",
                        "10%", "--trust", fleet_images.trust, *fleet_images.registry_args(),
                        check=False)
    assert percent.returncode == 2 and "give a count" in percent.stderr
