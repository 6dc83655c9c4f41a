"""The rule catalogue: declared once per rule, checked when it is declared, and the same as the
documentation users write policies from."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import nestbuild
from nestbuild.validation.declare import Context, Hit, lint, rule
from nestbuild.validation.rules import LINTS, RULES

ROOT = Path(__file__).resolve().parents[2]
POLICY_DOC = ROOT / "docs" / "reference" / "policy.md"
_ROW = re.compile(r"^\| `([a-z0-9-]+)` \| (\w+) \| (\w+) \|", re.MULTILINE)


def test_the_documented_rules_are_the_catalogue() -> None:
    documented = [m.groups() for m in _ROW.finditer(POLICY_DOC.read_text())]
    assert len(documented) == len(set(documented))
    assert sorted(documented) == sorted((r.id, r.severity, r.origin) for r in RULES.values())
    assert nestbuild.rule_catalogue() is RULES


def test_every_lint_is_in_the_catalogue_once() -> None:
    ids = [lint.rule.id for lint in LINTS]
    assert len(ids) == len(set(ids))
    assert all(RULES[i] is lint.rule for i, lint in zip(ids, LINTS, strict=True))
    # what the lints do not report has a reporter of its own, declared with rule()
    assert set(RULES) - set(ids) == {"utf8", "path-policy", "secret", "final-diffid",
                                     "unsafe-path"}


def _never(ctx: Context) -> Iterator[Hit]:
    yield from ()


def test_declaring_an_id_twice_fails_at_import_time() -> None:
    with pytest.raises(ValueError, match="'world-writable': declared twice"):
        lint("world-writable", "error", "again", fix="again")(_never)
    with pytest.raises(ValueError, match="'path-policy': declared twice"):
        rule("path-policy", "warning", "again", fix="again")
    assert RULES["world-writable"].summary.startswith("a world-writable file")
    assert [lint.rule.id for lint in LINTS].count("world-writable") == 1


@pytest.mark.parametrize(("args", "problem"), [
    (("new-rule", "fatal", "what", "how"), "unknown severity 'fatal'"),
    (("New_Rule", "error", "what", "how"), "lowercase words"),
    (("new-rule", "error", "", "how"), "says what it checks"),
    (("new-rule", "error", "what", " "), "says what it checks"),
])
def test_a_malformed_rule_is_refused_and_not_declared(args: tuple[str, str, str, str],
                                                      problem: str) -> None:
    id_, severity, summary, fix = args
    with pytest.raises(ValueError, match=problem):
        lint(id_, severity, summary, fix=fix)(_never)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown origin 'oci'"):
        rule("new-rule", "error", "what", fix="how", origin="oci")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pack name"):
        rule("new-rule", "error", "what", fix="how", packs=["Hardening!"])
    assert "new-rule" not in RULES and "New_Rule" not in RULES


VALIDATION_COMMANDS = ("cmd_validate", "cmd_diff", "cmd_rules", "cmd_base_build",
                       "cmd_base_list")


def test_the_validation_commands_use_only_the_public_api() -> None:
    """The command line is one user of the API like any other: what it needs is public."""
    tree = ast.parse((ROOT / "nestbuild" / "_cli" / "main.py").read_text())
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    for name in VALIDATION_COMMANDS:
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "nestbuild":
                    assert module in ("nestbuild", "nestbuild.errors") or module.startswith(
                        "nestbuild._cli"), f"{name} imports {module}"
