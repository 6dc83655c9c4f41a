"""Path policy: which paths a derived image may change, and how loud each rule is.

A policy file is YAML::

    extends: strict          # strict (default), packages or permissive
    allow: [/opt/myapp/**]   # paths that may change, added to the preset's
    deny: [/etc/shadow]      # paths that must not change, even if allowed
    rules:                   # severity per rule id: error, warning, info or off
      var-content: error     # (what a node refuses stays an error: see severity())
    settings:                # the thresholds some rules compare against
      max-layers: 127        # layer-budget: more layers than this in a derived image
      max-usr-growth: 512MiB # usr-growth: more bytes added to /usr (off by default)

Errors name the file, line and problem, because a CI log is all a user may have.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild._util import userfile
from nestbuild._util.record import Record
from nestbuild.errors import PolicyFileError
from nestbuild.validation.rules import RULES
from nestbuild.validation.severity import ERROR, INFO, LEVELS, OFF

if TYPE_CHECKING:  # imported where a policy is read from YAML: a preset needs no PyYAML
    import yaml

PROTECTED_OS = [
    "/usr/lib/modules/**",
    "/usr/lib/ostree/**",
    "/usr/etc/**",
    "/usr/lib/ostree-boot/**",
    "/boot/**",
    "/sysroot/**",
    "/ostree",
]

#: Every setting and its default (None: the check is off). Sizes are bytes; a policy file may
#: write them with a unit (KiB, MiB, GiB, K, M, G) or as ``off``.
SETTINGS: dict[str, int | None] = {
    # overlayfs, container runtimes and ostree's import slow down with many layers, and some
    # runtimes refuse images above about 128 (Docker's limit is 125 parent layers)
    "max-layers": 127,
    "max-usr-growth": None,
}
_UNITS = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gib": 1 << 30, "b": 1}
_SIZE = re.compile(r"(\d{1,15})\s*([A-Za-z]*)\Z")


def _packs_on(pack: str) -> dict[str, str]:
    """The rules of a pack that are off by default, switched on as information."""
    return {r.id: INFO for r in RULES.values() if pack in r.packs and r.severity == OFF}


PRESETS: dict[str, dict[str, Any]] = {
    "strict": {
        "description": "only /etc and /var may change (the node keeps nothing else per-machine), "
                       "plus bootc kernel arguments",
        "allow": ["/etc/**", "/var/**", "/usr/lib/bootc/kargs.d/**"],
        "deny": [],
    },
    "packages": {
        "description": "packages may install into /usr and /opt; the kernel, ostree, /usr/etc "
                       "and setuid stay protected",
        "allow": ["/etc/**", "/var/**", "/usr/**", "/opt/**"],  # kargs.d is under /usr
        "deny": PROTECTED_OS,
        # the packages pack: what a package manager run leaves behind, shown as information
        "rules": {"setuid": "error", **_packs_on("packages")},
    },
    "permissive": {
        "description": "any path may change; only the lints apply",
        "allow": ["/**"],
        "deny": [],
    },
}
DEFAULT_PRESET = "strict"
_KEYS = {"extends", "allow", "deny", "rules", "settings", "description"}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` spans directories, ``*`` and ``?`` stay within one; ``dir/**`` matches dir too."""
    out = []
    i = 0
    suffix = ""
    if pattern.endswith("/**"):
        pattern = pattern[:-3]
        suffix = "(/.*)?"
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + suffix + r"\Z", re.DOTALL)


class Policy(Record):
    """Which paths derived layers may change, and each rule's severity."""

    name: str
    allow: list[str]
    deny: list[str]
    severities: dict[str, str]
    source: str
    #: Every setting of :data:`SETTINGS`, with the policy's value or the default.
    settings: dict[str, int | None]

    def __init__(self, name: str, allow: list[str], deny: list[str],
                 severities: dict[str, str] | None = None, source: str = "built-in",
                 settings: dict[str, int | None] | None = None) -> None:
        self.name = name
        self.allow = allow
        self.deny = deny
        self.severities = {} if severities is None else severities
        self.source = source
        self.settings = dict(SETTINGS) if settings is None else settings
        # compiled from allow and deny, so not fields: equal policies have equal patterns
        self._allow_re: list[re.Pattern[str]] = [_glob_regex(p) for p in self.allow]
        self._deny_re: list[re.Pattern[str]] = [_glob_regex(p) for p in self.deny]

    def severity(self, rule: str, *, refused: bool = False) -> str:
        """The rule's severity under this policy. A finding a node refuses the image for is
        an error whatever the policy says: a policy decides what an image may change, not
        what a node accepts, and no policy can make a refused image pass."""
        if refused:
            return ERROR
        return self.severities.get(rule, RULES[rule].severity)

    def path_allowed(self, path: str) -> tuple[bool, str | None]:
        """Whether ``path`` may change, and the deny pattern that forbids it, if one does."""
        for pat, rx in zip(self.deny, self._deny_re, strict=True):
            if rx.match(path):
                return False, pat
        return any(rx.match(path) for rx in self._allow_re), None

    def leads_to_allowed(self, path: str) -> bool:
        """Whether ``path`` is a directory on the way to an allowed tree (``/usr/lib/bootc``
        for ``/usr/lib/bootc/kargs.d/**``): creating it is part of using the allowed path."""
        for pattern in self.allow:
            literal = re.split(r"[*?\[]", pattern, maxsplit=1)[0].rstrip("/")
            if literal.startswith(path.rstrip("/") + "/"):
                return True
        return False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "allow": self.allow,
            "deny": self.deny,
            "rules": {r: self.severity(r) for r in sorted(RULES)},
            "settings": dict(self.settings),
        }


def preset(name: str) -> Policy:
    if name not in PRESETS:
        raise PolicyFileError(f"unknown policy preset {name!r} (known: {', '.join(PRESETS)})")
    p = PRESETS[name]
    return Policy(name, list(p["allow"]), list(p["deny"]), dict(p.get("rules", {})))


def load(path: Path) -> Policy:
    """Load a policy file; every problem is reported as ``FILE:LINE: problem``."""
    return parse(userfile.read_text(path, PolicyFileError, " policy"), str(path))


def parse(text: str, source: str) -> Policy:
    node = userfile.compose_yaml(text, source, PolicyFileError)
    if node is None:
        return _with_source(preset(DEFAULT_PRESET), source)
    return from_node(node, source)


def from_node(node: yaml.Node, source: str) -> Policy:
    """Build a policy from a composed YAML mapping (a policy file, or ``policy:`` in a config)."""
    import yaml

    def fail(n: yaml.Node, problem: str) -> PolicyFileError:
        return PolicyFileError(f"{source}:{n.start_mark.line + 1}: {problem}")

    if not isinstance(node, yaml.MappingNode):
        raise fail(node, "a policy is a mapping (extends, allow, deny, rules)")
    values: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):  # ``? [a]: b``: not hashable
            raise fail(key_node, f"a key is a plain word ({', '.join(sorted(_KEYS))})")
        key = key_node.value
        if key not in _KEYS:
            raise fail(key_node, f"unknown key {key!r} (known: {', '.join(sorted(_KEYS))})")
        if key in values:
            raise fail(key_node, f"duplicate key {key!r}")
        values[key] = value_node

    base_name = DEFAULT_PRESET
    if "extends" in values:
        n = values["extends"]
        if not isinstance(n, yaml.ScalarNode) or n.value not in PRESETS:
            raise fail(n, f"extends must be one of {', '.join(PRESETS)}")
        base_name = n.value
    policy = preset(base_name)

    def globs(key: str) -> list[str]:
        n = values.get(key)
        if n is None:
            return []
        if not isinstance(n, yaml.SequenceNode):
            raise fail(n, f"{key} must be a list of path globs")
        out = []
        for item in n.value:
            if not isinstance(item, yaml.ScalarNode) or not str(item.value).startswith("/"):
                raise fail(item, f"{key}: each entry is an absolute path glob, like /etc/**")
            out.append(str(item.value))
        return out

    allow = policy.allow + globs("allow")
    deny = policy.deny + globs("deny")
    severities = dict(policy.severities)
    if "rules" in values:
        n = values["rules"]
        if not isinstance(n, yaml.MappingNode):
            raise fail(n, "rules must map rule ids to error, warning, info or off")
        for k, v in n.value:
            if not isinstance(k, yaml.ScalarNode):
                raise fail(k, "rules: a rule id is a plain word (see 'nestbuild rules')")
            if k.value not in RULES:
                raise fail(k, f"unknown rule {k.value!r} (see 'nestbuild rules')")
            if not isinstance(v, yaml.ScalarNode) or v.value not in LEVELS:
                raise fail(v, f"rule {k.value}: severity must be one of {', '.join(LEVELS)}")
            severities[k.value] = v.value
    settings = dict(policy.settings)
    if "settings" in values:
        n = values["settings"]
        if not isinstance(n, yaml.MappingNode):
            raise fail(n, f"settings must map names ({', '.join(SETTINGS)}) to values")
        for k, v in n.value:
            if not isinstance(k, yaml.ScalarNode) or k.value not in SETTINGS:
                raise fail(k, f"unknown setting {getattr(k, 'value', '?')!r} "
                              f"(known: {', '.join(SETTINGS)})")
            settings[k.value] = _setting(k.value, v, fail)
    name = base_name if len(values) <= 1 and "extends" in values else f"{base_name}+custom"
    return Policy(name, allow, deny, severities, source, settings)


def _setting(name: str, n: yaml.Node, fail: Any) -> int | None:
    """A count or size: a whole number, a size with a unit (512MiB), or ``off``."""
    import yaml

    text = str(n.value).strip() if isinstance(n, yaml.ScalarNode) else ""
    if text.lower() in ("off", "none", "null", "~"):
        return None
    m = _SIZE.match(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or (name == "max-layers" and unit):
        what = "a whole number" if name == "max-layers" else "a size like 512MiB"
        raise fail(n, f"setting {name}: {what}, or off")
    value = int(m.group(1)) * _UNITS[unit]
    return value


def _with_source(policy: Policy, source: str) -> Policy:
    policy.source = source
    return policy


def load_policy(policy_file: Path | None = None, preset_name: str | None = None) -> Policy:
    """The policy for a run: an explicit file, else a preset, else the project's, else strict."""
    if policy_file is not None:
        return load(policy_file)
    if preset_name is not None:
        return preset(preset_name)
    from nestbuild import project

    configured = project.policy_node()
    if configured is not None:
        import yaml

        node, source = configured
        if isinstance(node, yaml.ScalarNode):
            base = Path(source).parent
            target = Path(node.value)
            if str(node.value) in PRESETS:
                return preset(str(node.value))
            return load(target if target.is_absolute() else base / target)
        return from_node(node, source)
    return preset(DEFAULT_PRESET)


#: The name the command modules used before the public API had one.
resolve = load_policy
