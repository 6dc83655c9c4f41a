"""Policy files: globs, presets, severities, and errors that name file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild import policy
from nestbuild.errors import PolicyFileError


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
