"""Kernel settings read the same way when a build writes them and when validate judges them."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild.building import kernel
from nestbuild.errors import UsageError
from nestbuild.validation.kernelconf import kargs_problem, modules_to_load

ROOT = Path(__file__).resolve().parents[2]


def test_the_repository_profiles_are_found_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NESTBUILD_KERNEL_PROFILES", raising=False)
    files = kernel.render(kernel.KernelSettings(kargs=["container-host"],
                                                modules=["container-host"]))
    data, mode = files["/usr/lib/bootc/kargs.d/10-container-host.toml"]
    assert data == (ROOT / "kernel" / "kargs" / "container-host.toml").read_bytes()
    assert mode == 0o644
    assert "/etc/modules-load.d/nestbuild-container-host.conf" in files


def test_a_profile_bootc_would_refuse_is_refused_before_the_build(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'kargs = ["a"]\nextra = 1\n')
    assert kargs_problem(bad.read_bytes()) == "unknown key(s) extra"
    with pytest.raises(UsageError, match=f"{bad}: unknown key\\(s\\) extra"):
        kernel.render(kernel.KernelSettings(kargs=[str(bad)]))


@pytest.mark.parametrize(("data", "problem"), [
    (b'kargs = ["console=ttyS0"]\nmatch-architectures = ["x86_64"]\n', None),
    (b'kargs = "console=ttyS0"\n', "kargs must be a list of strings"),
    (b'kargs = ["a"]\nmatch-architectures = "x86_64"\n',
     "match-architectures must be a list of strings"),
    (b"kargs = [\n", "invalid TOML"),
    (b"\xff", "invalid TOML"),
])
def test_kargs_files_as_bootc_reads_them(data: bytes, problem: str | None) -> None:
    got = kargs_problem(data)
    assert got == problem if problem is None else (got or "").startswith(problem)


def test_modules_load_files_as_systemd_reads_them() -> None:
    text = "# comment\noverlay\n; also a comment\n  br_netfilter  # trailing\n\nnf-nat\n"
    assert modules_to_load(text) == ["overlay", "br_netfilter", "nf-nat"]
