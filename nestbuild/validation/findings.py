"""A finding: one rule's verdict on one path (or on the image), with the policy's severity."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from nestbuild._util.record import Value
from nestbuild.validation.declare import Context, View
from nestbuild.validation.lints import Raw, path_policy
from nestbuild.validation.rules import LINTS, RULES
from nestbuild.validation.severity import OFF, RANK

if TYPE_CHECKING:
    from nestbuild.validation.changeset import Change
    from nestbuild.validation.installed import ImagePackages
    from nestbuild.validation.policy import Policy


class Finding(Value):
    """One rule's verdict on one path (or on the image), with the policy's severity."""

    rule: Final[str]
    severity: Final[str]
    path: Final[str | None]
    message: Final[str]
    #: The image layer the finding comes from, when one layer is to blame.
    layer: Final[int | None]
    #: True when the base image has the same finding: the derived layers did not cause it.
    inherited: Final[bool]

    def __init__(self, rule: str, severity: str, path: str | None, message: str,
                 layer: int | None = None, inherited: bool = False) -> None:
        self.rule = rule
        self.severity = severity
        self.path = path
        self.message = message
        self.layer = layer
        self.inherited = inherited

    @property
    def remedy(self) -> str:
        return RULES[self.rule].remedy

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "rule": self.rule,
            "severity": self.severity,
            "path": self.path,
            "message": self.message,
            "remedy": self.remedy,
        }
        if self.layer is not None:
            out["layer"] = self.layer
        if self.inherited:
            out["inherited"] = True
        return out


def evaluate(
    *,
    policy: Policy,
    changes: Sequence[Change],
    merged: View,
    base: View | None,
    layer_raws: Iterable[Raw],
    layers: int = 0,
    base_layers: int = 0,
    settings: Mapping[str, int | None] | None = None,
    packages: ImagePackages | None = None,
) -> list[Finding]:
    """All findings, with the policy's severities, sorted by severity then path.

    Every declared lint runs on the merged tree; with a base, each one that found something
    runs on the base alone too, and what the base finds as well is marked inherited (the fix
    belongs to the base).
    """
    raws = [*layer_raws, *path_policy(changes, policy)]
    image = Context(merged, changes, layers, base_layers, settings or {}, packages)
    # a lint the policy turned off is not run: nothing would read what it found
    active = [lint for lint in LINTS if policy.severity(lint.rule.id) != OFF]
    found = [(lint, list(lint.check(image))) for lint in active]
    hits = [(lint.rule.id, hit) for lint, mine in found for hit in mine]
    inherited: set[tuple[str, str | None, str]] = set()
    if base is not None:
        # asked only of the lints that found something: a finding is inherited when the
        # base alone has it too, and a lint with no finding has nothing to mark
        alone = Context(base)
        inherited = {(lint.rule.id, hit.path, hit.message)
                     for lint, mine in found if mine for hit in lint.check(alone)}

    findings = []
    for r in raws:
        sev = policy.severity(r.rule, refused=r.refused)
        if sev != OFF:
            findings.append(Finding(r.rule, sev, r.path, r.message, r.layer, r.inherited))
    for rule, hit in hits:
        sev = policy.severity(rule)
        if sev != OFF:
            findings.append(Finding(rule, sev, hit.path, hit.message, hit.layer,
                                    (rule, hit.path, hit.message) in inherited))
    findings.sort(key=lambda f: (RANK[f.severity], f.path or "", f.rule))
    return findings
