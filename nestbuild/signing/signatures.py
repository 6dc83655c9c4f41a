"""Sign, attest and verify images the way cosign and containers/image do.

A node pulls an image only if its ``policy.json`` finds a signature it trusts, and it looks for
that signature where cosign puts it: an OCI manifest tagged ``sha256-<digest>.sig`` in the same
repository, one layer per signature (the simple-signing payload as the blob, the base64 ECDSA
signature as an annotation). Attestations go under ``.att`` as DSSE envelopes. Everything here
works on :class:`SignatureStore`, which a registry client and an OCI layout both provide, so
the same code signs an image before and after it is pushed.

Verification follows containers/image (``signature/policy_eval_sigstore.go``): the signature is
checked first, then the payload is parsed strictly, then its digest must be this manifest's and
its identity must satisfy the ``signedIdentity`` rule. Every signature is reported with the
reason it did or did not verify.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import functools
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from nestbuild._image.model import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_MANIFEST,
    digest_of,
)
from nestbuild._registry.access import RegistryAccess
from nestbuild._util.background import in_thread, run_all
from nestbuild._util.record import Record, Value, asdict
from nestbuild.errors import EXIT_FAILED, ImageError, NestbuildError, UsageError
from nestbuild.signing import dsse, keyfile, keyload
from nestbuild.signing import payload as payload_mod

if TYPE_CHECKING:
    from nestbuild._registry.reference import RegistryRef

    # At run time imported where used: while ``nestbuild sign`` reads the registry, the key
    # thread imports cryptography for the key it opens; this thread should not wait for it.
    from nestbuild.signing import keys

SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_TYPE_ANNOTATION = "predicateType"
SIMPLESIGNING_TYPE = payload_mod.MEDIA_TYPE
DSSE_TYPE = dsse.MEDIA_TYPE
#: The predicate type of nestbuild's validation report attestations.
VALIDATION_PREDICATE = "https://nestbuild.dev/validation/v1"
#: containers/image's limit on one signature blob (iolimits.MaxSignatureBodySize).
MAX_SIGNATURE_SIZE = 4 << 20
#: The rule a node applies when its policy names none (containers/image's default).
DEFAULT_RULE = "matchRepoDigestOrExact"
#: cosign's ``--type`` shorthands whose predicate is the file's JSON as it is.
PREDICATE_SHORTHANDS = {
    "slsaprovenance": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance02": "https://slsa.dev/provenance/v0.2",
    "slsaprovenance1": "https://slsa.dev/provenance/v1",
    "spdxjson": "https://spdx.dev/Document",
    "cyclonedx": "https://cyclonedx.org/bom",
    "link": "https://in-toto.io/Link/v1",
    "openvex": "https://openvex.dev/ns",
}

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


class SignatureStore(Protocol):
    """Where manifests and blobs live: a registry (``RegistryClient``) or an OCI layout."""

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str] | None: ...

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str: ...

    def has_blob(self, repo: str, digest: str) -> bool: ...

    def put_blob(self, repo: str, data: bytes, digest: str, size: int) -> None: ...

    def prepare_blobs(self, repo: str, digests: Sequence[str]) -> None:
        """Get ready to store these blobs, storing nothing yet: ``put_blob`` is then quicker."""

    def cancel_uploads(self) -> None:
        """Forget what ``prepare_blobs`` got ready and nothing stored."""

    def get_blob(self, repo: str, digest: str) -> bytes: ...


class SigningError(NestbuildError):
    """Signing or attesting cannot go ahead (the store holds something we must not touch)."""


# ---------------------------------------------------------------------------------------------
# where the image is


class Target(Record):
    """An image to sign or verify: its store, and the name nodes pull it by."""

    store: SignatureStore
    #: Repository path inside the registry ("" for a layout, which ignores it).
    repo: str
    #: Tag or ``sha256:`` digest to fetch the image with.
    ref: str
    #: The reference as the user gave it, for messages.
    display: str
    #: The docker reference signatures claim and verification matches (None: unknown).
    identity: RegistryRef | None
    #: ``REG/REPO``, the in-toto subject name (or the layout's name).
    subject_name: str

    def __init__(self, store: SignatureStore, repo: str, ref: str, display: str,
                 identity: RegistryRef | None, subject_name: str) -> None:
        self.store = store
        self.repo = repo
        self.ref = ref
        self.display = display
        self.identity = identity
        self.subject_name = subject_name


class Subject(Value):
    """One manifest that gets (or is checked for) its own signature."""

    digest: Final[str]
    raw: Final[bytes]
    media_type: Final[str]
    #: ``os/arch[/variant]`` for a platform manifest of an index, None for the named image.
    platform: Final[str | None]

    def __init__(self, digest: str, raw: bytes, media_type: str,
                 platform: str | None = None) -> None:
        self.digest = digest
        self.raw = raw
        self.media_type = media_type
        self.platform = platform


def _parse_identity(identity: str | RegistryRef) -> RegistryRef:
    from nestbuild._registry.reference import parse_normalized

    if not isinstance(identity, str):
        return identity
    try:
        ref = parse_normalized(identity)
    except ValueError as exc:
        raise UsageError(f"--identity {identity!r} is not a docker reference: {exc}") from None
    if ref.tag is not None and ref.digest is not None:
        raise UsageError(f"--identity {identity!r}: name a tag or a digest, not both")
    return ref


def open_target(
    image: str | RegistryRef,
    *,
    identity: str | RegistryRef | None = None,
    registry: RegistryAccess | None = None,
    store: SignatureStore | None = None,
    require_identity: bool = False,
) -> Target:
    """Where ``image`` (``[docker://]REG/REPO[:TAG|@DIGEST]``, ``oci:DIR[:TAG]``, or an image
    in a registry as a :class:`RegistryRef`) is stored.

    ``identity`` overrides the signed name (required to sign a layout, which has none);
    ``require_identity`` refuses, here, a target without one (before a passphrase is asked
    for, not after). ``store`` reuses an open registry connection (push passes its own).
    """
    from nestbuild._image.reference import parse_reference

    signed = _parse_identity(identity) if identity is not None else None
    display = image if isinstance(image, str) else image.transport
    # Signatures cannot live in local storage: HOST/REPO:TAG is a registry image, as in cosign.
    parsed = parse_reference(image, bare="registry") if isinstance(image, str) else None
    if parsed is not None and parsed.registry is not None:
        image = parsed.registry
    if not isinstance(image, str):
        # what a pull of it fetches: a name alone is its :latest
        ref = image if image.tag or image.digest else image.with_tag("latest")
        if store is None:
            store = (registry or RegistryAccess()).client(image.host)
        return Target(
            store=store,
            repo=image.repo,
            ref=image.ref,
            display=display,
            identity=signed or ref,
            subject_name=(signed or ref).name,
        )
    assert parsed is not None
    if parsed.transport == "oci":
        from nestbuild.signing.layout_store import LayoutStore

        layout = LayoutStore(Path(parsed.name))
        if parsed.tag is None:
            images = layout.image_entries()
            if len(images) != 1:
                tags = sorted(
                    str((e.get("annotations") or {}).get(ANNOTATION_REF_NAME, "?"))
                    for e in images
                )
                raise ImageError(
                    f"{image}: holds {len(images)} images; name one as oci:DIR:TAG "
                    f"({', '.join(tags) or 'none'})"
                )
            ref_text = str(images[0].get("digest", ""))
        else:
            ref_text = parsed.tag
        target = Target(
            store=store or layout,
            repo="",
            ref=ref_text,
            display=image,
            identity=signed,
            subject_name=signed.name if signed else Path(parsed.name).resolve().name,
        )
        if require_identity:
            signed_identity(target)  # a layout without an identity fails here
        return target
    hint = ""
    if parsed.transport == "containers-storage":
        hint = (
            f"; push it first and sign docker://{parsed.name} (the name nodes pull), "
            "or sign an OCI layout (oci:DIR[:TAG])"
        )
    raise UsageError(
        f"{image}: signatures are stored in a registry (docker://) or an OCI layout (oci:), "
        f"not in {parsed.transport}{hint}"
    )


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what} is not a JSON object")
    return obj


def _fetch(target: Target, ref: str, what: str) -> tuple[bytes, str] | None:
    got = target.store.get_manifest(target.repo, ref)
    if got is None:
        return None
    data, media_type = got
    if _DIGEST.fullmatch(ref) and digest_of(data) != ref:
        raise ImageError(f"{what}: the store returned a manifest whose digest is not {ref}")
    return data, media_type


def subjects(target: Target) -> tuple[list[Subject], list[str]]:
    """The manifests to sign: the named one, and each platform manifest of an index.

    A node verifies the manifest it pulls, and containers/image checks both the index (when
    pulled by tag) and the chosen platform manifest, so each needs a signature. Returns the
    subjects and notes about children that are not in the store (sparse copies).
    """
    got = _fetch(target, target.ref, target.display)
    if got is None:
        raise ImageError(f"{target.display}: no such image")
    raw, media_type = got
    obj = _json_object(raw, f"{target.display}: the manifest")
    is_index = media_type in INDEX_TYPES or "manifests" in obj
    if not is_index and media_type not in MANIFEST_TYPES:
        raise ImageError(f"{target.display}: is a {media_type}, not an image")
    out = [Subject(digest_of(raw), raw, media_type)]
    notes: list[str] = []
    entries = obj.get("manifests") or []
    if is_index and not isinstance(entries, list):
        raise ImageError(f"{target.display}: the index's manifests are not a list")
    if is_index:
        for entry in entries:
            if not isinstance(entry, dict) or not _DIGEST.fullmatch(str(entry.get("digest"))) \
                    or not isinstance(entry.get("platform") or {}, dict):
                raise ImageError(f"{target.display}: the index has a malformed entry")
            child_type = str(entry.get("mediaType", ""))
            if child_type not in MANIFEST_TYPES:
                notes.append(f"{entry['digest']}: {child_type or 'untyped'} entry not signed")
                continue
            plat = entry.get("platform") or {}
            name = "/".join(
                str(plat[k]) for k in ("os", "architecture", "variant") if plat.get(k)
            ) or None
            child = _fetch(target, str(entry["digest"]), target.display)
            if child is None:
                notes.append(f"{entry['digest']} ({name or 'no platform'}): not in the store")
                continue
            out.append(Subject(str(entry["digest"]), child[0], child[1], name))
    return out, notes


def attachment_tag(digest: str, suffix: str) -> str:
    """cosign's tag for an attachment of ``digest``: ``sha256-<hex>.sig`` / ``.att``."""
    algo, _, hexdigest = digest.partition(":")
    return f"{algo}-{hexdigest}.{suffix}"


# ---------------------------------------------------------------------------------------------
# attachment manifests (read-modify-write)


class Attachment(Record):
    """A ``.sig``/``.att`` manifest as stored (or a new, empty one)."""

    tag: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    exists: bool
    #: The digest of the manifest as read (None: the tag did not exist), which a writer checks
    #: again just before it replaces the tag.
    digest: str | None

    def __init__(self, tag: str, manifest: dict[str, Any], config: dict[str, Any],
                 exists: bool, digest: str | None = None) -> None:
        self.tag = tag
        self.manifest = manifest
        self.config = config
        self.exists = exists
        self.digest = digest

    @property
    def layers(self) -> list[dict[str, Any]]:
        layers = self.manifest.setdefault("layers", [])
        assert isinstance(layers, list)
        return layers


def _empty_attachment(tag: str) -> Attachment:
    # Field order as containers/image (manifest.OCI1FromComponents, imgspecv1.Image) writes.
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": "", "size": 0},
        "layers": [],
    }
    config = {
        "architecture": "",
        "os": "",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    return Attachment(tag, manifest, config, False)


def read_attachment(target: Target, digest: str, suffix: str) -> Attachment | None:
    """The ``sha256-HEX.SUFFIX`` manifest and config, or None; refuses what cosign would not
    have written (a non-OCI manifest, malformed descriptors)."""
    tag = attachment_tag(digest, suffix)
    where = f"{target.display}: {tag}"
    got = target.store.get_manifest(target.repo, tag)
    if got is None:
        return None
    raw, media_type = got
    if media_type != OCI_MANIFEST:
        raise SigningError(
            f"{where} is a {media_type}, not an OCI image manifest (containers/image reads "
            "only that)"
        )
    manifest = _json_object(raw, where)
    layers = manifest.get("layers")
    if layers is None:
        layers = manifest["layers"] = []
    if not isinstance(layers, list) or not all(_valid_descriptor(d) for d in layers):
        raise SigningError(f"{where}: malformed layer list")
    config_desc = manifest.get("config")
    config: dict[str, Any] = {}
    valid = isinstance(config_desc, dict) and _valid_descriptor(config_desc)
    config_digest = str(config_desc["digest"]) if valid and config_desc else ""
    if config_digest and target.store.has_blob(target.repo, config_digest):
        blob = target.store.get_blob(target.repo, config_digest)
        if digest_of(blob) != config_digest:
            raise SigningError(f"{where}: its config blob does not match its digest")
        config = _json_object(blob, f"{where} config")
    return Attachment(tag, manifest, config, True, digest_of(raw))


def _valid_descriptor(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("mediaType"), str)
        and isinstance(obj.get("digest"), str)
        and _DIGEST.fullmatch(str(obj["digest"])) is not None
        and type(obj.get("size")) is int
        and isinstance(obj.get("annotations", {}), dict)
    )


#: One layer to add to an attachment: its blob, media type and annotations.
_NewLayer: TypeAlias = "tuple[bytes, str, dict[str, str]]"


class _Write(Record):
    """Everything one attachment update writes, in order: blobs, config, then the manifest."""

    tag: str
    blobs: list[bytes]
    config: bytes
    manifest: bytes

    def __init__(self, tag: str, blobs: list[bytes], config: bytes, manifest: bytes) -> None:
        self.tag = tag
        self.blobs = blobs
        self.config = config
        self.manifest = manifest


def _descriptor(blob: bytes, media_type: str, annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": digest_of(blob),
        "size": len(blob),
        "annotations": dict(sorted(annotations.items())),
    }


def _plan(att: Attachment, new: Sequence[_NewLayer]) -> _Write:
    """Append layers (blob, media type, annotations) to ``att``; config lists their digests."""
    rootfs = att.config.setdefault("rootfs", {})
    diff_ids = rootfs.setdefault("diff_ids", []) if isinstance(rootfs, dict) else None
    if not isinstance(rootfs, dict) or not isinstance(diff_ids, list):
        raise SigningError(f"{att.tag}: its config's rootfs.diff_ids is not a list")
    rootfs.setdefault("type", "layers")
    blobs = []
    for blob, media_type, layer_annotations in new:
        descriptor = _descriptor(blob, media_type, layer_annotations)
        att.layers.append(descriptor)
        diff_ids.append(descriptor["digest"])
        blobs.append(blob)
    config = _compact(att.config)
    att.manifest["config"] = {
        "mediaType": OCI_CONFIG,
        "digest": digest_of(config),
        "size": len(config),
    }
    return _Write(att.tag, blobs, config, _compact(att.manifest))


def _compact(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------------
# storing an attachment next to other writers
#
# A registry has no compare-and-swap for tags (distribution ignores If-Match), so two signers
# that read the same ``.sig`` manifest and each store it with their own layer added would
# leave only the later one. Each writer therefore (1) reads the tag again just before it
# stores it, and stores only onto what it planned on; (2) after storing, waits a settle
# interval and reads the tag again, and counts its layers as kept only when the tag has not
# changed over a whole interval; (3) when it finds its layers gone, stores the union again,
# after a short random pause. docs/signing.md ("Concurrent signers") states what this
# guarantees and under which timing assumption.

#: The settle interval of a writer that creates the tag is at least this long (seconds)...
SETTLE_MIN = 0.005
#: ...and this many times the writer's own longest read-to-stored time: the assumption is
#: that no other writer takes longer from its last read of the tag to the registry storing
#: its manifest. Twice, because a PUT that reaches the registry with ours may wait for ours.
SETTLE_FACTOR = 2
#: A tag that other writers have stored (it held their layers, or changed under us) is one
#: they may be storing right now, and on a loaded machine or registry their read-to-stored
#: time can be many times ours: a longer interval.
SHARED_MIN = 0.25
SHARED_FACTOR = 8
#: Manifests stored for one tag, and settle checks, before the writer gives up saying so.
MAX_WRITES = 6
MAX_CHECKS = 12


class UnconfirmedError(SigningError):
    """Other writers kept replacing the attachment: ours may not be in it."""

    exit_code = EXIT_FAILED


class _Update(Record):
    """One attachment tag being changed: the layers we add, and where that stands."""

    subject: str
    suffix: str
    new: list[_NewLayer]
    #: The digest of the content the planned manifest extends (None: the tag was absent).
    base: str | None
    write: _Write
    #: The digest of the last content seen to hold all our layers.
    seen: str | None
    writes: int
    #: Our longest time from reading the tag to the registry answering the manifest's PUT.
    slowest: float
    #: Whether another writer has stored the tag (it held layers, or changed under us).
    shared: bool

    def __init__(self, subject: str, suffix: str, new: list[_NewLayer], base: str | None,
                 write: _Write, seen: str | None = None, writes: int = 0,
                 slowest: float = 0.0, shared: bool = False) -> None:
        self.subject = subject
        self.suffix = suffix
        self.new = new
        self.base = base
        self.write = write
        self.seen = seen
        self.writes = writes
        self.slowest = slowest
        self.shared = shared

    @property
    def tag(self) -> str:
        return self.write.tag

    def settle(self) -> float:
        if self.shared:
            return max(SHARED_MIN, SHARED_FACTOR * self.slowest)
        return max(SETTLE_MIN, SETTLE_FACTOR * self.slowest)


def _update(att: Attachment, subject: str, suffix: str, new: Sequence[_NewLayer]) -> _Update:
    return _Update(subject, suffix, list(new), att.digest, _plan(att, new),
                   shared=att.digest is not None)


def _commit(target: Target, updates: Sequence[_Update]) -> None:
    """Blobs (payloads and configs) first, then the manifests that reference them; returns
    once a read of each tag, a settle interval after it last changed, holds our layers.

    The blobs go side by side, each on a connection the store opened while the key
    decrypted (:meth:`SignatureStore.prepare_blobs`): these round trips are most of what is
    left of signing once the key is open. Several tags (an index and its platforms) settle
    together, in one interval.
    """
    if not updates:
        return
    stored: set[str] = set()
    _store_blobs(target, [u.write for u in updates], stored)
    for update in updates:
        _write(target, update, stored)
    # A layout is written under its lock: no other nestbuild writer can come in between.
    locked = getattr(target.store, "lock", None) is not None
    pending = list(updates)
    for _ in range(MAX_CHECKS):
        if not locked:
            time.sleep(max(u.settle() for u in pending))
        pending = [u for u in pending if not _kept(target, u, stored)]
        if not pending:
            return
    raise _unconfirmed(target, pending[0])


def _store_blobs(target: Target, writes: Sequence[_Write], stored: set[str]) -> None:
    blobs = {digest_of(b): b for w in writes for b in (*w.blobs, w.config)}
    todo = {digest: blob for digest, blob in blobs.items() if digest not in stored}

    def store(digest: str, blob: bytes) -> None:
        if not target.store.has_blob(target.repo, digest):
            target.store.put_blob(target.repo, blob, digest, len(blob))

    run_all(functools.partial(store, digest, blob) for digest, blob in todo.items())
    stored.update(todo)


def _write(target: Target, update: _Update, stored: set[str]) -> None:
    """Store the planned manifest if the tag still holds what it was planned on; otherwise
    plan again on what the tag holds now (nothing to store if it holds our layers already).

    Nothing but a digest comparison lies between the read and the PUT: that read-to-stored
    time is what other writers' settle intervals must cover. The read the plan was made on
    cannot stand in for this one: in ``sign`` it comes before the key has opened (scrypt),
    and every writer's settle interval would have to cover that wait as well.
    """
    for _ in range(MAX_WRITES):
        start = time.monotonic()
        got = target.store.get_manifest(target.repo, update.tag)
        if (digest_of(got[0]) if got is not None else None) == update.base:
            if update.writes >= MAX_WRITES:
                break
            target.store.put_manifest(target.repo, update.tag, update.write.manifest,
                                      OCI_MANIFEST)
            update.slowest = max(update.slowest, time.monotonic() - start)
            update.writes += 1
            update.seen = digest_of(update.write.manifest)
            return
        update.shared = True
        if not _replan(target, update):
            return
        _store_blobs(target, [update.write], stored)
    raise _unconfirmed(target, update)


def _kept(target: Target, update: _Update, stored: set[str]) -> bool:
    """Whether the tag still holds what we last saw in it (our layers), a settle interval
    later. If another writer stored it since: watch the new content for an interval when it
    holds our layers, or store the union again when it does not."""
    got = target.store.get_manifest(target.repo, update.tag)
    if got is not None and digest_of(got[0]) == update.seen:
        return True
    update.shared = True
    if _replan(target, update):  # our layers were replaced
        _store_blobs(target, [update.write], stored)
        _back_off(update)
        _write(target, update, stored)
    return False


def _replan(target: Target, update: _Update) -> bool:
    """Plan our layers onto the tag's current content (theirs first, in their order, then
    ours that are missing); False if it holds all of ours already."""
    att = read_attachment(target, update.subject, update.suffix) or _empty_attachment(
        update.tag
    )
    missing = [new for new in update.new if not _holds(att, new)]
    if not missing:
        update.seen = att.digest
        return False
    update.base = att.digest
    update.write = _plan(att, missing)
    return True


def _holds(att: Attachment, new: _NewLayer) -> bool:
    want = _descriptor(*new)
    return any(
        layer.get("mediaType") == want["mediaType"]
        and layer.get("digest") == want["digest"]
        and (layer.get("annotations") or {}) == want["annotations"]
        for layer in att.layers
    )


def _back_off(update: _Update) -> None:
    """A short random pause before storing again: writers that keep replacing each other's
    layers in step fall out of step."""
    import random

    time.sleep(random.uniform(0, max(SETTLE_MIN, update.slowest)))


def _unconfirmed(target: Target, update: _Update) -> UnconfirmedError:
    what = "signature" if update.suffix == "sig" else "attestation"
    return UnconfirmedError(
        f"{target.display}: could not confirm the new {what} in {update.tag}: other writers "
        f"kept replacing the tag ({update.writes} writes); it may be missing: run the "
        "command again"
    )


@contextlib.contextmanager
def _locked(target: Target) -> Iterator[None]:
    """Hold the store's lock for a read-modify-write where it has one (layouts)."""
    lock = getattr(target.store, "lock", None)
    if lock is None:
        yield
        return
    with lock():
        yield


# ---------------------------------------------------------------------------------------------
# signing


def signed_identity(target: Target) -> str:
    """The docker reference a signature of ``target`` claims; a layout needs ``--identity``."""
    if target.identity is None:
        raise UsageError(
            f"{target.display}: an OCI layout has no registry name; pass --identity "
            "REG/REPO:TAG, the name nodes will pull the image by"
        )
    return target.identity.exact


class Signed(Value):
    """One manifest's signature: new, or already there (same key, same claim)."""

    #: The signed manifest's digest.
    digest: Final[str]
    #: The attachment tag, ``sha256-HEX.sig``.
    tag: Final[str]
    docker_reference: Final[str]
    added: Final[bool]
    platform: Final[str | None]
    #: The digest of the ``.sig`` manifest holding the signature (as confirmed in the store).
    manifest_digest: Final[str | None]
    #: The signing key's id (:func:`key_id`).
    key_id: Final[str | None]
    payload_type: Final[str]

    def __init__(self, digest: str, tag: str, docker_reference: str, added: bool,
                 platform: str | None = None, manifest_digest: str | None = None,
                 key_id: str | None = None, payload_type: str = SIMPLESIGNING_TYPE) -> None:
        self.digest = digest
        self.tag = tag
        self.docker_reference = docker_reference
        self.added = added
        self.platform = platform
        self.manifest_digest = manifest_digest
        self.key_id = key_id
        self.payload_type = payload_type

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "platform": self.platform, "tag": self.tag,
                "docker_reference": self.docker_reference, "added": self.added,
                "manifest_digest": self.manifest_digest, "key_id": self.key_id,
                "payload_type": self.payload_type}


def key_id(pub: keys.PublicKey) -> str:
    """``sha256:`` of the public key's DER (SubjectPublicKeyInfo), as sigstore names keys:
    the same for the key file, its ``.pub`` and every signature it made."""
    from nestbuild.signing import keys

    return digest_of(keys.public_der(pub))


KeySource: TypeAlias = "keys.PrivateKey | Callable[[], keys.PrivateKey]"


def _key(source: KeySource) -> keys.PrivateKey:
    return source() if callable(source) else source


def _warm_keys() -> None:
    from nestbuild.signing import keys

    keys.warm_up()


def _key_when_ready(target: Target, source: KeySource, existing: Sequence[Attachment],
                    bodies: Sequence[bytes],
                    warming: Callable[[], None] | None = None) -> keys.PrivateKey:
    """The key; while it decrypts, the store gets ready for the blobs that signing ``bodies``
    would add to the ``existing`` attachments, and cryptography is loaded, so that little is
    left once scrypt ends. A key that is already open is simply returned.

    Nothing is stored before the key has opened: a wrong passphrase leaves the store as it was.
    """
    if callable(source):
        # Planned on copies: the real plan, whose manifest carries the signature, comes later;
        # the blobs (payload, config) do not depend on the signature. A payload already in
        # the attachment is most likely signed by this key already: nothing to prepare.
        likely = [_plan(copy.deepcopy(att), [(body, SIMPLESIGNING_TYPE, {})])
                  for att, body in zip(existing, bodies, strict=True)
                  if all(layer.get("digest") != digest_of(body) for layer in att.layers)]
        target.store.prepare_blobs(
            target.repo, [digest_of(b) for w in likely for b in (*w.blobs, w.config)])
        # Usually still scrypt's time: load what opening and signing need, so that the key
        # thread finds it done (each thread does it if it gets there first).
        (warming or _warm_keys)()
    try:
        return _key(source)
    except BaseException:
        target.store.cancel_uploads()
        raise


def sign(
    target: Target | str,
    key: KeySource,
    *,
    annotations: Mapping[str, str] | None = None,
    registry: RegistryAccess | None = None,
) -> list[Signed]:
    """Sign the image (and each platform manifest of an index) with ``key``.

    The payload's identity is the target's: ``REG/REPO:TAG`` for a tag, which containers/image's
    default ``matchRepoDigestOrExact`` accepts for a pull by that tag (and ``matchRepository``
    too). A signature by the same key for the same payload is not added twice. Every signature is
    verified before anything is written, and blobs go before the manifest that needs them.
    ``key`` may be a callable (:func:`start_loading_key`): it is called only once the store
    has been read, so the key's slow scrypt derivation overlaps the registry round trips.
    """
    if isinstance(target, str):
        target = open_target(target, registry=registry)
    reference = signed_identity(target)
    # cryptography's ECDSA (~30 ms of imports and set-up, holding the GIL) loads in a thread
    # while this one waits for the registry, rather than after, once scrypt is as good as done.
    warming = in_thread(_warm_keys, "nestbuild-warm") if callable(key) else None
    with _locked(target):
        found, _ = subjects(target)
        existing = [
            read_attachment(target, subject.digest, "sig")
            or _empty_attachment(attachment_tag(subject.digest, "sig"))
            for subject in found
        ]
        bodies = [payload_mod.make_payload(reference, subject.digest, annotations=annotations)
                  for subject in found]
        private = _key_when_ready(target, key, existing, bodies, warming)
        from nestbuild.signing import keys  # loaded by now: the key thread needed it

        pub = private.public_key()
        updates: list[_Update] = []
        done: list[tuple[Subject, Attachment, _Update | None]] = []
        for subject, att, body in zip(found, existing, bodies, strict=True):
            sig = keys.sign(private, body)
            # Check our own output as a verifier will, before it can reach the store.
            parsed = payload_mod.parse_payload(body)
            if not keys.verify(pub, body, sig) or parsed.manifest_digest != subject.digest:
                raise SigningError(f"{subject.digest}: the new signature does not verify")
            duplicate = any(_same_signature(layer, body, pub) for layer in att.layers)
            update = None
            if not duplicate:
                layer_annotations = {SIGNATURE_ANNOTATION: base64.b64encode(sig).decode()}
                new = [(body, SIMPLESIGNING_TYPE, layer_annotations)]
                update = _update(att, subject.digest, "sig", new)
                updates.append(update)
            done.append((subject, att, update))
        _commit(target, updates)
        target.store.cancel_uploads()  # those prepared for signatures that were already there
    kid = key_id(pub)
    return [Signed(subject.digest, att.tag, reference, update is not None, subject.platform,
                   update.seen if update is not None else att.digest, kid)
            for subject, att, update in done]


def _same_signature(layer: dict[str, Any], body: bytes, pub: keys.PublicKey) -> bool:
    """cosign's duplicate rule: the same payload, already signed by our key.

    ECDSA signatures differ each time, so comparing annotations (containers/image's rule)
    would add the same claim again on every run.
    """
    from nestbuild.signing import keys

    if layer.get("mediaType") != SIMPLESIGNING_TYPE or layer.get("digest") != digest_of(body):
        return False
    annotations = layer.get("annotations") or {}
    sig = _b64(annotations.get(SIGNATURE_ANNOTATION))
    return sig is not None and keys.verify(pub, body, sig)


def _b64(value: object) -> bytes | None:
    """Standard base64 as Go's StdEncoding reads it (line breaks ignored), or None."""
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# attestations


def predicate_type_uri(value: str) -> str:
    """A predicate type URI from ``--type``: a URI, or one of cosign's JSON shorthands."""
    if value in PREDICATE_SHORTHANDS:
        return PREDICATE_SHORTHANDS[value]
    if _URI.fullmatch(value) and "://" in value:
        return value
    raise UsageError(
        f"--type {value!r} is neither a URI nor one of "
        f"{', '.join(sorted(PREDICATE_SHORTHANDS))}"
    )


class Attested(Value):
    """An attestation: new, or already there (same statement, same key)."""

    #: The attested manifest's digest.
    digest: Final[str]
    #: The attachment tag, ``sha256-HEX.att``.
    tag: Final[str]
    predicate_type: Final[str]
    added: Final[bool]
    #: The digest of the ``.att`` manifest holding it (as confirmed in the store).
    manifest_digest: Final[str | None]
    key_id: Final[str | None]
    payload_type: Final[str]

    def __init__(self, digest: str, tag: str, predicate_type: str, added: bool,
                 manifest_digest: str | None = None, key_id: str | None = None,
                 payload_type: str = DSSE_TYPE) -> None:
        self.digest = digest
        self.tag = tag
        self.predicate_type = predicate_type
        self.added = added
        self.manifest_digest = manifest_digest
        self.key_id = key_id
        self.payload_type = payload_type

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "tag": self.tag, "predicate_type": self.predicate_type,
                "added": self.added, "manifest_digest": self.manifest_digest,
                "key_id": self.key_id, "payload_type": self.payload_type}


def attest(
    target: Target | str,
    key: KeySource,
    predicate: Any,
    predicate_type: str,
    *,
    registry: RegistryAccess | None = None,
) -> Attested:
    """Attach an in-toto statement about the named image, in a DSSE envelope, under ``.att``.

    As ``cosign attest`` writes it: layer ``application/vnd.dsse.envelope.v1+json`` with the
    ``predicateType`` annotation and an empty signature annotation (the signature is inside).
    The same statement by the same key is not added twice.
    """
    if isinstance(target, str):
        target = open_target(target, registry=registry)
    with _locked(target):
        found, _ = subjects(target)
        subject = found[0]
        att = read_attachment(target, subject.digest, "att") or _empty_attachment(
            attachment_tag(subject.digest, "att")
        )
        key = _key(key)
        body = dsse.statement(target.subject_name, subject.digest, predicate_type, predicate)
        envelope = dsse.envelope(key, body)
        dsse.open_envelope(envelope, key.public_key())  # verify before write
        duplicate = False
        for layer in att.layers:
            annotations = layer.get("annotations") or {}
            if (
                layer.get("mediaType") == DSSE_TYPE
                and annotations.get(PREDICATE_TYPE_ANNOTATION) == predicate_type
                and _statement_of(target, layer, key.public_key()) == body
            ):
                duplicate = True
                break
        manifest_digest = att.digest
        if not duplicate:
            annotations = {SIGNATURE_ANNOTATION: "", PREDICATE_TYPE_ANNOTATION: predicate_type}
            new = [(envelope, DSSE_TYPE, annotations)]
            update = _update(att, subject.digest, "att", new)
            _commit(target, [update])
            manifest_digest = update.seen
    return Attested(subject.digest, att.tag, predicate_type, not duplicate, manifest_digest,
                    key_id(key.public_key()))


def _statement_of(target: Target, layer: dict[str, Any], pub: keys.PublicKey) -> bytes | None:
    """The statement bytes of a DSSE layer if it verifies with ``pub``, else None."""
    try:
        blob = target.store.get_blob(target.repo, str(layer["digest"]))
        if digest_of(blob) != layer["digest"]:
            return None
        env = json.loads(blob)
        dsse.open_envelope(blob, pub)
        return base64.b64decode(env["payload"])
    except (NestbuildError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def attest_validation(
    target: Target | str | RegistryRef,
    report: Any,
    key: KeySource | Path,
    *,
    identity: str | RegistryRef | None = None,
    store: SignatureStore | None = None,
    registry: RegistryAccess | None = None,
    passphrase_file: Path | None = None,
) -> Attested:
    """Attest ``report`` (a validation ``Report``) about the image, as ``push --sign-key`` does.

    The predicate is ``report.to_json()`` under :data:`VALIDATION_PREDICATE`. ``key`` may be a
    loaded key or a key file (its passphrase then comes from the environment, the file or a
    prompt, never the command line).
    """
    if isinstance(key, Path):
        key = load_signing_key(key, passphrase_file=passphrase_file)
    if not isinstance(target, Target):
        target = open_target(target, identity=identity, registry=registry, store=store)
    return attest(target, key, report.to_json(), VALIDATION_PREDICATE)


class KeyPair(Value):
    """The two files of a key pair, as cosign names them."""

    #: ``PREFIX.key``: encrypted, mode 0600.
    private: Final[Path]
    #: ``PREFIX.pub``: for nodes and verifiers.
    public: Final[Path]

    def __init__(self, private: Path, public: Path) -> None:
        self.private = private
        self.public = public


def generate_key_pair(
    prefix: Path,
    *,
    force: bool = False,
    passphrase: bytes | None = None,
    passphrase_file: Path | None = None,
) -> KeyPair:
    """Write a new key pair, PREFIX.key and PREFIX.pub, that cosign and nodes read.

    Existing files are refused before a passphrase is asked for (nothing would be written);
    without ``passphrase`` it comes from NESTBUILD_PASSWORD / COSIGN_PASSWORD, the file or a
    prompt that asks twice. Never replaces files without ``force``.
    """
    from nestbuild.signing import keys

    if not force:
        for path in keys.key_paths(prefix):
            if path.exists() or path.is_symlink():
                raise keyfile.KeyFileError(f"{path} already exists (use --force to replace it)")
    if passphrase is None:
        passphrase = keyfile.get_passphrase(file=passphrase_file, confirm=True,
                                            label="the new private key")
    return KeyPair(*keys.write_key_pair(prefix, passphrase, force=force))


def load_signing_key(path: Path, *, passphrase_file: Path | None = None) -> keys.PrivateKey:
    """Read a private key file, asking for its passphrase only if it is encrypted."""
    return start_loading_key(path, passphrase_file=passphrase_file)()


def start_loading_key(
    path: Path, *, passphrase_file: Path | None = None
) -> Callable[[], keys.PrivateKey]:
    """Start decrypting a key file in a thread; the returned callable waits for the key.

    The passphrase is obtained here (a prompt must not come from a thread). scrypt takes
    most of a signing run and releases the GIL, so it can overlap network round trips.
    Errors (wrong passphrase, corrupt key) are raised by the callable or here.
    See :func:`nestbuild.signing.keyload.start_loading`, which needs no import of this module.
    """
    return keyload.start_loading(path, passphrase_file=passphrase_file)


def load_public_keys(paths: Sequence[Path]) -> list[tuple[str, keys.PublicKey]]:
    """(name, key) for each ``--key`` file; any one of them may have signed (keyPaths)."""
    from nestbuild.signing import keys

    out = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise keyfile.KeyFileError(f"cannot read key {path}: {exc.strerror}") from None
        out.append((path.name, keys.load_public_key(data, str(path))))
    return out


# ---------------------------------------------------------------------------------------------
# verification


class SignatureCheck(Record):
    """One signature layer and what became of it."""

    layer: int
    digest: str
    verified: bool
    reason: str
    docker_reference: str | None
    key: str | None

    def __init__(self, layer: int, digest: str, verified: bool, reason: str,
                 docker_reference: str | None = None, key: str | None = None) -> None:
        self.layer = layer
        self.digest = digest
        self.verified = verified
        self.reason = reason
        self.docker_reference = docker_reference
        self.key = key

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # the report's keys are the field names, in order


class AttestationCheck(Record):
    layer: int
    digest: str
    predicate_type: str | None
    verified: bool
    reason: str

    def __init__(self, layer: int, digest: str, predicate_type: str | None, verified: bool,
                 reason: str) -> None:
        self.layer = layer
        self.digest = digest
        self.predicate_type = predicate_type
        self.verified = verified
        self.reason = reason

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # the report's keys are the field names, in order


class ManifestCheck(Record):
    """The signatures of one manifest (the image, or one platform of an index)."""

    digest: str
    platform: str | None
    signatures: list[SignatureCheck]
    attestations: list[AttestationCheck]
    #: Why there is nothing to check (no ``.sig``, an unreadable one), if so.
    problem: str | None
    other_attachments: int

    def __init__(self, digest: str, platform: str | None,
                 signatures: list[SignatureCheck] | None = None,
                 attestations: list[AttestationCheck] | None = None,
                 problem: str | None = None, other_attachments: int = 0) -> None:
        self.digest = digest
        self.platform = platform
        self.signatures = [] if signatures is None else signatures
        self.attestations = [] if attestations is None else attestations
        self.problem = problem
        self.other_attachments = other_attachments

    @property
    def verified(self) -> bool:
        return any(s.verified for s in self.signatures)

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "platform": self.platform,
            "verified": self.verified,
            "problem": self.problem,
            "signatures": [s.to_json() for s in self.signatures],
            "other_attachments": self.other_attachments,
            "attestations": [a.to_json() for a in self.attestations],
        }


class VerifyReport(Record):
    image: str
    rule: str
    identity: str | None
    keys: list[str]
    manifests: list[ManifestCheck]
    notes: list[str]

    def __init__(self, image: str, rule: str, identity: str | None, keys: list[str],
                 manifests: list[ManifestCheck], notes: list[str] | None = None) -> None:
        self.image = image
        self.rule = rule
        self.identity = identity
        self.keys = keys
        self.manifests = manifests
        self.notes = [] if notes is None else notes

    @property
    def passed(self) -> bool:
        """Every manifest a node may pull has a signature that verifies."""
        return bool(self.manifests) and all(m.verified for m in self.manifests)

    def cause(self) -> str | None:
        """One line saying why verification failed (the first manifest without a signature
        that verifies, and its last signature's reason), or None when it passed."""
        for m in self.manifests:
            if m.verified:
                continue
            what = m.digest + (f" ({m.platform})" if m.platform else "")
            reason = m.signatures[-1].reason if m.signatures else m.problem
            more = len(m.signatures) - 1
            tail = f" (and {more} other signature(s) refused)" if more > 0 else ""
            return f"{what}: {reason}{tail}"
        return None if self.manifests else "nothing to verify"

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "verified": self.passed,
            "signed_identity": {"type": self.rule, "reference": self.identity},
            "keys": self.keys,
            "manifests": [m.to_json() for m in self.manifests],
            "notes": self.notes,
        }


def verify(
    target: Target | str,
    public_keys: Sequence[tuple[str, keys.PublicKey]],
    *,
    rule: str = DEFAULT_RULE,
    registry: RegistryAccess | None = None,
) -> VerifyReport:
    """Check every signature of the image (and of each platform manifest of an index).

    A manifest passes if one signature passes every check containers/image makes; the report
    says for each signature which check failed. Without a known identity (an OCI layout and no
    ``--identity``) the identity is reported but not checked. Attestations found under ``.att``
    are checked with the same keys and reported; they do not decide the result.
    """
    if rule not in payload_mod.RULES:
        known = ", ".join(payload_mod.RULES)
        raise UsageError(f"unknown signedIdentity type {rule!r} (known: {known})")
    if not public_keys:
        raise UsageError("verify needs at least one public key (--key)")
    if isinstance(target, str):
        target = open_target(target, registry=registry)
    found, notes = subjects(target)
    identity = target.identity.exact if target.identity is not None else None
    if identity is None:
        notes.append("identity not checked: an OCI layout has no registry name (use --identity)")
    checks = []
    for subject in found:
        check = ManifestCheck(subject.digest, subject.platform)
        try:
            att = read_attachment(target, subject.digest, "sig")
        except NestbuildError as exc:
            check.problem = exc.message
            att = None
        if att is None:
            tag = attachment_tag(subject.digest, "sig")
            check.problem = check.problem or f"no signatures ({tag} not found)"
        else:
            for index, layer in enumerate(att.layers):
                if layer.get("mediaType") != SIMPLESIGNING_TYPE:
                    check.other_attachments += 1
                    continue
                check.signatures.append(
                    _check_signature(target, subject, index, layer, public_keys, identity, rule)
                )
            if not check.signatures:
                check.problem = "the signature manifest holds no signatures"
        check.attestations = _check_attestations(target, subject, public_keys)
        checks.append(check)
    return VerifyReport(
        image=target.display,
        rule=rule,
        identity=identity,
        keys=[name for name, _ in public_keys],
        manifests=checks,
        notes=notes,
    )


def _check_signature(
    target: Target,
    subject: Subject,
    index: int,
    layer: dict[str, Any],
    public_keys: Sequence[tuple[str, keys.PublicKey]],
    identity: str | None,
    rule: str,
) -> SignatureCheck:
    from nestbuild.signing import keys

    digest = str(layer["digest"])
    check = SignatureCheck(index, digest, False, "")
    annotations = layer.get("annotations") or {}
    if SIGNATURE_ANNOTATION not in annotations:
        check.reason = f"missing {SIGNATURE_ANNOTATION} annotation"
        return check
    if int(layer["size"]) > MAX_SIGNATURE_SIZE:
        check.reason = f"payload is {layer['size']} bytes, over containers/image's 4 MiB limit"
        return check
    try:
        body = target.store.get_blob(target.repo, digest)
    except NestbuildError as exc:
        check.reason = f"payload blob cannot be used: {exc.message}"
        return check
    if digest_of(body) != digest or len(body) != layer["size"]:
        check.reason = "payload blob does not match its digest (altered in the store)"
        return check
    sig = _b64(annotations[SIGNATURE_ANNOTATION])
    if sig is None:
        check.reason = "signature annotation is not valid base64"
        return check
    signer = next((name for name, pub in public_keys if keys.verify(pub, body, sig)), None)
    if signer is None:
        names = ", ".join(name for name, _ in public_keys)
        check.reason = (
            f"invalid signature: not made by {names} over this payload "
            "(another key, or the payload was altered)"
        )
        return check
    check.key = signer
    try:
        parsed = payload_mod.parse_payload(body)
    except payload_mod.PayloadError as exc:
        check.reason = exc.message
        return check
    check.docker_reference = parsed.docker_reference
    if parsed.manifest_digest != subject.digest:
        check.reason = (
            f"signs manifest {parsed.manifest_digest}, not this one ({subject.digest})"
        )
        return check
    if identity is not None and not payload_mod.identity_matches(
        parsed.docker_reference, identity, rule
    ):
        hint = ""
        if rule != "matchRepository" and payload_mod.identity_matches(
            parsed.docker_reference, identity, "matchRepository"
        ):
            hint = " (matchRepository would accept it)"
        check.reason = (
            f"identity {parsed.docker_reference!r} is not accepted for {identity} "
            f"under {rule}{hint}"
        )
        return check
    check.verified = True
    claim = f"identity {parsed.docker_reference}"
    check.reason = f"verified with {signer}; {claim}" + ("" if identity else " (not checked)")
    return check


def _check_attestations(
    target: Target, subject: Subject, public_keys: Sequence[tuple[str, keys.PublicKey]]
) -> list[AttestationCheck]:
    try:
        att = read_attachment(target, subject.digest, "att")
    except NestbuildError:
        return []
    out = []
    for index, layer in enumerate(att.layers if att else []):
        if layer.get("mediaType") != DSSE_TYPE:
            continue
        ptype = (layer.get("annotations") or {}).get(PREDICATE_TYPE_ANNOTATION)
        check = AttestationCheck(index, str(layer["digest"]), ptype, False, "")
        out.append(check)
        try:
            blob = target.store.get_blob(target.repo, str(layer["digest"]))
        except NestbuildError as exc:
            check.reason = exc.message
            continue
        if digest_of(blob) != layer["digest"]:
            check.reason = "envelope blob does not match its digest"
            continue
        problem = "no key verifies it"
        for name, pub in public_keys:
            try:
                stmt = dsse.open_envelope(blob, pub)
            except dsse.EnvelopeSignatureError:
                continue
            except dsse.EnvelopeError as exc:
                problem = exc.message
                break
            digests = [s["digest"].get("sha256") for s in stmt["subject"]]
            if subject.digest.removeprefix("sha256:") not in digests:
                problem = "its statement is about another image"
                break
            if ptype is not None and stmt.get("predicateType") != ptype:
                problem = "the predicateType annotation differs from the statement's"
                break
            check.verified = True
            check.predicate_type = str(stmt["predicateType"])
            problem = f"verified with {name}"
            break
        check.reason = problem
    return out


__all__ = [
    "DEFAULT_RULE",
    "VALIDATION_PREDICATE",
    "Attested",
    "KeyPair",
    "RegistryAccess",
    "SignatureStore",
    "Signed",
    "Target",
    "VerifyReport",
    "attest",
    "attest_validation",
    "generate_key_pair",
    "key_id",
    "load_public_keys",
    "load_signing_key",
    "open_target",
    "predicate_type_uri",
    "sign",
    "start_loading_key",
    "verify",
]
