"""One node onto one image, health-gated: the step every rollout engine runs on each node.

``nestbuild node upgrade REPO@DIGEST`` is idempotent, because both engines run it more than
once: Ansible runs it again after its reboot module brought the node back, and a
system-upgrade-controller job starts again after the reboot the step itself asked for. Each run
reads where the node is and takes the next step only:

    not on the target  -> stage it (and reboot, or say a reboot is needed)
    booted the target  -> health gate -> healthy, or roll back (and reboot)
    rolled back        -> check the previous digest booted again; never retry that target

What happened is kept on the node, in its /var (``/var/lib/nestbuild/upgrade.json``; for an
ostree sysroot its stateroot's var), so a target that failed here is not taken again by the
next run of the same job: only a new digest starts over.

For an ostree sysroot standing for a node (``--via ostree``) nothing boots, and its default
deployment counts as booted; with ``boot`` it really boots under qemu
(:mod:`nestbuild.node.boot`) and the gate reads what came up on the serial console.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild.errors import EXIT_FAILED, EXIT_OK, NestbuildError, UsageError
from nestbuild.node.backend import backend_for
from nestbuild.node.health import HealthReport, HealthSpec, gate, live_systemd_state

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.node.backend import Backend
    from nestbuild.node.boot import BootResult

Progress = Callable[[str], None]
RECORD = Path("var/lib/nestbuild/upgrade.json")

#: Where a run of the step leaves the node; the exit code follows from it.
HEALTHY = "healthy"  # booted the target, every check passed
REBOOT_REQUIRED = "reboot-required"  # staged (or rollback queued); the caller reboots
REBOOTING = "rebooting"  # the step rebooted the node itself; run it again afterwards
UNHEALTHY = "unhealthy"  # booted the target, a check failed, no rollback asked for
ROLLED_BACK = "rolled-back"  # a check failed; the previous digest is booted again
ROLLBACK_FAILED = "rollback-failed"  # a check failed and the way back did not come back
CHECKED = "checked"  # check only: the node's state and the update's checks


class UpgradeError(NestbuildError):
    """The node cannot take the step (a refused image, a tool that failed)."""


@dataclass(frozen=True)
class UpgradeOptions:
    #: ``[docker://]REGISTRY/REPO@sha256:...``: a digest, so every node gets the same image.
    image: str
    via: str = "bootc"
    sysroot: Path | None = None
    osname: str = "nestos"
    #: Trust files for an ostree sysroot (see ``nestbuild rebase --trust``).
    trust: Path | None = None
    health: HealthSpec = field(default_factory=HealthSpec)
    rollback_on_failure: bool = False
    #: ``self``: the step reboots the node (system-upgrade-controller); ``none``: it says a
    #: reboot is needed and the caller reboots (Ansible's reboot module waits for the node).
    reboot: str = "self"
    #: Read the node and run the update's checks only; change nothing (the rollout's
    #: pre-flight).
    check_only: bool = False
    #: An ostree sysroot only: boot it under qemu after each change and gate on that boot.
    boot: bool = False
    boot_timeout: float = 600
    access: RegistryAccess | None = None


@dataclass
class UpgradeResult:
    state: str
    target: str
    #: The digest the node ran before the step moved it (None if it was already there).
    previous: str | None
    booted: str | None
    health: HealthReport | None = None
    #: The update's checks (check only) or the reason a step was refused.
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: The node's architecture and booted image name, for the rollout's grouping.
    booted_image: str | None = None
    moved: bool = False

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.state in (HEALTHY, REBOOT_REQUIRED, REBOOTING, CHECKED) \
            else EXIT_FAILED

    @property
    def reboot_required(self) -> bool:
        return self.state == REBOOT_REQUIRED

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "target": self.target, "previous": self.previous,
                "booted": self.booted, "bootedImage": self.booted_image,
                "rebootRequired": self.reboot_required, "moved": self.moved,
                "health": None if self.health is None else self.health.to_json(),
                "checks": self.checks, "notes": self.notes}

    def lines(self) -> list[str]:
        out = [f"{self.state}: {self.target}"
               + (f" (was {self.previous})" if self.previous else "")]
        if self.health is not None:
            out += self.health.lines()
        out += [f"{'ok  ' if c.get('ok') else 'FAIL'}  {c.get('name')}: {c.get('detail', '')}"
                for c in self.checks]
        return out + self.notes


@dataclass
class _Node:
    """What the step needs of the node, whatever the backend."""

    booted: str | None
    booted_image: str | None
    staged: str | None
    root: Path


def pinned_digest(image: str) -> str:
    from nestbuild._registry import reference

    ref = reference.parse(image.removeprefix("docker://"))
    if ref.digest is None:
        raise UsageError(f"{image}: give the image by digest (REPO@sha256:...), so every node "
                         "takes the same image; `nestbuild rollout` resolves the tag once")
    return ref.digest


def _refused(message: str) -> str:
    return message if "refused" in message else f"refused: {message}"


class Upgrade:
    """One run of the step on one node."""

    def __init__(self, options: UpgradeOptions, progress: Progress | None = None) -> None:
        if options.reboot not in ("self", "none"):
            raise UsageError(f"--reboot {options.reboot}: expected self or none")
        if options.boot and options.via != "ostree":
            raise UsageError("--boot boots an ostree sysroot under qemu: it needs --via ostree")
        self.o = options
        self.say = progress or (lambda _m: None)
        self.target = pinned_digest(options.image)
        self.backend: Backend = backend_for(options.via, sysroot=options.sysroot,
                                            osname=options.osname, trust=options.trust)
        self._boot: BootResult | None = None
        #: Why the last qemu boot did not come up (the gate's verdict, not a crash).
        self._boot_error: str | None = None
        #: What each qemu boot of this run brought up, for the result's notes.
        self.boots: list[str] = []

    # -- where the node is --------------------------------------------------------------

    def node(self) -> _Node:
        if self.o.via == "ostree":
            from nestbuild.node import deploy
            from nestbuild.node.sysroot import deployment_root

            assert self.o.sysroot is not None
            deployments = deploy.deployments(self.o.sysroot) if self.o.sysroot.is_dir() else []
            first = deployments[0] if deployments else None
            root = self.o.sysroot
            if first is not None:
                root = deployment_root(self.o.sysroot, self.o.osname, first.checksum,
                                       first.serial)
            booted = first.digest if first is not None else None
            if self._boot is not None:  # what qemu really brought up
                booted = next((d.digest for d in deployments
                               if d.checksum == self._boot.entry.checksum), None)
            elif self._boot_error is not None:
                booted = None
            return _Node(booted, first.image if first else None, None, root)
        status = self.backend.status()
        booted_d = status.role("booted")  # type: ignore[union-attr]
        staged_d = status.role("staged")  # type: ignore[union-attr]
        return _Node(booted_d.digest if booted_d else None,
                     booted_d.image if booted_d else None,
                     staged_d.digest if staged_d else None, Path("/"))

    def record_path(self) -> Path:
        if self.o.via == "ostree":
            assert self.o.sysroot is not None
            return self.o.sysroot / "ostree" / "deploy" / self.o.osname / RECORD
        return Path("/") / RECORD

    def record(self) -> dict[str, Any]:
        from nestbuild._util.userfile import json_document

        path = self.record_path()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UpgradeError(f"{path}: {exc.strerror}") from None
        doc = json_document(data, str(path), UpgradeError)
        if not isinstance(doc, dict):
            raise UpgradeError(f"{path}: not a JSON object")
        return doc if doc.get("target") == self.target else {}

    def save(self, **fields: Any) -> None:
        from nestbuild._util.atomic import write_atomic

        path = self.record_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps({"target": self.target, **fields}, indent=2).encode()
                     + b"\n", 0o644, fsync=True)

    # -- the step -----------------------------------------------------------------------

    def run(self) -> UpgradeResult:
        result = self._run()
        result.notes += self.boots
        return result

    def _run(self) -> UpgradeResult:
        node = self.node()
        if self.o.check_only:
            return self.check(node)
        rec = self.record()
        phase = rec.get("phase")
        previous = rec.get("previous")
        if phase == "rolling-back" and node.booted == self.target and self._rollback_lost():
            # the run that decided to roll back stopped before the rollback was made
            self.say(f"finishing the rollback to {previous}")
            self.backend.rollback(apply=self.o.via != "ostree" and self.o.reboot == "self")
            self.maybe_boot()
            node = self.node()
        if phase in (ROLLED_BACK, "rolling-back"):
            return self.after_rollback(node, previous)
        if node.booted != self.target:
            return self.stage(node)
        return self.judge(node, previous if phase else None)

    def check(self, node: _Node) -> UpgradeResult:
        from nestbuild.node.checks import RebaseRefused

        result = UpgradeResult(CHECKED, self.target, None, node.booted,
                               booted_image=node.booted_image)
        if node.booted == self.target:
            result.notes.append("already booted the target")
            return result
        try:
            checked = self.backend.check_update(self.o.image, access=self.o.access)
        except RebaseRefused as exc:
            raise UpgradeError(_refused(exc.message)) from None
        result.checks = [{"name": c.name, "ok": c.ok, "detail": c.detail}
                         for c in checked.checks]
        result.notes += getattr(checked, "notes", [])
        return result

    def stage(self, node: _Node) -> UpgradeResult:
        from nestbuild.node.checks import RebaseRefused

        previous = node.booted
        if node.staged != self.target:
            self.save(phase="staging", previous=previous)
            self.say(f"staging {self.target}")
            try:
                self.backend.rebase(self.o.image, access=self.o.access,
                                    apply=self.o.reboot == "self", progress=self.say)
            except RebaseRefused as exc:
                raise UpgradeError(_refused(exc.message)) from None
        self.save(phase="staged", previous=previous)
        if self.o.via != "ostree":
            if self.o.reboot == "none":
                return UpgradeResult(REBOOT_REQUIRED, self.target, previous, node.booted,
                                     moved=True)
            if node.staged == self.target:  # staged by an earlier run: reboot into it now
                self.reboot()
            return UpgradeResult(REBOOTING, self.target, previous, node.booted, moved=True)
        self.maybe_boot()
        result = self.judge(self.node(), previous)
        result.moved = True
        return result

    def judge(self, node: _Node, previous: str | None) -> UpgradeResult:
        if self.o.boot and self._boot is None and self._boot_error is None:
            # a later run on a node already on the target: gate on a boot of it too, not on
            # the unbooted tree (no systemd state, no marker)
            self.maybe_boot()
            node = self.node()
        extra = {}
        if self._boot is not None and self._boot.marker is not None:
            # a file's final newline is not part of the marker (as for `nestbuild boot`)
            extra["NESTBUILD_BOOT_MARKER"] = self._boot.marker.decode(
                errors="replace").rstrip("\n")
        report = gate(self.o.health, target=self.target, booted=node.booted, root=node.root,
                      systemd=self.systemd(), env=extra, boot_error=self._boot_error)
        if report.ok:
            self.save(phase=HEALTHY, previous=previous)
            return UpgradeResult(HEALTHY, self.target, previous, node.booted, report,
                                 booted_image=node.booted_image)
        if not self.o.rollback_on_failure:
            self.save(phase=UNHEALTHY, previous=previous)
            return UpgradeResult(UNHEALTHY, self.target, previous, node.booted, report)
        if previous is None:
            self.save(phase=UNHEALTHY, previous=previous)
            result = UpgradeResult(UNHEALTHY, self.target, previous, node.booted, report)
            result.notes.append("not rolled back: this step did not move the node, so the "
                                "previous image is unknown")
            return result
        self.say(f"unhealthy on {self.target}: rolling back to {previous}")
        self.save(phase="rolling-back", previous=previous,
                  health=report.to_json())
        self.backend.rollback(apply=self.o.via != "ostree" and self.o.reboot == "self")
        if self.o.via != "ostree":
            state = REBOOT_REQUIRED if self.o.reboot == "none" else REBOOTING
            return UpgradeResult(state, self.target, previous, node.booted, report)
        self.maybe_boot()
        result = self.after_rollback(self.node(), previous)
        result.health = report
        return result

    def after_rollback(self, node: _Node, previous: str | None) -> UpgradeResult:
        """The node was rolled back for this target: it must run ``previous`` again."""
        health = HealthReport.from_json(self.record().get("health"))
        if previous is not None and node.booted == previous:
            self.save(phase=ROLLED_BACK, previous=previous, health=health.to_json())
            return UpgradeResult(ROLLED_BACK, self.target, previous, node.booted, health)
        if node.booted == self.target and self.o.via != "ostree":
            # the rollback is queued and the reboot into it has not happened yet
            if self.o.reboot == "none":
                return UpgradeResult(REBOOT_REQUIRED, self.target, previous, node.booted,
                                     health)
            self.reboot()
            return UpgradeResult(REBOOTING, self.target, previous, node.booted, health)
        result = UpgradeResult(ROLLBACK_FAILED, self.target, previous, node.booted, health)
        result.notes.append(f"rolled back, but the node runs {node.booted or 'nothing known'}, "
                            f"not the previous {previous}")
        return result

    # -- the node's tools ---------------------------------------------------------------

    def _rollback_lost(self) -> bool:
        """Whether a rollback this node's record asked for is not made: a sysroot still
        defaults to the target; bootc has none queued. (rpm-ostree does not say: trusted.)"""
        if self.o.via == "ostree":
            return True  # booted (its default) is still the target
        status = self.backend.status()
        return self.o.via == "bootc" and not getattr(status, "rollback_queued", True)

    def systemd(self) -> Callable[[], str] | None:
        if self.o.via != "ostree":
            return live_systemd_state
        if self._boot is None:
            return None
        failed = self._boot.failed_units
        # the units the boot report listed: the check's output says which ones failed
        return lambda: f"degraded (failed: {', '.join(failed)})" if failed else "running"

    def maybe_boot(self) -> None:
        if not self.o.boot:
            return
        from nestbuild.node.boot import BootError, boot

        assert self.o.sysroot is not None
        self._boot = self._boot_error = None
        try:
            self._boot = boot(self.o.sysroot, osname=self.o.osname,
                              timeout=self.o.boot_timeout, progress=self.say)
        except BootError as exc:
            self._boot_error = exc.message
            self.boots.append(f"boot failed: {exc.message}")
            return
        e = self._boot.entry
        self.boots.append(f"booted deployment {e.checksum[:12]}.{e.serial} under qemu in "
                          f"{self._boot.seconds:.0f} s")

    def reboot(self) -> None:
        from nestbuild.node.host import Host

        Host().run(["systemctl", "reboot"], what="rebooting into the staged image")


def upgrade(options: UpgradeOptions, progress: Progress | None = None) -> UpgradeResult:
    """Take the next step of moving this node onto ``options.image`` (by digest): stage,
    reboot, health gate, roll back. Safe to run again at any point."""
    return Upgrade(options, progress).run()

