"""Policy files: globs, presets, severities, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild.errors import PolicyFileError
from nestbuild.validation import policy
from tests.fixtures.cli import nestbuild


def test_globs_and_deny_over_allow() -> None:
    p = policy.parse("allow: [/opt/app/**, /usr/share/*.txt]\ndeny: [/etc/shadow]\n", "p.yaml")
    assert p.path_allowed("/etc/motd") == (True, None)
    assert p.path_allowed("/etc") == (True, None)
    assert p.path_allowed("/etc/shadow") == (False, "/etc/shadow")
    assert p.path_allowed("/opt/app/bin/x") == (True, None)
    assert p.path_allowed("/usr/share/a.txt") == (True, None)
    assert p.path_allowed("/usr/share/doc/a.txt") == (False, None)
    assert p.path_allowed("/usrx") == (False, None)


def test_presets_and_rule_severities() -> None:
    p = policy.parse("extends: packages\nrules:\n  var-content: error\n  sysusers: off\n", "p")
    assert p.path_allowed("/usr/bin/x")[0]
    assert p.path_allowed("/usr/lib/modules/6.1/vmlinuz") == (False, "/usr/lib/modules/**")
    assert p.severity("var-content") == "error"
    assert p.severity("sysusers") == "off"
    assert p.severity("secret") == "error"


@pytest.mark.parametrize("text, message", [
    ("allow: [/etc/**\n", "p.yaml:2: invalid YAML"),
    ("extends: strict\nallw: [/x]\n", "p.yaml:2: unknown key 'allw'"),
    ("extends: nope\n", "p.yaml:1: extends must be one of strict, packages, permissive"),
    ("allow:\n  - /etc/**\n  - relative/*\n", "p.yaml:3: allow: each entry is an absolute"),
    ("rules:\n  secret: loud\n", "p.yaml:2: rule secret: severity must be one of"),
    ("rules:\n  no-such-rule: error\n", "p.yaml:2: unknown rule 'no-such-rule'"),
    ("- /etc\n", "p.yaml:1: a policy is a mapping"),
])
def test_malformed_policy_names_file_line_and_problem(text: str, message: str) -> None:
    with pytest.raises(PolicyFileError) as info:
        policy.parse(text, "p.yaml")
    assert info.value.message.startswith(message), info.value.message


def test_project_file_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nestbuild.yaml").write_text("image: x\npolicy:\n  extends: packages\n")
    assert policy.resolve(None, None).name == "packages"
    (tmp_path / "nestbuild.yaml").write_text("policy: my-policy.yaml\n")
    (tmp_path / "my-policy.yaml").write_text("deny: [/etc/shadow]\n")
    p = policy.resolve(None, None)
    assert p.path_allowed("/etc/shadow")[0] is False
    assert p.source.endswith("my-policy.yaml")
    assert policy.resolve(None, "permissive").name == "permissive"


def test_parent_directories_of_allowed_trees_may_be_created() -> None:
    p = policy.preset("strict")
    assert p.leads_to_allowed("/usr/lib/bootc")
    assert p.leads_to_allowed("/usr")
    assert not p.leads_to_allowed("/usr/lib/bootc/kargs.d")  # itself allowed by the glob
    assert not p.leads_to_allowed("/usr/local")


# --- what used to be a traceback: one line, with file and line, and exit 2 -----------------


@pytest.mark.parametrize("data, message", [
    (b"allow: [/etc/**]\ndeny: [/x\x07]\n",
     "p.yaml:2: invalid YAML: control character U+0007 is not allowed"),
    (b"\x1b[31m: x\n", "p.yaml:1: invalid YAML: control character U+001B is not allowed"),
    (b"allow: [/etc/**]\n# caf\xe9\n", "p.yaml:2: not UTF-8 text (byte 0xe9)"),
    (b"? [a]\n: b\n", "p.yaml:1: a key is a plain word"),
    (b"rules:\n  ? [secret]\n  : error\n", "p.yaml:2: rules: a rule id is a plain word"),
    (b"allow: " + b"[" * 5000, "p.yaml:1: invalid YAML: "),
])
def test_hostile_policy_files(tmp_path: Path, data: bytes, message: str) -> None:
    """Control characters (PyYAML's ReaderError has no mark), bytes that are not UTF-8, keys
    that are collections (unhashable), nesting past the recursion limit."""
    path = tmp_path / "p.yaml"
    path.write_bytes(data)
    with pytest.raises(PolicyFileError) as info:
        policy.load(path)
    assert info.value.message.startswith(f"{tmp_path}/{message}"), info.value.message


def test_the_executable_refuses_bad_policy_and_project_files_in_one_line(
        tmp_path: Path) -> None:
    """``validate --policy`` with a control character or a byte that is not UTF-8, and a
    ``nestbuild.yaml`` with a control character (validate reads its policy): exit 2, one line
    naming file and line, no traceback; before any image is read."""
    (tmp_path / "ctl.yaml").write_bytes(b"allow: [/etc/**\x07]\n")
    (tmp_path / "latin1.yaml").write_bytes(b"# r\xe9seau\nallow: [/etc/**]\n")
    project = tmp_path / "project"
    project.mkdir()
    (project / "nestbuild.yaml").write_bytes(b"image: localhost/node\npolicy: strict\x07\n")
    image = f"oci:{tmp_path}/missing"
    for args, cwd, expected in (
        (["--policy", str(tmp_path / "ctl.yaml")], tmp_path,
         f"{tmp_path}/ctl.yaml:1: invalid YAML: control character U+0007 is not allowed"),
        (["--policy", str(tmp_path / "latin1.yaml")], tmp_path,
         f"{tmp_path}/latin1.yaml:1: not UTF-8 text (byte 0xe9)"),
        ([], project,
         f"{project}/nestbuild.yaml:2: invalid YAML: control character U+0007 is not allowed"),
    ):
        r = nestbuild("validate", image, *args, cwd=cwd)
        assert (r.returncode, r.stderr) == (2, f"error: {expected}\n"), args
