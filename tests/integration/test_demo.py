"""README's first command, `./scripts/demo`, runs nestbuild's main job end to end here: the
set-up a new user pastes must work as pasted."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The components this file runs itself.
pytestmark = [pytest.mark.buildah, pytest.mark.registry, pytest.mark.ostree,
              pytest.mark.ansible]


def test_the_demo_runs_the_main_job_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    env = {**os.environ, "NESTBUILD_DEMO_DIR": str(work)}
    try:
        r = subprocess.run([REPO / "scripts" / "demo"], env=env, capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=1200, check=False)
    finally:  # ostree marks deployments immutable
        subprocess.run(["chattr", "-R", "-i", str(work)], check=False,
                       stderr=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    steps = [line for line in r.stdout.splitlines() if line.startswith("== ")]
    assert [s.split(".")[0] for s in steps] == [f"== {n}" for n in range(1, 11)], steps
    assert "nestbuild demo node, version 2" in r.stdout  # v2's /etc/motd, deployed
    assert "completed: 3 healthy, 0 rolled back, 0 failed, 0 not reached" in r.stdout
    assert "exit 1: refused" in r.stdout
