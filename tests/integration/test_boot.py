"""`nestbuild boot`: the debian-marker image, deployed into an ostree sysroot by nestbuild's
deploy, boots under qemu (software emulation) to multi-user.target in that deployment, and
its /etc/nestbuild-marker comes back over the serial console."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestbuild._cli.main import main
from nestbuild.errors import UsageError
from nestbuild.node.boot import default_entry, marker_matches
from tests.fixtures.debian import DEBIAN_MARKER, OSNAME, DeployedSysroot

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.qemu]

MARKER = (DEBIAN_MARKER / "nestbuild-marker").read_text()


def test_the_deployed_marker_image_boots(debian_sysroot: DeployedSysroot,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["boot", "--sysroot", str(debian_sysroot.path), "--os", OSNAME,
                 "--marker", MARKER, "--timeout", "600", "--format", "json", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["marker_ok"] and out["marker"] == MARKER
    assert out["commit"] == debian_sysroot.deployment.checksum  # and booted in it (checked)
    assert out["failed_units"] == []


def test_a_boot_that_does_not_finish_fails_with_the_console_tail(
        debian_sysroot: DeployedSysroot, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "console.log"
    # 20 s: a full boot under software emulation takes over a minute, and the kernel's first
    # line can take several seconds to appear when the machine is busy
    code = main(["boot", "--sysroot", str(debian_sysroot.path), "--timeout", "20",
                 "--console-log", str(log), "-q"])
    err = capsys.readouterr().err
    assert code == 1
    assert "did not boot" in err and "within 20s" in err
    assert "Linux version" in log.read_text()  # the kernel was running: the console is real


def test_the_default_entry_is_the_default_deployment(debian_sysroot: DeployedSysroot,
                                                     tmp_path: Path) -> None:
    entry = default_entry(debian_sysroot.path, OSNAME)
    assert entry.checksum == debian_sysroot.deployment.checksum
    assert entry.kernel.is_file() and entry.initrd.is_file()
    assert "ostree=/ostree/boot." in entry.options
    with pytest.raises(UsageError, match="no deployment of other"):
        default_entry(debian_sysroot.path, "other")
    with pytest.raises(UsageError, match="not an ostree sysroot"):
        default_entry(tmp_path)


def test_marker_comparison_ignores_only_a_final_newline() -> None:
    assert marker_matches(b"built\n", "built")
    assert marker_matches(b"built", "built\n")
    assert not marker_matches(b"built v2\n", "built")
    assert not marker_matches(None, "built")
