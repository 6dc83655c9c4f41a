"""``nestbuild push`` as one call: validate, upload, sign and attest, then move the tags.

A CI script gets what the command does with ``nestbuild.push(PushOptions(...))``. The order is
the promise: an image that fails validation is not uploaded at all; blobs and the manifest go
up by digest (:func:`nestbuild.shipping.upload.upload`); signatures for every tag and the
attestations (validation report, package list, SPDX SBOM) are stored next; only then do the
tags move, so a node that pulls a tag always finds it signed, and a push that breaks leaves the
tags as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nestbuild._registry.access import RegistryAccess
from nestbuild.errors import EXIT_FAILED, NestbuildError, UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from nestbuild._registry.client import RegistryClient
    from nestbuild._registry.reference import RegistryRef
    from nestbuild.shipping.upload import BlobOutcome, Precompressor, Uploaded
    from nestbuild.signing.signatures import Attested, Signed
    from nestbuild.validation.report import Report
    from nestbuild.validation.sbom import Sbom
    from nestbuild.validation.validate import Analysis


@dataclass(frozen=True)
class PushOptions:
    """What ``nestbuild push`` takes, one field per flag."""

    #: The image to push: containers-storage (default), ``oci:DIR[:TAG]``,
    #: ``oci-archive:FILE[:TAG]`` (a layout's index is pushed whole, its bytes unchanged).
    image: str
    #: ``[docker://]HOST/REPO[:TAG]``; None: the image's own name, if it names a registry.
    destination: str | None = None
    #: More tags for the same image.
    tags: Sequence[str] = ()
    #: A cosign key: sign every tag, attest the validation report, the package list and the
    #: SBOM (SPDX 2.3, ``--type spdxjson``).
    sign_key: Path | None = None
    #: Its passphrase's file (else NESTBUILD_PASSWORD / COSIGN_PASSWORD, else a prompt).
    passphrase_file: Path | None = None
    #: Refuse an image that fails the policy (False: push it unchecked, attest no report).
    validate: bool = True
    policy_file: Path | None = None
    preset: str | None = None
    #: For layers from containers-storage: gzip (every node reads it), zstd or none.
    compression: str = "gzip"
    #: Parallel blob uploads.
    jobs: int = 4
    access: RegistryAccess = field(default_factory=RegistryAccess)
    #: No progress output.
    quiet: bool = False


class PushRefused(NestbuildError):
    """The image failed validation: nothing was pushed. ``report`` says why."""

    exit_code = EXIT_FAILED

    def __init__(self, image: str, report: Report) -> None:
        super().__init__(f"{image}: failed validation ({report.errors} errors); nothing pushed")
        self.report = report


@dataclass
class PushResult:
    """The pushed image, and what was signed and attested before its tags moved."""

    uploaded: Uploaded
    #: The validation report (None with ``validate=False``).
    report: Report | None = None
    #: One per tag (and per platform of an index), in the order they were stored.
    signatures: list[Signed] = field(default_factory=list)
    attestations: list[Attested] = field(default_factory=list)

    @property
    def image(self) -> RegistryRef:
        """The pushed image, by digest."""
        return self.uploaded.image

    @property
    def repository(self) -> str:
        return self.uploaded.repository

    @property
    def digest(self) -> str:
        return self.uploaded.digest

    @property
    def media_type(self) -> str:
        return self.uploaded.media_type

    @property
    def tags(self) -> list[str]:
        return self.uploaded.tags

    @property
    def blobs(self) -> list[BlobOutcome]:
        return self.uploaded.blobs

    @property
    def bytes_uploaded(self) -> int:
        return self.uploaded.bytes_uploaded

    @property
    def reference(self) -> str:
        """``HOST/REPO@sha256:...``: the reference to deploy."""
        return self.uploaded.reference

    def to_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "digest": self.digest,
            "mediaType": self.media_type,
            "tags": self.tags,
            "bytesUploaded": self.bytes_uploaded,
            "blobs": [{"digest": b.digest, "size": b.size, "status": b.status}
                      for b in self.blobs],
            "signatures": [s.to_json() for s in self.signatures],
            "attestations": [a.to_json() for a in self.attestations],
        }


def default_destination(image: str) -> str:
    """Where ``image`` goes without a destination: its own name, if that names a registry."""
    from nestbuild._image.reference import parse_reference

    ref = parse_reference(image)
    if ref.transport == "containers-storage" and "/" in ref.name \
            and any(c in ref.name.split("/")[0] for c in ".:"):
        return ref.name
    raise UsageError(f"{image}: name a destination (HOST/REPO[:TAG]); the image's own name "
                     "does not say which registry")


def _validated(options: PushOptions,
               precompressed: Precompressor) -> tuple[Report, Analysis]:
    """The image's validation report, and what was read for it; an image without a base is
    checked as one. The layers read are compressed on the way (``precompressed``)."""
    from nestbuild.validation import policy
    from nestbuild.validation.validate import analyze, judge

    pol = policy.resolve(options.policy_file, options.preset)
    a = analyze(options.image, open_layer=precompressed.open_layer)
    if a.base is None:
        a = analyze(options.image, as_base=True)
    return judge(a, pol), a


def _sbom(options: PushOptions, analysis: Analysis | None) -> Sbom | None:
    """The image's SPDX SBOM, attested beside the report; None when the image has no package
    database (an SBOM listing nothing would tell a scanner that nothing is installed)."""
    from nestbuild.validation import sbom

    found = sbom.from_analysis(analysis) if analysis is not None else sbom.sbom(options.image)
    return found if found.database is not None else None


def push(options: PushOptions) -> PushResult:
    """Validate, upload, sign and attest ``options.image``, then tag it (see the module).

    Raises :class:`PushRefused` (exit 1) when validation fails, before any upload; a wrong
    passphrase or a corrupt key also stops the push before anything is uploaded.
    """
    from nestbuild.shipping.upload import Precompressor

    with Precompressor(options.compression) as precompressed:
        return _push(options, precompressed)


def _push(options: PushOptions, precompressed: Precompressor) -> PushResult:
    from nestbuild._registry import reference
    from nestbuild.shipping.upload import upload

    dest = options.destination or default_destination(options.image)
    target = reference.parse(dest)
    if target.digest:
        raise UsageError(f"{dest}: push to a tag (HOST/REPO:TAG), not a digest")
    loading = None
    if options.sign_key is not None:
        from nestbuild.signing import signatures

        # The passphrase is asked for now (never from a thread); scrypt overlaps validation.
        loading = signatures.start_loading_key(options.sign_key,
                                               passphrase_file=options.passphrase_file)
    report = analysis = None
    if options.validate:
        report, analysis = _validated(options, precompressed)
        if not report.passed:
            raise PushRefused(options.image, report)
    result_signatures: list[Signed] = []
    result_attestations: list[Attested] = []
    sign_then_tag = None
    client: RegistryClient  # the upload's connection: signatures go up through it too
    if loading is not None:
        from nestbuild.validation import packages, sbom

        # the package list is the SBOM's database, read once (by validation's package lints,
        # if they ran): the layer holding it can be a base layer of hundreds of megabytes
        bom = _sbom(options, analysis)
        package_list = None if bom is None or bom.database is None else packages.predicate(
            bom.database.format, (i.package for i in bom.database.packages),
            _image_name(options, analysis))
        key = loading()  # a wrong passphrase or a corrupt key stops here, before any upload

        def sign_then_tag(digest: str, tags: list[str]) -> None:
            """Signatures (and the attestations) go up before any tag moves to the image."""
            image = target.with_digest(digest)
            for tag in tags:
                t = signatures.open_target(image, identity=target.with_tag(tag), store=client)
                result_signatures.extend(signatures.sign(t, key))
            first = signatures.open_target(image, identity=target.with_tag(tags[0]),
                                           store=client)
            if report is not None:
                result_attestations.append(signatures.attest_validation(first, report, key))
            if package_list is not None:
                result_attestations.append(
                    signatures.attest(first, key, package_list, packages.PREDICATE_TYPE))
            if bom is not None:
                result_attestations.append(
                    signatures.attest(first, key, bom.document, sbom.PREDICATE_TYPE))

    with options.access.client(target.host) as client:
        uploaded = upload(options.image, target, tags=options.tags,
                          compression=options.compression, jobs=options.jobs,
                          quiet=options.quiet, client=client, before_tags=sign_then_tag,
                          precompressed=precompressed)
    return PushResult(uploaded, report, result_signatures, result_attestations)


def _image_name(options: PushOptions, analysis: Analysis | None) -> str:
    if analysis is not None:
        return str(analysis.image.ref)
    from nestbuild._image import open_image

    return str(open_image(options.image).ref)
