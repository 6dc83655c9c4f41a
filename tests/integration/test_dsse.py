"""DSSE envelopes with in-toto statements, checked against the spec's PAE vector and against
the real cosign in both directions (attest-blob / verify-blob-attestation)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from nestbuild.errors import EXIT_FAILED
from nestbuild.signing import dsse, keys
from tests.fixtures.cosign import Cosign

PTYPE = "https://nestbuild.dev/attestation/validate/v1"


def test_pae_matches_the_dsse_spec_example() -> None:
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse.pae("", b"") == b"DSSEv1 0  0 "
    # Lengths are byte lengths, not character counts.
    assert dsse.pae("t", "é".encode()) == b"DSSEv1 1 t 2 \xc3\xa9"


def test_statement_layout() -> None:
    body = dsse.statement("reg.example/os/base", "ab" * 32, PTYPE, {"result": "pass"})
    assert body == (
        b'{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"' + PTYPE.encode()
        + b'","subject":[{"name":"reg.example/os/base","digest":{"sha256":"' + b"ab" * 32
        + b'"}}],"predicate":{"result":"pass"}}'
    )
    assert dsse.statement("n", "sha256:" + "ab" * 32, PTYPE, {}) == dsse.statement(
        "n", "ab" * 32, PTYPE, {}
    )
    with pytest.raises(dsse.EnvelopeError, match="is not a sha256 hex digest"):
        dsse.statement("n", "AB" * 32, PTYPE, {})


def test_envelope_round_trip_and_layout() -> None:
    key = keys.generate()
    body = dsse.statement("reg.example/os/base", "cd" * 32, PTYPE, {"ok": True})
    env = dsse.envelope(key, body)
    doc = json.loads(env)
    assert list(doc) == ["payloadType", "payload", "signatures"]
    assert doc["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(doc["payload"]) == body
    assert list(doc["signatures"][0]) == ["keyid", "sig"] and doc["signatures"][0]["keyid"] == ""
    # The signature covers PAE, not the bare statement.
    sig = base64.b64decode(doc["signatures"][0]["sig"])
    assert keys.verify(key.public_key(), dsse.pae(dsse.PAYLOAD_TYPE, body), sig)
    assert not keys.verify(key.public_key(), body, sig)
    stmt = dsse.open_envelope(env, key.public_key())
    assert stmt["predicate"] == {"ok": True}
    assert stmt["subject"][0]["digest"]["sha256"] == "cd" * 32


def test_tampering_and_wrong_key_fail_verification() -> None:
    key = keys.generate()
    body = dsse.statement("n", "cd" * 32, PTYPE, {"ok": True})
    doc = json.loads(dsse.envelope(key, body))

    def opened(d: dict[str, object], pub: keys.PublicKey | None = None) -> None:
        dsse.open_envelope(json.dumps(d).encode(), pub or key.public_key())

    with pytest.raises(dsse.EnvelopeSignatureError) as exc:
        opened(doc, keys.generate().public_key())
    assert exc.value.exit_code == EXIT_FAILED
    forged = dict(doc, payload=base64.b64encode(body.replace(b"true", b"false")).decode())
    with pytest.raises(dsse.EnvelopeSignatureError):
        opened(forged)
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 1
    with pytest.raises(dsse.EnvelopeSignatureError):
        opened(dict(doc, signatures=[{"keyid": "", "sig": base64.b64encode(sig).decode()}]))
    with pytest.raises(dsse.EnvelopeError, match="payloadType is \"text/plain\""):
        opened(dict(doc, payloadType="text/plain"))
    with pytest.raises(dsse.EnvelopeError, match="no signatures"):
        opened(dict(doc, signatures=[]))
    with pytest.raises(dsse.EnvelopeError, match="not valid JSON"):
        dsse.open_envelope(b"{", key.public_key())
    # A second, valid signature among bad ones is enough (any key may co-sign).
    other = {"keyid": "x", "sig": base64.b64encode(b"junk").decode()}
    opened(dict(doc, signatures=[other, *doc["signatures"]]))


def test_signed_payload_must_be_a_statement() -> None:
    key = keys.generate()
    for body, message in [(b"[1]", "not a JSON object"),
                          (b'{"_type":"x","subject":[]}', "unknown _type"),
                          (b'{"_type":"https://in-toto.io/Statement/v1","subject":[]}',
                           "no subject")]:
        with pytest.raises(dsse.EnvelopeError, match=message):
            dsse.open_envelope(dsse.envelope(key, body), key.public_key())


def test_url_safe_base64_is_accepted() -> None:
    key = keys.generate()
    body = dsse.statement("n", "cd" * 32, PTYPE, {"bytes": "\u00ff\u00fe>>>???"})
    doc = json.loads(dsse.envelope(key, body))
    doc["payload"] = base64.urlsafe_b64encode(body).decode()
    assert "-" in doc["payload"] or "_" in doc["payload"]
    assert dsse.open_envelope(json.dumps(doc).encode(), key.public_key())["subject"]


# --- the real cosign -----------------------------------------------------------------------


def test_cosign_attestation_opens_and_matches_our_statement(
    cosign: Cosign, tmp_path: Path
) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "k", b"pw")
    blob = tmp_path / "blob"
    blob.write_bytes(b"the attested thing\n")
    (tmp_path / "pred.json").write_text('{"result":"pass","n":1}')
    cosign("attest-blob", "--key", key_path, "--predicate", tmp_path / "pred.json",
           "--type", PTYPE, "--tlog-upload=false", "--output-signature", tmp_path / "att.json",
           blob, password="pw")
    pub = keys.load_public_key(pub_path.read_bytes(), "k.pub")
    env = (tmp_path / "att.json").read_bytes()
    stmt = dsse.open_envelope(env, pub)
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert stmt["subject"] == [{"name": "blob", "digest": {"sha256": digest}}]
    # nestbuild's statement for the same claim is cosign's, key order included (protojson may
    # vary whitespace between cosign builds, so that is normalised away).
    body = base64.b64decode(json.loads(env)["payload"])
    compact = json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert dsse.statement("blob", digest, PTYPE, {"result": "pass", "n": 1}) == compact


def test_nestbuild_attestation_verifies_with_cosign(cosign: Cosign, tmp_path: Path) -> None:
    key_path, pub_path = keys.write_key_pair(tmp_path / "k", b"pw")
    key = keys.load_private_key(key_path.read_bytes(), b"pw", "k.key")
    blob = tmp_path / "blob"
    blob.write_bytes(b"image manifest stand-in\n")
    digest = hashlib.sha256(blob.read_bytes()).hexdigest()
    env = dsse.envelope(key, dsse.statement("blob", digest, PTYPE, {"result": "pass"}))
    (tmp_path / "att.json").write_bytes(env)
    _, out = cosign("verify-blob-attestation", "--key", pub_path, "--signature",
                    tmp_path / "att.json", "--type", PTYPE, "--insecure-ignore-tlog", blob)
    assert "Verified OK" in out
    # A statement about another digest is refused by cosign's claim check.
    env = dsse.envelope(key, dsse.statement("blob", "0" * 64, PTYPE, {"result": "pass"}))
    (tmp_path / "att.json").write_bytes(env)
    code, _ = cosign("verify-blob-attestation", "--key", pub_path, "--signature",
                     tmp_path / "att.json", "--type", PTYPE, "--insecure-ignore-tlog", blob,
                     check=False)
    assert code != 0
