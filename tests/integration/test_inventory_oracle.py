"""nestbuild's inventory reader held to real Ansible on the same files: every host's merged
variables (``ansible-inventory --list``), and the hosts of limit patterns (``ansible
--list-hosts``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nestbuild.fleet.inventory import load_inventory

pytestmark = [pytest.mark.ansible]

BIN = Path(sys.executable).parent

INI = """\
# comment
lone1 x=1 nestbuild_via=ostree nestbuild_sysroot=/srv/lone1
lone2:2222

[web]
web[01:03] role=web
web[a:c].example.com
db-[0:10:5]

[web:vars]
a=True
b=3.5
c="quoted string"
d={"k": [1, 2]}
e=plain
shared=web

[db]
db1 shared=host
db2

[db:vars]
shared=db

[prod:children]
web
db

[prod:vars]
shared=prod
tier=prod

[east:children]
prod

[east:vars]
shared=east
region=east

[all:vars]
everywhere=yes
"""

YAML = """\
all:
  vars: {z: all, shared: all}
  hosts:
    lone:
  children:
    prod:
      vars: {shared: prod, p: 1}
      children:
        web:
          hosts:
            web[01:03]:
              shared: hostweb
            web[a:b]:
          vars: {shared: web}
        db:
          hosts:
            db1: {port: 5432, tags: [a, b]}
            db2:
    staging:
      hosts:
        web01:
        st1:
      vars:
        shared: staging
"""


def ansible_env(tmp_path: Path) -> dict[str, str]:
    d = tmp_path / "ansible"
    for sub in ("home", "local", "remote"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "ansible.cfg").write_text("")
    return {**os.environ, "HOME": str(d / "home"), "ANSIBLE_LOCAL_TEMP": str(d / "local"),
            "ANSIBLE_REMOTE_TEMP": str(d / "remote"), "ANSIBLE_CONFIG": str(d / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1"}


def ansible_hostvars(inv: Path, env: dict[str, str]) -> dict[str, dict[str, object]]:
    out = subprocess.run([BIN / "ansible-inventory", "-i", inv, "--list"], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    doc = json.loads(out.stdout)
    hostvars: dict[str, dict[str, object]] = doc["_meta"]["hostvars"]
    return hostvars


def list_hosts(inv: Path, env: dict[str, str], *pattern: str) -> list[str]:
    out = subprocess.run([BIN / "ansible", "-i", inv, *pattern, "--list-hosts"], env=env,
                         capture_output=True, text=True, check=True, timeout=120)
    return [line.strip() for line in out.stdout.splitlines()[1:]]


def compare(inv: Path, env: dict[str, str], patterns: list[str]) -> None:
    theirs = ansible_hostvars(inv, env)
    ours = {n.name: n.vars for n in load_inventory(inv).nodes()}
    # Ansible leaves a host without variables out of _meta.hostvars
    assert ours == {h: theirs.get(h, {}) for h in ours}
    assert set(theirs) <= set(ours)
    for pattern in patterns:
        assert set(load_inventory(inv).select(pattern)) == \
            set(list_hosts(inv, env, pattern)), pattern


@pytest.fixture
def ini(tmp_path: Path) -> Path:
    inv = tmp_path / "inv" / "hosts.ini"
    inv.parent.mkdir()
    inv.write_text(INI)
    (inv.parent / "group_vars" / "web").mkdir(parents=True)
    (inv.parent / "group_vars" / "web" / "a.yml").write_text("gv: web-dir\nshared: web-file\n")
    (inv.parent / "group_vars" / "east.yml").write_text("shared: east-file\nef: 1\n")
    (inv.parent / "host_vars").mkdir()
    (inv.parent / "host_vars" / "db1.yml").write_text("hf: true\n")
    (inv.parent / "host_vars" / "web02").mkdir()
    (inv.parent / "host_vars" / "web02" / "x.json").write_text('{"role": "file"}')
    return inv


PATTERNS = ["all", "web", "web:db", "web,db", "prod:&web", "prod:!db", "!web", "web0*",
            "~web0[12]", "~eb", "ungrouped", "lone1", "web[0]", "web[1:2]", "web[-1]",
            "web[2:]", "*.example.com", "east:!db-*"]


def test_ini_inventory(ini: Path, tmp_path: Path) -> None:
    env = ansible_env(tmp_path)
    compare(ini, env, PATTERNS)
    # one level of groups: Ansible's play order is the file's order
    for pattern in ["all", "web", "db:web", "lone2,web[1:2]"]:
        ours = [n.name for n in load_inventory(ini).nodes(pattern)]
        assert ours == list_hosts(ini, env, "all", "--limit", pattern), pattern


def test_yaml_inventory(tmp_path: Path) -> None:
    (tmp_path / "inv").mkdir()
    inv = tmp_path / "inv" / "hosts.yml"
    inv.write_text(YAML)
    (inv.parent / "group_vars").mkdir()
    (inv.parent / "group_vars" / "prod.json").write_text('{"shared": "prod-file"}')
    compare(inv, ansible_env(tmp_path), ["all", "prod", "web", "prod:!db", "staging:&web",
                                          "web[1:]", "~web0", "st*"])


def test_a_large_generated_inventory(tmp_path: Path) -> None:
    racks = "\n".join(f"[rack{r}]\nnode{r}[{r * 30:03d}:{r * 30 + 29:03d}] rack={r}\n"
                      f"[rack{r}:vars]\nzone=z{r % 3}\n" for r in range(10))
    inv = tmp_path / "big.ini"
    inv.write_text(racks + "[fleet:children]\n" + "\n".join(f"rack{r}" for r in range(10))
                   + "\n[fleet:vars]\nzone=none\nnestbuild_via=rpm-ostree\n")
    env = ansible_env(tmp_path)
    assert len(load_inventory(inv).nodes()) == 300
    compare(inv, env, ["all", "rack3:rack1", "fleet:!rack0", "node5*", "rack2[5:9]"])
    ours = [n.name for n in load_inventory(inv).nodes("rack7:rack2")]
    assert ours == list_hosts(inv, env, "all", "--limit", "rack7:rack2")


def test_an_explicit_host_list_is_run_in_its_order(ini: Path, tmp_path: Path) -> None:
    """What a rollout can rely on to run its own waves: a play on a list of hosts runs them
    in the list's order, whatever the groups."""
    env = ansible_env(tmp_path)
    hosts = ["db2", "web03", "lone1", "web01"]
    assert list_hosts(ini, env, ",".join(hosts)) == hosts


NESTED = "[a:children]\nb\n[c]\nh3\nh2\n[b]\nh1\nh2\n[d]\nh4\n[d:children]\nc\n"


def test_nested_groups_run_in_the_planned_order(tmp_path: Path) -> None:
    """With nested groups Ansible's own order for ``all`` is its group walk (not the file's,
    nor stable between runs), so the rollout gives the play its hosts as a list in the
    planned order (``nestbuild_hosts``), which Ansible keeps."""
    inv = tmp_path / "nested.ini"
    inv.write_text(NESTED)
    env = ansible_env(tmp_path)
    ours = [n.name for n in load_inventory(inv).nodes()]
    assert sorted(ours) == sorted(list_hosts(inv, env, "all"))
    assert list_hosts(inv, env, ",".join(ours)) == ours
