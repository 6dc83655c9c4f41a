"""A local ostree sysroot as the node (``--via ostree --sysroot DIR``): checked against the
node's own policy by nestbuild, then deployed by :mod:`nestbuild.node.deploy`.

Trust comes from the trust directory when one is given (what ``nestbuild node trust``
writes: the operator's explicit word wins, and the result says so), else from the default
deployment's /etc. An image without trust files baked in leaves a node whose next update has
nothing to check against: the first deployment says so, and :func:`write_trust_to_sysroot`
(``nestbuild node trust --sysroot``) writes them into the default deployment's /etc. One
deploy at a time: the trust read from the default deployment must still be the default's when
the new deployment is made, so the check and the deploy hold the sysroot's lock together.

Paths are made absolute here, once: nothing below depends on the process's working
directory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild._image.model import host_platform
from nestbuild.errors import UsageError
from nestbuild.node.checks import Check, RebaseRefused, room_check
from nestbuild.node.trust import POLICY

if TYPE_CHECKING:
    from nestbuild._image.registry_source import RegistrySource
    from nestbuild._registry.access import RegistryAccess
    from nestbuild._registry.client import RegistryClient
    from nestbuild._registry.reference import RegistryRef
    from nestbuild.node.deploy import Deployment
    from nestbuild.node.policy import Verdict
    from nestbuild.node.trust import TrustSettings

Progress = Callable[[str], None]


@dataclass
class SysrootStatus:
    """A sysroot's deployments, default first; the second is the rollback target."""

    deployments: list[Deployment]

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self.deployments]

    def lines(self) -> list[str]:
        out = []
        for d in self.deployments:
            mark = "* " if d.default else ("  " if not d.rollback else "r ")
            out.append(f"{mark}{d.index}  {d.image or '?'}  {d.digest or '?'}  version "
                       f"{d.version}{'  (default)' if d.default else ''}"
                       f"{'  (rollback)' if d.rollback else ''}")
        return out


@dataclass
class SysrootCheck:
    """An image that passed the sysroot's checks: its policy verdict, bootable, this
    machine's architecture."""

    image: str
    digest: str
    verdict: Verdict
    trust_from: str
    checks: list[Check] = field(default_factory=list)
    #: One-line remarks for the operator (where the trust came from, what a later update
    #: will need).
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"via": "ostree", "image": self.image, "digest": self.digest,
                "trust": self.trust_from, "policy": self.verdict.to_json(),
                "checks": [c.to_json() for c in self.checks], "notes": self.notes}


@dataclass
class SysrootRebase:
    image: str
    digest: str
    verdict: Verdict
    trust_from: str
    before: list[Deployment]
    after: list[Deployment]
    #: Blob bytes fetched: a config-only update fetches only its new layers.
    bytes_downloaded: int
    #: One-line remarks for the operator, as :attr:`SysrootCheck.notes`.
    notes: list[str] = field(default_factory=list)
    #: Checked only (``--dry-run``): nothing was fetched or deployed; ``after`` is ``before``.
    dry_run: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"via": "ostree", "image": self.image, "digest": self.digest,
                "trust": self.trust_from, "policy": self.verdict.to_json(),
                "bytesDownloaded": self.bytes_downloaded, "notes": self.notes,
                "dryRun": self.dry_run,
                "before": [d.to_json() for d in self.before],
                "after": [d.to_json() for d in self.after]}

    def lines(self) -> list[str]:
        verified = (f"verified: {self.verdict.reason} (scope {self.verdict.scope}; trust from "
                    f"{self.trust_from})")
        if self.dry_run:
            return [verified, f"would deploy {self.image} ({self.digest}); dry run, the "
                              "sysroot is unchanged", *SysrootStatus(self.before).lines()]
        return [verified, *SysrootStatus(self.after).lines()]


def _free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would: its nearest existing
    parent, for a sysroot not made yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def absolute(path: Path) -> Path:
    """``path`` from the working directory of now, symlinks left as they are."""
    return Path(os.path.abspath(path))


def write_trust_to_sysroot(settings: TrustSettings, sysroot: Path, osname: str = "nestos"
                           ) -> list[Path]:
    """``nestbuild node trust --sysroot``: the trust files written into the default
    deployment's /etc, so that its later updates are checked without ``--trust``."""
    return SysrootBackend(sysroot, osname).write_trust(settings)


def deployment_root(sysroot: Path, osname: str, checksum: str, serial: int) -> Path:
    return sysroot / "ostree" / "deploy" / osname / "deploy" / f"{checksum}.{serial}"


class SysrootBackend:
    via = "ostree"

    def __init__(self, sysroot: Path, osname: str = "nestos", trust: Path | None = None
                 ) -> None:
        self.sysroot = absolute(sysroot)
        self.osname = osname
        self.trust = None if trust is None else absolute(trust)

    def status(self) -> SysrootStatus:
        from nestbuild.node import deploy

        return SysrootStatus(deploy.deployments(self.sysroot))

    def rollback(self, *, apply: bool = False) -> SysrootStatus:
        """The previous deployment becomes the default (``apply`` has no meaning here: the
        sysroot is not booted)."""
        from nestbuild.node import deploy

        deploy.rollback(self.sysroot, self.osname)
        return self.status()

    def check_update(self, image: str, *, access: RegistryAccess | None = None,
                     apply: bool = False) -> SysrootCheck:
        """Resolve ``image`` and check it as :meth:`rebase` does, writing nothing."""
        from nestbuild._registry import reference
        from nestbuild._registry.access import RegistryAccess
        from nestbuild.node import deploy

        target = reference.parse(image)
        exists = self.sysroot.is_dir()
        with deploy.sysroot_lock(self.sysroot) if exists else contextlib.nullcontext():
            root, trust_from, notes = self._trust(self._deployments())
            with (access or RegistryAccess()).client(target.host) as client:
                checked = self._check(image, target, client, root, trust_from,
                                      lambda _m: None)[0]
        checked.notes = notes
        return checked

    def rebase(self, image: str, *, access: RegistryAccess | None = None,
               apply: bool = False, dry_run: bool = False,
               progress: Progress | None = None) -> SysrootRebase:
        """Verify ``image`` under the node's policy, then deploy it into the sysroot by
        digest. Refusals raise RebaseRefused before anything in the sysroot is touched.
        ``dry_run`` runs the same checks and stops there (:meth:`check_update`); ``apply``
        has no meaning here (the sysroot is not booted)."""
        from nestbuild._registry import reference
        from nestbuild._registry.access import RegistryAccess
        from nestbuild.node import deploy

        if dry_run:
            checked = self.check_update(image, access=access)
            current = self._deployments() if self.sysroot.is_dir() else []
            return SysrootRebase(checked.image, checked.digest, checked.verdict,
                                 checked.trust_from, current, current, 0, checked.notes,
                                 dry_run=True)
        say = progress or (lambda _m: None)
        target = reference.parse(image)
        with deploy.sysroot_lock(self.sysroot, say):
            before = self._deployments()
            root, trust_from, notes = self._trust(before)
            with (access or RegistryAccess()).client(target.host) as client:
                checked, src = self._check(image, target, client, root, trust_from, say)
                name = str(target)  # the tag as given (or the digest, the same as pinned)
                deploy.deploy_image(src, self.sysroot, self.osname, origin_ref=name,
                                    progress=say)
                fetched = client.bytes_downloaded
            after = deploy.deployments(self.sysroot)
            if after and not self._has_policy(after[0]):
                notes.append(
                    f"{name} has no /{POLICY} of its own: every later update of this node "
                    f"needs --trust DIR too, or write the trust into the node once with "
                    f"`nestbuild node trust REPO --key K.pub --sysroot {self.sysroot}`")
        return SysrootRebase(name, checked.digest, checked.verdict, trust_from, before, after,
                             fetched, notes)

    def _deployments(self) -> list[Deployment]:
        from nestbuild._tools import ostree
        from nestbuild.node import deploy

        if (ostree.repo_of(self.sysroot) / "config").is_file():
            return deploy.deployments(self.sysroot)
        return []

    def _root_of(self, d: Deployment) -> Path:
        return deployment_root(self.sysroot, self.osname, d.checksum, d.serial)

    def _has_policy(self, d: Deployment) -> bool:
        """Whether the deployment's /etc has a policy.json (a regular file, reached without
        following a symlink)."""
        from nestbuild._util import beneath

        try:
            with beneath.Root(self._root_of(d)) as root:
                return root.read_file("/" + POLICY, 1) is not None
        except (OSError, beneath.SymlinkInPath):
            return False

    def _trust(self, deployments: list[Deployment]) -> tuple[Path, str, list[str]]:
        """Where the policy comes from, and a note when that is not the obvious place: the
        trust directory when one is given, else the default deployment's root."""
        current = next((d for d in deployments if d.default), None)
        if self.trust is not None:
            notes: list[str] = []
            if current is not None:
                which = current.digest or current.checksum[:12]
                notes.append(f"trust from --trust {self.trust}, not from the default "
                             f"deployment's /etc ({which})")
            return self.trust, str(self.trust), notes
        if current is not None:
            which = current.digest or current.checksum[:12]
            if not self._has_policy(current):
                raise UsageError(
                    f"{self.sysroot}: the default deployment ({which}) has no /{POLICY} to "
                    "check the update against; pass --trust DIR, or write the trust into the "
                    "node once with `nestbuild node trust REPO --key K.pub --sysroot "
                    f"{self.sysroot}`")
            return self._root_of(current), f"the default deployment's /etc ({which})", []
        raise UsageError(f"{self.sysroot}: no deployment yet, so no trust to check against; "
                         "pass --trust DIR (written by `nestbuild node trust`)")

    def write_trust(self, settings: TrustSettings) -> list[Path]:
        """Write the trust files into the default deployment's /etc (extending its
        policy.json), beneath its root and atomically, under the sysroot's lock."""
        from nestbuild._util import beneath
        from nestbuild.node import deploy
        from nestbuild.node import trust as trust_mod

        if not self.sysroot.is_dir():
            raise UsageError(f"{self.sysroot}: no such sysroot")
        with deploy.sysroot_lock(self.sysroot):
            current = next((d for d in self._deployments() if d.default), None)
            if current is None:
                raise UsageError(f"{self.sysroot}: no deployment to write the trust into; "
                                 "deploy one first with `nestbuild rebase --via ostree "
                                 "--trust DIR`")
            shown = self._root_of(current)
            try:
                root = beneath.Root(shown)
            except OSError as exc:
                raise UsageError(f"{shown}: cannot open it ({exc.strerror})") from None
            with root:
                files = settings.files(trust_mod.read_policy_beneath(root, shown))
                return trust_mod.write_tree_beneath(
                    root, {rel.lstrip("/"): v for rel, v in files.items()}, shown)

    def _check(self, image: str, target: RegistryRef, client: RegistryClient, root: Path,
               trust_from: str, say: Progress) -> tuple[SysrootCheck, RegistrySource]:
        """The policy first (an image it refuses is never read further), then bootable and
        the architecture; the source to deploy from, pinned by digest."""
        from nestbuild._image.reference import ImageRef
        from nestbuild._image.registry_source import RegistrySource
        from nestbuild.node import policy as nodepolicy

        digest = target.digest or client.resolve(target.repo, target.ref)
        if digest is None:
            raise UsageError(f"{image}: no such image in the registry")
        pinned = target.with_digest(digest)
        say(f"checking {pinned} against the policy from {trust_from}")
        verdict = nodepolicy.check(pinned, root, client)
        if not verdict.accepted:
            raise RebaseRefused(f"{pinned}: refused: {verdict.reason}; the sysroot is "
                                "unchanged")
        src = RegistrySource(ImageRef.of_registry(pinned), client=client)
        if not src.config.bootable:
            raise RebaseRefused(f"{pinned}: not bootable (no containers.bootc=1 or "
                                "ostree.bootable=true label); the sysroot is unchanged")
        arch = host_platform()[1]
        if src.config.architecture != arch:
            raise RebaseRefused(f"{pinned}: built for {src.config.architecture}, this node is "
                                f"{arch}; the sysroot is unchanged")
        room = room_check(_free_bytes(self.sysroot),
                          sum(layer.size for layer in src.manifest.layers))
        if not room.ok:
            raise RebaseRefused(f"{pinned}: no room in {self.sysroot}: {room.detail}; the "
                                "sysroot is unchanged")
        checks = [Check("signature", True, f"{verdict.reason} (scope {verdict.scope})"),
                  Check("bootable", True, "containers.bootc/ostree.bootable label"),
                  Check("architecture", True, f"image {arch}, node {arch}"), room]
        return SysrootCheck(str(target), digest, verdict, trust_from, checks), src
