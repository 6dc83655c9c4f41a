"""The Ansible engine: nestbuild's playbook and role, run with ``serial`` waves.

The playbook ships in the package (``nestbuild/data/ansible``) and is the same one
``--emit-playbook DIR`` writes for teams that run Ansible themselves (AWX, their own CI): the
rollout's choices travel in one vars file, the hosts' own in the inventory. nestbuild runs
``ansible-playbook`` (the CLI, not ansible-runner: one dependency fewer, and the events come
from a callback shipped with the playbook, one JSON line each, read as they come).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from nestbuild._tools.ansible import PlaybookRun

Event = dict[str, Any]


def playbook_files() -> Path:
    """The shipped playbook's folder (a real directory: the package is installed as files)."""
    return Path(str(resources.files("nestbuild") / "data" / "ansible"))


def write_playbook(dest: Path, extra_vars: dict[str, Any]) -> list[Path]:
    """The playbook, its role and callback, and ``vars.json``, into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(playbook_files(), dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    vars_file = dest / "vars.json"
    vars_file.write_text(json.dumps(extra_vars, indent=2) + "\n")
    return sorted(p for p in dest.rglob("*") if p.is_file())


def run_playbook(workdir: Path, playbook: str, inventory: Path, extra_vars: dict[str, Any],
                 *, forks: int, on_event: Callable[[Event], None],
                 env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``playbook`` (``rollout.yml`` or ``preflight.yml``) on the hosts ``extra_vars``
    names (``nestbuild_hosts``, in their order); every event goes to ``on_event`` as it
    comes; the exit status of ansible-playbook and the end of its log."""
    workdir = workdir.resolve()  # ansible-playbook runs in it: a relative path would not hold
    write_playbook(workdir, extra_vars)
    job = PlaybookRun(workdir / playbook, inventory.resolve(), workdir / "vars.json",
                      forks=forks, env=env,
                      log=workdir / f"{Path(playbook).stem}.log")
    try:
        for event in job.events():
            on_event(event)
    except BaseException:
        job.stop()
        raise
    return job.wait(), job.log_tail()
