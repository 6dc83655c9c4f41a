"""Kernel settings for an image: bootc kargs.d profiles and module load/blacklist profiles.

Profiles live in the repository's ``kernel/`` directory (or are given as paths) and become
files in the image where bootc and systemd read them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from nestbuild.errors import UsageError
from nestbuild.validation.kernelconf import kargs_problem

KARGS_DIR = "/usr/lib/bootc/kargs.d"
#: /etc, not /usr/lib: module choices are node configuration, and the strict policy allows /etc.
MODULES_LOAD_DIR = "/etc/modules-load.d"
MODPROBE_DIR = "/etc/modprobe.d"
_MODULE = re.compile(r"[A-Za-z0-9_-]+\Z")


def profiles_dir() -> Path:
    env = os.environ.get("NESTBUILD_KERNEL_PROFILES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "kernel"


@dataclass
class KernelSettings:
    kargs: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.kargs and not self.modules


def _profile(kind: str, name: str, suffix: str) -> Path:
    path = Path(name)
    if path.suffix == suffix and path.is_file():
        return path
    candidate = profiles_dir() / kind / f"{name}{suffix}"
    if not candidate.is_file():
        known = sorted(p.stem for p in (profiles_dir() / kind).glob(f"*{suffix}"))
        raise UsageError(f"no {kind} profile {name!r} (known: {', '.join(known) or 'none'})")
    return candidate


def render(settings: KernelSettings) -> dict[str, tuple[bytes, int]]:
    """Image path -> (content, mode) for the selected profiles; checked before use."""
    files: dict[str, tuple[bytes, int]] = {}
    for i, name in enumerate(settings.kargs):
        path = _profile("kargs", name, ".toml")
        data = path.read_bytes()
        problem = kargs_problem(data)
        if problem:
            raise UsageError(f"{path}: {problem}")
        files[f"{KARGS_DIR}/{10 + i * 10:02d}-{path.stem}.toml"] = (data, 0o644)
    for name in settings.modules:
        path = _profile("modules", name, ".yaml")
        load, blacklist = _modules(path)
        if load:
            files[f"{MODULES_LOAD_DIR}/nestbuild-{path.stem}.conf"] = (
                ("".join(f"{m}\n" for m in load)).encode(), 0o644)
        if blacklist:
            text = "".join(f"blacklist {m}\ninstall {m} /bin/false\n" for m in blacklist)
            files[f"{MODPROBE_DIR}/nestbuild-{path.stem}.conf"] = (text.encode(), 0o644)
    return files


def _modules(path: Path) -> tuple[list[str], list[str]]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: not a readable module profile ({exc})") from None
    if not isinstance(doc, dict) or set(doc) - {"load", "blacklist"}:
        raise UsageError(f"{path}: a module profile has only 'load' and 'blacklist' lists")
    out = []
    for key in ("load", "blacklist"):
        items = doc.get(key) or []
        if not isinstance(items, list) or not all(
                isinstance(m, str) and _MODULE.match(m) for m in items):
            raise UsageError(f"{path}: {key} must be a list of module names")
        out.append(list(items))
    return out[0], out[1]


def from_node(node: object, source: str) -> KernelSettings:
    """``kernel:`` in nestbuild.yaml; problems name the file and line."""
    import yaml as _yaml

    def fail(n: _yaml.Node, problem: str) -> UsageError:
        return UsageError(f"{source}:{n.start_mark.line + 1}: {problem}")

    if not isinstance(node, _yaml.MappingNode):
        raise UsageError(f"{source}: kernel must be a mapping with kargs and modules lists")
    out = KernelSettings()
    for k, v in node.value:
        if k.value not in ("kargs", "modules"):
            raise fail(k, f"unknown kernel setting {k.value!r} (kargs, modules)")
        if not isinstance(v, _yaml.SequenceNode) or not all(
                isinstance(i, _yaml.ScalarNode) for i in v.value):
            raise fail(v, f"kernel.{k.value} must be a list of profile names")
        setattr(out, k.value, [str(i.value) for i in v.value])
    return out
