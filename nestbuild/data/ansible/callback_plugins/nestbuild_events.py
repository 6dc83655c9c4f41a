"""Ansible stdout callback: one JSON object per line for each event `nestbuild rollout` reads.

nestbuild follows the rollout through these events (progress, its state file, the report);
people running the playbook themselves keep Ansible's usual output.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from ansible.plugins.callback import CallbackBase  # type: ignore[import-untyped]

DOCUMENTATION = """
name: nestbuild_events
type: stdout
short_description: JSON lines for nestbuild rollout
description: One JSON object per line per play start and per host result.
"""

#: The per-node step's output is the rollout's record of the node: kept whole up to this.
STDOUT_LIMIT = 65536


class CallbackModule(CallbackBase):  # type: ignore[misc]
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "stdout"
    CALLBACK_NAME = "nestbuild_events"

    def _emit(self, **event: Any) -> None:
        event["time"] = time.time()
        sys.stdout.write(json.dumps(event, default=str) + "\n")
        sys.stdout.flush()

    def _host_event(self, kind: str, result: Any) -> None:
        r = result._result
        task = result._task.get_name()
        event: dict[str, Any] = {"event": kind, "host": result._host.get_name(), "task": task}
        if "nestbuild step:" in task:  # a role prefixes its name
            event["rc"] = r.get("rc")
            event["stdout"] = str(r.get("stdout", ""))[:STDOUT_LIMIT]
            event["stderr"] = str(r.get("stderr", ""))[-4000:]
        if kind != "ok" and r.get("msg"):
            event["msg"] = str(r.get("msg"))[-4000:]
        self._emit(**event)

    def v2_playbook_on_play_start(self, play: Any) -> None:
        self._emit(event="play", name=play.get_name())

    def v2_runner_on_ok(self, result: Any) -> None:
        self._host_event("ok", result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        self._host_event("ignored" if ignore_errors else "failed", result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        self._host_event("unreachable", result)
