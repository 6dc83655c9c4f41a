"""A finding: one rule's verdict on one path (or on the image)."""

from __future__ import annotations

from dataclasses import dataclass

from nestbuild.validation.rules import RULES


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str
    path: str | None
    message: str
    #: The image layer the finding comes from, when one layer is to blame.
    layer: int | None = None
    #: True when the base image has the same finding: the derived layers did not cause it.
    inherited: bool = False

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
