"""Validate a derived OS image: find its base, compute its changeset, apply the policy.

This is the Python API under ``nestbuild validate`` and ``nestbuild diff``::

    from nestbuild.validate import validate
    report = validate("oci:./out:v1", policy=policy.preset("strict"))
    if not report.passed: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nestbuild import baseindex, lints
from nestbuild.changeset import Change, Overlay
from nestbuild.errors import ImageError
from nestbuild.findings import Finding
from nestbuild.image import ImageSource, open_image
from nestbuild.image.model import (
    ANNOTATION_BASE_DIGEST,
    ANNOTATION_BASE_NAME,
    LABEL_FINAL_DIFFID,
)
from nestbuild.policy import Policy, preset
from nestbuild.report import BaseInfo, Report
from nestbuild.tree import read_layer

Progress = Callable[[str], None]


@dataclass
class Analysis:
    """An image split into base and derived layers, with its changeset."""

    image: ImageSource
    base: BaseInfo | None
    overlay: Overlay
    changes: list[Change]
    scanner: lints.LayerScanner
    base_index: baseindex.BaseIndex
    notes: list[str] = field(default_factory=list)
    early: list[lints.Raw] = field(default_factory=list)


def _require_bootable(src: ImageSource, role: str) -> None:
    if not src.config.bootable:
        raise ImageError(
            f"{src.ref}: {role} is not a bootable OS image "
            "(no containers.bootc=1 or ostree.bootable=true label)"
        )


def _is_prefix(short: list[str], long: list[str]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def locate_base(
    image: ImageSource, base_ref: str | None
) -> tuple[BaseInfo | None, ImageSource | None, list[str], list[lints.Raw]]:
    """Find the base: --base, then the base annotations, then ostree.final-diffid.

    Returns the base description, a separate base source when the image's layers do not
    start with the base's (a squashed image: compare full trees), notes, and early findings.
    """
    diff_ids = image.config.diff_ids
    notes: list[str] = []
    raws: list[lints.Raw] = []
    if base_ref is not None:
        base = open_image(base_ref)
        _require_bootable(base, "the base")
        info = BaseInfo(str(base.ref), base.digest, len(base.config.diff_ids), "--base")
        if _is_prefix(base.config.diff_ids, diff_ids):
            return info, None, notes, raws
        notes.append(f"the image's layers do not start with {base.ref}'s (squashed or rebuilt "
                     "on another base): comparing full trees")
        return info, base, notes, raws

    name = image.manifest.annotations.get(ANNOTATION_BASE_NAME)
    digest = image.manifest.annotations.get(ANNOTATION_BASE_DIGEST)
    if name or digest:
        recorded = image.related(name, digest)
        if recorded is not None:
            info = BaseInfo(name or str(recorded.ref), recorded.digest,
                            len(recorded.config.diff_ids), "annotation")
            if _is_prefix(recorded.config.diff_ids, diff_ids):
                return info, None, notes, raws
            notes.append(f"the image's layers do not start with its recorded base {name}'s: "
                         "comparing full trees")
            return info, recorded, notes, raws
        notes.append(f"recorded base {name or digest} is not available here; "
                     "trying ostree.final-diffid")

    final = image.config.labels.get(LABEL_FINAL_DIFFID)
    if final:
        if final in diff_ids:
            k = diff_ids.index(final) + 1
            return BaseInfo(name, digest, k, "ostree.final-diffid"), None, notes, raws
        raws.append(lints.Raw("final-diffid", None,
                              f"ostree.final-diffid {final[:19]}... is not among the image's "
                              "layers; import fails with 'Missing ostree.final-diffid'"))
    notes.append("no base found: every layer counts as derived (pass --base to compare)")
    return None, None, notes, raws


def analyze(image_ref: str, base_ref: str | None = None,
            progress: Progress | None = None, *, as_base: bool = False) -> Analysis:
    """Open the image, find its base, read only the derived layers, compute the changeset.

    ``as_base`` checks the image as a base: all its layers are the base, nothing is derived.
    """
    say = progress or (lambda _msg: None)
    image = open_image(image_ref)
    _require_bootable(image, "the image")
    if as_base:
        info: BaseInfo | None = BaseInfo(str(image.ref), image.digest,
                                         len(image.config.diff_ids), "--as-base")
        other_base = None
        notes: list[str] = []
        early: list[lints.Raw] = []
    else:
        info, other_base, notes, early = locate_base(image, base_ref)

    if other_base is not None:
        index = baseindex.load_or_build(other_base, len(other_base.config.diff_ids), say)
        first_derived = 0
    else:
        k = info.layers if info is not None else 0
        index = baseindex.load_or_build(image, k, say)
        first_derived = k
    overlay = Overlay(index, full_compare=other_base is not None)
    scanner = lints.LayerScanner()

    def want(entry: object) -> bool:
        return overlay.want_digest(entry)  # type: ignore[arg-type]

    def inspect(entry: object, data: bytes) -> None:
        overlay.keep_content(entry, data)  # type: ignore[arg-type]
        scanner.content(entry, data)  # type: ignore[arg-type]

    total = len(image.config.diff_ids)
    for i in range(first_derived, total):
        say(f"reading layer {i + 1}/{total}")
        with image.open_layer(i) as stream:
            for item in read_layer(stream.fileobj, i, seekable=stream.seekable, want_digest=want,
                                   inspect=inspect, what=f"{image.ref} layer {i}"):
                scanner.item(item)
                overlay.apply(item)
            stream.finish()
    changes = overlay.changes()
    return Analysis(image, info, overlay, changes, scanner, index, notes, early)


def validate(image_ref: str, *, base_ref: str | None = None, policy: Policy | None = None,
             progress: Progress | None = None, as_base: bool = False) -> Report:
    """Validate an image against a policy (strict by default).

    With ``as_base`` the image is checked as a base image: bootc's structural lints on its
    whole tree, no path policy (there is nothing derived to hold to it).
    """
    policy = policy or preset("strict")
    a = analyze(image_ref, base_ref, progress, as_base=as_base)
    findings: list[Finding] = lints.evaluate(
        policy=policy,
        changes=a.changes,
        merged=a.overlay,
        base=a.base_index if a.base_index.layers and not as_base else None,
        layer_raws=[*a.early, *a.scanner.raws],
    )
    return Report.build(a.image, a.base, policy, a.changes, findings, a.notes)


def diff(base_ref: str | None, image_ref: str, progress: Progress | None = None) -> Report:
    """The changeset alone (no policy), as a report without findings."""
    a = analyze(image_ref, base_ref, progress)
    return Report.build(a.image, a.base, None, a.changes, [], a.notes)
