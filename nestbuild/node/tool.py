"""A node moved by its own tool, bootc or rpm-ostree, on this machine or over ssh.

The command lines live in :mod:`nestbuild._tools.bootc` and :mod:`nestbuild._tools.rpmostree`;
this is what both do with them: read the status, plan a signature-enforced switch by digest
with its checks, run it with the status before and after, roll back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from nestbuild._image.model import host_platform
from nestbuild._tools import bootc, rpmostree
from nestbuild.errors import NestbuildError
from nestbuild.node.checks import Check, Plan, RebaseRefused, room_check
from nestbuild.node.host import Host
from nestbuild.node.remote import RemoteImage, remote_image
from nestbuild.node.status import NodeStatus

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess


@dataclass
class ToolRebase:
    """A rebase by bootc or rpm-ostree: the plan, and the status around it (None: dry run)."""

    plan: Plan
    before: NodeStatus | None = None
    after: NodeStatus | None = None

    def to_json(self) -> dict[str, Any]:
        if self.before is None or self.after is None:
            return self.plan.to_json()
        return {"plan": self.plan.to_json(), "before": self.before.to_json(),
                "after": self.after.to_json()}

    def lines(self) -> list[str]:
        if self.before is None or self.after is None:
            return [f"would run on {self.plan.host}: {' '.join(self.plan.command)}",
                    *(c.line() for c in self.plan.checks)]
        return ["before:", *self.before.lines(), "after:", *self.after.lines()]


class ToolBackend(ABC):
    """What bootc and rpm-ostree have in common; each subclass names its command lines."""

    via: ClassVar[str]
    #: How the tool is told to verify signatures with the node's policy.json.
    enforced_by: ClassVar[str]

    def __init__(self, host: Host) -> None:
        self.host = host

    @abstractmethod
    def switch_argv(self, pinned: str, *, apply: bool) -> list[str]:
        """The signature-enforced switch to ``pinned`` (``REG/REPO@DIGEST``)."""

    @abstractmethod
    def rollback_argv(self, *, apply: bool) -> list[str]:
        """Make the previous deployment the default (and reboot into it with ``apply``)."""

    @abstractmethod
    def status(self) -> NodeStatus:
        """The node's deployments, as its tool reports them."""

    def facts(self) -> tuple[str, int]:
        """The node's OCI architecture and free bytes where deployments live."""
        host = self.host
        machine = host.run(["uname", "-m"], what=f"reading the architecture of {host}")
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(
            machine.stdout.decode().strip(), machine.stdout.decode().strip())
        df = host.run(["df", "-B1", "--output=avail", "/sysroot"],
                      what=f"reading free space on {host}")
        free = int(df.stdout.decode().split()[-1])
        return arch, free

    def plan(self, image: RemoteImage, *, apply: bool, node_arch: str | None = None,
             node_free: int | None = None) -> Plan:
        """The command to run and the checks it passed; raises RebaseRefused on a failed
        check. Without ``node_arch`` this machine's architecture counts; without
        ``node_free`` there is no room check."""
        p = Plan(self.via, self.host, image, [])
        p.command = self.switch_argv(p.pinned, apply=apply)
        bootable = image.labels.get("containers.bootc") == "1" or image.labels.get(
            "ostree.bootable") == "true"
        p.checks.append(Check("bootable", bootable,
                              "containers.bootc/ostree.bootable label" if bootable
                              else "no containers.bootc=1 or ostree.bootable=true label"))
        arch = node_arch or host_platform()[1]
        p.checks.append(Check("architecture", image.architecture == arch,
                              f"image {image.architecture}, node {arch}"))
        if node_free is not None:
            p.checks.append(room_check(node_free, image.size))
        p.checks.append(Check("signature", True,
                              f"enforced by the node's policy.json ({self.enforced_by})"))
        failed = [c for c in p.checks if not c.ok]
        if failed:
            raise RebaseRefused("refused before staging: " + "; ".join(
                f"{c.name}: {c.detail}" for c in failed))
        return p

    def check_update(self, image: str, *, access: RegistryAccess | None = None,
                     apply: bool = False) -> Plan:
        """Resolve ``image`` to its digest and run the checks, changing nothing. A node
        reached over ssh is asked for its architecture and room; this machine (a
        workstation, usually) is not."""
        return self._plan(image, access, apply, facts=self.host.target is not None)

    def rebase(self, image: str, *, access: RegistryAccess | None = None,
               apply: bool = False, dry_run: bool = False,
               progress: Callable[[str], None] | None = None) -> ToolRebase:
        if dry_run:
            return ToolRebase(self.check_update(image, access=access, apply=apply))
        p = self._plan(image, access, apply, facts=True)
        before = self.status()
        self.host.run(p.command, what=f"{self.via} on {self.host}")
        return ToolRebase(p, before, self.status())

    def rollback(self, *, apply: bool = False) -> NodeStatus:
        self.host.run(self.rollback_argv(apply=apply), what=f"{self.via} rollback on {self.host}")
        return self.status()

    def _plan(self, image: str, access: RegistryAccess | None, apply: bool, *,
              facts: bool) -> Plan:
        remote = remote_image(image, access)
        arch, free = self.facts() if facts else (None, None)
        return self.plan(remote, apply=apply, node_arch=arch, node_free=free)


class BootcBackend(ToolBackend):
    via = "bootc"
    enforced_by = "--enforce-container-sigpolicy"
    _soft_reboot: bool | None = None

    def switch_argv(self, pinned: str, *, apply: bool) -> list[str]:
        return bootc.switch_argv(pinned, apply=apply, soft_reboot=apply and self._soft())

    def rollback_argv(self, *, apply: bool) -> list[str]:
        return bootc.rollback_argv(apply=apply, soft_reboot=apply and self._soft())

    def _soft(self) -> bool:
        """A soft reboot where bootc offers one (asked once)."""
        if self._soft_reboot is None:
            self._soft_reboot = bootc.offers_soft_reboot(self.host)
        return self._soft_reboot

    def status(self) -> NodeStatus:
        return bootc.status(self.host)


class RpmOstreeBackend(ToolBackend):
    via = "rpm-ostree"
    enforced_by = "ostree-image-signed:"

    def switch_argv(self, pinned: str, *, apply: bool) -> list[str]:
        return rpmostree.rebase_argv(pinned, reboot=apply)

    def rollback_argv(self, *, apply: bool) -> list[str]:
        return rpmostree.rollback_argv(reboot=apply)

    def status(self) -> NodeStatus:
        return rpmostree.status(self.host)


TOOLS: dict[str, type[ToolBackend]] = {"bootc": BootcBackend, "rpm-ostree": RpmOstreeBackend}


def tool_backend(via: str, host: Host) -> ToolBackend:
    backend = TOOLS.get(via)
    if backend is None:
        raise NestbuildError(f"--via {via}: expected one of {', '.join(TOOLS)}")
    return backend(host)


def plan(image: RemoteImage, *, via: str, host: Host, apply: bool,
         node_arch: str | None = None, node_free: int | None = None) -> Plan:
    """The command bootc or rpm-ostree would run and the checks it passed; raises
    RebaseRefused on a failed check."""
    return tool_backend(via, host).plan(image, apply=apply, node_arch=node_arch,
                                        node_free=node_free)
