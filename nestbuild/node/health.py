"""The health gate a node passes after it booted an update, before the rollout goes on.

A node is healthy on an image when it booted exactly that digest, systemd is not degraded, and
every operator check (a command, a URL) passes within the timeout. Checks are retried until
they pass or the time is up, because a node that just booted is still starting its services:
the first failure is not the verdict, the last one is.

Commands run with ``NESTBUILD_ROOT`` in their environment: ``/`` on a real node, the deployed
tree for an ostree sysroot standing for one, so one check works on both.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild._tools import run

#: How much of a check's output the report keeps (the end, where the cause usually is).
OUTPUT_TAIL = 2000
#: systemd states that are still on their way to "running": wait, do not judge yet.
STARTING = {"initializing", "starting"}


@dataclass(frozen=True)
class HealthSpec:
    """What the operator asks of a healthy node."""

    commands: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    #: Seconds within which every check must pass.
    timeout: float = 300.0
    #: Seconds between attempts of a failing check.
    interval: float = 2.0

    def to_json(self) -> dict[str, Any]:
        return {"commands": list(self.commands), "urls": list(self.urls),
                "timeout": self.timeout}

    @classmethod
    def from_json(cls, doc: object) -> HealthSpec:
        """The spec a rollout's state kept (:meth:`to_json`), for ``--resume``."""
        d = doc if isinstance(doc, dict) else {}
        return cls(tuple(str(c) for c in d.get("commands") or ()),
                   tuple(str(u) for u in d.get("urls") or ()),
                   float(d.get("timeout", cls.timeout)))


@dataclass(frozen=True)
class CheckResult:
    #: ``booted``, ``systemd``, ``cmd: ...`` or ``url: ...``
    name: str
    ok: bool
    #: The last attempt's output (tail) or the reason.
    output: str = ""
    attempts: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "output": self.output,
                "attempts": self.attempts}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckResult:
        return cls(str(doc.get("check", "?")), doc.get("ok") is True,
                   str(doc.get("output", "")), int(doc.get("attempts", 1)))


@dataclass
class HealthReport:
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    @classmethod
    def from_json(cls, doc: object) -> HealthReport:
        """A report kept in the node's record (written by this module; a damaged one reads
        as no checks)."""
        checks = doc.get("checks") if isinstance(doc, dict) else None
        return cls([CheckResult.from_json(c) for c in checks or [] if isinstance(c, dict)])

    def lines(self) -> list[str]:
        out = []
        for c in self.checks:
            out.append(f"{'ok  ' if c.ok else 'FAIL'}  {c.name}")
            if not c.ok and c.output:
                out += [f"      {line}" for line in c.output.splitlines()[-5:]]
        return out


def booted_check(target: str, booted: str | None, boot_error: str | None = None
                 ) -> CheckResult:
    """The node runs exactly the digest the rollout resolved, not a tag that moved since."""
    if boot_error is not None:
        return CheckResult("booted", False, boot_error)
    if booted == target:
        return CheckResult("booted", True, f"booted {target}")
    return CheckResult("booted", False, f"booted {booted or 'an unknown image'}, not {target}")


def systemd_check(state: Callable[[], str], deadline: float, interval: float) -> CheckResult:
    """``systemctl is-system-running`` settles on running, or the node is not healthy."""
    attempts = 0
    while True:
        attempts += 1
        now = state().strip() or "unknown"
        if now == "running":
            return CheckResult("systemd", True, now, attempts)
        if now not in STARTING or time.monotonic() + interval > deadline:
            return CheckResult("systemd", False, f"system state {now}", attempts)
        time.sleep(interval)


def live_systemd_state() -> str:
    proc = run.run(["systemctl", "is-system-running"], check=False, timeout=30)
    return proc.stdout.decode(errors="replace")


def _retry(name: str, attempt: Callable[[float], tuple[bool, str]], deadline: float,
           interval: float) -> CheckResult:
    attempts = 0
    while True:
        attempts += 1
        ok, output = attempt(max(1.0, deadline - time.monotonic()))
        output = output[-OUTPUT_TAIL:]
        if ok or time.monotonic() + interval > deadline:
            return CheckResult(name, ok, output, attempts)
        time.sleep(interval)


def command_check(command: str, env: Mapping[str, str], deadline: float, interval: float
                  ) -> CheckResult:
    def attempt(budget: float) -> tuple[bool, str]:
        try:
            proc = run.run(["sh", "-c", command], env=env, check=False, timeout=budget)
        except run.TimedOut:
            return False, f"still running after {budget:.0f}s"
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        return proc.returncode == 0, text or f"exit status {proc.returncode}"

    return _retry(f"cmd: {command}", attempt, deadline, interval)


def url_check(url: str, deadline: float, interval: float) -> CheckResult:
    def attempt(budget: float) -> tuple[bool, str]:
        try:
            with urllib.request.urlopen(url, timeout=min(budget, 30)) as response:
                body = response.read(OUTPUT_TAIL).decode(errors="replace")
                return 200 <= response.status < 300, f"HTTP {response.status} {body}".strip()
        except urllib.error.HTTPError as exc:
            return False, f"HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:
            return False, str(getattr(exc, "reason", exc))

    return _retry(f"url: {url}", attempt, deadline, interval)


def gate(spec: HealthSpec, *, target: str, booted: str | None, root: Path,
         systemd: Callable[[], str] | None, env: Mapping[str, str] | None = None,
         boot_error: str | None = None) -> HealthReport:
    """Every check of a node that should now run ``target``. ``systemd`` reads the node's
    ``is-system-running`` state; None where nothing booted (an ostree sysroot). ``env`` is
    laid over the commands' environment besides ``NESTBUILD_ROOT``."""
    deadline = time.monotonic() + spec.timeout
    report = HealthReport([booted_check(target, booted, boot_error)])
    if not report.ok:  # the wrong image: its services say nothing about the target's
        return report
    if systemd is not None:
        report.checks.append(systemd_check(systemd, deadline, spec.interval))
    cmd_env = {**(env or {}), "NESTBUILD_ROOT": str(root)}
    report.checks += [command_check(c, cmd_env, deadline, spec.interval)
                      for c in spec.commands]
    report.checks += [url_check(u, deadline, spec.interval) for u in spec.urls]
    return report
