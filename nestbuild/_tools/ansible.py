"""The one small interface to Ansible: ``ansible-playbook`` with nestbuild's event callback,
its JSON lines read as they come.

ansible-core is a dependency of nestbuild, installed beside it: its ``ansible-playbook`` is
looked for next to the running interpreter first (a virtual environment that is not
activated), then on PATH.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from nestbuild._tools import run

run.PACKAGES.setdefault("ansible-playbook", "ansible-core (pip install ansible-core)")

#: The callback (in the shipped playbook's callback_plugins/) that prints the events.
CALLBACK = "nestbuild_events"


def playbook_command() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if os.access(beside, os.X_OK) else "ansible-playbook"


class PlaybookRun:
    """A running ``ansible-playbook``: its events as they come, then its exit status."""

    def __init__(self, playbook: Path, inventory: Path, extra_vars: Path, *, forks: int,
                 env: Mapping[str, str] | None = None, log: Path | None = None) -> None:
        argv: list[str | Path] = [playbook_command(), "-i", inventory, playbook,
                                  "-e", f"@{extra_vars}", "--forks", str(max(1, forks))]
        here = playbook.parent
        self._log = open(log or os.devnull, "ab")  # noqa: SIM115 - closed in wait()
        self.log = log
        self.proc = run.popen(argv, cwd=here, stderr=self._log.fileno(), env={
            # one ssh round trip per task instead of several (the operator's own
            # setting, from the environment, stays)
            "ANSIBLE_PIPELINING": os.environ.get("ANSIBLE_PIPELINING", "True"),
            "ANSIBLE_STDOUT_CALLBACK": CALLBACK,
            "ANSIBLE_CALLBACK_PLUGINS": str(here / "callback_plugins"),
            "ANSIBLE_ROLES_PATH": str(here / "roles"),
            "ANSIBLE_RETRY_FILES_ENABLED": "false",
            "ANSIBLE_NOCOLOR": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        })

    def events(self) -> Iterator[dict[str, Any]]:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("{"):
                continue  # anything else Ansible prints is for people, not for us
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event

    def wait(self) -> int:
        code = self.proc.wait()
        self._log.close()
        return code

    def log_tail(self, lines: int = 5) -> str:
        """The end of what ansible-playbook said on stderr (why it stopped, when it did)."""
        if self.log is None:
            return ""
        try:
            return run.tail(self.log.read_text(errors="replace"), lines)
        except OSError:
            return ""

    def stop(self) -> None:
        """End the playbook (the rollout was interrupted) as Ctrl-C would: Ansible starts no
        new task; a host mid-step finishes it or not, and the per-node step is safe to run
        again. Terminated if it does not end within a minute."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except run.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except run.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self._log.close()

