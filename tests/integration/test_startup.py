"""The short commands load no module they do not need.

``nestbuild validate`` and ``nestbuild sign`` are processes of a few hundred milliseconds, most
of it start-up: their record classes are plain classes (``nestbuild._util.record``) because
``dataclasses`` costs ~14 ms to import and ~0.5 ms a class, and a key is opened with libsodium's
compiled module, not PyNaCl's bindings. A dataclass or an import added on their path would
quietly take that back; these runs, as a user runs them, catch it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nestbuild.signing import keys
from tests.fixtures.registry import Registry
from tests.ocibuilder import Layer, bootable_base, derived

pytestmark = [pytest.mark.registry, pytest.mark.skopeo]

#: Modules neither command may load: what a dataclass would bring back, and PyNaCl's Python
#: bindings (~17 ms; the key's scrypt and secretbox take libsodium's compiled module alone).
AVOIDED = ("dataclasses", "inspect", "nacl.bindings")

#: The command as the installed entry point runs it (its early key start and its exit
#: included); the process reports on stderr, at exit, which of AVOIDED it loaded.
PROBE = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('loaded:', [m for m in "
    f"{AVOIDED!r} if m in sys.modules], file=sys.stderr))\n"
    "sys.argv = ['nestbuild', *sys.argv[1:]]\n"
    "from nestbuild.__main__ import entry\n"
    "entry()\n"
)


def probe(*argv: str, env: dict[str, str] | None = None,
          stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PROBE, *argv], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                          check=False)


@pytest.fixture
def image(tmp_path: Path) -> str:
    _, ref = derived(tmp_path / "layout", [bootable_base()],
                     [Layer().dir("etc").file("etc/motd", b"hello\n")])
    return ref


def test_validate_for_a_verdict_loads_no_dataclasses(image: str) -> None:
    # CI's gate: the exit code, the table discarded (rich, which draws it, needs dataclasses)
    proc = probe("validate", "-q", image, stdout=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == "loaded: []"


def test_validate_as_json_loads_no_dataclasses(image: str) -> None:
    proc = probe("validate", "--format", "json", image)
    assert proc.returncode == 0, proc.stderr
    assert '"passed": true' in proc.stdout
    assert proc.stderr.splitlines()[-1] == "loaded: []"


def test_sign_to_a_registry_loads_no_dataclasses(
    image: str, registry: Registry, tmp_path: Path
) -> None:
    ref = f"{registry.host}/startup/sign:v1"
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", image,
                    f"docker://{ref}"], check=True)
    key, _ = keys.write_key_pair(tmp_path / "cosign", b"startup")
    proc = probe("sign", f"docker://{ref}", "--key", str(key),
                 env={"NESTBUILD_PASSWORD": "startup"})
    assert proc.returncode == 0, proc.stderr
    assert "signed:" in proc.stdout
    assert proc.stderr.splitlines()[-1] == "loaded: []"
