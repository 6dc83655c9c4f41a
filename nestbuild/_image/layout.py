"""Writing OCI image layouts: blobs streamed in, index.json updated atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from nestbuild._image.model import (
    ANNOTATION_REF_NAME,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    digest_of,
)
from nestbuild._util.atomic import replacing, write_atomic

CHUNK = 1 << 20


class LayoutWriter:
    """Adds blobs and tagged manifests to an OCI layout directory (created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        layout = root / "oci-layout"
        if not layout.exists():
            layout.write_text('{"imageLayoutVersion": "1.0.0"}')
        if not (root / "index.json").exists():
            self._write_index({"schemaVersion": 2, "manifests": []})

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = digest_of(data)
        path = self._blob(digest)
        if not path.exists():
            self._atomic(path, data)
        return Descriptor(media_type, digest, len(data))

    def add_stream(self, f: IO[bytes], media_type: str) -> Descriptor:
        """Copy a stream into a blob without holding it in memory."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "blobs", prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            digest = "sha256:" + h.hexdigest()
            os.replace(tmp, self._blob(digest))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return Descriptor(media_type, digest, size)

    def add_image(
        self,
        layers: list[Descriptor],
        diff_ids: list[str],
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        tag: str | None = None,
        architecture: str = "amd64",
    ) -> Descriptor:
        """Write config and manifest for ``layers`` and (optionally) tag it in index.json."""
        config: dict[str, Any] = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Labels": labels or {}},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cdesc = self.add_bytes(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _desc_json(cdesc),
            "layers": [_desc_json(d) for d in layers],
        }
        if annotations:
            manifest["annotations"] = annotations
        mdesc = self.add_bytes(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST)
        if tag is not None:
            self.tag(mdesc, tag)
        return mdesc

    def tag(self, desc: Descriptor, tag: str) -> None:
        index = json.loads((self.root / "index.json").read_text())
        manifests = [m for m in index.get("manifests", [])
                     if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag]
        entry = _desc_json(desc)
        entry["annotations"] = {ANNOTATION_REF_NAME: tag}
        manifests.append(entry)
        index["manifests"] = manifests
        self._write_index(index)

    def blob_path(self, digest: str) -> Path:
        return self._blob(digest)

    def new_blob(self, digest: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        """Write a blob whose digest is known (and checked by the writer): it appears under
        its name only if the block finishes, so a failed download leaves no corrupt blob."""
        return replacing(self._blob(digest))

    def _blob(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest.split(":", 1)[1]

    def _write_index(self, index: dict[str, Any]) -> None:
        self._atomic(self.root / "index.json", json.dumps(index, indent=2).encode())

    def _atomic(self, path: Path, data: bytes) -> None:
        write_atomic(path, data)


def _desc_json(d: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.annotations:
        out["annotations"] = dict(d.annotations)
    return out
