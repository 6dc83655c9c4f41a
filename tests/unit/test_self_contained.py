"""The tests, scripts, benchmarks and CI entry point need nothing outside the checkout.

A user who clones nestbuild alone has no sibling folders: test vectors and reference documents
live under tests/data. This test reads every file in those folders for a path that leaves the
checkout and names the file and line of each.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECKED = ("tests", "scripts", "benchmarks", ".ci")

#: Spellings of a place outside the checkout, each with the reason it is one.
_FIXED = [
    (re.compile(r"\.\./+shared\b"), "a sibling folder of the checkout"),
    (re.compile(r"""/\s*["']shared["']"""), "a 'shared' folder joined onto a path"),
    (re.compile(r"(?<![\w.-])/work/"), "an absolute path on one machine"),
]
#: A line that climbs from the file's own place: Path(__file__), os.path.dirname(__file__),
#: $(dirname "$0") or ${BASH_SOURCE[0]}.
_ANCHOR = re.compile(r"__file__|dirname\s+\"?\$(?:0|\{?BASH_SOURCE)")
_PARENTS = re.compile(r"\.parents\[(\d+)\]")
_PARENT = re.compile(r"\.parent\b")
_DIRNAME = re.compile(r"\bdirname\b")
_DOTDOT = re.compile(r"""(?:(?<=[/"'\s(])|^)\.\.(?=[/"'\s)]|$)""")


def _levels(line: str) -> int:
    """How many directories up from the file the line's anchored path climbs (1: its folder)."""
    return (sum(int(k) + 1 for k in _PARENTS.findall(line)) + len(_PARENT.findall(line))
            + len(_DIRNAME.findall(line)) + len(_DOTDOT.findall(line)))


def escapes(root: Path, folders: tuple[str, ...] = CHECKED) -> list[str]:
    """``path:line: reason: text`` for every reference out of ``root`` in ``folders``."""
    found: list[str] = []
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(root / folder):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted([*dirnames, *filenames]):
                path = Path(dirpath) / name
                rel = path.relative_to(root)
                if path.is_symlink():
                    target = (path.parent / os.readlink(path)).resolve()
                    if not target.is_relative_to(root.resolve()):
                        found.append(f"{rel}: a symlink out of the checkout ({target})")
                    continue
                if path.is_dir():
                    continue
                if rel.parts == ("tests", "unit", Path(__file__).name):
                    continue  # this file spells the patterns it looks for
                text = path.read_bytes().decode("utf-8", "replace")
                for lineno, line in enumerate(text.splitlines(), 1):
                    reasons = [why for rx, why in _FIXED if rx.search(line)]
                    # root is len(rel.parts) levels up from the file; one more leaves it
                    if _ANCHOR.search(line) and _levels(line) > len(rel.parts):
                        reasons.append(f"climbs {_levels(line)} folders from a file "
                                       f"{len(rel.parts) - 1} deep")
                    found += [f"{rel}:{lineno}: {why}: {line.strip()}" for why in reasons]
    return found


def test_nothing_reaches_outside_the_checkout() -> None:
    assert escapes(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize("rel, line", [
    # how the interop tests found their vectors before they were copied into tests/data
    ("tests/integration/test_keys.py",
     'INTEROP = Path(__file__).resolve().parents[1].parent / "shared" / "interop"'),
    ("tests/test_x.py", 'DATA = Path(__file__).parent.parent.parent / "data"'),
    ("tests/fixtures/x.py", "REPO = Path(__file__).resolve().parents[3]"),
    ("tests/test_x.py", 'DATA = os.path.join(os.path.dirname(__file__), "..", "..", "d")'),
    ("benchmarks/build", 'DATA = Path(__file__).parent / ".." / ".." / "vectors"'),
    (".ci/run", 'cd "$(dirname "$0")/../.."'),
    ("scripts/setup", 'source "$(dirname "${BASH_SOURCE[0]}")/../../env"'),
    ("scripts/test", "cp -r ../shared/interop tests/data"),
    ("tests/conftest.py", 'CACHE = "/work/cache"'),
])
def test_each_way_out_is_named_with_file_and_line(tmp_path: Path, rel: str, line: str) -> None:
    root = _tree(tmp_path, {rel: f"# first line\n{line}\n"})
    found = escapes(root)
    assert len(found) >= 1 and all(f.startswith(f"{rel}:2: ") for f in found), found


def test_the_ways_the_checkout_finds_itself_are_not_flagged(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "tests/test_a.py": 'DATA = Path(__file__).parents[1] / "data" / "interop"\n'
                           "REPO = Path(__file__).resolve().parents[1]\n",
        "tests/fixtures/b.py": "REPO = Path(__file__).resolve().parents[2]\n",
        "benchmarks/push": "REPO = Path(__file__).resolve().parent.parent\n",
        ".ci/run": 'cd "$(dirname "$0")/.."\n',
        # hostile paths inside test images are data, not places on this machine
        "tests/test_c.py": 'Layer().file("/etc/../../x", b"x").dir("/etc/shared", 0o777)\n',
    })
    assert escapes(root) == []


def test_a_symlink_out_of_the_checkout_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path / "main", {"tests/data/README.md": "data\n"})
    (tmp_path / "outside").mkdir()
    (root / "tests" / "data" / "vectors").symlink_to("../../../outside")
    assert escapes(root) == [
        f"tests/data/vectors: a symlink out of the checkout ({(tmp_path / 'outside').resolve()})"]
