"""The one small interface to the ``ostree`` command (repositories and sysroots).

Everything goes through nestbuild.run with argument lists; nothing here knows about images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nestbuild import run


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
           metadata: dict[str, str] | None = None, link_speedup: bool = True) -> str:
    """Commit a directory tree; returns the commit checksum."""
    argv = ["ostree", f"--repo={repo}", "commit", f"--branch={branch}", f"--tree=dir={tree}",
            f"--subject={subject}"]
    if link_speedup:
        argv.append("--link-checkout-speedup")
    for k, v in (metadata or {}).items():
        argv.append(f"--add-metadata-string={k}={v}")
    return run.run(argv, what=f"committing {branch}").stdout.decode().strip()


def checkout_union(repo: Path, ref: str, dest: Path) -> None:
    """Hard-link checkout of ``ref`` over ``dest`` (later layers win)."""
    run.run(["ostree", f"--repo={repo}", "checkout", "--union", "-H", ref, str(dest)],
            what=f"checking out {ref}")


def metadata(repo: Path, rev: str, key: str) -> str | None:
    proc = run.run(["ostree", f"--repo={repo}", "show", f"--print-metadata-key={key}", rev],
                   check=False)
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode().strip()
    # GVariant text: 'value' for strings
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1].replace("\\'", "'")
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
