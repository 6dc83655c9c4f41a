"""Move a node onto an image: by digest, signature-enforced, checked first.

:func:`rebase` is the library call behind ``nestbuild rebase``; the node's backend
(:mod:`nestbuild.node.backend`) does the work. bootc and rpm-ostree verify the signature
themselves with the node's ``policy.json`` (``--enforce-container-sigpolicy`` /
``ostree-image-signed:``), and nestbuild never builds a command line without that; their
plan's checks (bootable, architecture, room) run first (:mod:`nestbuild.node.tool`). A local
ostree sysroot is checked against its policy by nestbuild before anything is written
(:mod:`nestbuild.node.sysroot`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nestbuild.node.backend import backend_for

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.node.sysroot import SysrootRebase
    from nestbuild.node.tool import ToolRebase


@dataclass(frozen=True)
class RebaseOptions:
    #: ``[docker://]REGISTRY/REPO[:TAG|@DIGEST]``
    image: str
    #: ``bootc``, ``rpm-ostree`` or ``ostree`` (a local sysroot).
    via: str = "bootc"
    #: ``ssh://[USER@]HOST[:PORT]`` for bootc and rpm-ostree; None for this machine.
    host: str | None = None
    #: The ostree sysroot for ``via="ostree"`` (created if missing).
    sysroot: Path | None = None
    #: The stateroot in the sysroot.
    osname: str = "nestos"
    #: Trust files (what ``write_trust`` writes) for a sysroot with no deployment yet.
    trust: Path | None = None
    #: Reboot into the new deployment once it is staged (bootc, rpm-ostree).
    apply: bool = False
    #: Resolve and check only: nothing is staged, fetched or deployed (every ``via``).
    dry_run: bool = False
    #: Registry access (authfile, cert-dir, tls-verify); None for the defaults.
    access: RegistryAccess | None = None


def rebase(options: RebaseOptions, progress: Callable[[str], None] | None = None
           ) -> ToolRebase | SysrootRebase:
    """Move the node onto ``options.image`` by digest, after its checks; raises
    RebaseRefused (nothing changed) when one fails."""
    backend = backend_for(options.via, host=options.host, sysroot=options.sysroot,
                          osname=options.osname, trust=options.trust)
    return backend.rebase(options.image, access=options.access, apply=options.apply,
                          dry_run=options.dry_run, progress=progress)
