"""Signers that run at the same moment on one registry image must all end up in its ``.sig``
(and ``.att``) manifest.

A registry has no compare-and-swap for tags, so every signer rewrites the whole attachment
manifest; a signer that read it before another one stored its own would silently drop that
one's layer. These tests start real ``nestbuild`` processes, one per key, against the real
registry fixture, several rounds, and then check what a node and a verifier rely on: every
key's signature (or attestation) is there exactly once and verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_MANIFEST
from nestbuild._tools.run import run
from nestbuild.errors import EXIT_FAILED, NestbuildError
from nestbuild.signing import keyfile, keys
from nestbuild.signing import signatures as signing

if TYPE_CHECKING:
    from registryfixtures import Registry  # type: ignore[import-not-found]

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.registry, pytest.mark.skopeo]

#: Signers per round and rounds: the old read-modify-write lost a layer in most rounds.
SIGNERS = 4
ROUNDS = 3
PTYPE = "https://nestbuild.dev/test/concurrency/v1"
LAYER = "application/vnd.oci.image.layer.v1.tar"


@pytest.fixture(scope="module")
def keypairs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("concurrency-keys")
    return [keys.write_key_pair(root / f"k{i}", b"pw") for i in range(SIGNERS)]


def push_image(tmp_path: Path, host: str, name: str) -> str:
    """A fresh, unsigned one-layer image in the registry; its ``docker://`` reference."""
    content = f"concurrency {name}".encode()
    w = LayoutWriter(tmp_path / name)
    layer = w.add_bytes(content, LAYER)
    w.add_image([layer], ["sha256:" + hashlib.sha256(content).hexdigest()], tag="v1")
    ref = f"{host}/concurrency/{name}-{uuid.uuid4().hex[:8]}:v1"
    run(["skopeo", "copy", "--preserve-digests", "--dest-tls-verify=false",
         f"oci:{tmp_path / name}:v1", f"docker://{ref}"], what=f"pushing {ref}")
    return f"docker://{ref}"


def run_together(argvs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any: their read-modify-writes overlap."""
    env = {k: v for k, v in os.environ.items() if k not in keyfile.PASSPHRASE_ENV}
    env["NESTBUILD_PASSWORD"] = "pw"
    procs = [subprocess.Popen([sys.executable, "-m", "nestbuild", *argv], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    out = []
    for argv, proc in zip(argvs, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr))
    return out


def attachment(ref: str, digest: str, suffix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored attachment manifest and its config."""
    target = signing.open_target(ref)
    got = target.store.get_manifest(target.repo, signing.attachment_tag(digest, suffix))
    assert got is not None, f"no .{suffix} manifest"
    manifest: dict[str, Any] = json.loads(got[0])
    config = json.loads(target.store.get_blob(target.repo, manifest["config"]["digest"]))
    return manifest, config


def check_layers(manifest: dict[str, Any], config: dict[str, Any]) -> None:
    """One layer per signer, none twice, and the config lists exactly those layers. (Every
    key signs the same payload: signatures differ in their annotation, not their blob.)"""
    layers = manifest["layers"]
    distinct = {json.dumps(layer, sort_keys=True) for layer in layers}
    assert len(layers) == SIGNERS and len(distinct) == SIGNERS, layers
    assert config["rootfs"]["diff_ids"] == [layer["digest"] for layer in layers]


def test_concurrent_signers_all_keep_their_signature(
        registry: Registry, tmp_path: Path, keypairs: list[tuple[Path, Path]]) -> None:
    for round_ in range(ROUNDS):
        ref = push_image(tmp_path, registry.host, f"sign-{round_}")
        done = run_together([["sign", ref, "--key", str(key)] for key, _ in keypairs])
        for proc in done:
            assert proc.returncode == 0 and "signed: sha256:" in proc.stdout, proc.stderr
        [subject], _ = signing.subjects(signing.open_target(ref))
        check_layers(*attachment(ref, subject.digest, "sig"))
        for i, (_, pub) in enumerate(keypairs):
            report = signing.verify(ref, signing.load_public_keys([pub]))
            assert report.passed, (round_, i, report.cause())
            verified = [s for s in report.manifests[0].signatures if s.verified]
            assert len(verified) == 1, (round_, i)


def test_concurrent_attestations_are_all_kept(
        registry: Registry, tmp_path: Path, keypairs: list[tuple[Path, Path]]) -> None:
    predicate = tmp_path / "predicate.json"
    predicate.write_text('{"checked": true}')
    for round_ in range(ROUNDS):
        ref = push_image(tmp_path, registry.host, f"attest-{round_}")
        done = run_together([["attest", ref, "--key", str(key), "--predicate", str(predicate),
                              "--type", PTYPE] for key, _ in keypairs])
        for proc in done:
            assert proc.returncode == 0 and "attested: sha256:" in proc.stdout, proc.stderr
        [subject], _ = signing.subjects(signing.open_target(ref))
        check_layers(*attachment(ref, subject.digest, "att"))
        pubs = signing.load_public_keys([pub for _, pub in keypairs])
        report = signing.verify(ref, pubs)
        checks = report.manifests[0].attestations
        assert all(a.verified and a.predicate_type == PTYPE for a in checks), checks
        signers = sorted(a.reason.removeprefix("verified with ") for a in checks)
        assert signers == sorted(name for name, _ in pubs), (round_, signers)


# --- one rival write at a chosen moment ------------------------------------------------------

class RivalStore:
    """The registry client, with another writer's store of the ``.sig`` tag slipped in at a
    chosen moment: right after our manifest lands (a writer that read the tag before we
    stored it and stores it later), or while our blobs go up (before our manifest does)."""

    def __init__(self, target: signing.Target, tag: str) -> None:
        self.store = target.store
        self.tag = tag
        self.after_put: Callable[[], None] | None = None
        self.during_blobs: Callable[[], None] | None = None
        self.puts = 0

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str] | None:
        return self.store.get_manifest(repo, ref)

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        digest = self.store.put_manifest(repo, ref, data, media_type)
        if ref == self.tag:
            self.puts += 1
            if self.after_put is not None:
                self.after_put()
        return digest

    def has_blob(self, repo: str, digest: str) -> bool:
        return self.store.has_blob(repo, digest)

    def put_blob(self, repo: str, data: bytes, digest: str, size: int) -> None:
        rival, self.during_blobs = self.during_blobs, None
        if rival is not None:
            rival()
        self.store.put_blob(repo, data, digest, size)

    def prepare_blobs(self, repo: str, digests: Sequence[str]) -> None:
        self.store.prepare_blobs(repo, digests)

    def cancel_uploads(self) -> None:
        self.store.cancel_uploads()

    def get_blob(self, repo: str, digest: str) -> bytes:
        return self.store.get_blob(repo, digest)


def signed_by(ref: str, *signers: keys.PrivateKey) -> list[int]:
    """For each key, how many signatures of the image verify with it."""
    counts = []
    for k in signers:
        report = signing.verify(ref, [("k.pub", k.public_key())])
        counts.append(sum(s.verified for s in report.manifests[0].signatures))
    return counts


def sig_tag_and_bytes(ref: str) -> tuple[str, bytes | None]:
    target = signing.open_target(ref)
    [subject], _ = signing.subjects(target)
    tag = signing.attachment_tag(subject.digest, "sig")
    got = target.store.get_manifest(target.repo, tag)
    return tag, got[0] if got else None


def test_a_signature_overwritten_after_it_was_stored_is_stored_again(
        registry: Registry, tmp_path: Path) -> None:
    """Another signer read the tag (holding b's signature) before ours landed and stores its
    version after: ours is gone from the tag. The settle check must see it and store the
    union (b's layer first, then ours), not report success."""
    ref = push_image(tmp_path, registry.host, "overwritten")
    a, b = keys.generate(), keys.generate()
    signing.sign(ref, b)
    tag, stale = sig_tag_and_bytes(ref)
    assert stale is not None
    target = signing.open_target(ref)
    store = RivalStore(target, tag)
    target.store = store

    def rival() -> None:
        store.after_put = None
        store.store.put_manifest(target.repo, tag, stale, OCI_MANIFEST)

    store.after_put = rival
    [result] = signing.sign(target, a)
    assert result.added and store.puts == 2
    assert signed_by(ref, a, b) == [1, 1]
    manifest, config = attachment(ref, result.digest, "sig")
    assert [layer["digest"] for layer in manifest["layers"]] == config["rootfs"]["diff_ids"]
    assert manifest["layers"][0] == json.loads(stale)["layers"][0]


def test_a_signature_stored_while_ours_was_prepared_is_kept(
        registry: Registry, tmp_path: Path) -> None:
    """c signs (completely) between our read of the tag and our store of it: we read the tag
    again just before storing and add ours to what it holds by then."""
    ref = push_image(tmp_path, registry.host, "prepared")
    a, b, c = keys.generate(), keys.generate(), keys.generate()
    signing.sign(ref, b)
    tag, _ = sig_tag_and_bytes(ref)
    target = signing.open_target(ref)
    store = RivalStore(target, tag)
    target.store = store

    def rival() -> None:
        signing.sign(ref, c)

    store.during_blobs = rival
    [result] = signing.sign(target, a)
    assert result.added and store.puts == 1 and store.during_blobs is None
    assert signed_by(ref, a, b, c) == [1, 1, 1]
    manifest, _ = attachment(ref, result.digest, "sig")
    assert len(manifest["layers"]) == 3


def test_a_signer_that_cannot_keep_its_signature_fails_saying_so(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that puts its stale version back after every store of ours: signing must end
    with one line that says the signature may be missing, never as a success."""
    # Every round would wait a shared tag's settle interval (>= 250 ms); what is checked
    # here is the bounded, loud ending, not the interval.
    monkeypatch.setattr(signing, "SHARED_MIN", signing.SETTLE_MIN)
    monkeypatch.setattr(signing, "SHARED_FACTOR", signing.SETTLE_FACTOR)
    ref = push_image(tmp_path, registry.host, "hostile")
    a, b = keys.generate(), keys.generate()
    signing.sign(ref, b)
    tag, stale = sig_tag_and_bytes(ref)
    assert stale is not None
    target = signing.open_target(ref)
    store = RivalStore(target, tag)
    target.store = store

    def rival() -> None:
        store.store.put_manifest(target.repo, tag, stale, OCI_MANIFEST)

    store.after_put = rival
    with pytest.raises(NestbuildError) as exc:
        signing.sign(target, a)
    assert isinstance(exc.value, signing.UnconfirmedError)
    assert exc.value.exit_code == EXIT_FAILED and "\n" not in exc.value.message
    assert "may be missing: run the command again" in exc.value.message
    assert store.puts == signing.MAX_WRITES
    assert signed_by(ref, a, b) == [0, 1] and sig_tag_and_bytes(ref)[1] == stale
