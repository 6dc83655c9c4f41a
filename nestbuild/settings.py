"""One declarative table of project settings, feeding both ``nestbuild.yaml`` and the CLI.

Each :class:`Setting` names its YAML key, its type, its default, its command-line flag and its
help text once; the project-file loader and the ``nestbuild build`` parser are both generated
from :data:`SETTINGS`, so the two can never disagree (the mkosi way).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild.errors import UsageError

if TYPE_CHECKING:  # imported where used: registering the CLI's flags must stay cheap
    import yaml

STR, PATH, BOOL, MAP, LIST, NODE = "str", "path", "bool", "map", "list", "node"


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str
    help: str
    default: Any = None
    #: Command-line flags; empty for file-only settings.
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dest(self) -> str:
        return self.key.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("image", STR, "name (and tag) of the image to build", None, ("-t", "--tag"), "IMAGE"),
    Setting("containerfile", PATH, "the Containerfile (default: Containerfile, else Dockerfile, "
            "in the context)", None, ("-f", "--file"), "FILE"),
    Setting("context", PATH, "the build context directory", Path("."), (), "DIR"),
    Setting("engine", STR, "what builds the image", "buildah", ("--engine",), None,
            ("buildah", "docker")),
    Setting("build-args", MAP, "build arguments (K=V)", {}, ("--build-arg",), "K=V"),
    Setting("labels", MAP, "labels to add to the image (K=V)", {}, ("--label",), "K=V"),
    Setting("secrets", LIST, "build secrets, as buildah's id=ID,src=PATH (never stored in the "
            "image)", [], ("--secret",), "id=ID,src=PATH"),
    Setting("layers", BOOL, "keep one layer per instruction (and use the layer cache)", False,
            ("--layers",)),
    Setting("no-cache", BOOL, "do not use cached layers", False, ("--no-cache",)),
    Setting("pull", BOOL, "pull the base image even if it is in local storage", False,
            ("--pull",)),
    Setting("platform", STR, "target platform OS/ARCH (default: this machine's)", None,
            ("--platform",), "OS/ARCH"),
    Setting("validate", BOOL, "validate the built image with the project's policy", True,
            ("--no-validate",)),
    Setting("base", STR, "the OS base image, when FROM alone does not say (for validate)",
            None, (), "REF"),
    Setting("policy", NODE, "the validation policy: a preset name, a file, or inline"),
    Setting("kernel", NODE, "kernel profiles to add: {kargs: [NAME...], modules: [NAME...]} "
            "(kernel/ in nestbuild)"),
    Setting("trust", NODE, "bake node trust files into /etc: {repo: REG/REPO, keys: [K.pub...], "
            "authfile: FILE}"),
    Setting("signing-key", PATH, "cosign private key for sign/push"),
    Setting("registry", STR, "registry and repository to push to (HOST/REPO)"),
    Setting("tags", LIST, "extra tags to push", []),
)
BY_KEY = {s.key: s for s in SETTINGS}


@dataclass
class ProjectSettings:
    values: dict[str, Any] = field(default_factory=dict)
    #: The file the settings came from, if any.
    source: Path | None = None
    #: Raw YAML nodes, for settings validated by their own module (policy).
    nodes: dict[str, yaml.Node] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key, BY_KEY[key].default)


def load(path: Path) -> ProjectSettings:
    """Read ``nestbuild.yaml``; unknown keys and wrong types are errors naming file and line."""
    import difflib

    import yaml

    from nestbuild._util import userfile

    root = userfile.compose_yaml(userfile.read_text(path, UsageError), str(path), UsageError)
    out = ProjectSettings(source=path)
    if root is None:
        return out
    if not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{path}:{root.start_mark.line + 1}: the project file is a mapping "
                         "of settings")

    def fail(node: yaml.Node, problem: str) -> UsageError:
        return UsageError(f"{path}:{node.start_mark.line + 1}: {problem}")

    for key_node, value in root.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise fail(key_node, "a setting's name is a plain word")
        key = str(key_node.value)
        setting = BY_KEY.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, BY_KEY, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise fail(key_node, f"unknown setting {key!r}{hint}")
        if key in out.nodes:
            raise fail(key_node, f"{key!r} is set twice")
        out.nodes[key] = value
        out.values[key] = _convert(setting, value, path.parent, fail)
    return out


def _convert(setting: Setting, node: yaml.Node, base_dir: Path, fail: Any) -> Any:
    import yaml

    from nestbuild._util import userfile

    kind = setting.kind
    if kind == NODE:
        return node
    if kind in (STR, PATH, BOOL):
        if not isinstance(node, yaml.ScalarNode):
            raise fail(node, f"{setting.key} must be a single value")
        if kind == BOOL:
            flag = userfile.yaml_boolean(node)
            if flag is None:
                raise fail(node, f"{setting.key} must be true or false")
            return flag
        value = userfile.yaml_plain(node)  # as written: ``image: x:1.10`` keeps its "1.10"
        if value is None:
            raise fail(node, f"{setting.key} must be a string")
        if "\0" in value:
            raise fail(node, f"{setting.key} must not contain a NUL character")
        if setting.choices and value not in setting.choices:
            raise fail(node, f"{setting.key} must be one of {', '.join(setting.choices)}")
        if kind == PATH:
            try:
                p = Path(value).expanduser()
            except RuntimeError:  # ~user of no user here
                raise fail(node, f"{setting.key}: cannot expand {value!r} (no such user)") \
                    from None
            return p if p.is_absolute() else base_dir / p
        return value
    if kind == MAP:
        if not isinstance(node, yaml.MappingNode):
            raise fail(node, f"{setting.key} must be a mapping of KEY: value")
        out = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise fail(k, f"{setting.key}: each key must be a single value")
            if not isinstance(v, yaml.ScalarNode):
                raise fail(v, f"{setting.key}.{k.value} must be a single value")
            out[str(k.value)] = str(v.value)
        return out
    if kind == LIST:
        if not isinstance(node, yaml.SequenceNode):
            raise fail(node, f"{setting.key} must be a list")
        items = []
        for item in node.value:
            if not isinstance(item, yaml.ScalarNode):
                raise fail(item, f"{setting.key}: each entry must be a single value")
            items.append(str(item.value))
        return items
    raise AssertionError(kind)


def add_arguments(parser: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    """Add the flags of ``keys`` to a parser; unset flags stay None so the file can fill in."""
    for key in keys:
        s = BY_KEY[key]
        if not s.flags:
            continue
        help_text = s.help + f" [nestbuild.yaml: {s.key}]"
        if s.kind == BOOL:
            negated = s.flags[0].startswith("--no-") and s.default
            store = "store_false" if negated else "store_true"
            if negated:  # the flag turns the setting off: say so
                help_text = f"do not {s.help} [nestbuild.yaml: {s.key}: false]"
            parser.add_argument(*s.flags, dest=s.dest, action=store, default=None, help=help_text)
        elif s.kind in (MAP, LIST):
            parser.add_argument(*s.flags, dest=s.dest, action="append", default=None,
                                metavar=s.metavar, help=help_text + " (repeatable)")
        else:
            parser.add_argument(*s.flags, dest=s.dest, default=None, metavar=s.metavar,
                                choices=s.choices, type=Path if s.kind == PATH else str,
                                help=help_text)


def merge(project: ProjectSettings, args: argparse.Namespace,
          keys: tuple[str, ...]) -> dict[str, Any]:
    """Command line over project file over defaults."""
    out: dict[str, Any] = {}
    for key in keys:
        s = BY_KEY[key]
        value = getattr(args, s.dest, None)
        if value is None:
            out[key] = project.get(key)
            continue
        if s.kind == MAP:
            parsed = dict(project.get(key) or {})
            for item in value:
                k, eq, v = str(item).partition("=")
                if not eq or not k:
                    raise UsageError(f"{s.flags[-1]} {item}: expected KEY=VALUE")
                parsed[k] = v
            out[key] = parsed
        elif s.kind == LIST:
            out[key] = [*(project.get(key) or []), *value]
        else:
            out[key] = value
    return out
