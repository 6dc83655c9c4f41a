"""Validate a derived OS image: find its base, compute its changeset, apply the policy.

This is the Python API under ``nestbuild validate`` and ``nestbuild diff``::

    from nestbuild.validation.validate import validate
    report = validate("oci:./out:v1", policy=policy.preset("strict"))
    if not report.passed: ...
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING

from nestbuild._image import ImageSource, open_image
from nestbuild._image.model import (
    ANNOTATION_BASE_DIGEST,
    ANNOTATION_BASE_NAME,
    LABEL_FINAL_DIFFID,
)
from nestbuild._image.tree import read_layer
from nestbuild._util.record import Record
from nestbuild.errors import ImageError
from nestbuild.node.nodetree import SymlinkGuard
from nestbuild.validation import baseindex, lints
from nestbuild.validation.changeset import Change, Overlay
from nestbuild.validation.findings import Finding, evaluate
from nestbuild.validation.installed import ImagePackages
from nestbuild.validation.policy import Policy, preset
from nestbuild.validation.report import BaseInfo, Report

if TYPE_CHECKING:
    from nestbuild._image.source import LayerStream
    from nestbuild._registry.access import RegistryAccess

Progress = Callable[[str], None]
#: Opens one layer of an image in place of ``ImageSource.open_layer``: a validating push
#: has a compressor follow validation's read of each derived layer (one read from storage).
LayerOpener = Callable[[ImageSource, int], AbstractContextManager["LayerStream"]]


def _open(ref: str, access: RegistryAccess | None) -> ImageSource:
    """``ref`` opened; a registry image (``docker://``) through ``access`` (authfile,
    cert-dir, TLS verification), as every registry command reaches it."""
    from nestbuild._image.reference import parse_reference

    parsed = parse_reference(ref)
    if access is not None and parsed.transport == "docker":
        from nestbuild._image.registry_source import RegistrySource

        return RegistrySource(parsed, access)
    return open_image(parsed)


class Analysis(Record):
    """An image split into base and derived layers, with its changeset."""

    image: ImageSource
    base: BaseInfo | None
    overlay: Overlay
    changes: list[Change]
    scanner: lints.LayerScanner
    base_index: baseindex.BaseIndex
    notes: list[str]
    early: list[lints.Raw]
    #: Checked as a base (``--as-base``): nothing derived, no base to compare packages with.
    as_base: bool

    def __init__(self, image: ImageSource, base: BaseInfo | None, overlay: Overlay,
                 changes: list[Change], scanner: lints.LayerScanner,
                 base_index: baseindex.BaseIndex, notes: list[str] | None = None,
                 early: list[lints.Raw] | None = None, as_base: bool = False) -> None:
        self.image = image
        self.base = base
        self.overlay = overlay
        self.changes = changes
        self.scanner = scanner
        self.base_index = base_index
        self.notes = [] if notes is None else notes
        self.early = [] if early is None else early
        self.as_base = as_base

    @cached_property
    def packages(self) -> ImagePackages:
        """The package databases, read on first use: the package lints and the SBOM of a
        signed push share one read (the database can be hundreds of megabytes)."""
        compare = self.base_index.layers and not self.as_base and not self.overlay.full_compare
        return ImagePackages(self.image, self.overlay, self.base_index if compare else None)


def _require_bootable(src: ImageSource, role: str) -> None:
    if not src.config.bootable:
        raise ImageError(
            f"{src.ref}: {role} is not a bootable OS image "
            "(no containers.bootc=1 or ostree.bootable=true label)"
        )


def _is_prefix(short: list[str], long: list[str]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def _final_diffid(image: ImageSource, raws: list[lints.Raw]) -> int | None:
    """How many layers ``ostree.final-diffid`` says are the base's (None without the label).

    A label naming no layer of the image is a node refusal ('Missing ostree.final-diffid').
    """
    final = image.config.labels.get(LABEL_FINAL_DIFFID)
    if not final:
        return None
    diff_ids = image.config.diff_ids
    if final in diff_ids:
        return diff_ids.index(final) + 1
    raws.append(lints.Raw(lints.FINAL_DIFFID.id, None,
                          f"ostree.final-diffid {final[:19]}... is not among the image's "
                          "layers; import fails with 'Missing ostree.final-diffid'",
                          refused=True))
    return None


def locate_base(
    image: ImageSource, base_ref: str | None, access: RegistryAccess | None = None
) -> tuple[BaseInfo | None, ImageSource | None, list[str], list[lints.Raw]]:
    """Find the base: --base, then the base annotations, then ostree.final-diffid.

    The base decides which layers are not held to the policy, so it is taken only when it is
    certain: ``--base``; the annotations when their name resolves to their digest (see
    ImageSource.recorded_base); or ``ostree.final-diffid``, where the node itself splits the
    layers. Where the annotations and the label disagree, the fewer base layers win: derived
    content checked twice is harmless, unchecked content is not. Annotations that cannot be
    confirmed, with no label to fall back on, are unusable input (ImageError, exit 2): a guess
    could hide a layered build's own steps in the base.

    Returns the base description, a separate base source when the image's layers do not
    start with the base's (a squashed image: compare full trees), notes, and early findings.
    """
    diff_ids = image.config.diff_ids
    notes: list[str] = []
    raws: list[lints.Raw] = []
    final_k = _final_diffid(image, raws)
    if base_ref is not None:
        base = _open(base_ref, access)
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
        recorded, why = image.recorded_base(name, digest)
        if recorded is not None:
            info = BaseInfo(name, recorded.digest, len(recorded.config.diff_ids), "annotation")
            if not _is_prefix(recorded.config.diff_ids, diff_ids):
                notes.append(f"the image's layers do not start with its recorded base {name}'s:"
                             " comparing full trees")
                return info, recorded, notes, raws
            label = image.config.labels.get(LABEL_FINAL_DIFFID)
            if final_k is not None and final_k < info.layers and (
                    recorded.config.labels.get(LABEL_FINAL_DIFFID) != label):
                # a label the base does not carry itself, ending the base sooner: stricter
                notes.append(f"ostree.final-diffid ends the base after layer {final_k}, before "
                             f"its recorded base {name}'s {info.layers} layers: the later ones "
                             "count as derived")
                info = BaseInfo(name, recorded.digest, final_k, "ostree.final-diffid")
            return info, None, notes, raws
        shown = f"{name or '?'}@{(digest or '?')[:19]}"
        if final_k is None:
            raise ImageError(f"{image.ref}: cannot confirm its recorded base {shown}: {why}; "
                             "name the image it was built FROM with --base REF")
        notes.append(f"recorded base {shown} cannot be confirmed ({why}); the base ends at "
                     "ostree.final-diffid")
        return BaseInfo(None, None, final_k, "ostree.final-diffid"), None, notes, raws

    if final_k is not None:
        return BaseInfo(None, None, final_k, "ostree.final-diffid"), None, notes, raws
    notes.append("no base found: every layer counts as derived (pass --base to compare)")
    return None, None, notes, raws


def analyze(image_ref: str, base_ref: str | None = None,
            progress: Progress | None = None, *, as_base: bool = False,
            access: RegistryAccess | None = None,
            open_layer: LayerOpener | None = None) -> Analysis:
    """Open the image, find its base, read only the derived layers, compute the changeset.

    ``as_base`` checks the image as a base: all its layers are the base, nothing is derived.
    Every layer a node applies is checked for what the node refuses: the derived ones as they
    are read, the base's from its (cached) index. ``open_layer`` reads the derived layers in
    place of the image's own ``open_layer``.
    """
    say = progress or (lambda _msg: None)
    image = _open(image_ref, access)
    _require_bootable(image, "the image")
    if as_base:
        early: list[lints.Raw] = []
        _final_diffid(image, early)  # a label that names no layer is refused in a base too
        info: BaseInfo | None = BaseInfo(str(image.ref), image.digest,
                                         len(image.config.diff_ids), "--as-base")
        other_base = None
        notes: list[str] = []
    else:
        info, other_base, notes, early = locate_base(image, base_ref, access)

    if other_base is not None:
        # the image's own layers are all read below; the other base is only compared with
        index = baseindex.load_or_build(other_base, len(other_base.config.diff_ids), say)
        first_derived = 0
        scanner = lints.LayerScanner()
    else:
        k = info.layers if info is not None else 0
        index = baseindex.load_or_build(image, k, say)
        first_derived = k
        scanner = lints.LayerScanner(guard=SymlinkGuard(index.links))
        early += [lints.refusal_raw(r.layer, r.path, r.reason, inherited=not as_base)
                  for r in index.refusals]
    overlay = Overlay(index, full_compare=other_base is not None)

    def want(entry: object) -> bool:
        return overlay.want_digest(entry)  # type: ignore[arg-type]

    def inspect(entry: object, data: bytes) -> None:
        overlay.keep_content(entry, data)  # type: ignore[arg-type]
        scanner.content(entry, data)  # type: ignore[arg-type]

    total = len(image.config.diff_ids)
    opener = open_layer or (lambda src, i: src.open_layer(i))
    for i in range(first_derived, total):
        say(f"reading layer {i + 1}/{total}")
        with opener(image, i) as stream:
            for item in read_layer(stream.fileobj, i, seekable=stream.seekable, want_digest=want,
                                   inspect=inspect, what=f"{image.ref} layer {i}"):
                scanner.item(item)
                why = overlay.apply(item)
                if why is not None:
                    scanner.raws.append(lints.refusal_raw(item.layer, item.path, why))
            stream.finish()
    changes = overlay.changes()
    return Analysis(image, info, overlay, changes, scanner, index, notes, early, as_base)


def validate(image_ref: str, *, base_ref: str | None = None, policy: Policy | None = None,
             progress: Progress | None = None, as_base: bool = False,
             access: RegistryAccess | None = None,
             open_layer: LayerOpener | None = None) -> Report:
    """Validate an image against a policy (strict by default); ``access`` reaches a
    ``docker://`` image (and its base) as the registry commands do.

    With ``as_base`` the image is checked as a base image: bootc's structural lints on its
    whole tree, no path policy (there is nothing derived to hold to it).
    """
    a = analyze(image_ref, base_ref, progress, as_base=as_base, access=access,
                open_layer=open_layer)
    return judge(a, policy)


def judge(a: Analysis, policy: Policy | None = None) -> Report:
    """The report on an analysed image: its changeset and findings under ``policy``."""
    policy = policy or preset("strict")
    as_base = a.as_base
    findings: list[Finding] = evaluate(
        policy=policy,
        changes=a.changes,
        merged=a.overlay,
        base=a.base_index if a.base_index.layers and not as_base else None,
        layer_raws=[*a.early, *a.scanner.raws],
        layers=len(a.image.config.diff_ids),
        base_layers=a.base.layers if a.base is not None and not as_base else 0,
        settings=policy.settings,
        packages=a.packages,
    )
    return Report.build(a.image, a.base, policy, a.changes, findings, a.notes)


def diff(base_ref: str | None, image_ref: str, progress: Progress | None = None, *,
         access: RegistryAccess | None = None) -> Report:
    """The changeset alone (no policy), as a report without findings."""
    a = analyze(image_ref, base_ref, progress, access=access)
    return Report.build(a.image, a.base, None, a.changes, [], a.notes)
