"""The command line's contract with its users, for every command the parser has (walked, so a
new command is held to it the day it is added): ``--help`` works and says what the command
does and what each of its exit codes means; a mistyped option shows the command's own usage;
``--format json`` has a documented JSON Schema (docs/reference/schemas/); piped tables do not
wrap."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from nestbuild._cli.main import build_parser, main
from nestbuild.errors import EXIT_FAILED, EXIT_INPUT, EXIT_OK
from tests.fixtures.cli import nestbuild as run_cli

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "docs" / "reference" / "schemas"

#: Commands that can exit 1 (EXIT_FAILED): a check failed (policy, signature, boot marker, a
#: refused rebase, a failed build) or a registry served content that does not match its digest
#: (any command that reads a registry). Every command can exit 0 and 2 (bad arguments at least).
CAN_FAIL = {
    "validate", "diff", "sign", "verify", "attest", "tree", "download attestation", "push",
    "pull", "inspect", "build", "logout", "rebase", "boot", "sbom", "changelog", "node upgrade",
    "rollout",
}


Command = tuple[tuple[str, ...], argparse.ArgumentParser]


def commands(parser: argparse.ArgumentParser | None = None,
             path: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every parser in the tree with its command path: groups (node, base) and leaves."""
    parser = parser or build_parser()
    if path:
        yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


ALL = [path for path, _parser in commands()]


def _help(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0, path
    return capsys.readouterr().out


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(p) for p in ALL}
    assert {"validate", "node status", "node rollback", "base build", "completion"} <= names


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_help_describes_the_command_and_its_exit_codes(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    text = _help(path, capsys)
    parser = dict(commands())[path]
    assert parser.description and parser.description.strip(), f"{path}: no description"
    found = re.search(r"exit codes?:(.*?)(?:\n\n|\Z)", text, re.S)
    assert found, f"nestbuild {' '.join(path)} --help does not say what its exit codes mean"
    said = found.group(1)
    expected = {EXIT_OK, EXIT_INPUT}
    # a group (node, base, download) can return what any of its actions can
    if any(" ".join(p) in CAN_FAIL for p in ALL if p[:len(path)] == path):
        expected.add(EXIT_FAILED)
    for code in sorted(expected):
        assert re.search(rf"(^|[\s,;(]){code} ", said), (
            f"nestbuild {' '.join(path)} --help does not say what exit code {code} means:"
            f"{said}")
    if EXIT_FAILED not in expected:
        assert not re.search(r"(^|[\s,;(])1 ", said), (
            f"nestbuild {' '.join(path)} --help names exit code 1, which it never returns")


def test_top_level_help_names_every_transport_and_exit_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    text = _help((), capsys)
    for transport in ("containers-storage:", "docker://", "oci:", "oci-archive:"):
        assert transport in text
    for code in ("0 ", "1 ", "2 ", "130 "):
        assert code in text.split("exit codes:")[1]


def test_help_of_diff_and_verify_says_only_what_applies(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert "policy errors" not in _help(("diff",), capsys)
    assert "passphrase" not in _help(("verify",), capsys).lower()


@pytest.mark.parametrize("path", ALL, ids=" ".join)
def test_a_mistyped_option_shows_the_commands_own_usage(
        path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*path, "--no-such-option"])
    assert exited.value.code == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"usage: nestbuild {' '.join(path)} "), err


def _json_commands() -> list[tuple[str, ...]]:
    out = []
    for path, parser in commands():
        for action in parser._actions:
            if "--format" in action.option_strings and "json" in (action.choices or ()):
                out.append(path)
    return out


@pytest.mark.parametrize("path", _json_commands(), ids=" ".join)
def test_json_output_has_a_documented_schema(path: tuple[str, ...]) -> None:
    name = "-".join(path)
    schema_file = SCHEMAS / f"{name}.schema.json"
    assert schema_file.is_file(), f"nestbuild {' '.join(path)} --format json: no {schema_file}"
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("title") and schema.get("description")
    index = (REPO / "docs" / "reference" / "json.md").read_text()
    assert f"schemas/{name}.schema.json" in index, f"docs/reference/json.md does not list {name}"


@pytest.mark.parametrize("path", [("rules",), ("base", "list")], ids=" ".join)
def test_json_output_matches_its_schema(path: tuple[str, ...]) -> None:
    """The commands that need no image; tests/integration/test_docs.py runs the others."""
    r = run_cli(*path, "--format", "json", check=True)
    schema = json.loads((SCHEMAS / f"{'-'.join(path)}.schema.json").read_text())
    jsonschema.validate(json.loads(r.stdout), schema)


def test_piped_tables_do_not_wrap() -> None:
    """CI logs are not terminals: a table is as wide as its rows, a path is never split."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = run_cli("rules", env=env, check=True)
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) > 100
    from nestbuild import rule_catalogue

    for rule in rule_catalogue().values():
        assert any(rule.summary in line for line in lines), rule.id
