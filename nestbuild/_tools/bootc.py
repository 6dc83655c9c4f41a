"""The one small interface to bootc (command lines and status) on a node."""

from __future__ import annotations

from nestbuild.node.host import Host
from nestbuild.node.status import NodeStatus, parse_bootc


def switch_argv(image: str, *, apply: bool = False, transport: str = "registry") -> list[str]:
    """Always signature-enforced: without the flag bootc stores the image unverified."""
    argv = ["bootc", "switch", "--enforce-container-sigpolicy", "--transport", transport]
    if apply:
        argv.append("--apply")
    return [*argv, image]


def rollback_argv(*, apply: bool = False) -> list[str]:
    return ["bootc", "rollback", *(["--apply"] if apply else [])]


def status(host: Host) -> NodeStatus:
    out = host.run(["bootc", "status", "--format=json"], what=f"reading bootc status on {host}")
    return parse_bootc(out.stdout.decode())
