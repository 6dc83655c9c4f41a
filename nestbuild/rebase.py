"""Move a node onto an image: by digest, signature-enforced, checked first.

``plan()`` resolves the image to a digest and runs the checks a node cannot afford to fail
half-way (bootable, architecture, room); ``execute()`` runs the node tool and reads its status
before and after. bootc and rpm-ostree verify the signature themselves with the node's
``policy.json`` (``--enforce-container-sigpolicy`` / ``ostree-image-signed:``); nestbuild
never builds a command line without that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nestbuild import bootc, rpmostree
from nestbuild.errors import EXIT_FAILED, NestbuildError
from nestbuild.host import Host
from nestbuild.image.model import host_platform
from nestbuild.nodestatus import NodeStatus
from nestbuild.skopeo import RemoteImage

VIAS = ("bootc", "rpm-ostree")


class RebaseRefused(NestbuildError):
    """A pre-check failed; nothing was changed on the node."""

    exit_code = EXIT_FAILED


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Plan:
    via: str
    host: Host
    image: RemoteImage
    command: list[str]
    checks: list[Check] = field(default_factory=list)

    @property
    def pinned(self) -> str:
        return f"{repository(self.image.name)}@{self.image.digest}"

    def to_json(self) -> dict[str, Any]:
        return {"via": self.via, "host": str(self.host), "image": self.image.name,
                "digest": self.image.digest, "command": self.command,
                "checks": [c.to_json() for c in self.checks]}


def repository(name: str) -> str:
    """``reg:5000/nodes/base:v1`` -> ``reg:5000/nodes/base`` (a registry port is not a tag)."""
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def plan(image: RemoteImage, *, via: str, host: Host, apply: bool,
         node_arch: str | None = None, node_free: int | None = None) -> Plan:
    """The command to run and the checks it passed; raises RebaseRefused on a failed check."""
    pinned = f"{repository(image.name)}@{image.digest}"
    if via not in VIAS:
        raise NestbuildError(f"--via {via}: expected one of {', '.join(VIAS)}")
    if via == "bootc":
        command = bootc.switch_argv(pinned, apply=apply)
    else:
        command = rpmostree.rebase_argv(pinned, reboot=apply)
    p = Plan(via, host, image, command)
    bootable = image.labels.get("containers.bootc") == "1" or image.labels.get(
        "ostree.bootable") == "true"
    p.checks.append(Check("bootable", bootable,
                          "containers.bootc/ostree.bootable label" if bootable
                          else "no containers.bootc=1 or ostree.bootable=true label"))
    arch = node_arch or host_platform()[1]
    p.checks.append(Check("architecture", image.architecture == arch,
                          f"image {image.architecture}, node {arch}"))
    if node_free is not None:
        need = image.size * 2  # compressed layers, unpacked into the repository
        p.checks.append(Check("room", node_free >= need,
                              f"{node_free // 2**20} MiB free, about {need // 2**20} MiB needed"))
    how = "--enforce-container-sigpolicy" if via == "bootc" else "ostree-image-signed:"
    p.checks.append(Check("signature", True, f"enforced by the node's policy.json ({how})"))
    failed = [c for c in p.checks if not c.ok]
    if failed:
        raise RebaseRefused("refused before staging: " + "; ".join(
            f"{c.name}: {c.detail}" for c in failed))
    return p


def node_facts(host: Host) -> tuple[str, int]:
    """The node's OCI architecture and free bytes where deployments live."""
    machine = host.run(["uname", "-m"], what=f"reading the architecture of {host}")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(
        machine.stdout.decode().strip(), machine.stdout.decode().strip())
    df = host.run(["df", "-B1", "--output=avail", "/sysroot"], what=f"reading free space on {host}")
    free = int(df.stdout.decode().split()[-1])
    return arch, free


def status(via: str, host: Host) -> NodeStatus:
    return bootc.status(host) if via == "bootc" else rpmostree.status(host)


def execute(p: Plan, progress: Callable[[str], None] | None = None
            ) -> tuple[NodeStatus, NodeStatus]:
    say = progress or (lambda _m: None)
    before = status(p.via, p.host)
    say(f"running {' '.join(p.command)} on {p.host}")
    p.host.run(p.command, what=f"{p.via} on {p.host}")
    after = status(p.via, p.host)
    return before, after
