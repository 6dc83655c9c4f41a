"""The one place nestbuild starts other programs.

Argument lists only, never a shell string, so user input cannot become shell syntax. A missing
tool or a failing command becomes a ``ToolError`` with a one-line cause and the tail of its log
(never for a command whose output is a secret: see ``run(secret=True)``). Other modules use the
names below (``PIPE``, ``TimeoutExpired``, ...), never ``subprocess`` itself.
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

PIPE = subprocess.PIPE
STDOUT = subprocess.STDOUT
DEVNULL = subprocess.DEVNULL
TimeoutExpired = subprocess.TimeoutExpired
CompletedProcess = subprocess.CompletedProcess
Popen = subprocess.Popen


class NotInstalled(ToolError):
    """The program is not on PATH."""


class TimedOut(ToolError):
    """The program did not finish within its time limit (it was killed)."""


class CannotRun(ToolError):
    """The program is there but could not be started (not executable, wrong format)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        #: The system's one-line reason ("Permission denied").
        self.reason = reason


def which(tool: str) -> str:
    """Return the tool's path or raise a NotInstalled saying how to install it (a CannotRun
    if it is on PATH but not executable)."""
    path = shutil.which(tool)
    if path is None:
        if os.sep not in tool and any(os.path.isfile(os.path.join(d, tool))
                                      for d in os.get_exec_path() if d):
            raise CannotRun(f"{tool} cannot run (Permission denied)", "Permission denied")
        pkg = PACKAGES.get(tool, tool)
        raise NotInstalled(f"{tool} is not installed (on Debian: apt-get install {pkg})")
    return path


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _command(argv: Sequence[str | Path],
             env: Mapping[str, str] | None) -> tuple[list[str], dict[str, str] | None]:
    """The argument list with the tool found on PATH, and the environment with ``env`` laid
    over this process's (None: inherited as it is)."""
    args = [str(a) for a in argv]
    args[0] = which(args[0])
    return args, None if env is None else {**os.environ, **env}


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    check: bool = True,
    timeout: float | None = None,
    what: str | None = None,
    secret: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion with its output captured; ``input`` goes to its stdin.

    ``what`` names the action for the error message ("building the image"). ``secret``: the
    input or output holds a secret (a docker-credential program's answer), so no error quotes
    either.
    """
    args, full_env = _command(argv, env)
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
    except subprocess.TimeoutExpired:
        # not chained: the exception holds the output so far
        raise TimedOut(f"{Path(args[0]).name} timed out after {timeout:.0f}s") from None
    except OSError as exc:
        raise _cannot_run(args, exc) from None
    if check and proc.returncode != 0:
        if secret:
            cause = f"{what}: " if what else ""
            raise ToolError(f"{cause}{Path(args[0]).name} exited with status {proc.returncode}")
        raise command_failed(args, proc.returncode, proc.stderr or proc.stdout, what)
    return proc


def _cannot_run(args: Sequence[str], exc: OSError) -> CannotRun:
    reason = exc.strerror or type(exc).__name__
    return CannotRun(f"{Path(args[0]).name} cannot run ({reason})", reason)


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
    args, full_env = _command(argv, env)
    try:
        return subprocess.Popen(args, env=full_env, cwd=cwd, stdin=stdin, stdout=stdout,
                                stderr=stderr)
    except OSError as exc:
        raise _cannot_run(args, exc) from None
