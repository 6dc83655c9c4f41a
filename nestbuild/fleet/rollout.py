"""``nestbuild rollout``: one signed image onto a fleet, in waves, health-gated.

Before any node is touched: the tag is resolved once (every node gets that digest), the
signature is checked as the nodes' policy will check it (``--trust DIR``, the files
``nestbuild node trust`` writes), every node is read and pre-checked by the per-node step
(``nestbuild node upgrade --check``), and what the reboot changes is shown per version the
fleet runs. Then the engine moves the nodes: Ansible with ``serial`` waves (this module
follows its events into the state file and the report), or system-upgrade-controller Plans
for Kubernetes. Each node runs the same step, which gates and rolls back by itself.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild.errors import EXIT_FAILED, EXIT_OK, NestbuildError, UsageError
from nestbuild.fleet import state as statefile
from nestbuild.fleet.plan import Batching, batch_size, serial, waves
from nestbuild.fleet.state import NodeState, RolloutState
from nestbuild.node.health import HealthSpec

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.fleet.inventory import Node
    from nestbuild.node.changelog import Changelog

Progress = Callable[[str], None]
#: Called with the rollout's state after every change (a live view of waves and nodes).
Watch = Callable[[RolloutState], None]
ENGINES = ("ansible", "kubernetes")


class RolloutRefused(NestbuildError):
    """The rollout will not start: the image or a node failed a check; nothing was touched."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class RolloutOptions:
    #: ``[docker://]REGISTRY/REPO:TAG`` (or ``@DIGEST``): resolved once, before any node.
    image: str
    inventory: Path | None = None
    #: An Ansible host pattern.
    limit: str | None = None
    batching: Batching = field(default_factory=Batching)
    #: Seconds to wait after each wave but the last.
    soak: float = 0.0
    #: Failed nodes the rollout tolerates before it halts.
    max_failures: int = 0
    health: HealthSpec = field(default_factory=HealthSpec)
    #: Cordon and drain each Kubernetes node first (always uncordoned after).
    drain: bool = False
    dry_run: bool = False
    resume: bool = False
    #: Read and pre-check every node before the first wave.
    preflight: bool = True
    engine: str = "ansible"
    emit_playbook: Path | None = None
    emit_plan: Path | None = None
    kubeconfig: Path | None = None
    #: The nodes' trust files (``nestbuild node trust --out DIR``): the image is checked
    #: against them before anything else.
    trust: Path | None = None
    state_file: Path = statefile.DEFAULT
    access: RegistryAccess | None = None
    #: Parallel connections for the pre-flight (the waves use their own size).
    forks: int = 50


@dataclass
class VersionGroup:
    """The nodes that run one digest, and what the reboot changes for them."""

    digest: str | None
    image: str | None
    nodes: list[str]
    changelog: Changelog | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "image": self.image, "count": len(self.nodes),
                "nodes": self.nodes,
                "changelog": None if self.changelog is None else self.changelog.to_json(),
                "error": self.error}


@dataclass
class RolloutReport:
    state: RolloutState
    dry_run: bool = False
    groups: list[VersionGroup] = field(default_factory=list)
    #: Nodes whose pre-flight failed: name -> cause.
    refused: dict[str, str] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.refused:
            return EXIT_FAILED
        if self.dry_run or self.state.status == "completed":
            return EXIT_OK
        if self.state.status == "planned" and self.written:
            return EXIT_OK  # written for another engine to run
        return EXIT_FAILED

    def to_json(self) -> dict[str, Any]:
        s = self.state
        return {"image": s.image, "pinned": s.pinned, "digest": s.digest, "engine": s.engine,
                "status": "dry-run" if self.dry_run else s.status, "message": s.message,
                "options": s.options,
                "waves": [{"wave": i + 1, "nodes": w} for i, w in enumerate(s.waves)],
                "nodes": {name: n.to_json() for name, n in s.nodes.items()},
                "moved": s.names("healthy"),
                "rolledBack": s.names("rolled-back"),
                "failed": s.names("failed", "unreachable"),
                "notReached": s.names("pending"),
                "versions": [g.to_json() for g in self.groups],
                "refused": self.refused, "written": [str(p) for p in self.written],
                "notes": self.notes}

    def lines(self) -> list[str]:
        s = self.state
        out = [f"image {s.pinned}"]
        for g in self.groups:
            where = "the target already" if g.digest == s.digest else (g.digest or "unknown")
            out.append(f"{len(g.nodes)} node(s) run {where}")
            if g.changelog is not None:
                out += [f"  {line}" for line in g.changelog.summary()]
            elif g.error:
                out.append(f"  no changelog: {g.error}")
        for name, why in self.refused.items():
            out.append(f"REFUSED {name}: {why}")
        for i, wave in enumerate(s.waves):
            label = "canary" if i == 0 and s.options.get("canary") else f"wave {i + 1}"
            shown = ", ".join(wave[:8]) + (f", ... ({len(wave)} nodes)" if len(wave) > 8
                                           else "")
            out.append(f"{label}: {shown}")
        if self.dry_run:
            out.append(f"dry run: {len(s.nodes)} node(s) in {len(s.waves)} wave(s); "
                       "nothing was touched")
            return out + self.notes
        for name, n in s.nodes.items():
            if n.state in statefile.FAILED:
                out.append(f"{n.state.upper()} {name}: {n.message or ''}".rstrip())
                for check in ((n.step or {}).get("health") or {}).get("checks", []):
                    if not check.get("ok"):
                        out.append(f"    {check.get('check')}: "
                                   f"{_last_line(str(check.get('output', '')))}")
        out.append(f"{s.status}: {s.count('healthy')} healthy, {s.count('rolled-back')} "
                   f"rolled back, {s.count('failed', 'unreachable')} failed, "
                   f"{s.count('pending')} not reached")
        return out + self.notes


# -- before any node ---------------------------------------------------------------------

def resolve_and_verify(image: str, trust: Path | None, access: RegistryAccess | None
                       ) -> tuple[str, str]:
    """The pinned reference and digest of ``image``, after its signature passed the nodes'
    policy; RolloutRefused otherwise."""
    from nestbuild._registry import reference
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.node import policy as nodepolicy
    from nestbuild.node.trust import POLICY

    if trust is None:
        raise UsageError("give --trust DIR, the nodes' trust files (`nestbuild node trust "
                         "REPO --key K.pub --out DIR`): the image is checked against them "
                         "before any node is touched")
    if not (trust / POLICY).is_file():
        raise UsageError(f"--trust {trust}: no {POLICY} there (write it with `nestbuild node "
                         "trust REPO --key K.pub --out DIR`)")
    target = reference.parse(image)
    with (access or RegistryAccess()).client(target.host) as client:
        digest = target.digest or client.resolve(target.repo, target.ref)
        if digest is None:
            raise UsageError(f"{image}: no such image in the registry")
        pinned = target.with_digest(digest)
        verdict = nodepolicy.check(pinned, trust, client)
    if not verdict.accepted:
        raise RolloutRefused(f"{pinned}: refused by the nodes' policy: {verdict.reason}; no "
                             "node was touched")
    return str(pinned), digest


def _version_groups(state: RolloutState, results: dict[str, dict[str, Any]],
                    access: RegistryAccess | None, progress: Progress) -> list[VersionGroup]:
    from nestbuild.node.changelog import changelog
    from nestbuild.node.checks import repository

    by: dict[str | None, VersionGroup] = {}
    for name in state.nodes:  # the plan's order, not the order the answers came in
        r = results.get(name)
        if r is None:
            continue
        booted = r.get("booted")
        g = by.setdefault(booted, VersionGroup(booted, r.get("bootedImage"), []))
        g.nodes.append(name)
    for g in by.values():
        if g.digest is None or g.digest == state.digest:
            continue
        repo = repository((g.image or state.pinned).removeprefix("docker://").split("@")[0])
        try:
            g.changelog = changelog(f"docker://{repo}@{g.digest}", f"docker://{state.pinned}",
                                    access=access, progress=progress)
        except NestbuildError as exc:
            g.error = exc.message
    return sorted(by.values(), key=lambda g: -len(g.nodes))


# -- the rollout -------------------------------------------------------------------------

def _options_json(o: RolloutOptions) -> dict[str, Any]:
    return {"canary": o.batching.canary, "maxUnavailable": o.batching.max_unavailable,
            "soak": o.soak, "maxFailures": o.max_failures, "health": o.health.to_json(),
            "drain": o.drain, "trust": None if o.trust is None else str(o.trust.resolve())}


def step_args(health: HealthSpec) -> list[str]:
    """The per-node step's arguments that are the rollout's, not the host's."""
    # --opt=value: a health command that starts with "-" is still the option's value
    return ["--rollback-on-failure", f"--health-timeout={health.timeout:g}",
            *(f"--health-cmd={c}" for c in health.commands),
            *(f"--health-url={u}" for u in health.urls)]


def extra_vars(state: RolloutState, o: RolloutOptions, sizes: list[int], hosts: list[str],
               max_failures: int | None = None) -> dict[str, Any]:
    """The rollout's choices for the playbook. ``hosts`` in the planned order: a play over a
    group takes Ansible's group-walk order, which with nested groups is not the file's (nor
    stable between runs), while an explicit list runs in its own order."""
    return {"nestbuild_image": state.pinned, "nestbuild_hosts": hosts,
            "nestbuild_serial": sizes,
            "nestbuild_max_failures": o.max_failures if max_failures is None else max_failures,
            "nestbuild_soak": round(o.soak),
            "nestbuild_drain": o.drain, "nestbuild_step_args": step_args(o.health)}


class Rollout:
    def __init__(self, options: RolloutOptions, progress: Progress | None = None,
                 watch: Watch | None = None) -> None:
        if options.engine not in ENGINES:
            raise UsageError(f"--engine {options.engine}: expected ansible or kubernetes")
        if options.max_failures < 0:
            raise UsageError("--max-failures: expected 0 or more")
        self.o = options
        self.say = progress or (lambda _m: None)
        self.watch = watch or (lambda _s: None)

    def nodes(self) -> list[Node]:
        from nestbuild.fleet import inventory

        if self.o.inventory is None:
            raise UsageError("--inventory INVENTORY is needed (an Ansible inventory, INI or "
                             "YAML)")
        found = inventory.load_inventory(self.o.inventory).nodes(self.o.limit)
        if not found:
            raise UsageError(f"{self.o.inventory}: no host matches "
                             f"{self.o.limit or 'all'}")
        return found

    def run(self) -> RolloutReport:
        if self.o.resume:
            return self.resume()
        pinned, digest = resolve_and_verify(self.o.image, self.o.trust, self.o.access)
        self.say(f"{self.o.image} is {digest}; its signature passed the nodes' policy")
        if self.o.engine == "kubernetes":
            return self.kubernetes(pinned, digest)
        nodes = self.nodes()
        planned = waves(nodes, self.o.batching)
        state = RolloutState(self.o.image, pinned, digest, "ansible",
                             str(self.o.inventory.resolve()) if self.o.inventory else None,
                             self.o.limit, options=_options_json(self.o),
                             waves=[[n.name for n in w] for w in planned])
        for i, w in enumerate(planned):
            for n in w:
                state.nodes[n.name] = NodeState(wave=i + 1, via=n.via)
        report = RolloutReport(state, dry_run=self.o.dry_run)
        if self.o.emit_playbook is not None:
            from nestbuild.fleet.ansible import write_playbook

            report.written = write_playbook(
                self.o.emit_playbook,
                extra_vars(state, self.o, serial(planned), [n.name for n in nodes]))
            report.notes.append(f"run it: ansible-playbook -i {self.o.inventory} "
                                f"{self.o.emit_playbook / 'rollout.yml'} -e "
                                f"@{self.o.emit_playbook / 'vars.json'}")
            return report
        if self.o.preflight:
            results = self.preflight(state, [n.name for n in nodes], report)
            report.groups = _version_groups(state, results, self.o.access, self.say)
            if report.refused:
                state.message = (f"{len(report.refused)} node(s) failed the pre-flight; no "
                                 "node was touched")
                return report
        if self.o.dry_run:
            return report
        return self.move(state, report, [n.name for n in nodes])

    def resume(self) -> RolloutReport:
        state = statefile.load(self.o.state_file)
        if self.o.image and self.o.image not in (state.image, state.pinned):
            raise UsageError(f"--resume: {self.o.state_file} is the rollout of {state.image} "
                             f"({state.digest}), not {self.o.image}")
        if state.status == "halted":
            raise UsageError(f"--resume: that rollout halted on purpose ({state.message}); "
                             "the nodes not reached stay as they are: start a new rollout "
                             "once the cause is fixed")
        left = state.names("pending", "running", "unreachable")
        if state.status in ("completed", "failed") or not left:
            report = RolloutReport(state)
            report.notes.append(f"the rollout had ended ({state.status}): nothing to resume")
            return report
        # the key that signed it may have been revoked since: verified again, and the digest
        # must still be the one the rollout started with
        trust = self.o.trust or (Path(state.options["trust"]) if state.options.get("trust")
                                 else None)
        pinned, _ = resolve_and_verify(state.pinned, trust, self.o.access)
        if pinned != state.pinned:
            raise RolloutRefused(f"--resume: {pinned} is not {state.pinned}")
        self.say(f"resuming {state.pinned}: {len(left)} node(s) left, "
                 f"{state.count('healthy')} already healthy")
        o = self.o
        inv = Path(state.inventory) if state.inventory else o.inventory
        if inv is None:
            raise UsageError("--resume: the state names no inventory; give --inventory")
        # a percentage stays a share of the whole fleet, not of the nodes left
        size = batch_size(str(state.options.get("maxUnavailable", "1")), len(state.nodes))
        self.o = RolloutOptions(
            state.image, inv, state.limit,
            Batching(0 if state.count("healthy") else int(state.options.get("canary", 1)),
                     str(size)),
            float(state.options.get("soak", 0)), int(state.options.get("maxFailures", 0)),
            HealthSpec.from_json(state.options.get("health")),
            bool(state.options.get("drain", False)), trust=trust, state_file=o.state_file,
            access=o.access, forks=o.forks)
        report = RolloutReport(state)
        return self.move(state, report, left)

    def preflight(self, state: RolloutState, names: list[str], report: RolloutReport
                  ) -> dict[str, dict[str, Any]]:
        from nestbuild.fleet.ansible import run_playbook

        self.say(f"pre-flight: reading {len(names)} node(s)")
        results: dict[str, dict[str, Any]] = {}

        def on_event(e: dict[str, Any]) -> None:
            host = e.get("host")
            if not isinstance(host, str) or host not in state.nodes:
                return
            if e["event"] == "ok" and "nestbuild step:" in str(e.get("task", "")):
                doc = _step_json(e)
                if doc is not None:
                    results[host] = doc
            elif e["event"] in ("failed", "unreachable"):
                report.refused[host] = _cause(e)

        with tempfile.TemporaryDirectory(prefix="nestbuild-preflight-") as tmp:
            assert self.o.inventory is not None
            code, log = run_playbook(Path(tmp), "preflight.yml", self.o.inventory,
                                     extra_vars(state, self.o, [1], names),
                                     forks=min(self.o.forks, len(names)), on_event=on_event)
        why = f"no answer from the pre-flight (ansible-playbook exit {code}: " \
              f"{_last_line(log)})"
        for name in names:
            if name not in results and name not in report.refused:
                report.refused[name] = why
        return results

    def move(self, state: RolloutState, report: RolloutReport, names: list[str]
             ) -> RolloutReport:
        from nestbuild.fleet.ansible import run_playbook

        path = self.o.state_file
        planned = waves(names, self.o.batching)
        state.status, state.message = "running", None
        statefile.save(state, path)
        wave_of = {name: i + 1 for i, w in enumerate(planned) for name in w}
        self.say(f"rolling out to {len(names)} node(s) in {len(planned)} wave(s)")

        batches = iter(planned)

        def on_event(e: dict[str, Any]) -> None:
            host = e.get("host")
            if e.get("event") == "play":  # serial: one play start per wave
                began = float(e.get("time") or time.time())
                for name in next(batches, []):
                    if state.nodes[name].state == "pending":
                        state.nodes[name].started = began
                statefile.save(state, path)
                self.watch(state)
                return
            if not isinstance(host, str) or host not in state.nodes:
                return
            self._node_event(state, host, e, wave_of.get(host, 0))
            statefile.save(state, path)
            self.watch(state)

        assert self.o.inventory is not None
        work = path.parent / "ansible"
        try:
            # nodes that failed before an interruption count against the budget too
            failed_before = sum(1 for name, n in state.nodes.items() if name not in names
                                and n.state in statefile.FAILED)
            code, log = run_playbook(work, "rollout.yml", self.o.inventory,
                                     extra_vars(state, self.o, serial(planned),
                                                [name for w in planned for name in w],
                                                max(0, self.o.max_failures - failed_before)),
                                     forks=max(len(w) for w in planned),
                                     on_event=on_event)
        except KeyboardInterrupt:
            state.status = "interrupted"
            state.message = (f"interrupted: continue with `nestbuild rollout {state.image} "
                             f"--resume --state {path}`")
            statefile.save(state, path)
            self.say(state.message)
            raise
        self._finish(state, names)
        if code not in (0, 2, 4) or (state.status == "halted"
                                     and not state.count(*statefile.FAILED)):
            # 2: a host failed, 4: one was unreachable: the nodes say why; anything else is
            # Ansible's own failure, which the nodes cannot explain
            state.message = (f"{state.message or state.status}; ansible-playbook exit {code}: "
                             f"{_last_line(log)} (log: {work / 'rollout.log'})")
        statefile.save(state, path)
        return report

    def _node_event(self, state: RolloutState, host: str, e: dict[str, Any], wave: int
                    ) -> None:
        n = state.nodes[host]
        kind, task = e.get("event"), str(e.get("task", ""))
        if n.state == "pending":
            n.state = "running"
            n.started = n.started or float(e.get("time") or time.time())
            self.say(f"wave {wave}: {host} started")
        if kind == "unreachable":
            n.state, n.message, n.finished = "unreachable", _cause(e), time.time()
            self.say(f"wave {wave}: {host} unreachable")
            return
        doc = _step_json(e) if "nestbuild step:" in task else None
        if doc is not None:
            n.step = doc
            n.previous = doc.get("previous") or n.previous
            n.booted = doc.get("booted")
            mapped = {"healthy": "healthy", "rolled-back": "rolled-back",
                      "unhealthy": "failed", "rollback-failed": "failed"}.get(
                          str(doc.get("state")))
            if mapped is not None:
                n.state, n.finished = mapped, float(e.get("time") or time.time())
                failed = [c["check"] for c in (doc.get("health") or {}).get("checks", [])
                          if not c.get("ok")]
                n.message = None if mapped == "healthy" else \
                    f"{doc.get('state')}: failed {', '.join(failed) or 'the health gate'}"
                self.say(f"wave {wave}: {host} {n.state}" +
                         (f" ({n.message})" if n.message else ""))
                return
        if kind == "failed" and n.state == "running":
            n.state, n.message, n.finished = "failed", _cause(e), time.time()
            self.say(f"wave {wave}: {host} failed: {n.message}")

    def _finish(self, state: RolloutState, names: list[str]) -> None:
        for name in names:
            n = state.nodes[name]
            if n.state == "running":
                n.state = "failed"
                n.message = n.message or "its step did not finish (see ansible log)"
        bad = state.count(*statefile.FAILED)
        if bad == 0 and state.count("pending") == 0:
            state.status = "completed"
        elif state.count("pending"):
            state.status = "halted"
            state.message = (f"halted after {bad} failed node(s) (--max-failures "
                             f"{self.o.max_failures}); {state.count('pending')} node(s) not "
                             "reached")
        else:
            state.status = "failed"
            state.message = f"{bad} node(s) failed" + (
                f", within --max-failures {self.o.max_failures}"
                if bad <= self.o.max_failures else "")

    def kubernetes(self, pinned: str, digest: str) -> RolloutReport:
        """system-upgrade-controller Plans: written (``--emit-plan``) or applied
        (``--kubeconfig``); the cluster's controller moves the nodes."""
        from nestbuild.fleet import kubernetes as kube

        o = self.o
        if o.emit_plan is None and o.kubeconfig is None and not o.dry_run:
            raise UsageError("--engine kubernetes: give --emit-plan FILE, --kubeconfig FILE "
                             "(apply), or both")
        if o.inventory is not None:
            raise UsageError("--engine kubernetes chooses nodes by label, not from "
                             "--inventory (see docs/rollout.md)")
        if o.batching.max_unavailable.strip().endswith("%"):
            raise UsageError(f"--engine kubernetes: --max-unavailable "
                             f"{o.batching.max_unavailable}: give a count (a Plan's "
                             "concurrency is a number of nodes)")
        spec = kube.KubePlanSpec(pinned, canary=o.batching.canary,
                                 max_unavailable=o.batching.max_unavailable,
                                 drain=o.drain, soak=o.soak,
                                 health_cmds=o.health.commands, health_urls=o.health.urls,
                                 health_timeout=o.health.timeout)
        items = kube.plans(spec)
        state = RolloutState(o.image, pinned, digest, "kubernetes", options=_options_json(o))
        report = RolloutReport(state, dry_run=o.dry_run)
        if o.emit_plan is not None:
            kube.write_plans(items, o.emit_plan)
            report.written.append(o.emit_plan)
        if o.kubeconfig is not None and not o.dry_run:
            report.notes += kube.apply_plans(items, o.kubeconfig)
        report.notes.append(f"{len(items)} Plan(s): " +
                            ", ".join(str(p["metadata"]["name"]) for p in items))
        return report


def _step_json(e: dict[str, Any]) -> dict[str, Any] | None:
    import json

    try:
        doc = json.loads(str(e.get("stdout") or ""))
    except json.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _cause(e: dict[str, Any]) -> str:
    """One line: the step's own error line, else Ansible's message."""
    for text in (e.get("stderr"), e.get("msg")):
        lines = [line for line in str(text or "").splitlines() if line.strip()]
        if lines:
            return lines[-1].strip()[:500]
    return f"exit {e.get('rc')}" if e.get("rc") is not None else "failed"


def rollout(options: RolloutOptions, progress: Progress | None = None,
            watch: Watch | None = None) -> RolloutReport:
    """Roll ``options.image`` out (or plan it, with ``dry_run``); the report says which
    nodes moved, which were rolled back, which were not reached. ``progress`` gets one line
    per step; ``watch`` the whole state after every change."""
    return Rollout(options, progress, watch).run()


def rollout_status(path: Path = statefile.DEFAULT) -> RolloutReport:
    """The rollout recorded in ``path``, as its report."""
    return RolloutReport(statefile.load(path))
