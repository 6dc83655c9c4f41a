"""An OCI image layout as a signature store: the same five calls a registry answers.

Signing works on a small storage interface (``nestbuild.signing.signatures.SignatureStore``) so one
implementation serves registries and layouts. In a layout, blobs are ``blobs/sha256/HEX`` and a
tag is an ``org.opencontainers.image.ref.name`` entry in ``index.json``; the ``repo`` argument
is ignored (a layout holds one repository).

Entries for cosign's attachment tags (``sha256-HEX.sig`` / ``.att``) of an image listed in
index.json also get cosign's ``kind`` annotations (``pkg/oci/layout``), as ``cosign save``
writes them, so ``cosign verify --local-image`` reads a nestbuild-signed layout.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from nestbuild._image.model import ANNOTATION_REF_NAME, INDEX_TYPES, OCI_MANIFEST, digest_of
from nestbuild._util.atomic import write_atomic
from nestbuild.errors import ImageError

KIND = "kind"
KIND_IMAGE = "dev.cosignproject.cosign/image"
KIND_INDEX = "dev.cosignproject.cosign/imageIndex"
KIND_SIGS = "dev.cosignproject.cosign/sigs"
KIND_ATTS = "dev.cosignproject.cosign/atts"

ATTACHMENT_TAG = re.compile(r"sha256-([0-9a-f]{64})\.(sig|att)")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def is_attachment_entry(entry: dict[str, Any]) -> bool:
    """Whether an index.json entry is a signature/attestation manifest rather than an image."""
    ann = entry.get("annotations") or {}
    if ann.get(KIND) in (KIND_SIGS, KIND_ATTS):
        return True
    return ATTACHMENT_TAG.fullmatch(str(ann.get(ANNOTATION_REF_NAME, ""))) is not None


class LayoutStore:
    """Signature storage in an existing OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if not (root / "index.json").is_file():
            raise ImageError(f"oci:{root}: not an OCI layout (no index.json)")

    # -- the SignatureStore interface -------------------------------------------------------

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str] | None:
        if _DIGEST.fullmatch(ref):
            if not self.has_blob(repo, ref):
                return None
            data = self.get_blob(repo, ref)
            entry = next((e for e in self.entries() if e.get("digest") == ref), None)
            return data, _media_type(data, entry)
        for entry in self.entries():
            if (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME) == ref:
                digest = str(entry.get("digest", ""))
                if not _DIGEST.fullmatch(digest) or not self.has_blob(repo, digest):
                    raise ImageError(f"oci:{self.root}: tag {ref!r} names a missing manifest")
                data = self.get_blob(repo, digest)
                return data, _media_type(data, entry)
        return None

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        digest = digest_of(data)
        self.put_blob(repo, data, digest, len(data))
        if _DIGEST.fullmatch(ref):
            if ref != digest:
                raise ImageError(f"oci:{self.root}: manifest digest {digest} is not {ref}")
            return digest
        with self.lock():
            self._tag(ref, digest, media_type, len(data))
        return digest

    def prepare_blobs(self, repo: str, digests: Sequence[str]) -> None:
        """Nothing to prepare: a layout's blobs are files, written in one step."""

    def cancel_uploads(self) -> None:
        """Nothing was opened."""

    def has_blob(self, repo: str, digest: str) -> bool:
        return self._blob(digest).is_file()

    def put_blob(self, repo: str, data: bytes, digest: str, size: int) -> None:
        if len(data) != size or digest_of(data) != digest:
            raise ValueError(f"blob does not match {digest} ({size} bytes)")
        path = self._blob(digest)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            _atomic(path, data)

    def get_blob(self, repo: str, digest: str) -> bytes:
        try:
            data = self._blob(digest).read_bytes()
        except OSError:
            raise ImageError(f"oci:{self.root}: blob {digest} is missing") from None
        if digest_of(data) != digest:
            raise ImageError(f"oci:{self.root}: blob {digest} does not match its digest")
        return data

    # -- layout specifics -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise read-modify-write of index.json (and of an attachment) between processes.

        The directory itself is locked: index.json is replaced by rename, so a lock on it
        would be on a file that stops being the index. Re-entrant within one store.
        """
        if getattr(self, "_locked", False):
            yield
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """index.json's manifest descriptors, as stored."""
        index = self._index()
        manifests = index.get("manifests") or []
        if not isinstance(manifests, list):
            raise ImageError(f"oci:{self.root}: index.json has no manifests list")
        return [m for m in manifests if isinstance(m, dict)]

    def image_entries(self) -> list[dict[str, Any]]:
        """The entries that are images (not signature or attestation attachments)."""
        return [e for e in self.entries() if not is_attachment_entry(e)]

    def _index(self) -> dict[str, Any]:
        try:
            index = json.loads((self.root / "index.json").read_bytes())
        except OSError as exc:
            raise ImageError(f"oci:{self.root}: cannot read index.json ({exc.strerror})") from None
        except ValueError:
            raise ImageError(f"oci:{self.root}: index.json is not valid JSON") from None
        if not isinstance(index, dict):
            raise ImageError(f"oci:{self.root}: index.json is not a JSON object")
        return index

    def _tag(self, tag: str, digest: str, media_type: str, size: int) -> None:
        index = self._index()
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        annotations: dict[str, str] = {ANNOTATION_REF_NAME: tag}
        attachment = ATTACHMENT_TAG.fullmatch(tag)
        if attachment is not None:
            subject = "sha256:" + attachment.group(1)
            for entry in manifests:
                if entry.get("digest") != subject or is_attachment_entry(entry):
                    continue
                # The image is listed itself (not only as a child of an index): mark it and
                # its attachment as cosign save does, for cosign verify --local-image.
                ann = entry.setdefault("annotations", {})
                if KIND not in ann:
                    ann[KIND] = KIND_INDEX if entry.get("mediaType") in INDEX_TYPES else KIND_IMAGE
                annotations[KIND] = KIND_SIGS if attachment.group(2) == "sig" else KIND_ATTS
        kept = []
        replaced = False
        for entry in manifests:
            if (entry.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag:
                kept.append(entry)
            elif not replaced:  # keep the tag's place in the list
                kept.append(_entry(media_type, digest, size, annotations))
                replaced = True
        if not replaced:
            kept.append(_entry(media_type, digest, size, annotations))
        index["manifests"] = kept
        index.setdefault("schemaVersion", 2)
        _atomic(self.root / "index.json", json.dumps(index, indent=2).encode())

    def _blob(self, digest: str) -> Path:
        if not _DIGEST.fullmatch(digest):
            raise ImageError(f"oci:{self.root}: unsupported digest {digest!r}")
        return self.root / "blobs" / "sha256" / digest[len("sha256:") :]


def _entry(media_type: str, digest: str, size: int, annotations: dict[str, str]) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, "annotations": annotations}


def _media_type(data: bytes, entry: dict[str, Any] | None) -> str:
    """The manifest's own mediaType field, else the index entry's, else OCI manifest."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # not JSON: the entry's type, else the default
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("mediaType"), str):
        return str(obj["mediaType"])
    if entry is not None and isinstance(entry.get("mediaType"), str):
        return str(entry["mediaType"])
    if isinstance(obj, dict) and "manifests" in obj:
        return "application/vnd.oci.image.index.v1+json"
    return OCI_MANIFEST


def _atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o644)
