"""The public API: ``import nestbuild`` gives every stage, and importing it costs nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

import nestbuild


@pytest.mark.parametrize("name", sorted(set(nestbuild.__all__) - {"__version__"}))
def test_every_public_name_resolves_where_the_table_says(name: str) -> None:
    value = getattr(nestbuild, name)
    module = nestbuild._API[name]
    assert getattr(value, "__module__", module) == module or not callable(value)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        nestbuild.no_such_thing  # noqa: B018


def test_import_nestbuild_loads_no_stage() -> None:
    # the lazy table is the whole point: `import nestbuild` must not import any stage
    code = ("import sys, nestbuild; print(sorted(m for m in sys.modules "
            "if m.startswith('nestbuild.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
