"""The fleet test bench works for real: a rebase over the real sshd moves exactly the node it
ran on; a node refuses an image signed with a key it does not trust. (Ansible reaching all 50
nodes over the sshd is what tests/integration/test_rollout.py's fifty-node rollout does.)"""

from __future__ import annotations

import json
import shlex

from tests.fixtures.fleet import FleetImages, MakeFleet


def test_rebase_over_ssh_moves_that_node_only(make_fleet: MakeFleet,
                                              fleet_images: FleetImages) -> None:
    fleet = make_fleet(3)
    target = fleet.nodes["node02"]
    v = fleet.host_vars("node02")
    # the registry through the environment only (no access flags), as nestbuild_env says
    env = json.loads(v["nestbuild_env"])
    r = fleet.ssh("node02", v["nestbuild_command"], "rebase", fleet_images.refs["v2"],
                  "--via", v["nestbuild_via"], "--sysroot", v["nestbuild_sysroot"],
                  "--trust", v["nestbuild_trust"], "-q", env=env)
    assert r.returncode == 0, r.stderr
    assert fleet.digests() == {"node01": fleet_images.digest("v1"),
                               "node02": fleet_images.digest("v2"),
                               "node03": fleet_images.digest("v1")}
    assert str(target) == v["nestbuild_sysroot"]
    # the copy's update kept the old deployment for rollback, and its /etc is v2's
    r = fleet.ssh("node02", v["nestbuild_command"], "node", "status", "--sysroot",
                  v["nestbuild_sysroot"], "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [(d["digest"], d["default"], d["rollback"]) for d in doc] == [
        (fleet_images.digest("v2"), True, False), (fleet_images.digest("v1"), False, True)]
    # the node's own /etc trust (baked into the image) verifies the next update: no --trust
    r = fleet.ssh("node02", v["nestbuild_command"], "rebase", fleet_images.refs["bad"],
                  "--via", "ostree", "--sysroot", v["nestbuild_sysroot"], "-q",
                  *shlex.split(v["nestbuild_registry_args"]))
    assert r.returncode == 0, r.stderr
    assert fleet.default_digest("node02") == fleet_images.digest("bad")


def test_a_node_refuses_the_foreign_key_image(make_fleet: MakeFleet,
                                             fleet_images: FleetImages) -> None:
    fleet = make_fleet(2)
    v = fleet.host_vars("node01")
    before = fleet.digests()
    for trust in (["--trust", v["nestbuild_trust"]], []):  # the trust dir, the node's /etc
        r = fleet.ssh("node01", v["nestbuild_command"], "rebase", fleet_images.refs["foreign"],
                      "--via", "ostree", "--sysroot", v["nestbuild_sysroot"], *trust, "-q",
                      *shlex.split(v["nestbuild_registry_args"]))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "signature check failed" in r.stderr and "not made by" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert fleet.digests() == before == dict.fromkeys(fleet.nodes, fleet_images.digest("v1"))
