"""The "simple signing" payload that a cosign image signature signs.

Nodes verify with containers/image, which parses this JSON paranoidly, so nestbuild writes it
byte-for-byte as cosign does and reads it with the same strictness: a payload nestbuild accepts
is one the node accepts. Identity matching follows containers/image's ``signedIdentity`` rules,
so ``nestbuild verify`` can predict what a node's policy will say.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Final

from nestbuild._registry.reference import RegistryRef, check_digest, parse_normalized
from nestbuild._util.record import Value
from nestbuild.errors import NestbuildError

SIGNATURE_TYPE = "cosign container image signature"
MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
RULES = ("matchRepository", "matchRepoDigestOrExact", "matchExact")

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class PayloadError(NestbuildError):
    """A signature payload that containers/image would refuse."""


class Payload(Value):
    """A parsed payload. ``optional`` holds every annotation, creator and timestamp included."""

    docker_reference: Final[str]
    manifest_digest: Final[str]
    creator: Final[str | None]
    timestamp: Final[int | None]
    optional: Final[Mapping[str, Any] | None]

    def __init__(self, docker_reference: str, manifest_digest: str, creator: str | None = None,
                 timestamp: int | None = None, optional: Mapping[str, Any] | None = None) -> None:
        self.docker_reference = docker_reference
        self.manifest_digest = manifest_digest
        self.creator = creator
        self.timestamp = timestamp
        self.optional = optional


def identity_matches(payload_ref: str, image_ref: str, rule: str) -> bool:
    """Whether a signature claiming ``payload_ref`` is accepted for a pull of ``image_ref``.

    Follows containers/image ``policy_reference_match.go``. ``image_ref`` is what the node pulls
    (``bootc switch IMAGE``): like the docker transport, a bare name there means ``:latest``,
    and a reference with both a tag and a digest cannot be pulled, so matches nothing.
    """
    if rule not in RULES:
        raise PayloadError(f"unknown signedIdentity type {rule!r} (known: {', '.join(RULES)})")
    try:
        intended = parse_normalized(image_ref)
        signed = parse_normalized(payload_ref)
    except ValueError:
        return False
    if intended.name_only:
        intended = RegistryRef(intended.host, intended.repo, "latest", None)
    if intended.tag is not None and intended.digest is not None:
        return False
    if rule == "matchRepository":
        return signed.name == intended.name
    if signed.name_only:
        return False
    if rule == "matchExact":
        return signed.exact == intended.exact
    # matchRepoDigestOrExact
    if intended.tag is not None:
        return signed.exact == intended.exact
    return signed.name == intended.name


# ---------------------------------------------------------------------------------------------
# writing


def _go_json(obj: object) -> bytes:
    """Compact JSON as Go's ``encoding/json`` marshals it (HTML-safe escapes included)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    for char, escape in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, escape)
    return text.encode("utf-8")


def make_payload(
    docker_reference: str,
    manifest_digest: str,
    creator: str | None = None,
    timestamp: int | None = None,
    *,
    annotations: Mapping[str, str] | None = None,
) -> bytes:
    """The payload bytes to sign, exactly as cosign writes them.

    ``optional`` is ``null`` without annotations, as ``cosign sign`` writes it; ``annotations``
    go into it as ``cosign sign -a K=V`` puts them (string values, keys sorted), and creator
    and timestamp as containers/image writes them (timestamp a number, which ``-a`` cannot do).
    """
    try:
        parse_normalized(docker_reference)
    except ValueError as exc:
        raise PayloadError(f"invalid docker reference {docker_reference!r}: {exc}") from None
    problem = check_digest(manifest_digest)
    if problem is not None:
        raise PayloadError(f"manifest digest {manifest_digest!r} {problem}")
    optional: dict[str, Any] | None = None
    if annotations or creator is not None or timestamp is not None:
        optional = {}
        for key, value in (annotations or {}).items():
            if not isinstance(value, str):
                raise PayloadError(f"annotation {key!r} is not a string")
            optional[key] = value
        if creator is not None:
            optional["creator"] = creator
        if timestamp is not None:
            if isinstance(timestamp, bool) or not _INT64_MIN <= timestamp <= _INT64_MAX:
                raise PayloadError(f"timestamp {timestamp!r} is not a 64-bit integer")
            optional["timestamp"] = timestamp
    if optional is not None:
        if "timestamp" in optional and not isinstance(optional["timestamp"], int):
            raise PayloadError("annotation 'timestamp' must be an integer (pass timestamp=)")
        optional = dict(sorted(optional.items()))
    # Key order: Go marshals struct fields in declaration order and map keys sorted.
    doc = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": SIGNATURE_TYPE,
        },
        "optional": optional,
    }
    return _go_json(doc)


# ---------------------------------------------------------------------------------------------
# reading


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise PayloadError(f"signature payload: duplicate key {key!r}")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> None:
    raise PayloadError(f"signature payload: {name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # Go refuses a number out of float64's range
        raise PayloadError(f"signature payload: number {text} is out of range")
    return value


def _exact(obj: object, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise PayloadError(f"signature payload: {where} is not a JSON object")
    for key in obj:
        if key not in keys:
            raise PayloadError(f"signature payload: unknown key {key!r} in {where}")
    for key in keys:
        if key not in obj:
            raise PayloadError(f"signature payload: key {key!r} missing in {where}")
    return obj


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise PayloadError(f"signature payload: {where}.{key} is not a string")
    return value


def parse_payload(data: bytes) -> Payload:
    """Parse a payload as strictly as containers/image's ``sigstore_payload.go``.

    Exactly the expected keys (case-sensitive), no duplicates, no data after the object,
    ``optional`` null or an object whose ``creator`` is a string and ``timestamp`` an integer.
    Other ``optional`` keys are kept, as containers/image ignores them. Stricter than Go only in
    corners no signer produces: invalid UTF-8 (Go substitutes U+FFFD), ``null`` creator or
    timestamp (Go reads "" and 0), and duplicate keys inside ignored ``optional`` values.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("signature payload is not valid UTF-8") from None
    try:
        doc = json.loads(
            text, object_pairs_hook=_pairs, parse_constant=_reject_constant, parse_float=_finite
        )
    except RecursionError:
        raise PayloadError("signature payload is nested too deeply") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":
            raise PayloadError("signature payload: unexpected data after the JSON object") from None
        raise PayloadError(
            f"signature payload is not valid JSON: {exc.msg} at byte {exc.pos}"
        ) from None
    except ValueError:  # an integer past Python's digit limit (Go: out of float64's range)
        raise PayloadError("signature payload: a number is out of range") from None
    top = _exact(doc, "the payload", ("critical", "optional"))

    creator: str | None = None
    timestamp: int | None = None
    optional = top["optional"]
    if optional is not None:
        if not isinstance(optional, dict):
            raise PayloadError("signature payload: optional is neither null nor a JSON object")
        if "creator" in optional:
            creator = _string(optional, "creator", "optional")
        if "timestamp" in optional:
            value = optional["timestamp"]
            if isinstance(value, float) and value.is_integer():
                value = int(value)  # Go reads it as float64 and accepts 1.0 or 1e9
            if isinstance(value, bool) or not isinstance(value, int):
                raise PayloadError("signature payload: optional.timestamp is not an integer")
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise PayloadError("signature payload: optional.timestamp is out of range")
            timestamp = value

    critical = _exact(top["critical"], "critical", ("type", "image", "identity"))
    kind = critical["type"]
    if kind != SIGNATURE_TYPE:
        raise PayloadError(
            f"signature payload: critical.type is {json.dumps(kind)}, "
            f"expected {json.dumps(SIGNATURE_TYPE)}"
        )
    image = _exact(critical["image"], "critical.image", ("docker-manifest-digest",))
    digest = _string(image, "docker-manifest-digest", "critical.image")
    problem = check_digest(digest)
    if problem is not None:
        raise PayloadError(f"signature payload: docker-manifest-digest {digest!r} {problem}")
    identity = _exact(critical["identity"], "critical.identity", ("docker-reference",))
    reference = _string(identity, "docker-reference", "critical.identity")
    return Payload(
        docker_reference=reference,
        manifest_digest=digest,
        creator=creator,
        timestamp=timestamp,
        optional=dict(optional) if optional is not None else None,
    )
