"""Declaring a rule once: its id, default severity, description and fix, next to its check.

A lint is one function under ``@lint(id, severity, summary, fix=...)``: it receives a
:class:`Context` and yields :class:`Hit` s; the decorator registers it, and ``evaluate`` runs
every registered lint. A rule that other code reports (the layer scan, the path policy, the
base's location) is declared by :func:`rule` beside that code, and reported by its ``id``.

Mistakes fail when the module is imported, not when an image happens to trigger them: a
duplicate id, a severity or origin that does not exist, a missing text. The catalogue lists
rules in the order they are declared (``nestbuild rules``, docs/reference/policy.md).

Ids are part of the JSON/SARIF contract and of every policy file: never rename one.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypeVar

from nestbuild._image import paths
from nestbuild._util.record import Value
from nestbuild.validation.severity import LEVELS, Severity

if TYPE_CHECKING:
    from nestbuild._image.tree import Entry
    from nestbuild.validation.changeset import Change
    from nestbuild.validation.installed import ImagePackages

#: bootc's lints keep bootc's names and meanings (``bootc container lint``); the rest are ours.
Origin = Literal["bootc", "nestbuild"]
ORIGINS: tuple[Origin, ...] = ("bootc", "nestbuild")
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")


class Rule(Value):
    """A rule of the catalogue: id, default severity, what it checks and the fix."""

    id: Final[str]
    severity: Final[Severity]
    summary: Final[str]
    remedy: Final[str]
    origin: Final[Origin]
    #: Lint packs the rule belongs to: names a policy can one day switch on or off together.
    packs: Final[tuple[str, ...]]

    def __init__(self, id: str, severity: Severity, summary: str, remedy: str,
                 origin: Origin = "nestbuild", packs: tuple[str, ...] = ()) -> None:
        self.id = id
        self.severity = severity
        self.summary = summary
        self.remedy = remedy
        self.origin = origin
        self.packs = packs

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "severity": self.severity, "origin": self.origin,
                "summary": self.summary, "remedy": self.remedy}


class View(Protocol):
    """A read-only file tree: the base index or the merged image."""

    def get(self, path: str) -> Entry | None: ...
    def below(self, prefix: str) -> Iterator[Entry]: ...
    def below_ending(self, prefix: str, suffix: str) -> Iterator[Entry]: ...
    def content(self, path: str) -> bytes | None: ...


class Context(Value):
    """What a lint looks at: a tree, and what the derived layers changed in it.

    Lints run on the image (base and derived layers merged, with their changes) and, when
    there is a base, on the base alone (no changes): what the base already has is marked
    inherited. A lint about changes therefore finds nothing in the base.
    """

    tree: Final[View]
    changes: Final[Sequence[Change]]
    #: The image's layer count, and how many of them are its base's (0: no base, or unknown).
    layers: Final[int]
    base_layers: Final[int]
    #: The policy's settings (policy.SETTINGS); a lint whose setting is absent stays quiet.
    settings: Final[Mapping[str, int | None]]
    #: The image's package databases, read on first use; None where there are none to read.
    packages: Final[ImagePackages | None]

    def __init__(self, tree: View, changes: Sequence[Change] = (), layers: int = 0,
                 base_layers: int = 0, settings: Mapping[str, int | None] | None = None,
                 packages: ImagePackages | None = None) -> None:
        self.tree = tree
        self.changes = changes
        self.layers = layers
        self.base_layers = base_layers
        self.settings = {} if settings is None else settings
        self.packages = packages

    @cached_property
    def changed(self) -> frozenset[str]:
        """The paths the derived layers changed."""
        return frozenset(c.path for c in self.changes)

    @cached_property
    def kernels(self) -> tuple[str, ...]:
        """The kernel versions: the /usr/lib/modules/KVER directories that hold a vmlinuz."""
        out = []
        for e in self.tree.below_ending(paths.MODULES_DIR, "/vmlinuz"):
            if e.path.endswith("/vmlinuz") and e.path.count("/") == 5 and e.is_file:
                out.append(posixpath.basename(posixpath.dirname(e.path)))
        return tuple(sorted(out))


class Hit(Value):
    """One thing a lint found; the lint's id and the policy's severity are added to it."""

    path: Final[str | None]
    message: Final[str]
    #: The image layer to blame, when one is.
    layer: Final[int | None]

    def __init__(self, path: str | None, message: str, layer: int | None = None) -> None:
        self.path = path
        self.message = message
        self.layer = layer


Check = Callable[[Context], Iterable[Hit]]
_C = TypeVar("_C", bound=Check)


class Lint(Value):
    """A rule and the check that reports it."""

    rule: Final[Rule]
    check: Final[Check]

    def __init__(self, rule: Rule, check: Check) -> None:
        self.rule = rule
        self.check = check


_RULES: dict[str, Rule] = {}
_LINTS: list[Lint] = []


def _problem(r: Rule) -> str | None:
    if not _NAME.match(r.id):
        return "an id is lowercase words joined by '-'"
    if r.id in _RULES:
        return "declared twice"
    if r.severity not in LEVELS:
        return f"unknown severity {r.severity!r} (known: {', '.join(LEVELS)})"
    if r.origin not in ORIGINS:
        return f"unknown origin {r.origin!r} (known: {', '.join(ORIGINS)})"
    if not r.summary.strip() or not r.remedy.strip():
        return "a rule says what it checks and how to fix it"
    if not all(isinstance(p, str) and _NAME.match(p) for p in r.packs):
        return "a pack name is lowercase words joined by '-'"
    return None


def _declare(r: Rule) -> Rule:
    problem = _problem(r)
    if problem is not None:
        raise ValueError(f"rule {r.id!r}: {problem}")
    _RULES[r.id] = r
    return r


def rule(id: str, severity: Severity, summary: str, *, fix: str,
         origin: Origin = "nestbuild", packs: Iterable[str] = ()) -> Rule:
    """Declare a rule that is not a lint (the code that reports it uses ``.id``)."""
    return _declare(Rule(id, severity, summary, fix, origin, tuple(packs)))


def lint(id: str, severity: Severity, summary: str, *, fix: str,
         origin: Origin = "nestbuild", packs: Iterable[str] = ()) -> Callable[[_C], _C]:
    """Declare the decorated function as the check of a new rule; ``evaluate`` runs it."""

    def register(check: _C) -> _C:
        _LINTS.append(Lint(_declare(Rule(id, severity, summary, fix, origin, tuple(packs))),
                           check))
        return check

    return register


def declared_rules() -> Mapping[str, Rule]:
    """Every rule declared so far, in declaration order (read-only, kept up to date)."""
    return MappingProxyType(_RULES)


def declared_lints() -> tuple[Lint, ...]:
    """Every lint declared so far, in declaration order."""
    return tuple(_LINTS)
