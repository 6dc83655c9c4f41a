"""How RUN steps are isolated on this host: the OCI runtime when it can work, else chroot.

crun and runc need a pure cgroup v2 (or v1) hierarchy they can manage; on hybrid hosts and
in many CI containers they fail with "cgroups in hybrid mode not supported". chroot isolation
needs no runtime, so nestbuild falls back to it and says why, once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Isolation:
    mode: str
    #: Why nestbuild chose chroot (None when the runtime is used).
    reason: str | None = None


def detect() -> Isolation:
    forced = os.environ.get("NESTBUILD_ISOLATION") or os.environ.get("BUILDAH_ISOLATION")
    if forced:
        return Isolation(forced.lower(), None)
    if not (shutil.which("crun") or shutil.which("runc")):
        return Isolation("chroot", "no OCI runtime (crun or runc) is installed")
    cgroup = Path("/sys/fs/cgroup")
    if (cgroup / "unified").is_dir():
        return Isolation("chroot", "this host mounts cgroups in hybrid mode, which crun "
                                   "cannot run containers under")
    if not (cgroup / "cgroup.controllers").is_file() and not (cgroup / "memory").is_dir():
        return Isolation("chroot", "no usable cgroup hierarchy")
    if not os.access(cgroup / "cgroup.subtree_control", os.W_OK) and os.geteuid() == 0 and (
        cgroup / "cgroup.controllers").is_file():
        return Isolation("chroot", "the cgroup hierarchy is read-only here")
    return Isolation("oci", None)
