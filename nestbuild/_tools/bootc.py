"""The one small interface to bootc (command lines and status) on a node."""

from __future__ import annotations

from nestbuild.errors import ToolError
from nestbuild.node.host import Host
from nestbuild.node.status import NodeStatus, parse_bootc


def switch_argv(image: str, *, apply: bool = False, transport: str = "registry",
                soft_reboot: bool = False) -> list[str]:
    """Always signature-enforced: without the flag bootc stores the image unverified.
    ``soft_reboot`` (bootc that offers it): a soft reboot where the kernel and its arguments
    stay, else a full one."""
    argv = ["bootc", "switch", "--enforce-container-sigpolicy", "--transport", transport]
    return [*argv, *_apply(apply, soft_reboot), image]


def rollback_argv(*, apply: bool = False, soft_reboot: bool = False) -> list[str]:
    return ["bootc", "rollback", *_apply(apply, soft_reboot)]


def _apply(apply: bool, soft_reboot: bool) -> list[str]:
    if not apply:
        return []
    return ["--apply", "--soft-reboot=auto"] if soft_reboot else ["--apply"]


def offers_soft_reboot(host: Host) -> bool:
    """Whether this bootc has ``--soft-reboot`` (newer ones do; an older one would refuse
    the whole command over the unknown option)."""
    try:
        out = host.run(["bootc", "switch", "--help"], what=f"reading bootc's options on {host}",
                       check=False)
    except ToolError:  # no bootc to ask (a plan made away from the node): the plain reboot
        return False
    return b"--soft-reboot" in out.stdout


def status(host: Host) -> NodeStatus:
    out = host.run(["bootc", "status", "--format=json"], what=f"reading bootc status on {host}")
    return parse_bootc(out.stdout.decode())
