"""What is attached to an image, as ``cosign tree`` and ``cosign download attestation`` show it.

cosign stores an image's signatures, attestations and SBOMs under the tags
``sha256-HEX.sig``, ``.att`` and ``.sbom`` of its repository; OCI 1.1 artifacts point at it
with a ``subject`` and are listed by the referrers API (or its fallback tag). :func:`tree`
lists them all for the image and each platform of an index, without verifying anything
(``verify`` does that); :func:`download_attestations` reads the in-toto statements.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from nestbuild._image.model import digest_of
from nestbuild._registry.access import RegistryAccess
from nestbuild.errors import ImageError, NestbuildError
from nestbuild.signing import payload as payload_mod
from nestbuild.signing.signatures import (
    DSSE_TYPE,
    MAX_SIGNATURE_SIZE,
    PREDICATE_TYPE_ANNOTATION,
    SIMPLESIGNING_TYPE,
    Subject,
    Target,
    attachment_tag,
    open_target,
    predicate_type_uri,
    read_attachment,
    subjects,
)

#: The attachment tags cosign writes, and what each holds.
KINDS = {"sig": "signature", "att": "attestation", "sbom": "sbom"}
#: The in-toto statement type a DSSE envelope of an attestation carries.
IN_TOTO_TYPE = "application/vnd.in-toto+json"
#: The largest attestation envelope read (an SBOM statement can be large, not unbounded).
MAX_ENVELOPE_SIZE = 64 << 20


@dataclass(frozen=True)
class AttachedLayer:
    """One signature, attestation or SBOM inside an attachment manifest."""

    digest: str
    size: int
    media_type: str
    #: A signature: the image name its payload claims (unverified; ``verify`` checks it).
    identity: str | None = None
    #: An attestation: its predicate type, as its annotation says.
    predicate_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "media_type": self.media_type,
                "identity": self.identity, "predicate_type": self.predicate_type}


@dataclass(frozen=True)
class Attached:
    """An attachment manifest (``.sig``, ``.att``, ``.sbom``) or an OCI referrer."""

    #: ``signature``, ``attestation``, ``sbom`` or ``referrer``.
    kind: str
    #: The digest of the image manifest it is about.
    subject: str
    platform: str | None
    #: cosign's tag (None for a referrer, found by its subject).
    tag: str | None
    #: The digest of the attachment's own manifest.
    digest: str
    artifact_type: str | None = None
    layers: tuple[AttachedLayer, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "subject": self.subject, "platform": self.platform,
                "tag": self.tag, "digest": self.digest, "artifact_type": self.artifact_type,
                "layers": [layer.to_json() for layer in self.layers]}


@dataclass
class ImageTree:
    """An image and everything attached to it."""

    image: str
    digest: str
    attachments: list[Attached] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Attached]:
        return [a for a in self.attachments if a.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest,
                "signatures": [a.to_json() for a in self.of_kind("signature")],
                "attestations": [a.to_json() for a in self.of_kind("attestation")],
                "sboms": [a.to_json() for a in self.of_kind("sbom")],
                "referrers": [a.to_json() for a in self.of_kind("referrer")],
                "notes": self.notes}


def _target(image: Target | str, registry: RegistryAccess | None) -> Target:
    return image if isinstance(image, Target) else open_target(image, registry=registry)


def tree(image: Target | str, *, registry: RegistryAccess | None = None) -> ImageTree:
    """Everything attached to ``image`` (``[docker://]HOST/REPO[:TAG|@DIGEST]`` or
    ``oci:DIR[:TAG]``) and to each platform manifest of an index."""
    target = _target(image, registry)
    found, notes = subjects(target)
    out = ImageTree(target.display, found[0].digest, notes=notes)
    for subject in found:
        for suffix, kind in KINDS.items():
            attached = _attached(target, subject, suffix, kind)
            if attached is not None:
                out.attachments.append(attached)
        out.attachments.extend(_referrers(target, subject))
    return out


def _attached(target: Target, subject: Subject, suffix: str, kind: str) -> Attached | None:
    att = read_attachment(target, subject.digest, suffix)
    if att is None:
        return None
    layers = []
    for layer in att.layers:
        media_type = str(layer.get("mediaType", ""))
        annotations = layer.get("annotations") or {}
        predicate = annotations.get(PREDICATE_TYPE_ANNOTATION) if kind == "attestation" else None
        identity = _claimed_identity(target, layer) if media_type == SIMPLESIGNING_TYPE else None
        layers.append(AttachedLayer(str(layer["digest"]), int(layer["size"]), media_type,
                                    identity, None if predicate is None else str(predicate)))
    return Attached(kind, subject.digest, subject.platform, att.tag, att.digest or "",
                    layers=tuple(layers))


def _claimed_identity(target: Target, layer: dict[str, Any]) -> str | None:
    """The docker reference a signature payload names (None when it cannot be read)."""
    if int(layer["size"]) > MAX_SIGNATURE_SIZE:
        return None
    try:
        body = target.store.get_blob(target.repo, str(layer["digest"]))
        return payload_mod.parse_payload(body).docker_reference
    except NestbuildError:
        return None


def _referrers(target: Target, subject: Subject) -> list[Attached]:
    """OCI referrers of ``subject``: the registry's referrers API, else its fallback tag
    (an OCI layout has neither)."""
    list_referrers = getattr(target.store, "referrers", None)
    if list_referrers is None:
        return []
    out = []
    for entry in list_referrers(target.repo, subject.digest):
        artifact = entry.get("artifactType")
        out.append(Attached("referrer", subject.digest, subject.platform, None,
                            str(entry.get("digest", "")),
                            None if artifact is None else str(artifact)))
    return out


@dataclass(frozen=True)
class Statement:
    """One attestation's in-toto statement, as stored (not verified: ``verify`` does that)."""

    #: The ``.att`` layer it is in, and the envelope's digest.
    layer: int
    digest: str
    predicate_type: str
    statement: dict[str, Any]


def download_attestations(image: Target | str, *, predicate_type: str | None = None,
                          registry: RegistryAccess | None = None) -> list[Statement]:
    """The in-toto statements attached to ``image`` (the named manifest), as ``cosign
    download attestation`` reads them; ``predicate_type`` (a URI or a cosign shorthand)
    keeps those of that type. Unverified: check them with ``verify`` before relying on them."""
    target = _target(image, registry)
    wanted = predicate_type_uri(predicate_type) if predicate_type is not None else None
    found, _ = subjects(target)
    att = read_attachment(target, found[0].digest, "att")
    out = []
    for index, layer in enumerate(att.layers if att else []):
        if layer.get("mediaType") != DSSE_TYPE:
            continue
        where = f"{target.display}: {attachment_tag(found[0].digest, 'att')} layer {index}"
        if int(layer["size"]) > MAX_ENVELOPE_SIZE:
            raise ImageError(f"{where}: the envelope is over {MAX_ENVELOPE_SIZE >> 20} MiB")
        blob = target.store.get_blob(target.repo, str(layer["digest"]))
        if digest_of(blob) != layer["digest"]:
            raise ImageError(f"{where}: the envelope does not match its digest")
        statement = _statement(blob, where)
        ptype = str(statement.get("predicateType", ""))
        if wanted is None or ptype == wanted:
            out.append(Statement(index, str(layer["digest"]), ptype, statement))
    return out


def _statement(blob: bytes, where: str) -> dict[str, Any]:
    try:
        envelope = json.loads(blob)
        if not isinstance(envelope, dict) or envelope.get("payloadType") != IN_TOTO_TYPE:
            raise ImageError(f"{where}: not a DSSE envelope of an in-toto statement")
        statement = json.loads(base64.b64decode(str(envelope.get("payload", "")),
                                                validate=True))
    except (ValueError, RecursionError, binascii.Error):
        raise ImageError(f"{where}: the envelope is not valid JSON with a base64 payload") \
            from None
    if not isinstance(statement, dict):
        raise ImageError(f"{where}: the statement is not a JSON object")
    return statement


__all__ = ["Attached", "AttachedLayer", "ImageTree", "Statement", "download_attestations",
           "tree"]
