"""An Ansible inventory (INI or YAML, with group_vars/ and host_vars/) read as Ansible reads it.

The rollout plans its waves from the inventory before any node is reached, and a fleet of
thousands of hosts must plan in well under two seconds; Ansible's own inventory manager takes
longer than that to start and parse such a file. So the rollout reads the two standard formats
itself, with Ansible's rules (host ranges, ``:vars`` and ``:children`` sections, INI host
variables as Python literals, group variables by depth with the host's own last, group_vars/
and host_vars/ files over both), and the tests hold it to ``ansible-inventory --list`` on the
same files. Ansible itself still runs the rollout, from the same inventory.

Hosts come in the file's order (first appearance); the waves follow it. Ansible's own order
for a group is its group walk, which with nested groups differs, so the rollout hands the play
its hosts as a list in the planned order.

Only what the rollout needs is kept: the host names in order, their groups, and their merged
variables (``nestbuild_via``, ``nestbuild_sysroot``, ...). Inventory plugins and scripts are
not read: give Ansible's output of them (``ansible-inventory --list -y > inventory.yml``).
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild.errors import NestbuildError

VIAS = ("bootc", "rpm-ostree", "ostree")
#: A value that is no Python literal: kept as the string it is, without parsing.
_PLAIN = re.compile(r"[A-Za-z_/][\w./:@-]*")
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")
#: ``host:port`` (the colons of a range do not count; ``h1:abc`` is a host name).
_PORT = re.compile(r"(.+):([0-9]+)")
#: One term of a host pattern: anything but whitespace, ``:`` and brackets, or a bracketed
#: part (``web[1:3]``).
_TERMS = re.compile(r"(?:[^\s:\[\]]|\[[^\]]*\])+")
_SUBSCRIPT = re.compile(r"(.+)\[(?:(-?[0-9]+)|([0-9]+)[:-]([0-9]*))\]")


class InventoryError(NestbuildError):
    """The inventory cannot be read as Ansible would read it."""


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)
    #: From group_vars/: above every group's inventory variables, as in Ansible.
    file_vars: dict[str, Any] = field(default_factory=dict)
    #: ``hosts`` as a set: a fleet of thousands is added host by host.
    known: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Node:
    """One inventory host and how it moves."""

    name: str
    #: ``bootc``, ``rpm-ostree`` or ``ostree`` (``nestbuild_via``).
    via: str
    #: The host's variables, merged as Ansible merges them.
    vars: dict[str, Any]
    groups: tuple[str, ...]

    @property
    def sysroot(self) -> str | None:
        value = self.vars.get("nestbuild_sysroot")
        return None if value is None else str(value)


@dataclass
class Inventory:
    path: Path
    groups: dict[str, Group]
    #: Every host in the order Ansible sees them (first appearance in the file).
    order: list[str]
    host_vars: dict[str, dict[str, Any]]
    #: From host_vars/: above the host's inventory variables.
    host_file_vars: dict[str, dict[str, Any]] = field(default_factory=dict)

    def nodes(self, limit: str | None = None) -> list[Node]:
        """The hosts ``limit`` (an Ansible host pattern) selects, in inventory order."""
        names = self.select(limit or "all")
        depth = self._depths()
        parents = self._parents()
        direct: dict[str, list[str]] = {}
        for group in self.groups.values():
            for h in group.hosts:
                direct.setdefault(h, []).append(group.name)
        out = []
        for name in names:
            groups = self._groups_of(direct.get(name, []), parents)
            merged: dict[str, Any] = {}
            ranked = sorted(groups, key=lambda g: (depth[g], g))
            for g in ranked:
                merged.update(self.groups[g].vars)
            for g in ranked:
                merged.update(self.groups[g].file_vars)
            merged.update(self.host_vars.get(name, {}))
            merged.update(self.host_file_vars.get(name, {}))
            via = str(merged.get("nestbuild_via", "bootc"))
            if via not in VIAS:
                raise InventoryError(f"{self.path}: host {name}: nestbuild_via={via}: expected "
                                     f"one of {', '.join(VIAS)}")
            if via == "ostree" and not merged.get("nestbuild_sysroot"):
                raise InventoryError(f"{self.path}: host {name}: nestbuild_via=ostree needs "
                                     "nestbuild_sysroot=/path")
            out.append(Node(name, via, merged, tuple(sorted(groups - {"all"}))))
        return out

    # -- host patterns ------------------------------------------------------------------

    def select(self, pattern: str) -> list[str]:
        """Ansible's host pattern: ``a:b`` (or ``a,b``) union, ``&a`` intersection, ``!a``
        exclusion, ``*`` wildcards, ``~regex``, ``g[0]``/``g[1:3]`` subscripts, group or
        host names."""
        text = pattern.strip()
        # as Ansible splits: on commas if any, else on the colons outside brackets
        terms = [t.strip() for t in (text.split(",") if "," in text else _TERMS.findall(text))
                 if t.strip()]
        if not terms:
            raise InventoryError(f"--limit {pattern!r}: an empty host pattern")
        chosen: set[str] = set()
        plain = [t for t in terms if t[0] not in "&!"]
        for term in plain or ["all"]:
            chosen |= self._match(term)
        for term in terms:
            if term[0] == "&":
                chosen &= self._match(term[1:])
            elif term[0] == "!":
                chosen -= self._match(term[1:])
        return [h for h in self.order if h in chosen]

    def _match(self, term: str) -> set[str]:
        m = None if term.startswith("~") else _SUBSCRIPT.fullmatch(term)
        if m is None:
            return set(self._enumerate(term))
        hosts = list(dict.fromkeys(self._enumerate(m.group(1))))
        try:
            if m.group(2) is not None:
                return {hosts[int(m.group(2))]}
        except IndexError:
            raise InventoryError(f"--limit: {term!r}: {m.group(1)} has {len(hosts)} "
                                 "hosts") from None
        first, last = int(m.group(3)), int(m.group(4) or len(hosts) - 1)
        return set(hosts[first:last + 1])

    def _enumerate(self, term: str) -> list[str]:
        """The hosts of the groups and hosts ``term`` names (Ansible's fnmatch and
        ``~regex`` match from the start of the name)."""
        if term in self.groups:
            return self._members(term)
        if term in self.host_vars:
            return [term]
        if term.startswith("~") or any(c in term for c in "*?["):
            try:
                rx = re.compile(term[1:] if term.startswith("~") else fnmatch.translate(term))
            except re.error as exc:
                raise InventoryError(f"--limit: {term!r}: not a valid pattern ({exc})") \
                    from None
            found = [h for g in self.groups if rx.match(g) for h in self._members(g)]
            return found + [h for h in self.order if rx.match(h)]
        raise InventoryError(f"--limit: {term!r} names no group or host of {self.path}")

    def _members(self, group: str, seen: frozenset[str] = frozenset()) -> list[str]:
        if group == "all":
            return list(self.order)
        if group in seen:
            raise InventoryError(f"{self.path}: group {group} is its own child")
        g = self.groups[group]
        out = list(g.hosts)
        for child in g.children:
            out += self._members(child, seen | {group})
        return out

    def _parents(self) -> dict[str, list[str]]:
        parents: dict[str, list[str]] = {}
        for g in self.groups.values():
            for child in g.children:
                parents.setdefault(child, []).append(g.name)
        return parents

    def _depths(self) -> dict[str, int]:
        """A group's depth below ``all``: its variables win over its parents'."""
        parents = self._parents()
        memo: dict[str, int] = {"all": 0}

        def depth(name: str, seen: frozenset[str]) -> int:
            if name in memo:
                return memo[name]
            if name in seen:
                raise InventoryError(f"{self.path}: group {name} is its own child")
            ups = parents.get(name, ["all"])
            memo[name] = 1 + max(depth(p, seen | {name}) for p in ups)
            return memo[name]

        for g in self.groups:
            depth(g, frozenset())
        return memo

    def _groups_of(self, direct: list[str], parents: dict[str, list[str]]) -> set[str]:
        out = {"all"}
        todo = direct or ["ungrouped"]
        while todo:
            g = todo.pop()
            if g in out or g not in self.groups:
                continue
            out.add(g)
            todo += parents.get(g, [])
        return out


def load_inventory(path: Path) -> Inventory:
    """An inventory file (INI or YAML by its content), with the group_vars/ and host_vars/
    beside it."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    inv = Inventory(path, {"all": Group("all"), "ungrouped": Group("ungrouped")}, [], {})
    if path.suffix in (".yml", ".yaml", ".json") or _looks_yaml(text):
        _parse_yaml(inv, text)
    else:
        _parse_ini(inv, text)
    _vars_dirs(inv, path.parent)
    # as Ansible reconciles: a host in no group of its own is in ungrouped, and all holds
    # every host implicitly
    grouped = {h for g in inv.groups.values() if g.name not in ("all", "ungrouped")
               for h in g.hosts}
    inv.groups["ungrouped"].hosts = [h for h in inv.order if h not in grouped]
    inv.groups["all"].hosts = []
    if "ungrouped" not in inv.groups["all"].children:
        inv.groups["all"].children.append("ungrouped")
    return inv


def _looks_yaml(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        return s == "---" or (s.endswith(":") and not s.startswith("["))
    return False


# -- INI ---------------------------------------------------------------------------------

def _parse_ini(inv: Inventory, text: str) -> None:
    section, kind = "ungrouped", "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        where = f"{inv.path}:{number}"
        if line.startswith("["):
            if not line.endswith("]"):
                raise InventoryError(f"{where}: a section header without ]")
            section, _, kind = line[1:-1].partition(":")
            kind = kind or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise InventoryError(f"{where}: [{line[1:-1]}]: unknown section kind {kind}")
            _group(inv, section)
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq:
                raise InventoryError(f"{where}: expected key=value in [{section}:vars]")
            inv.groups[section].vars[key.strip()] = _literal(value.strip())
        elif kind == "children":
            child = line.split()[0]
            _group(inv, child)
            if child not in inv.groups[section].children:
                inv.groups[section].children.append(child)
        else:
            _host_line(inv, section, line, where)


def _host_line(inv: Inventory, section: str, line: str, where: str) -> None:
    if any(c in line for c in "'\"\\#"):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}") from None
    else:  # the common line, without shlex's cost (a fleet has thousands)
        tokens = line.split()
    if not tokens:
        return
    pattern, *assignments = tokens
    hostvars: dict[str, Any] = {}
    for a in assignments:
        key, eq, value = a.partition("=")
        if not eq:
            raise InventoryError(f"{where}: expected key=value, found {a!r}")
        hostvars[key] = _literal(value)
    port = None
    m = _PORT.fullmatch(pattern)
    if m is not None and ":" not in _RANGE.sub("", m.group(1)):
        pattern, port = m.group(1), m.group(2)
    for host in expand(pattern, where):
        _add_host(inv, section, host)
        if port is not None:
            inv.host_vars[host]["ansible_port"] = int(port)
        inv.host_vars[host].update(hostvars)


def _literal(value: str) -> Any:
    """INI variables are Python literals where they parse as one, as in Ansible."""
    if _PLAIN.fullmatch(value) and value not in ("True", "False", "None"):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def expand(pattern: str, where: str = "") -> list[str]:
    """``node[01:50]``, ``db-[a:f]``, ``x[0:10:2]``: the hosts a range names."""
    m = _RANGE.search(pattern)
    if m is None:
        return [pattern]
    first, last, step_s = m.group(1), m.group(2), m.group(3)
    step = int(step_s or 1)
    head, tail = pattern[:m.start()], pattern[m.end():]
    if first.isdigit() and last.isdigit():
        width = len(first) if first.startswith("0") else 0
        values = [str(i).zfill(width) for i in range(int(first), int(last) + 1, step)]
    elif len(first) == len(last) == 1 and first in string.ascii_letters:
        values = [chr(c) for c in range(ord(first), ord(last) + 1, step)]
    else:
        raise InventoryError(f"{where}: {pattern}: a range is numbers or single letters")
    if not values:
        raise InventoryError(f"{where}: {pattern}: an empty range")
    return [h for v in values for h in expand(head + v + tail, where)]


def _group(inv: Inventory, name: str) -> Group:
    if name not in inv.groups:
        inv.groups[name] = Group(name)
        if name != "all":
            inv.groups["all"].children.append(name)
    return inv.groups[name]


def _add_host(inv: Inventory, group: str, host: str) -> None:
    g = _group(inv, group)
    if host not in g.known:
        g.known.add(host)
        g.hosts.append(host)
    if host not in inv.host_vars:
        inv.host_vars[host] = {}
        inv.order.append(host)


# -- YAML --------------------------------------------------------------------------------

def _parse_yaml(inv: Inventory, text: str) -> None:
    import yaml

    try:
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InventoryError(f"{inv.path}{line}: not valid YAML") from None
    if doc is None:
        return
    if not isinstance(doc, dict):
        raise InventoryError(f"{inv.path}: expected groups at the top level")
    for name, body in doc.items():
        _yaml_group(inv, str(name), body, frozenset())


def _yaml_group(inv: Inventory, name: str, body: Any, seen: frozenset[str]) -> None:
    g = _group(inv, name)
    if body is None:
        return
    if not isinstance(body, dict):
        raise InventoryError(f"{inv.path}: group {name}: expected hosts, vars or children")
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise InventoryError(f"{inv.path}: group {name}: hosts must be a mapping")
    for pattern, hvars in hosts.items():
        if hvars is not None and not isinstance(hvars, dict):
            raise InventoryError(f"{inv.path}: host {pattern}: its variables must be a mapping")
        for host in expand(str(pattern), str(inv.path)):
            _add_host(inv, name, host)
            inv.host_vars[host].update(hvars or {})
    gvars = body.get("vars") or {}
    if not isinstance(gvars, dict):
        raise InventoryError(f"{inv.path}: group {name}: vars must be a mapping")
    g.vars.update(gvars)
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise InventoryError(f"{inv.path}: group {name}: children must be a mapping")
    for child, cbody in children.items():
        child = str(child)
        if child in seen:
            raise InventoryError(f"{inv.path}: group {child} is its own child")
        if child not in g.children:
            g.children.append(child)
        _yaml_group(inv, child, cbody, seen | {name})
        # a child named under a parent is not a direct child of all any more
        if name != "all" and child in inv.groups["all"].children:
            inv.groups["all"].children.remove(child)


# -- group_vars/ and host_vars/ ----------------------------------------------------------

def _vars_dirs(inv: Inventory, base: Path) -> None:
    for kind, names in (("group_vars", list(inv.groups)), ("host_vars", list(inv.order))):
        folder = base / kind
        if not folder.is_dir():
            continue
        for name in names:
            for f in _vars_files(folder, name):
                data = _vars_file(f)
                if kind == "group_vars":
                    inv.groups[name].file_vars.update(data)
                else:
                    inv.host_file_vars.setdefault(name, {}).update(data)


def _vars_files(folder: Path, name: str) -> list[Path]:
    out = [folder / f"{name}{ext}" for ext in ("", ".yml", ".yaml", ".json")
           if (folder / f"{name}{ext}").is_file()]
    d = folder / name
    if d.is_dir():
        out += sorted(p for p in d.iterdir() if p.is_file()
                      and p.suffix in ("", ".yml", ".yaml", ".json"))
    return out


def _vars_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise InventoryError(f"{path}: not a readable YAML or JSON file") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InventoryError(f"{path}: expected variables (a mapping)")
    return doc
