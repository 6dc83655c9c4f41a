"""Shared pytest set-up: fixture modules live in tests/fixtures/ and are loaded here."""

pytest_plugins = [
    "tests.fixtures.common",
    "tests.fixtures.images",
    "tests.fixtures.dockerd",
    "tests.fixtures.cosign",
    "tests.fixtures.debian",
    "tests.fixtures.registry",
    "tests.fixtures.chroot",
]
