"""A rollout's state, written as it goes, so an interrupted rollout can be resumed and shown.

One JSON file, replaced atomically at every change (a crash leaves the previous version,
never half of one). It names the image by digest: ``--resume`` continues the same digest,
and a node the file says is healthy on it is not moved again (the per-node step would leave
it alone anyway; skipping it saves the connection).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild.errors import NestbuildError

VERSION = 1
DEFAULT = Path(".nestbuild") / "rollout.json"

#: A node's states. ``pending``: not reached yet; ``running``: its step started;
#: ``healthy``: on the target and healthy; ``rolled-back``: unhealthy, back on its previous
#: image; ``failed``: its step failed otherwise (a refused image, a failed rollback);
#: ``unreachable``: Ansible could not reach it.
NODE_STATES = ("pending", "running", "healthy", "rolled-back", "failed", "unreachable")
#: The node states that count against ``--max-failures``.
FAILED = ("rolled-back", "failed", "unreachable")
#: The rollout's: ``planned`` (not started), ``running``, ``completed`` (every node healthy),
#: ``halted`` (failures went over the budget, or a wave failed as a whole), ``failed`` (ended
#: with failures within the budget), ``interrupted`` (stopped from outside; resume it).
ROLLOUT_STATES = ("planned", "running", "completed", "halted", "failed", "interrupted")


class StateError(NestbuildError):
    """The state file cannot be used."""


@dataclass
class NodeState:
    state: str = "pending"
    wave: int = 0
    via: str = "bootc"
    previous: str | None = None
    booted: str | None = None
    #: The per-node step's last JSON result (health checks and their output).
    step: dict[str, Any] | None = None
    message: str | None = None
    started: float | None = None
    finished: float | None = None

    @property
    def failed(self) -> bool:
        """Whether the node counts against ``--max-failures``."""
        return self.state in FAILED

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "wave": self.wave, "via": self.via,
                "previous": self.previous, "booted": self.booted, "step": self.step,
                "message": self.message, "started": self.started, "finished": self.finished}

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: str) -> NodeState:
        state = doc.get("state")
        if state not in NODE_STATES:
            raise StateError(f"{where}: unknown node state {state!r}")
        step = doc.get("step")
        return cls(state, int(doc.get("wave", 0)), str(doc.get("via", "bootc")),
                   _opt(doc.get("previous")), _opt(doc.get("booted")),
                   step if isinstance(step, dict) else None, _opt(doc.get("message")),
                   _num(doc.get("started")), _num(doc.get("finished")))


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


@dataclass
class RolloutState:
    image: str
    #: ``REGISTRY/REPO@sha256:...``: what every node gets.
    pinned: str
    digest: str
    engine: str = "ansible"
    inventory: str | None = None
    limit: str | None = None
    status: str = "planned"
    #: The options the rollout started with (waves, soak, health), for resume and display.
    options: dict[str, Any] = field(default_factory=dict)
    waves: list[list[str]] = field(default_factory=list)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    message: str | None = None

    def count(self, *states: str) -> int:
        return sum(1 for n in self.nodes.values() if n.state in states)

    def names(self, *states: str) -> list[str]:
        return [name for name, n in self.nodes.items() if n.state in states]

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "image": self.image, "pinned": self.pinned,
                "digest": self.digest, "engine": self.engine, "inventory": self.inventory,
                "limit": self.limit, "status": self.status, "options": self.options,
                "waves": self.waves, "started": self.started, "updated": self.updated,
                "message": self.message,
                "nodes": {name: n.to_json() for name, n in self.nodes.items()}}

    @classmethod
    def from_json(cls, doc: object, where: str) -> RolloutState:
        if not isinstance(doc, dict) or doc.get("version") != VERSION:
            raise StateError(f"{where}: not a nestbuild rollout state (version {VERSION})")
        try:
            nodes = doc["nodes"]
            if not isinstance(nodes, dict):
                raise TypeError
            state = cls(str(doc["image"]), str(doc["pinned"]), str(doc["digest"]),
                        str(doc.get("engine", "ansible")), _opt(doc.get("inventory")),
                        _opt(doc.get("limit")), str(doc.get("status", "planned")),
                        dict(doc.get("options") or {}),
                        [[str(n) for n in w] for w in doc.get("waves") or []],
                        {str(k): NodeState.from_json(v, where) for k, v in nodes.items()},
                        float(doc.get("started", 0)), float(doc.get("updated", 0)),
                        _opt(doc.get("message")))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise StateError(f"{where}: a damaged rollout state file") from None
        if state.status not in ROLLOUT_STATES:
            raise StateError(f"{where}: unknown rollout status {state.status!r}")
        return state


def save(state: RolloutState, path: Path) -> None:
    from nestbuild._util.atomic import write_atomic

    state.updated = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state.to_json(), indent=2).encode() + b"\n", 0o644)


def load(path: Path) -> RolloutState:
    from nestbuild._util.userfile import json_document

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: no rollout state here (start one with `nestbuild "
                         "rollout IMAGE --inventory INV`, or give --state FILE)") from None
    except OSError as exc:
        raise StateError(f"{path}: {exc.strerror}") from None
    return RolloutState.from_json(json_document(data, str(path), StateError), str(path))
