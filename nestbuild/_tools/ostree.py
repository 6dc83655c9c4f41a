"""The one small interface to the ``ostree`` command (repositories and sysroots).

Everything goes through nestbuild._tools.run with argument lists; nothing here knows about images.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nestbuild._tools import run


def repo_of(sysroot: Path) -> Path:
    return sysroot / "ostree" / "repo"


def ensure_sysroot(sysroot: Path, osname: str) -> None:
    """``ostree admin init-fs`` and ``os-init``, once."""
    if not (repo_of(sysroot) / "config").is_file():
        sysroot.mkdir(parents=True, exist_ok=True)
        run.run(["ostree", "admin", "init-fs", "--modern", str(sysroot)],
                what=f"initialising the sysroot {sysroot}")
    if not (sysroot / "ostree" / "deploy" / osname).is_dir():
        run.run(["ostree", "admin", "os-init", f"--sysroot={sysroot}", osname],
                what=f"creating the stateroot {osname}")


def has_ref(repo: Path, ref: str) -> bool:
    return run.run(["ostree", f"--repo={repo}", "rev-parse", ref], check=False).returncode == 0


def rev_parse(repo: Path, ref: str) -> str:
    return run.run(["ostree", f"--repo={repo}", "rev-parse", ref],
                   what=f"resolving {ref}").stdout.decode().strip()


def commit(repo: Path, branch: str, tree: Path, *, subject: str,
           metadata: dict[str, str] | None = None, link_speedup: bool = True,
           consume: bool = False) -> str:
    """Commit a directory tree; returns the commit checksum.

    ``link_speedup``: the tree's files are hard links into the repository that nothing
    modified (a checkout), so their objects are known by inode. ``consume``: the tree is
    deleted as it is committed (cheaper than deleting it afterwards).
    """
    argv = ["ostree", f"--repo={repo}", "commit", f"--branch={branch}", f"--tree=dir={tree}",
            f"--subject={subject}"]
    if link_speedup:
        argv.append("--devino-canonical")
    if consume:
        argv.append("--consume")
    for k, v in (metadata or {}).items():
        argv.append(f"--add-metadata-string={k}={v}")
    return run.run(argv, what=f"committing {branch}").stdout.decode().strip()


def checkout(repo: Path, rev: str, dest: Path, *, subpath: str = "/") -> None:
    """Hard-link checkout of ``rev`` (its ``subpath``) as the new directory ``dest``.

    Only ever into a directory that does not exist yet: over an existing tree ostree's
    ``--union`` opens each existing directory following symlinks, so a symlink a lower layer
    left where a later one has a directory would take the checkout out of the tree.
    """
    run.run(["ostree", f"--repo={repo}", "checkout", "--require-hardlinks",
             f"--subpath={subpath}", rev, str(dest)], what=f"checking out {rev[:12]}")


def cat(repo: Path, rev: str, path: str) -> bytes | None:
    """A file of a commit; None if the commit or the file is missing."""
    proc = run.run(["ostree", f"--repo={repo}", "cat", rev, path], check=False)
    return proc.stdout if proc.returncode == 0 else None


def set_ref(repo: Path, ref: str, rev: str) -> None:
    run.run(["ostree", f"--repo={repo}", "refs", "--force", f"--create={ref}", rev],
            what=f"setting {ref}")


_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20


class TarCommit:
    """``ostree commit --orphan --tree=tar=/dev/stdin``: ostree writes each file of the tar
    stream the caller feeds it straight into the repository's objects; no ref is made.

    If the caller stops before the tar's end (``abort``), ostree is killed before it writes
    a commit; objects it wrote stay unreferenced until the next prune.
    """

    def __init__(self, repo: Path, subject: str) -> None:
        self._errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed in finish/failure
        self._proc = run.popen(
            ["ostree", f"--repo={repo}", "commit", "--orphan", "--tree=tar=/dev/stdin",
             f"--subject={subject}"],
            stdin=run.PIPE, stdout=run.PIPE, stderr=self._errors.fileno())
        assert self._proc.stdin is not None
        with contextlib.suppress(OSError):  # fewer, larger writes: ostree reads in parallel
            fcntl.fcntl(self._proc.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
        self.stdin: IO[bytes] = io.BufferedWriter(self._proc.stdin, _PIPE_SIZE)

    def finish(self) -> str:
        """End the stream and wait; the commit's checksum."""
        with contextlib.suppress(BrokenPipeError):
            self.stdin.close()
        assert self._proc.stdout is not None
        out = self._proc.stdout.read()
        code = self._proc.wait()
        if code != 0:
            raise self.failure()
        self._errors.close()
        return out.decode().strip()

    def failure(self) -> Exception:
        """What ostree said when it stopped reading (the stream broke off)."""
        if self._proc.poll() is None:
            self.abort()
        self._errors.seek(0)
        text = self._errors.read().decode(errors="replace")
        self._errors.close()
        return run.command_failed(["ostree"], self._proc.returncode or 1, text,
                                  "committing a layer")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for f in (self._proc.stdin, self._proc.stdout):
            if f is not None:
                with contextlib.suppress(BrokenPipeError):
                    f.close()


def metadata(repo: Path, rev: str, key: str) -> str | None:
    proc = run.run(["ostree", f"--repo={repo}", "show", f"--print-metadata-key={key}", rev],
                   check=False)
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode().strip()
    # GVariant text: 'value' (or "value" when it holds a quote), backslash-escaped
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def deploy(sysroot: Path, osname: str, rev: str, origin: Path, *, retain: bool = False) -> None:
    """Deploy ``rev`` as the new default; ostree keeps the previous default for rollback."""
    argv = ["ostree", "admin", "deploy", f"--sysroot={sysroot}", f"--os={osname}",
            f"--origin-file={origin}", rev]
    if retain:
        argv.insert(-1, "--retain")
    run.run(argv, what="deploying")


@dataclass(frozen=True)
class AdminDeployment:
    osname: str
    checksum: str
    serial: int
    index: int

    @property
    def dirname(self) -> str:
        return f"{self.checksum}.{self.serial}"


_STATUS_LINE = re.compile(r"^\s*[*]?\s*(\S+)\s+([0-9a-f]{64})\.(\d+)(?:\s+\((\w+)\))?")


def status(sysroot: Path) -> list[AdminDeployment]:
    """Deployments, default first (ostree's order)."""
    out = run.run(["ostree", "admin", "status", f"--sysroot={sysroot}"],
                  what="reading the sysroot's deployments").stdout.decode()
    found: list[AdminDeployment] = []
    for line in out.splitlines():
        m = _STATUS_LINE.match(line)
        if m:
            found.append(AdminDeployment(m.group(1), m.group(2), int(m.group(3)), len(found)))
    return found


def undeploy(sysroot: Path, index: int) -> None:
    run.run(["ostree", "admin", "undeploy", f"--sysroot={sysroot}", str(index)],
            what="removing a deployment")
