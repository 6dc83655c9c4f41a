"""What a rebase by bootc or rpm-ostree will do, and the checks it passed before anything
moved: a :class:`Plan` of :class:`Check` results, or :class:`RebaseRefused`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nestbuild.errors import EXIT_FAILED, NestbuildError
from nestbuild.node.host import Host
from nestbuild.node.remote import RemoteImage


class RebaseRefused(NestbuildError):
    """A pre-check failed; nothing was changed on the node."""

    exit_code = EXIT_FAILED


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}

    def line(self) -> str:
        return f"  {'ok' if self.ok else 'FAIL':4} {self.name}: {self.detail}"


@dataclass
class Plan:
    """What bootc or rpm-ostree will be asked to do, and the checks it passed."""

    via: str
    host: Host
    image: RemoteImage
    command: list[str]
    checks: list[Check] = field(default_factory=list)

    @property
    def pinned(self) -> str:
        return f"{repository(self.image.name)}@{self.image.digest}"

    def to_json(self) -> dict[str, Any]:
        return {"via": self.via, "host": str(self.host), "image": self.image.name,
                "digest": self.image.digest, "command": self.command,
                "checks": [c.to_json() for c in self.checks]}


def room_check(free: int, compressed: int) -> Check:
    """Whether an image of ``compressed`` layer bytes fits in ``free`` bytes: its layers
    are unpacked into the node's repository, about twice their compressed size."""
    need = compressed * 2
    return Check("room", free >= need,
                 f"{free // 2**20} MiB free, about {need // 2**20} MiB needed")


def repository(name: str) -> str:
    """``reg:5000/nodes/base:v1`` -> ``reg:5000/nodes/base`` (a registry port is not a tag)."""
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name
