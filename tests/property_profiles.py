"""Hypothesis profiles for the property tests of nestbuild's parsers
(tests/unit/test_properties.py).

``ci`` (the default) is small, derandomized and keeps no example database, so every run,
in CI or on a laptop, tries the same inputs and the whole property file stays well under
30 s. ``long`` is for a longer hunt by hand, with fresh random inputs each run:

    NESTBUILD_HYPOTHESIS=long .venv/bin/pytest -q -p no:cacheprovider tests/unit/test_properties.py

A failure found by ``long`` prints the input that reproduces it (``@reproduce_failure`` or the
shrunk example); add it as an explicit regression test next to the parser's own tests.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

PROFILE_ENV = "NESTBUILD_HYPOTHESIS"
#: No "explain" phase: it traces every line run, which takes minutes on the deeply nested
#: inputs these tests feed (PyYAML recursing until RecursionError).
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=None,
    database=None,
    print_blob=True,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def load() -> str:
    """Select the profile named by NESTBUILD_HYPOTHESIS (default ``ci``); its name."""
    name = os.environ.get(PROFILE_ENV) or "ci"
    settings.load_profile(name)
    return name
