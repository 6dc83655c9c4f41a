"""Simple-signing payloads: byte-exact with cosign, as strict as containers/image, and the
signedIdentity rules a node's policy applies."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from nestbuild._image.reference import parse_reference
from nestbuild._registry.reference import parse_normalized
from nestbuild.signing import keys, payload
from nestbuild.signing.payload import PayloadError, identity_matches, make_payload, parse_payload
from tests.fixtures.cosign import Cosign

INTEROP = Path(__file__).parents[1] / "data" / "interop"
CI_SIGS = INTEROP / "containers-image-signatures"
DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
SIG_ANNOTATION = "dev.cosignproject.cosign/signature"


def read_dir_signature(path: Path) -> tuple[bytes, bytes]:
    """containers/image's ``dir:`` form of a sigstore signature: (payload, DER signature)."""
    data = path.read_bytes()
    prefix = b"\x00sigstore-json\n"
    assert data.startswith(prefix)
    doc = json.loads(data[len(prefix) :])
    assert doc["mimeType"] == payload.MEDIA_TYPE
    return base64.b64decode(doc["payload"]), base64.b64decode(doc["annotations"][SIG_ANNOTATION])


# --- the containers/image fixture made by cosign -------------------------------------------


def test_cosign_signature_vector_verifies_and_parses() -> None:
    body, sig = read_dir_signature(CI_SIGS / "dir-img-cosign-valid" / "signature-1")
    pub = keys.load_public_key((CI_SIGS / "cosign.pub").read_bytes(), "cosign.pub")
    assert keys.verify(pub, body, sig)
    parsed = parse_payload(body)
    manifest = (CI_SIGS / "dir-img-cosign-valid" / "manifest.json").read_bytes()
    assert parsed.manifest_digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert parsed.docker_reference == "192.168.64.2:5000/cosign-signed-single-sample"
    assert parsed.optional is None and parsed.creator is None and parsed.timestamp is None
    # nestbuild writes the very same bytes for the same claim.
    assert make_payload(parsed.docker_reference, parsed.manifest_digest) == body


def test_cosign_signature_vector_tampered() -> None:
    body, sig = read_dir_signature(CI_SIGS / "dir-img-cosign-valid" / "signature-1")
    pub = keys.load_public_key((CI_SIGS / "cosign.pub").read_bytes(), "cosign.pub")
    assert not keys.verify(pub, body.replace(b"single", b"singlE"), sig)
    assert not keys.verify(pub, body + b" ", sig)
    flipped = bytearray(sig)
    flipped[10] ^= 1
    assert not keys.verify(pub, body, bytes(flipped))
    other = keys.generate()
    assert not keys.verify(other.public_key(), body, sig)


def test_sign_and_verify_own_payload() -> None:
    key = keys.generate()
    body = make_payload("registry.example/os/base:41", DIGEST)
    sig = keys.sign(key, body)
    assert keys.verify(key.public_key(), body, sig)
    assert parse_payload(body).docker_reference == "registry.example/os/base:41"


# --- byte-exact with the real cosign -------------------------------------------------------


@pytest.mark.parametrize("ref, written", [
    ("192.168.64.2:5000/cosign-signed-single-sample", None),
    ("localhost:5000/ns/app:v1", "localhost:5000/ns/app"),
    ("busybox", "index.docker.io/library/busybox"),
])
def test_payload_is_byte_identical_to_cosign_generate(
    cosign: Cosign, ref: str, written: str | None
) -> None:
    _, out = cosign("generate", f"{ref}@{DIGEST}")
    # cosign writes the repository only (and Docker Hub as index.docker.io).
    assert out.strip().encode() == make_payload(written or ref, DIGEST)


def test_annotations_are_byte_identical_to_cosign(cosign: Cosign) -> None:
    _, out = cosign("generate", "-a", "creator=me", "-a", "b=2", "-a", "a=x<y&z>",
                    f"registry.example/ns/repo@{DIGEST}")
    ours = make_payload("registry.example/ns/repo", DIGEST, creator="me",
                        annotations={"b": "2", "a": "x<y&z>"})
    assert out.strip().encode() == ours
    assert b"\\u003c" in ours  # Go's HTML-safe escaping
    parsed = parse_payload(ours)
    assert parsed.creator == "me" and parsed.optional == {"a": "x<y&z>", "b": "2", "creator": "me"}


def test_cosign_string_timestamp_annotation_is_refused(cosign: Cosign) -> None:
    """``cosign sign -a timestamp=N`` makes a string, which containers/image refuses."""
    _, out = cosign("generate", "-a", "timestamp=1700000000", f"registry.example/ns/repo@{DIGEST}")
    with pytest.raises(PayloadError) as exc:
        parse_payload(out.strip().encode())
    assert exc.value.message == "signature payload: optional.timestamp is not an integer"


def test_creator_and_timestamp_as_containers_image_writes_them() -> None:
    body = make_payload("r.example/a/b:1", DIGEST, creator="nestbuild 0.1", timestamp=1700000000)
    assert body.endswith(b',"optional":{"creator":"nestbuild 0.1","timestamp":1700000000}}')
    parsed = parse_payload(body)
    assert (parsed.creator, parsed.timestamp) == ("nestbuild 0.1", 1700000000)


@pytest.mark.parametrize("ref, digest, message", [
    ("", DIGEST, "invalid docker reference ''"),
    ("Registry.example/UPPER", DIGEST, "repository name must be lowercase"),
    ("r.example/a/b", "sha256:abc", "is not 64 lowercase hex digits after sha256:"),
    ("r.example/a/b", "md5:" + "0" * 32, "uses unsupported algorithm 'md5'"),
    ("r.example/a/b", DIGEST.upper(), "is not of the form ALGORITHM:HEX"),
])
def test_make_payload_refuses_bad_input(ref: str, digest: str, message: str) -> None:
    with pytest.raises(PayloadError, match=message.replace("(", r"\(")):
        make_payload(ref, digest)


# --- strict parsing ------------------------------------------------------------------------


def good() -> dict[str, Any]:
    return json.loads(make_payload("r.example/a/b:1", DIGEST))  # type: ignore[no-any-return]


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _with(change: Any) -> bytes:
    doc = good()
    change(doc)
    return dumps(doc)


VALID = make_payload("r.example/a/b:1", DIGEST)

BAD_PAYLOADS: list[tuple[str, bytes, str]] = [
    ("not json", b"{", "signature payload is not valid JSON"),
    ("not utf-8", VALID.replace(b"r.example", b"r.ex\xffample"), "is not valid UTF-8"),
    ("trailing data", VALID + b"{}", "unexpected data after the JSON object"),
    ("trailing garbage", VALID + b"x", "unexpected data after the JSON object"),
    ("an array", b"[]", "the payload is not a JSON object"),
    ("duplicate top key", VALID[:-1] + b',"optional":null}', "duplicate key 'optional'"),
    ("duplicate nested key",
     VALID.replace(b'"type":', b'"type":"x","type":'), "duplicate key 'type'"),
    ("unknown top key", _with(lambda d: d.update(extra=1)), "unknown key 'extra' in the payload"),
    ("key case", VALID.replace(b'"critical"', b'"Critical"'),
     "unknown key 'Critical' in the payload"),
    ("missing optional", _with(lambda d: d.pop("optional")),
     "key 'optional' missing in the payload"),
    ("missing critical", _with(lambda d: d.pop("critical")),
     "key 'critical' missing in the payload"),
    ("optional a list", _with(lambda d: d.update(optional=[])),
     "optional is neither null nor a JSON object"),
    ("creator a number", _with(lambda d: d.update(optional={"creator": 5})),
     "optional.creator is not a string"),
    ("creator null", _with(lambda d: d.update(optional={"creator": None})),
     "optional.creator is not a string"),
    ("timestamp fractional", _with(lambda d: d.update(optional={"timestamp": 1.5})),
     "optional.timestamp is not an integer"),
    ("timestamp string", _with(lambda d: d.update(optional={"timestamp": "1"})),
     "optional.timestamp is not an integer"),
    ("timestamp bool", _with(lambda d: d.update(optional={"timestamp": True})),
     "optional.timestamp is not an integer"),
    ("timestamp huge", _with(lambda d: d.update(optional={"timestamp": 1 << 64})),
     "optional.timestamp is out of range"),
    ("NaN", VALID.replace(b"null}", b'{"x":NaN}}'), "NaN is not valid JSON"),
    ("1e999", VALID.replace(b"null}", b'{"x":1e999}}'), "number 1e999 is out of range"),
    ("critical extra key", _with(lambda d: d["critical"].update(sub=1)),
     "unknown key 'sub' in critical"),
    ("critical null", _with(lambda d: d.update(critical=None)), "critical is not a JSON object"),
    ("wrong type", _with(lambda d: d["critical"].update(type="atomic container signature")),
     'critical.type is "atomic container signature", expected "cosign container image signature"'),
    ("image extra key", _with(lambda d: d["critical"]["image"].update(x="y")),
     "unknown key 'x' in critical.image"),
    ("identity missing key", _with(lambda d: d["critical"].update(identity={})),
     "key 'docker-reference' missing in critical.identity"),
    ("reference not a string",
     _with(lambda d: d["critical"]["identity"].update({"docker-reference": 1})),
     "critical.identity.docker-reference is not a string"),
    ("bad digest",
     _with(lambda d: d["critical"]["image"].update({"docker-manifest-digest": "sha256:00"})),
     "docker-manifest-digest 'sha256:00' is not 64 lowercase hex digits"),
    ("digest not a string",
     _with(lambda d: d["critical"]["image"].update({"docker-manifest-digest": None})),
     "critical.image.docker-manifest-digest is not a string"),
]


@pytest.mark.parametrize("name, data, message", BAD_PAYLOADS, ids=[c[0] for c in BAD_PAYLOADS])
def test_parse_payload_refuses(name: str, data: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse_payload(data)
    assert message in exc.value.message
    assert "\n" not in exc.value.message


def test_parse_payload_accepts_what_containers_image_accepts() -> None:
    # Whitespace, any key order, unknown optional keys, integral float timestamps, sha512.
    doc = good()
    doc["optional"] = {"timestamp": 1e9, "other": {"nested": [1, 2]}, "creator": ""}
    text = json.dumps({"optional": doc["optional"], "critical": doc["critical"]}, indent=2)
    parsed = parse_payload(text.encode() + b"\n")
    assert parsed.timestamp == 1_000_000_000 and parsed.creator == ""
    sha512 = "sha512:" + "ab" * 64
    assert parse_payload(make_payload("r.example/a/b", sha512)).manifest_digest == sha512
    assert parse_payload(VALID.replace(b'"type"', b'"\\u0074ype"')).docker_reference


# --- signedIdentity ------------------------------------------------------------------------

D2 = "sha256:" + "1" * 64

IDENTITY_CASES = [
    # signed, pulled, repository, repoDigestOrExact, exact
    ("reg.example/os/base", "reg.example/os/base:41", True, False, False),
    ("reg.example/os/base:41", "reg.example/os/base:41", True, True, True),
    ("reg.example/os/base:41", "reg.example/os/base:42", True, False, False),
    ("reg.example/os/base:41", f"reg.example/os/base@{D2}", True, True, False),
    (f"reg.example/os/base@{D2}", f"reg.example/os/base@{D2}", True, True, True),
    ("reg.example/os/base:latest", "reg.example/os/base", True, True, True),
    ("reg.example/os/other:41", "reg.example/os/base:41", False, False, False),
    ("reg.example:5000/os/base:41", "reg.example/os/base:41", False, False, False),
    ("index.docker.io/library/busybox", "busybox:1.36", True, False, False),
    ("docker.io/library/busybox:1.36", "busybox:1.36", True, True, True),
    ("busybox:1.36", "docker.io/library/busybox:1.36", True, True, True),
    ("localhost/app:1", "localhost/app:1", True, True, True),
    ("Reg.example/os/base:41", "reg.example/os/base:41", False, False, False),
    ("not a reference", "reg.example/os/base:41", False, False, False),
    ("reg.example/os/base:41", f"reg.example/os/base:41@{D2}", False, False, False),
]


@pytest.mark.parametrize("signed, pulled, repo, repo_digest_or_exact, exact", IDENTITY_CASES)
def test_identity_rules(
    signed: str, pulled: str, repo: bool, repo_digest_or_exact: bool, exact: bool
) -> None:
    assert identity_matches(signed, pulled, "matchRepository") is repo
    assert identity_matches(signed, pulled, "matchRepoDigestOrExact") is repo_digest_or_exact
    assert identity_matches(signed, pulled, "matchExact") is exact


def test_unknown_identity_rule() -> None:
    with pytest.raises(PayloadError, match="unknown signedIdentity type 'matchAnything'"):
        identity_matches("a/b", "a/b", "matchAnything")


def test_reference_parsing_follows_containers_image() -> None:
    parse = parse_normalized
    assert parse("busybox").exact == "docker.io/library/busybox"
    assert parse("index.docker.io/foo/bar:1").exact == "docker.io/foo/bar:1"
    assert parse("quay.io/a/b:t@" + D2).exact == "quay.io/a/b:t@" + D2
    # what a pull of a bare name fetches, and the one type for every registry name
    assert str(parse("busybox")) == "docker.io/library/busybox:latest"
    assert parse_reference("docker://quay.io/a/b:t").registry == parse("quay.io/a/b:t")
    assert parse("Host.Example:5000/a").name == "Host.Example:5000/a"  # domain may be upper
    for bad in ["", "a" * 64, "A/b", "reg.example/a//b", "reg.example/a:" + "t" * 129,
                "reg.example/a@sha256:xyz", "reg.example/a\n"]:
        with pytest.raises(ValueError):
            parse(bad)
