"""Signing, attesting and verifying on OCI layouts: the exact stored format, read-modify-write,
multi-arch images, every verification failure with its reason, and the CLI's refusals that
must leave the store untouched. Interop with cosign and containers/image: test_interop_signing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from nestbuild._cli.main import main
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_MANIFEST, Descriptor
from nestbuild.errors import NestbuildError, UsageError
from nestbuild.signing import dsse, keyfile, keys, payload
from nestbuild.signing import signatures as signing
from nestbuild.signing.layout_store import KIND, KIND_IMAGE, KIND_SIGS, LayoutStore
from tests.fixtures import cli
from tests.fixtures.common import run_in_pty
from tests.ocibuilder import write_platform_index

IDENTITY = "registry.example.com/nodes/web:v1"
LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(root: Path, content: bytes, tag: str | None = "v1",
                architecture: str = "amd64") -> Descriptor:
    w = LayoutWriter(root)
    layer = w.add_bytes(content, LAYER)
    return w.add_image([layer], [sha(content)], tag=tag, architecture=architecture)


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def sig_manifest(root: Path, digest: str, suffix: str = "sig") -> dict[str, Any]:
    got = LayoutStore(root).get_manifest("", signing.attachment_tag(digest, suffix))
    assert got is not None
    doc: dict[str, Any] = json.loads(got[0])
    return doc


def blob(root: Path, digest: str) -> bytes:
    return (root / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def one_line(exc: pytest.ExceptionInfo[NestbuildError]) -> str:
    assert "\n" not in exc.value.message
    return exc.value.message


@pytest.fixture(scope="module")
def key() -> keys.PrivateKey:
    return keys.generate()


@pytest.fixture(scope="module")
def other_key() -> keys.PrivateKey:
    return keys.generate()


def pubs(*ks: keys.PrivateKey) -> list[tuple[str, keys.PublicKey]]:
    return [(f"k{i}.pub", k.public_key()) for i, k in enumerate(ks)]


def target(root: Path, tag: str = "v1", identity: str | None = IDENTITY) -> signing.Target:
    return signing.open_target(f"oci:{root}:{tag}", identity=identity)


# --- the stored format -----------------------------------------------------------------------

def test_signature_is_stored_exactly_as_cosign_and_containers_image_store_it(
        tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    [result] = signing.sign(target(root), key)
    assert result.added and result.docker_reference == IDENTITY
    assert result.tag == f"sha256-{image.digest.split(':')[1]}.sig"

    got = LayoutStore(root).get_manifest("", result.tag)
    assert got is not None and got[1] == OCI_MANIFEST
    manifest = json.loads(got[0])
    assert list(manifest) == ["schemaVersion", "mediaType", "config", "layers"]
    assert manifest["mediaType"] == OCI_MANIFEST
    [layer] = manifest["layers"]
    body = blob(root, layer["digest"])
    assert body == payload.make_payload(IDENTITY, image.digest)
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert layer["size"] == len(body) and layer["digest"] == sha(body)
    assert list(layer["annotations"]) == ["dev.cosignproject.cosign/signature"]
    sig = base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])
    assert keys.verify(key.public_key(), body, sig)
    config = blob(root, manifest["config"]["digest"])
    assert manifest["config"] == {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": sha(config), "size": len(config)}
    assert config == (b'{"architecture":"","os":"","config":{},"rootfs":{"type":"layers",'
                      b'"diff_ids":["' + layer["digest"].encode() + b'"]}}')
    # index.json: the image keeps its tag; the signature is a tag with cosign's kind marks.
    entries = json.loads((root / "index.json").read_text())["manifests"]
    assert [e["annotations"] for e in entries] == [
        {"org.opencontainers.image.ref.name": "v1", KIND: KIND_IMAGE},
        {"org.opencontainers.image.ref.name": result.tag, KIND: KIND_SIGS}]


def test_signing_again_appends_only_new_signatures(
        tmp_path: Path, key: keys.PrivateKey, other_key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    signing.sign(target(root), key)
    before = snapshot(root)
    [again] = signing.sign(target(root), key)
    assert not again.added and snapshot(root) == before  # no duplicate layer, nothing written
    [other] = signing.sign(target(root), other_key)
    assert other.added
    manifest = sig_manifest(root, image.digest)
    assert len(manifest["layers"]) == 2
    config = json.loads(blob(root, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [lay["digest"] for lay in manifest["layers"]]
    # A different claim (another identity) by the same key is a new signature.
    [renamed] = signing.sign(target(root, identity="registry.example.com/nodes/web:v2"), key)
    assert renamed.added and len(sig_manifest(root, image.digest)["layers"]) == 3
    report = signing.verify(target(root), pubs(key))
    assert report.passed
    assert [s.verified for s in report.manifests[0].signatures] == [True, False, False]
    assert "not made by k0.pub" in report.manifests[0].signatures[1].reason
    assert "is not accepted for registry.example.com/nodes/web:v1 under matchRepoDigestOrExact " \
        "(matchRepository would accept it)" in report.manifests[0].signatures[2].reason


def test_existing_attachment_fields_are_kept(tmp_path: Path, key: keys.PrivateKey) -> None:
    """Read-modify-write keeps what another tool (cosign) put in manifest and config."""
    root = tmp_path / "l"
    image = write_image(root, b"one")
    store = LayoutStore(root)
    config = json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z", "history": [],
                         "os": "", "rootfs": {"type": "layers", "diff_ids": []},
                         "config": {}}).encode()
    store.put_blob("", config, sha(config), len(config))
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": sha(config), "size": len(config)},
                "layers": [], "annotations": {"org.example": "kept"}}
    store.put_manifest("", signing.attachment_tag(image.digest, "sig"),
                       json.dumps(manifest).encode(), OCI_MANIFEST)
    signing.sign(target(root), key)
    after = sig_manifest(root, image.digest)
    assert after["annotations"] == {"org.example": "kept"} and len(after["layers"]) == 1
    new_config = json.loads(blob(root, after["config"]["digest"]))
    assert new_config["created"] == "0001-01-01T00:00:00Z" and "history" in new_config


def test_a_foreign_object_under_the_signature_tag_is_not_overwritten(
        tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    docker = json.dumps({"schemaVersion": 2, "mediaType":
                         "application/vnd.docker.distribution.manifest.v2+json",
                         "config": {}, "layers": []}).encode()
    LayoutStore(root).put_manifest("", signing.attachment_tag(image.digest, "sig"), docker,
                                   "application/vnd.docker.distribution.manifest.v2+json")
    before = snapshot(root)
    with pytest.raises(signing.SigningError) as exc:
        signing.sign(target(root), key)
    assert "not an OCI image manifest" in one_line(exc)
    assert snapshot(root) == before


def test_multi_arch_index_signs_the_index_and_every_platform(
        tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    index, children = write_platform_index(root)
    results = signing.sign(target(root, "multi"), key)
    assert [r.digest for r in results] == [index, *children]
    assert [r.platform for r in results] == [None, "linux/amd64", "linux/arm64"]
    for digest in (index, *children):
        body = blob(root, sig_manifest(root, digest)["layers"][0]["digest"])
        assert payload.parse_payload(body).manifest_digest == digest
        assert payload.parse_payload(body).docker_reference == IDENTITY
    report = signing.verify(target(root, "multi"), pubs(key))
    assert report.passed and len(report.manifests) == 3
    # A platform left unsigned fails the whole image: a node of that platform would refuse it.
    (root / "index.json").write_text(json.dumps({
        "schemaVersion": 2, "manifests": [
            e for e in json.loads((root / "index.json").read_text())["manifests"]
            if e["annotations"]["org.opencontainers.image.ref.name"]
            != signing.attachment_tag(children[1], "sig")]}))
    report = signing.verify(target(root, "multi"), pubs(key))
    assert not report.passed
    assert [m.verified for m in report.manifests] == [True, True, False]
    assert report.manifests[2].platform == "linux/arm64"
    assert "no signatures" in (report.manifests[2].problem or "")


def test_untagged_layout_reference_ignores_attachments(tmp_path: Path,
                                                       key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    write_image(root, b"one")
    signing.sign(signing.open_target(f"oci:{root}", identity=IDENTITY), key)
    assert signing.verify(signing.open_target(f"oci:{root}"), pubs(key)).passed
    write_image(root, b"two", tag="v2")
    with pytest.raises(NestbuildError) as exc:
        signing.open_target(f"oci:{root}")
    assert "holds 2 images" in one_line(exc) and "v1, v2" in exc.value.message


def test_layout_without_identity_cannot_be_signed(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    write_image(root, b"one")
    with pytest.raises(UsageError) as exc:
        signing.sign(target(root, identity=None), key)
    assert "pass --identity REG/REPO:TAG" in one_line(exc)
    with pytest.raises(UsageError, match="not a docker reference"):
        target(root, identity="Not/A/Valid:Reference:x")


# --- verification: every reason ----------------------------------------------------------------

def reasons(report: signing.VerifyReport) -> list[str]:
    return [s.reason for m in report.manifests for s in m.signatures]


def test_verify_reports_unsigned_images(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    report = signing.verify(target(root), pubs(key))
    assert not report.passed
    assert report.manifests[0].problem == (
        f"no signatures (sha256-{image.digest.split(':')[1]}.sig not found)")


def test_signature_for_another_digest_is_refused(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image_a = write_image(root, b"one", tag="a")
    image_b = write_image(root, b"two", tag="b")
    signing.sign(target(root, "a"), key)
    # Put A's signature manifest under B's signature tag, as an attacker copying it would.
    store = LayoutStore(root)
    got = store.get_manifest("", signing.attachment_tag(image_a.digest, "sig"))
    assert got is not None
    store.put_manifest("", signing.attachment_tag(image_b.digest, "sig"), *got)
    report = signing.verify(target(root, "b"), pubs(key))
    assert not report.passed
    assert reasons(report) == [f"signs manifest {image_a.digest}, not this one ({image_b.digest})"]


def _rewrite_layer(root: Path, digest: str, edit: Any) -> None:
    """Apply ``edit(layer, payload) -> payload`` to the first signature layer, re-digesting."""
    store = LayoutStore(root)
    tag = signing.attachment_tag(digest, "sig")
    manifest = sig_manifest(root, digest)
    layer = manifest["layers"][0]
    body = edit(layer, blob(root, layer["digest"]))
    store.put_blob("", body, sha(body), len(body))
    layer.update(digest=sha(body), size=len(body))
    store.put_manifest("", tag, json.dumps(manifest).encode(), OCI_MANIFEST)


def test_tampered_payloads_are_refused(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    signing.sign(target(root), key)
    # Altered in place: the blob no longer matches the digest the manifest names.
    layer = sig_manifest(root, image.digest)["layers"][0]
    path = root / "blobs" / "sha256" / layer["digest"].split(":")[1]
    original = path.read_bytes()
    path.write_bytes(original.replace(b"web:v1", b"web:v9"))
    [reason] = reasons(signing.verify(target(root), pubs(key)))
    assert reason.startswith("payload blob cannot be used: ") and reason.endswith(
        f"blob {layer['digest']} does not match its digest")
    path.write_bytes(original)
    # Altered consistently (new blob, manifest updated): the signature no longer matches.
    _rewrite_layer(root, image.digest, lambda _l, b: b.replace(b"web:v1", b"web:v9"))
    [reason] = reasons(signing.verify(target(root), pubs(key)))
    assert reason.startswith("invalid signature: not made by k0.pub over this payload")


def test_annotation_and_payload_problems(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    signing.sign(target(root), key)

    def drop(layer: dict[str, Any], body: bytes) -> bytes:
        layer["annotations"] = {}
        return body

    _rewrite_layer(root, image.digest, drop)
    assert reasons(signing.verify(target(root), pubs(key))) == [
        "missing dev.cosignproject.cosign/signature annotation"]

    def garble(layer: dict[str, Any], body: bytes) -> bytes:
        layer["annotations"] = {"dev.cosignproject.cosign/signature": "%%%"}
        return body

    _rewrite_layer(root, image.digest, garble)
    assert reasons(signing.verify(target(root), pubs(key))) == [
        "signature annotation is not valid base64"]

    def resign_loose(layer: dict[str, Any], body: bytes) -> bytes:
        # Correctly signed, but with a key containers/image does not know: it refuses it.
        doc = json.loads(body)
        doc["critical"]["Identity"] = doc["critical"].pop("identity")
        new = json.dumps(doc).encode()
        sig = base64.b64encode(keys.sign(key, new)).decode()
        layer["annotations"] = {"dev.cosignproject.cosign/signature": sig}
        return new

    _rewrite_layer(root, image.digest, resign_loose)
    [reason] = reasons(signing.verify(target(root), pubs(key)))
    assert reason == "signature payload: unknown key 'Identity' in critical"


def test_identity_rules(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    write_image(root, b"one")
    signing.sign(target(root), key)
    pull_v2 = target(root, identity="registry.example.com/nodes/web:v2")
    assert not signing.verify(pull_v2, pubs(key)).passed
    assert signing.verify(pull_v2, pubs(key), rule="matchRepository").passed
    assert not signing.verify(pull_v2, pubs(key), rule="matchExact").passed
    other_repo = target(root, identity="registry.example.com/nodes/db:v1")
    assert not signing.verify(other_repo, pubs(key), rule="matchRepository").passed
    # Several keys: any one may have signed (policy.json keyPaths).
    assert signing.verify(target(root), pubs(keys.generate(), key)).passed


# --- attestations ------------------------------------------------------------------------------

class FakeReport:
    def to_json(self) -> dict[str, Any]:
        return {"passed": True, "findings": []}


def test_attestation_layout_and_dedup(tmp_path: Path, key: keys.PrivateKey) -> None:
    root = tmp_path / "l"
    image = write_image(root, b"one")
    result = signing.attest_validation(f"oci:{root}:v1", FakeReport(), key, identity=IDENTITY)
    assert result.added and result.predicate_type == signing.VALIDATION_PREDICATE
    manifest = sig_manifest(root, image.digest, "att")
    [layer] = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dsse.envelope.v1+json"
    assert layer["annotations"] == {"dev.cosignproject.cosign/signature": "",
                                    "predicateType": signing.VALIDATION_PREDICATE}
    stmt = dsse.open_envelope(blob(root, layer["digest"]), key.public_key())
    assert stmt["predicate"] == {"findings": [], "passed": True}
    assert stmt["subject"] == [{"name": "registry.example.com/nodes/web",
                                "digest": {"sha256": image.digest.split(":")[1]}}]
    before = snapshot(root)
    again = signing.attest_validation(f"oci:{root}:v1", FakeReport(), key, identity=IDENTITY)
    assert not again.added and snapshot(root) == before
    signing.sign(target(root), key)
    report = signing.verify(target(root), pubs(key))
    [att] = report.manifests[0].attestations
    assert att.verified and att.predicate_type == signing.VALIDATION_PREDICATE
    other = signing.verify(target(root), pubs(keys.generate()))
    assert not other.manifests[0].attestations[0].verified


def test_predicate_types() -> None:
    assert signing.predicate_type_uri("https://example.com/p/v1") == "https://example.com/p/v1"
    assert signing.predicate_type_uri("slsaprovenance1") == "https://slsa.dev/provenance/v1"
    with pytest.raises(UsageError, match="neither a URI nor one of"):
        signing.predicate_type_uri("custom")


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture
def keypair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setenv("NESTBUILD_PASSWORD", "pw")
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    return keys.write_key_pair(tmp_path / "cosign", b"pw")


def test_cli_keygen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("NESTBUILD_PASSWORD", raising=False)
    monkeypatch.delenv("COSIGN_PASSWORD", raising=False)
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    prefix = tmp_path / "keys" / "release"
    prefix.parent.mkdir()
    assert main(["keygen", "--output-prefix", str(prefix), "--passphrase-file", str(pw)]) == 0
    key_file = prefix.parent / "release.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys.load_private_key(key_file.read_bytes(), b"s3cret", "release.key")
    old = key_file.read_bytes()
    assert main(["keygen", "--output-prefix", str(prefix), "--passphrase-file", str(pw)]) == 2
    assert "already exists (use --force" in capsys.readouterr().err
    assert key_file.read_bytes() == old
    assert main(["keygen", "--output-prefix", str(prefix), "--passphrase-file", str(pw),
                 "--force"]) == 0
    assert key_file.read_bytes() != old
    # No passphrase source and no terminal: a clear refusal, nothing written.
    assert main(["keygen", "--output-prefix", str(tmp_path / "x")]) == 2
    assert "no passphrase" in capsys.readouterr().err and not (tmp_path / "x.key").exists()


def test_cli_sign_verify_round_trip(tmp_path: Path, keypair: tuple[Path, Path],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    key_path, pub_path = keypair
    root = tmp_path / "l"
    image = write_image(root, b"one")
    ref = f"oci:{root}:v1"
    assert main(["verify", ref, "--key", str(pub_path)]) == 1
    captured = capsys.readouterr()
    assert "NOT VERIFIED" in captured.out
    assert captured.err == (f"error: not verified: {image.digest}: no signatures "
                            f"(sha256-{image.digest[7:]}.sig not found)\n")
    assert main(["sign", ref, "--key", str(key_path), "--identity", IDENTITY]) == 0
    assert f"signed: {image.digest[:19]} as {IDENTITY}" in capsys.readouterr().out
    assert main(["verify", ref, "--key", str(pub_path), "--identity", IDENTITY,
                 "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True
    assert doc["signed_identity"] == {"type": "matchRepoDigestOrExact", "reference": IDENTITY}
    [m] = doc["manifests"]
    assert m["digest"] == image.digest and m["signatures"][0]["verified"] is True
    assert m["signatures"][0]["docker_reference"] == IDENTITY
    assert main(["verify", ref, "--key", str(pub_path), "--identity",
                 "registry.example.com/nodes/web:v2", "--format", "json"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["verified"] is False
    assert captured.err.count("\n") == 1 and "matchRepository would accept it" in captured.err
    predicate = tmp_path / "p.json"
    predicate.write_text('{"ok": true}')
    assert main(["attest", ref, "--key", str(key_path), "--predicate", str(predicate),
                 "--type", "https://example.com/p/v1", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["added"] is True


def _bad_key_files(tmp_path: Path, key_path: Path) -> dict[str, tuple[Path, str]]:
    def write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    rsa_pem = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    ed_pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    data = key_path.read_bytes()
    return {
        "truncated": (write("t.key", data[: len(data) // 2]), "is truncated"),
        "corrupt": (write("c.key", data.replace(b"ENCRYPTED COSIGN PRIVATE KEY-----\n",
                                                b"ENCRYPTED COSIGN PRIVATE KEY-----\n!!")),
                    "is corrupt"),
        "rsa": (write("r.key", rsa_pem), "is an RSA key; nestbuild signs with ECDSA P-256"),
        "ed25519": (write("e.key", ed_pem), "is an ed25519 key; nestbuild signs with ECDSA"),
        "p384": (write("p.key", p384), "is an ECDSA key on curve secp384r1"),
        "missing": (tmp_path / "none.key", "cannot read key"),
    }


def test_cli_bad_keys_write_nothing(tmp_path: Path, keypair: tuple[Path, Path],
                                    monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    key_path, _ = keypair
    root = tmp_path / "l"
    write_image(root, b"one")
    ref = f"oci:{root}:v1"
    before = snapshot(root)
    cases = _bad_key_files(tmp_path, key_path)
    for name, (path, expected) in cases.items():
        assert main(["sign", ref, "--key", str(path), "--identity", IDENTITY]) == 2, name
        err = capsys.readouterr().err
        assert expected in err, (name, err)
        assert len(err.strip().splitlines()) == 1, (name, err)
    monkeypatch.setenv("NESTBUILD_PASSWORD", "wrong")
    assert main(["sign", ref, "--key", str(key_path), "--identity", IDENTITY]) == 2
    assert "wrong passphrase for" in capsys.readouterr().err
    predicate = tmp_path / "p.json"
    predicate.write_text("{}")
    assert main(["attest", ref, "--key", str(key_path), "--predicate", str(predicate),
                 "--type", "https://example.com/p/v1"]) == 2
    assert "wrong passphrase for" in capsys.readouterr().err
    assert snapshot(root) == before


def test_the_executable_signs_with_the_key_it_started_early(tmp_path: Path,
                                                           keypair: tuple[Path, Path]) -> None:
    """``nestbuild sign`` starts decrypting its key before parsing its arguments. Through the
    executable, a wrong or missing passphrase still reads as one line and writes nothing, a
    passphrase file works in every spelling, and the signature is the key's."""
    key_path, pub_path = keypair
    root = tmp_path / "l"
    image = write_image(root, b"one")
    ref = f"oci:{root}:v1"
    before = snapshot(root)
    env = {k: v for k, v in os.environ.items() if k not in keyfile.PASSPHRASE_ENV}

    def nestbuild(*args: str, **extra: str) -> cli.Result:
        return cli.nestbuild(*args, env={**env, **extra})

    r = nestbuild("sign", ref, "--key", str(key_path), "--identity", IDENTITY,
                  NESTBUILD_PASSWORD="wrong")
    assert (r.returncode, r.stderr) == (2, f"error: wrong passphrase for {key_path}\n")
    r = nestbuild("sign", ref, f"--key={key_path}", "--identity", IDENTITY)
    assert r.returncode == 2 and r.stderr.startswith("error: no passphrase for"), r.stderr
    assert r.stderr.count("\n") == 1
    assert snapshot(root) == before
    pw = tmp_path / "pw"
    pw.write_text("pw\n")
    r = nestbuild("sign", ref, f"--key={key_path}", f"--passphrase-file={pw}", "--identity",
                  IDENTITY, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["signatures"][0]["added"] is True
    # The early start guessed a passphrase file argparse did not take (an abbreviation): the
    # key is decrypted again with what the command was given.
    r = nestbuild("sign", ref, "--key", str(key_path), "--passphrase-f", str(pw),
                  "--identity", IDENTITY)
    assert r.returncode == 0 and "already signed by this key" in r.stdout, r.stderr
    # ...and a key argparse did not take (``--ke`` abbreviates ``--key``; the last one wins).
    other_key, other_pub = keys.write_key_pair(tmp_path / "other", b"pw")
    r = nestbuild("sign", ref, "--key", str(key_path), "--ke", str(other_key), "--identity",
                  IDENTITY, NESTBUILD_PASSWORD="pw")
    assert r.returncode == 0 and "signed: sha256:" in r.stdout, r.stderr
    for pub in (pub_path, other_pub):
        report = signing.verify(target(root), signing.load_public_keys([pub]))
        assert report.passed and report.manifests[0].digest == image.digest
        [check] = report.manifests
        assert sum(sig.verified for sig in check.signatures) == 1


def test_the_executable_asks_for_the_passphrase_once(tmp_path: Path,
                                                     keypair: tuple[Path, Path]) -> None:
    """With no passphrase in the environment, the early start must not prompt: the command
    asks, once, after its arguments parsed."""
    key_path, _ = keypair
    root = tmp_path / "l"
    write_image(root, b"one")
    env = {k: v for k, v in os.environ.items() if k not in keyfile.PASSPHRASE_ENV}
    code, out = run_in_pty([sys.executable, "-m", "nestbuild", "sign", f"oci:{root}:v1",
                            "--key", str(key_path), "--identity", IDENTITY], [b"pw"], env)
    assert code == 0, out
    assert out.count(b"Enter passphrase for") == 1 and b"signed: sha256:" in out


def test_cli_refusals(tmp_path: Path, keypair: tuple[Path, Path],
                      capsys: pytest.CaptureFixture[str]) -> None:
    key_path, pub_path = keypair
    root = tmp_path / "l"
    write_image(root, b"one")
    before = snapshot(root)
    cases = [
        (["sign", f"oci:{root}:v1", "--key", str(key_path)], "pass --identity"),
        (["sign", f"oci:{root}:nope", "--key", str(key_path), "--identity", IDENTITY],
         "no such image"),
        (["sign", "localhost/my-node:latest", "--key", str(key_path)],
         "push it first and sign docker://localhost/my-node:latest"),
        (["verify", f"oci:{root}:v1", "--key", str(key_path)], "not a 'PUBLIC KEY'"),
        (["verify", f"oci:{tmp_path}/none:v1", "--key", str(pub_path)], "not an OCI layout"),
        (["attest", f"oci:{root}:v1", "--key", str(key_path), "--predicate",
          str(tmp_path / "none.json"), "--type", "https://example.com/p"], "cannot read"),
        (["attest", f"oci:{root}:v1", "--key", str(key_path), "--predicate", str(key_path),
          "--type", "https://example.com/p"], "is not a JSON document"),
        (["attest", f"oci:{root}:v1", "--key", str(key_path), "--predicate", str(key_path),
          "--type", "custom"], "neither a URI"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert snapshot(root) == before


def test_passphrase_is_never_a_flag() -> None:
    from nestbuild._cli.main import build_parser

    parser = build_parser()
    for command in ("keygen", "sign", "attest"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "x", "--passphrase", "pw"])


def test_layout_store_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "l"
    write_image(root, b"one")
    store = LayoutStore(root)
    assert store.get_manifest("", "nope") is None
    assert store.get_manifest("", "sha256:" + "0" * 64) is None
    data = b'{"schemaVersion":2}'
    with pytest.raises(ValueError):
        store.put_blob("", data, sha(b"other"), len(data))
    digest = store.put_manifest("", "t", data, OCI_MANIFEST)
    assert store.get_manifest("", "t") == (data, OCI_MANIFEST)
    assert store.get_manifest("", digest) == (data, OCI_MANIFEST)
    store.put_manifest("", "t", b"{}", OCI_MANIFEST)  # re-tagging replaces, keeps one entry
    tags = [e["annotations"]["org.opencontainers.image.ref.name"] for e in store.entries()]
    assert tags == ["v1", "t"]
    os.chmod(root, 0o755)
    shutil.rmtree(root / "blobs")
    with pytest.raises(NestbuildError, match="names a missing manifest"):
        store.get_manifest("", "t")


def test_concurrent_signers_of_a_layout_lose_no_signature(tmp_path: Path) -> None:
    """Read-modify-write under the layout's lock: each signer's layer survives."""
    import threading

    root = tmp_path / "l"
    image = write_image(root, b"one")
    signers = [keys.generate() for _ in range(4)]
    errors: list[BaseException] = []

    def sign_with(k: keys.PrivateKey) -> None:
        try:
            signing.sign(target(root), k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign_with, args=(k,)) for k in signers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(sig_manifest(root, image.digest)["layers"]) == 4
    report = signing.verify(target(root), pubs(*signers))
    assert all(s.verified for s in report.manifests[0].signatures)
