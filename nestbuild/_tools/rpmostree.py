"""The one small interface to rpm-ostree (command lines and status) on a node."""

from __future__ import annotations

from nestbuild.node.host import Host
from nestbuild.node.status import NodeStatus, parse_rpm_ostree


def rebase_argv(image: str, *, reboot: bool = False) -> list[str]:
    """``ostree-image-signed:`` makes rpm-ostree verify with the node's policy.json."""
    return ["rpm-ostree", "rebase", *(["--reboot"] if reboot else []),
            f"ostree-image-signed:docker://{image}"]


def rollback_argv(*, reboot: bool = False) -> list[str]:
    return ["rpm-ostree", "rollback", *(["--reboot"] if reboot else [])]


def status(host: Host) -> NodeStatus:
    out = host.run(["rpm-ostree", "status", "--json"],
                   what=f"reading rpm-ostree status on {host}")
    return parse_rpm_ostree(out.stdout.decode())
