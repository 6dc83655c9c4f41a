"""The one place nestbuild starts other programs.

Argument lists only, never a shell string, so user input cannot become shell syntax. A missing
tool or a failing command becomes a ``ToolError`` with a one-line cause and the tail of its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from nestbuild.errors import ToolError

#: Debian package that provides each tool, for the "not installed" message.
PACKAGES = {
    "buildah": "buildah",
    "skopeo": "skopeo",
    "podman": "podman",
    "ostree": "ostree",
    "busybox": "busybox-static",
    "tar": "tar",
    "docker-registry": "docker-registry",
    "dockerd": "docker.io",
}

LOG_TAIL_LINES = 20


def which(tool: str) -> str:
    """Return the tool's path or raise a ToolError saying how to install it."""
    path = shutil.which(tool)
    if path is None:
        pkg = PACKAGES.get(tool, tool)
        raise ToolError(f"{tool} is not installed (on Debian: apt-get install {pkg})")
    return path


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = True,
    timeout: float | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion with its output captured.

    ``what`` names the action for the error message ("building the image").
    """
    args = [str(a) for a in argv]
    args[0] = which(args[0])
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{Path(args[0]).name} timed out after {timeout:.0f}s") from exc
    if check and proc.returncode != 0:
        raise command_failed(args, proc.returncode, proc.stderr or proc.stdout, what)
    return proc


def command_failed(
    args: Sequence[str], code: int, output: bytes | str, what: str | None
) -> ToolError:
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    tool = Path(args[0]).name
    last = tail(text, 1) or "no output"
    cause = f"{what}: " if what else ""
    return ToolError(f"{cause}{tool} exited with status {code}: {last}", detail=tail(text))


def popen(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.STDOUT,
) -> subprocess.Popen[bytes]:
    """Start a long-running command whose output the caller streams (build logs, servers)."""
    args = [str(a) for a in argv]
    args[0] = which(args[0])
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    return subprocess.Popen(args, env=full_env, cwd=cwd, stdin=stdin, stdout=stdout, stderr=stderr)
