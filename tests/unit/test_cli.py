"""The command line: exit codes, one-line errors, JSON and SARIF shapes."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nestbuild._cli import (
    COMMAND_MODULES,
    COMMAND_OWNERS,
    PASSPHRASE_FILE_OPTION,
    SIGNING_KEY_OPTIONS,
    signing_key_argument,
)
from nestbuild._cli.main import OWN_COMMANDS, build_parser, main
from tests.fixtures.cli import nestbuild as run_cli
from tests.ocibuilder import Layer, bootable_base, derived


@pytest.fixture
def images(tmp_path: Path) -> tuple[str, str, str]:
    base, good = derived(tmp_path / "l", [bootable_base()], [Layer().file("/etc/motd", b"hi\n")],
                         tag="good")
    _, bad = derived(tmp_path / "l", [bootable_base()],
                     [Layer().dir("/usr/local").file("/usr/local/x", b"x")], tag="bad")
    return base, good, bad


def test_validate_json_contract_and_exit_codes(images: tuple[str, str, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _base, good, bad = images
    assert main(["validate", good, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) >= {"image", "base", "policy", "changes", "findings", "summary", "passed"}
    assert doc["image"]["ref"] == good and doc["image"]["digest"].startswith("sha256:")
    assert doc["base"]["layers"] == 1 and doc["base"]["found_by"] == "annotation"
    assert doc["changes"] == [{"path": "/etc/motd", "kind": "modified", "type": "file",
                               "layer": 1, "details": ["content"]}]
    assert doc["summary"] == {"errors": 0, "warnings": 0, "infos": 0, "changes": 1}
    assert doc["passed"] is True

    assert main(["validate", bad, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is False
    assert doc["findings"][0]["rule"] == "path-policy"
    assert doc["findings"][0]["path"] == "/usr/local"
    assert main(["validate", bad, "--preset", "packages", "--format", "json"]) == 0


def test_sarif(images: tuple[str, str, str], tmp_path: Path) -> None:
    _, _, bad = images
    out = tmp_path / "r.sarif"
    assert main(["validate", bad, "--format", "sarif", "-o", str(out)]) == 1
    sarif = json.loads(out.read_text())
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    assert run["tool"]["driver"]["name"] == "nestbuild"
    assert run["results"][0]["ruleId"] == "path-policy"
    assert run["results"][0]["level"] == "error"
    loc = run["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert loc["uri"] == "usr/local"


def test_diff_json(images: tuple[str, str, str], capsys: pytest.CaptureFixture[str]) -> None:
    base, good, _ = images
    assert main(["diff", base, good, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [c["path"] for c in doc["changes"]] == ["/etc/motd"]
    assert "findings" not in doc


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = run_cli("validate", f"oci:{tmp_path}/missing")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no such directory" in r.stderr
    assert "Traceback" not in r.stderr
    policy = tmp_path / "p.yaml"
    policy.write_text("allow: [/etc\n")
    r = run_cli("validate", f"oci:{tmp_path}/missing", "--policy", str(policy))
    assert r.returncode == 2 and f"{policy}:2: invalid YAML" in r.stderr


def test_table_output_and_rules_list(images: tuple[str, str, str]) -> None:
    _, _, bad = images
    r = run_cli("validate", bad)
    assert r.returncode == 1
    assert "path-policy" in r.stdout and "/usr/local" in r.stdout and "FAILED" in r.stdout
    r = run_cli("rules", "--format", "json")
    ids = {row["id"] for row in json.loads(r.stdout)}
    assert {"path-policy", "secret", "var-run", "kernel", "unsafe-path"} <= ids


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _plain_command(sub: Any) -> Callable[..., argparse.ArgumentParser]:
    def command(name: str, *_args: object, **_kwargs: object) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name)
        return parser

    return command


def test_one_command_parser_matches_the_whole_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``nestbuild sign ...`` builds only its module's parsers (COMMAND_OWNERS): every command
    registered by a command module must be listed there, and show the same help either way."""
    monkeypatch.setenv("COLUMNS", "100")
    whole = _subcommands(build_parser())
    for name in COMMAND_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(name).register(sub, _plain_command(sub))
        for command in sub.choices:
            assert COMMAND_OWNERS.get(command) == name, command
    for command in (*COMMAND_OWNERS, *OWN_COMMANDS):  # validate: only main's own parsers
        alone = _subcommands(build_parser(command))
        assert command in alone and set(alone) < set(whole), command
        assert alone[command].format_help() == whole[command].format_help(), command
    args = build_parser("sign").parse_args(["sign", "docker://r/x:1", "--key", "k"])
    assert args.func.__module__ == "nestbuild._cli.signing"


@pytest.mark.parametrize(("argv", "expected"), [
    (["sign", "docker://r/x:1", "--key", "k.key"], ("k.key", None)),
    (["sign", "--key=k.key", "docker://r/x:1", "--passphrase-file", "pw"], ("k.key", "pw")),
    (["attest", "oci:l:v1", "--key", "k", "--passphrase-file=pw"], ("k", "pw")),
    (["push", "localhost/n:1", "--sign-key", "k"], ("k", None)),
    (["push", "localhost/n:1", "--key", "k"], None),  # push names it --sign-key
    (["verify", "docker://r/x:1", "--key", "k.pub"], None),  # a public key: nothing to start
    (["sign", "docker://r/x:1", "--key", "a", "--key", "b"], None),  # argparse takes the last
    (["sign", "docker://r/x:1", "--key", "k", "--passphrase-file", "a",
      "--passphrase-file", "b"], None),
    (["sign", "docker://r/x:1", "--key", "k", "--help"], None),
    (["sign", "docker://r/x:1", "--key"], None),
    (["sign", "--", "--key", "k"], None),
    ([], None),
])
def test_the_signing_key_is_found_before_argparse(argv: list[str],
                                                   expected: tuple[str, str | None] | None) -> None:
    assert signing_key_argument(argv) == expected


def test_early_key_options_are_the_parsers_own() -> None:
    """SIGNING_KEY_OPTIONS must name each command's private-key option; a renamed option would
    silently lose the early start."""
    for command, option in SIGNING_KEY_OPTIONS.items():
        parser = _subcommands(build_parser(command))[command]
        by_option = {o: a for a in parser._actions for o in a.option_strings}
        assert option in by_option and PASSPHRASE_FILE_OPTION in by_option, command
        args = parser.parse_args(_minimal_args(command, option, "k.key"))
        assert signing_key_argument([command, *_minimal_args(command, option, "k.key")]) == (
            str(getattr(args, by_option[option].dest)), None)


def _minimal_args(command: str, option: str, key: str) -> list[str]:
    extra = {"attest": ["--predicate", "p.json", "--type", "link"]}.get(command, [])
    return ["docker://r/x:1" if command != "push" else "localhost/n:1", option, key, *extra]


@pytest.mark.parametrize("args", [["rules", "--format", "json"], ["--version"]])
def test_output_that_cannot_be_written(args: list[str]) -> None:
    """``nestbuild ... | head -1`` is not an error: exit 0, no traceback, no 'Exception
    ignored'. Output lost to a full disk is one: exit 1 and one line saying so. The output
    stays buffered (no PYTHONUNBUFFERED) until nestbuild flushes it as it exits."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    r = subprocess.run([sys.executable, "-m", "nestbuild", *args], stdout=write_end,
                       stderr=subprocess.PIPE, text=True, check=False, env=env)
    os.close(write_end)
    assert (r.returncode, r.stderr) == (0, "")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "nestbuild", *args], stdout=full,
                           stderr=subprocess.PIPE, text=True, check=False, env=env)
    assert (r.returncode, r.stderr) == (1, "error: cannot write the output: No space left on "
                                           "device\n")


def test_a_results_table_shows_what_it_holds_without_terminal_controls(
        capsys: pytest.CaptureFixture[str]) -> None:
    """node status, node upgrade and rollout print lines that carry a node's health output
    and an image's names: a terminal must not act on them."""
    from nestbuild._cli.common import show

    class Result:
        def to_json(self) -> dict[str, Any]:
            return {"output": "\x1b[2Jgone"}

        def lines(self) -> list[str]:
            return ["FAIL  cmd: check", "      \x1b[2Jgone"]

    show(Result(), "table")
    assert capsys.readouterr().out == "FAIL  cmd: check\n      \\x1b[2Jgone\n"
    show(Result(), "json")
    assert json.loads(capsys.readouterr().out) == {"output": "\x1b[2Jgone"}
