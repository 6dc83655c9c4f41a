"""The way back from a registry: ``nestbuild pull`` and ``inspect`` (the ``docker://``
transport they read through is :mod:`nestbuild._image.registry_source`).

Every blob is verified against its digest as it streams in; a corrupt one is refused and
nothing is stored under the destination name.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import INDEX_TYPES, Descriptor, digest_of, index_manifests
from nestbuild._image.reference import ImageRef, parse_reference
from nestbuild._image.registry_source import RegistrySource
from nestbuild._image.source import ImageSource
from nestbuild._registry import reference
from nestbuild._registry.access import RegistryAccess
from nestbuild._registry.blobinfo import BlobInfo
from nestbuild._tools import skopeo
from nestbuild._util.cache import cache_dir
from nestbuild._util.progress import Transfer
from nestbuild.errors import UsageError


@dataclass
class PullResult:
    source: str
    destination: str
    digest: str
    bytes_downloaded: int

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "destination": self.destination, "digest": self.digest,
                "bytesDownloaded": self.bytes_downloaded}


def pull(
    image: str,
    dest: str | None = None,
    *,
    access: RegistryAccess | None = None,
    jobs: int = 4,
    quiet: bool = False,
) -> PullResult:
    """Fetch ``image`` (one platform: this host's) into ``dest``: ``oci:DIR[:TAG]`` or
    ``containers-storage:NAME`` (default: local storage under the image's own name)."""
    target = reference.parse(image)
    dest_ref = parse_reference(dest or f"containers-storage:{target}")
    if dest_ref.transport not in ("oci", "containers-storage"):
        raise UsageError(f"{dest}: pull into oci:DIR[:TAG] or containers-storage:NAME")
    src = RegistrySource(ImageRef.of_registry(target), access)
    info = BlobInfo()
    try:
        manifest = src.manifest
        with contextlib.ExitStack() as stack:
            if dest_ref.transport == "oci":
                root = Path(dest_ref.name)
            else:
                root = Path(stack.enter_context(
                    tempfile.TemporaryDirectory(dir=cache_dir("spool"), prefix="pull-")))
            writer = LayoutWriter(root)
            with Transfer(f"pulling {target}", quiet=quiet) as progress:
                def fetch(desc: Descriptor) -> int:
                    path = writer.blob_path(desc.digest)
                    if path.is_file() and path.stat().st_size == desc.size:
                        progress.blob(desc.digest[7:19], desc.size).finish("exists")
                        return 0
                    bar = progress.blob(desc.digest[7:19], desc.size)
                    with writer.new_blob(desc.digest) as f:
                        n = src.client.download_blob(target.repo, desc.digest, f, desc.size,
                                                     bar.advance)
                    info.record_location(desc.digest, target.host, target.repo)
                    bar.finish("downloaded")
                    return n

                blobs = [manifest.config, *manifest.layers]
                with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                    total = sum(pool.map(fetch, blobs))
            mdesc = writer.add_bytes(manifest.raw, manifest.media_type)
            tag = dest_ref.tag or target.tag or "latest"
            writer.tag(mdesc, tag)
            if dest_ref.transport == "containers-storage":
                skopeo.copy(f"oci:{root}:{tag}", f"containers-storage:{dest_ref.name}",
                            preserve_digests=True,
                            what=f"storing {target} in containers-storage")
        return PullResult(str(target), str(dest_ref), manifest.digest, total)
    finally:
        info.close()
        src.client.close()


def inspect(image: str, *, access: RegistryAccess | None = None) -> dict[str, Any]:
    """What skopeo inspect shows, plus what nestbuild checks: bootable labels, kernel."""
    from nestbuild._image import open_image

    ref = parse_reference(image)  # a bare name is a local image first (see _image.reference)
    src: ImageSource = (RegistrySource(ref, access) if ref.transport == "docker"
                        else open_image(ref))
    cfg = src.config
    doc: dict[str, Any] = {
        "name": str(src.ref),
        "digest": src.manifest.digest,
        "mediaType": src.manifest.media_type,
        "architecture": cfg.architecture,
        "os": cfg.os,
        "created": json.loads(cfg.raw).get("created"),
        "labels": cfg.labels,
        "bootable": cfg.bootable,
        "layers": [{"digest": d.digest, "size": d.size, "mediaType": d.media_type}
                   for d in src.manifest.layers],
        "annotations": src.manifest.annotations,
    }
    if isinstance(src, RegistrySource):
        raw, media_type = src.top
        if media_type in INDEX_TYPES:
            doc["index"] = {"digest": digest_of(raw), "manifests": [
                {"digest": m.digest, "platform": m.platform}
                for m in index_manifests(raw, f"{src.ref} index")]}
        try:
            doc.update(_attached(src.target.with_digest(src.manifest.digest), src.client))
        finally:
            src.client.close()
    elif ref.transport == "oci":
        doc.update(_attached(f"oci:{ref.name}" + (f":{ref.tag}" if ref.tag else ""), None))
    return doc


def _attached(image: Any, store: Any) -> dict[str, Any]:
    """The image's signatures, attestations, SBOMs and referrers (see signing.tree)."""
    from nestbuild.signing.signatures import open_target
    from nestbuild.signing.tree import tree

    found = tree(open_target(image, store=store)).to_json()
    return {k: found[k] for k in ("signatures", "attestations", "sboms", "referrers")}

