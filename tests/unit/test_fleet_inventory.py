"""The fleet inventory reader: Ansible's INI and YAML rules, host patterns, one-line errors.

The same rules are held to real Ansible in tests/integration/test_inventory_oracle.py; these
pin each rule on its own, fast, with the error a user sees for each broken file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nestbuild.fleet.inventory import InventoryError, expand, load_inventory
from tests import property_profiles

property_profiles.load()


def write(tmp_path: Path, text: str, name: str = "inventory") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def hostvars(path: Path, limit: str | None = None) -> dict[str, dict[str, object]]:
    return {n.name: n.vars for n in load_inventory(path).nodes(limit)}


def refused(path: Path, limit: str | None = None) -> str:
    with pytest.raises(InventoryError) as info:
        load_inventory(path).nodes(limit)
    message = info.value.message
    assert "\n" not in message
    return message


# -- host ranges -------------------------------------------------------------------------

def test_ranges() -> None:
    assert expand("node[01:03]") == ["node01", "node02", "node03"]
    assert expand("node[1:3]") == ["node1", "node2", "node3"]
    assert expand("n[8:11]") == ["n8", "n9", "n10", "n11"]
    assert expand("n[008:010]") == ["n008", "n009", "n010"]
    assert expand("db-[a:c]") == ["db-a", "db-b", "db-c"]
    assert expand("x[0:10:5]") == ["x0", "x5", "x10"]
    assert expand("r[1:2]-[a:b]") == ["r1-a", "r1-b", "r2-a", "r2-b"]
    assert expand("plain") == ["plain"]


@pytest.mark.parametrize("pattern", ["n[3:1]", "n[a:1]", "n[aa:bb]"])
def test_bad_ranges(pattern: str) -> None:
    with pytest.raises(InventoryError):
        expand(pattern)


@given(first=st.integers(0, 500), count=st.integers(1, 200), width=st.integers(1, 5),
       step=st.integers(1, 7))
def test_numeric_range_yields_exactly_its_hosts(first: int, count: int, width: int,
                                                step: int) -> None:
    last = first + count - 1
    pad = max(width, len(str(last))) if width > 1 else 0
    a, b = str(first).zfill(pad), str(last).zfill(pad)
    hosts = expand(f"h[{a}:{b}:{step}]")
    wanted = list(range(first, last + 1, step))
    assert len(hosts) == len(wanted)
    if a.startswith("0") and len(a) > 1:
        assert hosts == [f"h{i:0{len(a)}d}" for i in wanted]
    else:
        assert [int(h[1:]) for h in hosts] == wanted
    assert len(set(hosts)) == len(hosts)


# -- INI ---------------------------------------------------------------------------------

INI = """\
# a comment
; another
lone1 x=1
lone2:2222

[web]
web[01:02] role=web
web[a:b].example.com
web03 shared=host

[web:vars]
a=True
b=3.5
n=42
c="quoted string"
d={"k": [1, 2]}
e=plain
shared=web

[db]
db1

[db:vars]
shared=db

[prod:children]
web
db

[prod:vars]
shared=prod
tier=prod
"""


def test_ini_values_and_precedence(tmp_path: Path) -> None:
    inv = write(tmp_path, INI)
    hv = hostvars(inv)
    assert list(hv) == ["lone1", "lone2", "web01", "web02", "weba.example.com",
                        "webb.example.com", "web03", "db1"]
    assert hv["lone1"] == {"x": 1}
    assert hv["lone2"] == {"ansible_port": 2222}
    w = hv["web01"]
    assert (w["a"], w["b"], w["n"], w["c"], w["d"], w["e"]) == \
        (True, 3.5, 42, "quoted string", {"k": [1, 2]}, "plain")
    assert w["role"] == "web" and w["tier"] == "prod"
    assert w["shared"] == "web"  # the deeper group wins over its parent
    assert hv["web03"]["shared"] == "host"  # the host wins over its groups
    assert hv["db1"]["shared"] == "db"
    nodes = {n.name: n for n in load_inventory(inv).nodes()}
    assert nodes["web01"].groups == ("prod", "web")
    assert nodes["lone1"].groups == ("ungrouped",)
    assert nodes["db1"].via == "bootc"


def test_host_port_with_range(tmp_path: Path) -> None:
    hv = hostvars(write(tmp_path, "[g]\nh[1:2]:2200\nh3:abc\n"))
    assert hv == {"h1": {"ansible_port": 2200}, "h2": {"ansible_port": 2200}, "h3:abc": {}}


def test_group_vars_and_host_vars_files(tmp_path: Path) -> None:
    inv = write(tmp_path, "[prod:children]\nweb\n[web]\nweb1 v=inline\nweb2\n"
                          "[web:vars]\nshared=web\n[prod:vars]\nshared=prod\n")
    (tmp_path / "group_vars" / "web").mkdir(parents=True)
    (tmp_path / "group_vars" / "web" / "a.yml").write_text("from_dir: 1\n")
    (tmp_path / "group_vars" / "prod.yml").write_text("shared: prod-file\n")
    (tmp_path / "group_vars" / "all.json").write_text('{"everywhere": true}')
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "web1").write_text("v: file\n")
    hv = hostvars(inv)
    # a group_vars file wins over every inline group variable, as in Ansible
    assert hv["web1"] == {"shared": "prod-file", "from_dir": 1, "everywhere": True,
                          "v": "file"}
    assert hv["web2"]["shared"] == "prod-file"


def test_nestbuild_via(tmp_path: Path) -> None:
    nodes = load_inventory(write(tmp_path, "[f]\nn1 nestbuild_via=ostree "
                                           "nestbuild_sysroot=/srv/n1\nn2 nestbuild_via="
                                           "rpm-ostree\n")).nodes()
    assert [(n.via, n.sysroot) for n in nodes] == [("ostree", "/srv/n1"), ("rpm-ostree", None)]
    assert "bogus" in refused(write(tmp_path, "[f]\nn1 nestbuild_via=bogus\n", "b"))
    assert "nestbuild_sysroot" in refused(write(tmp_path, "[f]\nn1 nestbuild_via=ostree\n",
                                                "c"))


@pytest.mark.parametrize("text, words", [
    ("[web:hosts]\na\n[web:bogus]\nb\n", ":3: [web:bogus]: unknown section kind bogus"),
    ("[web\na\n", ":1: a section header without ]"),
    ("[web:vars]\nnot-an-assignment\n", ":2: expected key=value"),
    ("[a:children]\nb\n[b:children]\na\n", "is its own child"),
    ("[a:children]\na\n", "is its own child"),
    ("[g]\nh x='unclosed\n", ":2:"),
])
def test_ini_errors(tmp_path: Path, text: str, words: str) -> None:
    assert words in refused(write(tmp_path, text))


# -- YAML --------------------------------------------------------------------------------

YAML = """\
all:
  vars: {shared: all, z: 1}
  hosts:
    lone:
  children:
    prod:
      vars: {shared: prod}
      children:
        web:
          vars: {shared: web}
          hosts:
            web[1:2]:
            web3: {shared: host, port: 8080}
        db:
          hosts:
            db1:
    staging:
      hosts:
        st1:
"""


def test_yaml_nested_children(tmp_path: Path) -> None:
    inv = write(tmp_path, YAML, "inv.yml")
    hv = hostvars(inv)
    assert set(hv) == {"lone", "web1", "web2", "web3", "db1", "st1"}
    assert hv["web1"] == {"shared": "web", "z": 1}
    assert hv["web3"] == {"shared": "host", "z": 1, "port": 8080}
    assert hv["db1"] == {"shared": "prod", "z": 1}
    assert hv["st1"] == {"shared": "all", "z": 1}
    assert load_inventory(inv).select("prod") == ["web1", "web2", "web3", "db1"]


@pytest.mark.parametrize("text, words", [
    ("- a\n- b\n", "expected groups at the top level"),
    ("all:\n  hosts: [a, b]\n", "hosts must be a mapping"),
    ("all:\n  children:\n    a:\n      children:\n        a:\n", "is its own child"),
    ("all:\n  hosts:\n    a: 5\n", "its variables must be a mapping"),
    ("all:\n  vars: [1]\n", "vars must be a mapping"),
    ("all:\n  hosts:\n    a: {x: [1, 2\n    b:\n", "inv.yml:4: not valid YAML"),
])
def test_yaml_errors(tmp_path: Path, text: str, words: str) -> None:
    assert words in refused(write(tmp_path, text, "inv.yml"))


def test_bad_vars_file_is_one_line(tmp_path: Path) -> None:
    inv = write(tmp_path, "[g]\nh1\n")
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "host_vars" / "h1.yml").write_text("a: [1\n")
    assert "h1.yml: not a readable YAML" in refused(inv)
    (tmp_path / "host_vars" / "h1.yml").write_text("- 1\n")
    assert "expected variables" in refused(inv)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="No such file"):
        load_inventory(tmp_path / "nope")


# -- host patterns -----------------------------------------------------------------------

@pytest.mark.parametrize("pattern, hosts", [
    ("all", ["lone1", "lone2", "web01", "web02", "weba.example.com", "webb.example.com",
             "web03", "db1"]),
    ("web:db", ["web01", "web02", "weba.example.com", "webb.example.com", "web03", "db1"]),
    ("db,lone1", ["lone1", "db1"]),
    ("prod:&db", ["db1"]),
    ("prod:!web", ["db1"]),
    ("!prod", ["lone1", "lone2"]),
    ("web0*", ["web01", "web02", "web03"]),
    ("*.example.com", ["weba.example.com", "webb.example.com"]),
    ("~web0[13]", ["web01", "web03"]),
    ("~eb", []),  # a regex matches from the start of the name, as in Ansible
    ("ungrouped", ["lone1", "lone2"]),
    ("web[0]", ["web01"]),
    ("web[1:2]", ["web02", "weba.example.com"]),
    ("web[-1]", ["web03"]),
    ("pro*", ["web01", "web02", "weba.example.com", "webb.example.com", "web03", "db1"]),
])
def test_patterns(tmp_path: Path, pattern: str, hosts: list[str]) -> None:
    inv = load_inventory(write(tmp_path, INI))
    assert inv.select(pattern) == hosts
    assert [n.name for n in inv.nodes(pattern)] == hosts


@pytest.mark.parametrize("pattern", ["nosuch", "web:nosuch", "~(", "web[9]", " , "])
def test_bad_patterns(tmp_path: Path, pattern: str) -> None:
    assert refused(write(tmp_path, INI), pattern)


@given(n=st.integers(1, 60), width=st.integers(1, 3))
def test_file_order_is_kept(tmp_path_factory: pytest.TempPathFactory, n: int,
                            width: int) -> None:
    path = tmp_path_factory.mktemp("inv") / "inventory"
    path.write_text(f"[fleet]\nn[{'1'.zfill(width)}:{str(n).zfill(width)}]\n")
    names = [node.name for node in load_inventory(path).nodes()]
    assert len(names) == n and names == sorted(names, key=lambda s: int(s[1:]))
