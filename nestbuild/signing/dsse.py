"""In-toto statements in DSSE envelopes: the form of cosign's classic ``.att`` attestations.

``cosign verify-attestation`` and policy engines read these, so nestbuild writes them as cosign
does: a ``https://in-toto.io/Statement/v0.1`` statement, base64 in the envelope's ``payload``,
signed over DSSE's pre-authentication encoding (PAE) rather than over the JSON itself, which
binds the payload type to the signature.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from nestbuild.errors import EXIT_FAILED, NestbuildError

if TYPE_CHECKING:  # imported where used: cryptography is ~10 ms that signing defers
    from nestbuild.signing import keys

PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: The statement type cosign's classic attestations carry.
STATEMENT_TYPE = "https://in-toto.io/Statement/v0.1"
MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"


class EnvelopeError(NestbuildError):
    """An envelope or statement that is malformed."""


class EnvelopeSignatureError(EnvelopeError):
    """An envelope with no signature from the expected key: verification failed."""

    exit_code = EXIT_FAILED


def _json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def statement(
    subject_name: str, subject_digest_hex: str, predicate_type: str, predicate: Any
) -> bytes:
    """An in-toto statement about one image (by its manifest digest), keys in cosign's order.

    ``subject_digest_hex`` may carry a ``sha256:`` prefix.
    """
    digest = subject_digest_hex.removeprefix("sha256:")
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise EnvelopeError(f"subject digest {subject_digest_hex!r} is not a sha256 hex digest")
    # Predicate keys sorted, as cosign (Go) writes them: the same claim gives the same bytes.
    predicate = json.loads(json.dumps(predicate, sort_keys=True, allow_nan=False))
    return _json(
        {
            "_type": STATEMENT_TYPE,
            "predicateType": predicate_type,
            "subject": [{"name": subject_name, "digest": {"sha256": digest}}],
            "predicate": predicate,
        }
    )


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def envelope(key: keys.PrivateKey, statement_bytes: bytes) -> bytes:
    """A DSSE envelope carrying ``statement_bytes``, signed by ``key`` (keyid empty, as cosign)."""
    from nestbuild.signing import keys

    sig = keys.sign(key, pae(PAYLOAD_TYPE, statement_bytes))
    return _json(
        {
            "payloadType": PAYLOAD_TYPE,
            "payload": base64.b64encode(statement_bytes).decode("ascii"),
            "signatures": [{"keyid": "", "sig": base64.b64encode(sig).decode("ascii")}],
        }
    )


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64, then URL-safe: DSSE allows both (as go-securesystemslib reads it)."""
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(text.encode("ascii"), altchars=altchars, validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    raise EnvelopeError(f"DSSE envelope: {what} is not base64")


def open_envelope(data: bytes, pub: keys.PublicKey) -> dict[str, Any]:
    """Verify a DSSE envelope against ``pub`` and return its in-toto statement.

    At least one signature must verify; the payload must be an in-toto statement with subjects.
    """
    from nestbuild.signing import keys

    try:
        env = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EnvelopeError("DSSE envelope is not valid JSON") from None
    if not isinstance(env, dict):
        raise EnvelopeError("DSSE envelope is not a JSON object")
    payload_type = env.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeError(
            f"DSSE envelope: payloadType is {json.dumps(payload_type)}, expected {PAYLOAD_TYPE!r}"
        )
    payload_b64 = env.get("payload")
    if not isinstance(payload_b64, str):
        raise EnvelopeError("DSSE envelope: payload is missing or not a string")
    body = _b64decode(payload_b64, "payload")
    signatures = env.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise EnvelopeError("DSSE envelope: no signatures")
    message = pae(PAYLOAD_TYPE, body)
    verified = False
    for entry in signatures:
        if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
            raise EnvelopeError("DSSE envelope: a signature entry has no 'sig' string")
        try:
            sig = _b64decode(entry["sig"], "sig")
        except EnvelopeError:
            continue
        if keys.verify(pub, message, sig):
            verified = True
            break
    if not verified:
        raise EnvelopeSignatureError("DSSE envelope: no signature verifies with the given key")
    try:
        stmt = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise EnvelopeError("DSSE envelope: the signed payload is not valid JSON") from None
    if not isinstance(stmt, dict):
        raise EnvelopeError("DSSE envelope: the signed payload is not a JSON object")
    if not isinstance(stmt.get("_type"), str) or not stmt["_type"].startswith(
        "https://in-toto.io/Statement/"
    ):
        raise EnvelopeError(f"in-toto statement: unknown _type {json.dumps(stmt.get('_type'))}")
    subjects = stmt.get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise EnvelopeError("in-toto statement: no subject")
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("digest"), dict):
            raise EnvelopeError("in-toto statement: a subject has no digest")
    if not isinstance(stmt.get("predicateType"), str):
        raise EnvelopeError("in-toto statement: predicateType is missing")
    return stmt
