"""Where node commands run: this machine, or another over ssh (``--host ssh://[USER@]HOST[:PORT]``).

Commands are argument lists; over ssh each argument is quoted for the remote shell, so an
image reference can never become shell syntax there either.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from nestbuild._tools import run
from nestbuild.errors import UsageError

if TYPE_CHECKING:
    import subprocess


@dataclass(frozen=True)
class Host:
    #: None for this machine.
    target: str | None = None
    port: int | None = None

    @classmethod
    def parse(cls, url: str | None) -> Host:
        if not url:
            return cls()
        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise UsageError(f"--host {url}: expected ssh://[USER@]HOST[:PORT]")
        target = f"{parts.username}@{parts.hostname}" if parts.username else parts.hostname
        return cls(target, parts.port)

    def argv(self, command: Sequence[str]) -> list[str]:
        if self.target is None:
            return list(command)
        ssh = ["ssh", "-o", "BatchMode=yes"]
        if self.port:
            ssh += ["-p", str(self.port)]
        return [*ssh, self.target, "--", shlex.join(command)]

    def run(self, command: Sequence[str], *, what: str,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run.run(self.argv(command), what=what, check=check)

    def __str__(self) -> str:
        return "this machine" if self.target is None else f"ssh://{self.target}"
