"""Shared pytest set-up: fixture modules live in tests/fixtures/ and are loaded here.

Markers are applied here, so that ``-m`` selects by what a test really needs:

- ``unit`` or ``integration`` by directory;
- one marker per real component (pyproject.toml lists them) from the fixtures a test uses,
  directly or through other fixtures (:data:`COMPONENT_FIXTURES`). A test file that runs a
  component itself (``run(["ostree", ...])``, nestbuild's deploy) says so with ``pytestmark``.

A test in tests/unit that asks for a real-component fixture fails the collection: the unit set
stays pure Python, without root or external tools.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.images",
    "tests.fixtures.dockerd",
    "tests.fixtures.cosign",
    "tests.fixtures.debian",
    "tests.fixtures.registry",
    "tests.fixtures.chroot",
    "tests.fixtures.rpmbase",
    "tests.fixtures.sshd",
    "tests.fixtures.fleet",
    "tests.fixtures.bootfleet",
]

TESTS = Path(__file__).resolve().parent

#: Fixture name -> the real components it starts or runs.
COMPONENT_FIXTURES: dict[str, tuple[str, ...]] = {
    "registry": ("registry",),
    "tls_registry": ("registry",),
    "token_registry": ("registry",),
    "fault_proxy": ("registry",),
    "mini_base": ("buildah",),
    "build_image": ("buildah",),
    "cosign_bin": ("cosign",),
    "cosign": ("cosign",),
    "dockerd": ("dockerd",),
    "debian_base": ("mmdebstrap", "buildah"),
    "debian_marker": ("buildah",),
    "debian_sysroot": ("ostree",),
    "rpm_bases": ("buildah", "skopeo"),
    "trixie_root": ("mmdebstrap", "skopeo"),
    "trixie": ("mmdebstrap", "skopeo"),
    "sshd": ("sshd",),
    "make_fleet": ("ostree",),
    "boot_images": ("buildah", "registry"),
    "make_boot_nodes": ("ostree",),
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        path = Path(str(item.path)).resolve()
        fixtures = getattr(item, "fixturenames", ())
        real = sorted(name for name in fixtures if name in COMPONENT_FIXTURES)
        if path.is_relative_to(TESTS / "unit"):
            item.add_marker(pytest.mark.unit)
            if real:
                misplaced.append(f"{item.nodeid} uses {', '.join(real)}")
        elif path.is_relative_to(TESTS / "integration"):
            item.add_marker(pytest.mark.integration)
        for component in sorted({c for name in real for c in COMPONENT_FIXTURES[name]}):
            item.add_marker(getattr(pytest.mark, component))
    # unit tests first (seconds; a failure there usually explains one further on)
    items.sort(key=lambda item: item.get_closest_marker("unit") is None)
    if misplaced:
        raise pytest.UsageError(
            "tests/unit must not use real components (move these to tests/integration):\n  "
            + "\n  ".join(misplaced))
