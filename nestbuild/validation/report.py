"""The validation report and its three renderings: a table for people, JSON, SARIF.

The JSON shape is a contract (docs/reference/report.md); add keys, never rename or remove.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, Final

from nestbuild import __version__
from nestbuild._image import paths
from nestbuild._util.record import Record, Value, replace
from nestbuild.validation.changeset import Change
from nestbuild.validation.findings import Finding
from nestbuild.validation.policy import Policy
from nestbuild.validation.rules import RULES
from nestbuild.validation.severity import ERROR, INFO, WARNING

if TYPE_CHECKING:
    from rich.console import Console

    from nestbuild._image import ImageSource

REPORT_VERSION = 1


class BaseInfo(Value):
    """The base an image was validated against, and how it was found."""

    ref: Final[str | None]
    digest: Final[str | None]
    #: How many of the image's layers belong to the base.
    layers: Final[int]
    #: How the base was found: --base, annotation, ostree.final-diffid, or build (the base
    #: ``nestbuild build`` pinned before building).
    found_by: Final[str]

    def __init__(self, ref: str | None, digest: str | None, layers: int,
                 found_by: str) -> None:
        self.ref = ref
        self.digest = digest
        self.layers = layers
        self.found_by = found_by


#: How the table names each way of finding the base (``found_by``).
FOUND_BY_TEXT = {
    "--base": "given with --base",
    "annotation": "from the image's base annotations",
    "ostree.final-diffid": "from ostree.final-diffid",
    "build": "pinned by nestbuild build",
}


class Report(Record):
    """What validate found: the changeset, the findings and the verdict."""

    image_ref: str
    image_digest: str
    image_layers: int
    base: BaseInfo | None
    policy: Policy | None
    changes: list[Change]
    findings: list[Finding]
    notes: list[str]

    def __init__(self, image_ref: str, image_digest: str, image_layers: int,
                 base: BaseInfo | None, policy: Policy | None, changes: list[Change],
                 findings: list[Finding], notes: list[str] | None = None) -> None:
        self.image_ref = image_ref
        self.image_digest = image_digest
        self.image_layers = image_layers
        self.base = base
        self.policy = policy
        self.changes = changes
        self.findings = findings
        self.notes = [] if notes is None else notes

    @classmethod
    def build(cls, image: ImageSource, base: BaseInfo | None, policy: Policy | None,
              changes: list[Change], findings: list[Finding], notes: list[str]) -> Report:
        return cls(str(image.ref), image.digest, len(image.config.diff_ids), base, policy,
                   changes, findings, notes)

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == WARNING)

    @property
    def passed(self) -> bool:
        return self.errors == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "image": {"ref": self.image_ref, "digest": self.image_digest,
                      "layers": self.image_layers},
            "base": None if self.base is None else {
                "ref": self.base.ref, "digest": self.base.digest, "layers": self.base.layers,
                "found_by": self.base.found_by,
            },
            "policy": None if self.policy is None else self.policy.to_json(),
            "changes": [c.to_json() for c in self.changes],
            "findings": [f.to_json() for f in self.findings],
            "summary": {"errors": self.errors, "warnings": self.warnings,
                        "infos": sum(1 for f in self.findings if f.severity == INFO),
                        "changes": len(self.changes)},
            "passed": self.passed,
            "notes": self.notes,
        }

    def with_base_found_by(self, how: str) -> Report:
        """The same report, saying the base was found ``how`` (a caller that chose the base
        itself, as ``nestbuild build`` does, is not the user's ``--base``)."""
        if self.base is None:
            return self
        return replace(self, base=replace(self.base, found_by=how))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n"

    def diff_to_json(self) -> dict[str, Any]:
        """The changeset alone, as ``nestbuild diff --format json`` shows it: no policy, no
        findings, and a summary that counts only changes."""
        data = self.to_json()
        out = {k: data[k] for k in ("version", "image", "base", "changes", "notes")}
        out["summary"] = {"changes": len(self.changes)}
        return out

    def to_sarif(self) -> dict[str, Any]:
        used = sorted({f.rule for f in self.findings})
        level = {ERROR: "error", WARNING: "warning", INFO: "note"}
        return {
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": {"driver": {
                    "name": "nestbuild",
                    "version": __version__,
                    "informationUri": "https://github.com/nestbuild/nestbuild",
                    "rules": [{
                        "id": r,
                        "shortDescription": {"text": RULES[r].summary},
                        "help": {"text": RULES[r].remedy},
                        "defaultConfiguration": {"level": level.get(RULES[r].severity, "none")},
                        "properties": {"origin": RULES[r].origin},
                    } for r in used],
                }},
                "originalUriBaseIds": {"IMAGEROOT": {"description": {"text": self.image_ref}}},
                "results": [{
                    "ruleId": f.rule,
                    "ruleIndex": used.index(f.rule),
                    "level": level[f.severity],
                    "message": {"text": f"{f.message}. Fix: {f.remedy}"},
                    "locations": [{"physicalLocation": {"artifactLocation": {
                        "uri": (f.path or "/").lstrip("/") or ".", "uriBaseId": "IMAGEROOT",
                    }}}],
                    "properties": {"inherited": f.inherited,
                                   **({"layer": f.layer} if f.layer is not None else {})},
                } for f in self.findings],
                "properties": {"image": self.image_ref, "digest": self.image_digest,
                               "passed": self.passed},
            }],
        }

    # --- for people ----------------------------------------------------------------------

    def render(self, console: Console, *, changes_limit: int = 40,
               show_findings: bool = True) -> None:
        from rich.table import Table
        from rich.text import Text

        from nestbuild._util.terminal import printable as p  # paths and names come from the image

        base = "none found" if self.base is None else (
            f"{self.base.ref or self.base.digest} ({self.base.layers} "
            f"layer{'s' if self.base.layers != 1 else ''}, "
            f"{FOUND_BY_TEXT.get(self.base.found_by, 'found by ' + self.base.found_by)})")
        console.print(Text.assemble(("image  ", "bold"), p(self.image_ref), "  ",
                                    (self.image_digest[:19], "dim")))
        console.print(Text.assemble(("base   ", "bold"), p(base)))
        if self.policy is not None:
            console.print(Text.assemble(("policy ", "bold"), p(self.policy.name),
                                        (f"  ({p(str(self.policy.source))})", "dim")))
        for note in self.notes:
            console.print(Text(f"note: {p(note)}", style="yellow"))

        groups: dict[str, list[Change]] = defaultdict(list)
        for c in self.changes:
            groups[paths.top_level(c.path)].append(c)
        style = {"added": "green", "modified": "yellow", "deleted": "red", "metadata": "cyan"}
        if self.changes:
            table = Table(title=f"Changes ({len(self.changes)})", title_justify="left",
                          show_edge=False, pad_edge=False)
            table.add_column("path", overflow="fold")
            table.add_column("change")
            table.add_column("type")
            table.add_column("layer", justify="right")
            for top in sorted(groups):
                items = groups[top]
                counts = Counter(c.kind for c in items)
                summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                table.add_section()
                table.add_row(Text(p(top), style="bold"), Text(summary, style="dim"), "", "")
                for c in items[:changes_limit]:
                    detail = f" ({', '.join(c.details)})" if c.details else ""
                    table.add_row(Text("  " + p(c.path)),
                                  Text(c.kind + p(detail), style=style.get(c.kind, "")),
                                  Text(c.type), str(c.layer))
                if len(items) > changes_limit:
                    table.add_row(Text(f"  ... {len(items) - changes_limit} more "
                                       "(--format json lists all)", style="dim"), "", "", "")
            console.print(table)
        else:
            console.print("No changes against the base.")

        if show_findings and self.policy is not None:
            if self.findings:
                sev_style = {ERROR: "bold red", WARNING: "yellow", INFO: "blue"}
                table = Table(title=f"Findings ({len(self.findings)})", title_justify="left",
                              show_edge=False, pad_edge=False)
                table.add_column("severity")
                table.add_column("rule")
                table.add_column("path / message", overflow="fold")
                for f in self.findings:
                    tag = " (from base)" if f.inherited else ""
                    body = Text.assemble((p(f.path or "(image)"), "bold"), tag, "\n",
                                         p(f.message), "\n", ("fix: " + p(f.remedy), "dim"))
                    table.add_row(Text(f.severity, style=sev_style[f.severity]), f.rule, body)
                console.print(table)
            self.render_verdict(console)

    def render_verdict(self, console: Console) -> None:
        """The one line that says whether the image passed (all ``-q`` shows)."""
        from rich.text import Text

        verdict = ("PASSED", "bold green") if self.passed else ("FAILED", "bold red")
        console.print(Text.assemble(verdict, f": {self.errors} error(s), "
                                    f"{self.warnings} warning(s), "
                                    f"{len(self.changes)} change(s)"))
