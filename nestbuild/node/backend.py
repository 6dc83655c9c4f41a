"""How a node takes images: one interface, one implementation per way.

- ``bootc`` and ``rpm-ostree`` (:mod:`nestbuild.node.tool`): the node's own tool, here or over
  ssh, always by digest and signature-enforced by the node's policy.json;
- ``ostree`` (:mod:`nestbuild.node.sysroot`): a local ostree sysroot, checked against its
  policy by nestbuild and deployed by :mod:`nestbuild.node.deploy`.

Callers choose one with :func:`backend_for` and never test the name again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nestbuild.errors import NestbuildError, UsageError
from nestbuild.node.host import Host

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.node.checks import Plan
    from nestbuild.node.status import NodeStatus
    from nestbuild.node.sysroot import SysrootCheck, SysrootRebase, SysrootStatus
    from nestbuild.node.tool import ToolRebase

VIAS = ("bootc", "rpm-ostree", "ostree")


class Backend(Protocol):
    """A node: its deployments, moving it onto an image, and the way back."""

    @property
    def via(self) -> str:
        """``bootc``, ``rpm-ostree`` or ``ostree``."""
        ...

    def status(self) -> NodeStatus | SysrootStatus:
        """The node's deployments."""
        ...

    def check_update(self, image: str, *, access: RegistryAccess | None = None,
                     apply: bool = False) -> Plan | SysrootCheck:
        """Resolve ``image`` to its digest and run every check ``rebase`` runs first,
        changing nothing; RebaseRefused names the failed ones."""
        ...

    def rebase(self, image: str, *, access: RegistryAccess | None = None,
               apply: bool = False, dry_run: bool = False,
               progress: Callable[[str], None] | None = None) -> ToolRebase | SysrootRebase:
        """Move the node onto ``image`` by digest, after the checks."""
        ...

    def rollback(self, *, apply: bool = False) -> NodeStatus | SysrootStatus:
        """Make the previous deployment the default again; the status after."""
        ...


def backend_for(via: str | None = None, *, host: str | Host | None = None,
                sysroot: Path | None = None, osname: str = "nestos",
                trust: Path | None = None) -> Backend:
    """The backend for ``via`` (default: ``ostree`` with a sysroot, else ``bootc``).

    ``host`` (``ssh://[USER@]HOST[:PORT]``) is where bootc or rpm-ostree runs; ``sysroot``,
    ``osname`` and ``trust`` (the first deployment's trust files) are the ostree sysroot's.
    """
    if via is None:
        via = "ostree" if sysroot is not None else "bootc"
    if via == "ostree":
        from nestbuild.node.sysroot import SysrootBackend

        if sysroot is None:
            raise UsageError("--via ostree needs --sysroot DIR")
        return SysrootBackend(sysroot, osname, trust)
    if via not in VIAS:
        raise NestbuildError(f"--via {via}: expected one of {', '.join(VIAS)}")
    from nestbuild.node.tool import tool_backend

    return tool_backend(via, host if isinstance(host, Host) else Host.parse(host))


def node_status(via: str | None = None, *, host: str | Host | None = None,
                sysroot: Path | None = None) -> NodeStatus | SysrootStatus:
    """A node's deployments: bootc's or rpm-ostree's status (``host`` over ssh), or a local
    sysroot's."""
    return backend_for(via, host=host, sysroot=sysroot).status()


def rollback(via: str | None = None, *, host: str | Host | None = None,
             sysroot: Path | None = None, osname: str = "nestos",
             apply: bool = False) -> NodeStatus | SysrootStatus:
    """Make the previous deployment the default again (``apply``: reboot into it now);
    the status after."""
    return backend_for(via, host=host, sysroot=sysroot, osname=osname).rollback(apply=apply)
