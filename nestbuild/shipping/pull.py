"""The way back from a registry: ``nestbuild pull``, ``inspect`` and the ``docker://`` transport.

Every blob is verified against its digest as it streams in; a corrupt one is refused and
nothing is stored under the destination name.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import (
    INDEX_TYPES,
    Descriptor,
    Manifest,
    digest_of,
    index_manifests,
    pick_platform,
)
from nestbuild._image.reference import ImageRef, parse_reference
from nestbuild._image.source import BaseLookup, ImageSource, StorageSource, index_children
from nestbuild._registry import reference
from nestbuild._registry.access import RegistryAccess
from nestbuild._registry.blobinfo import BlobInfo
from nestbuild._registry.client import RegistryClient
from nestbuild._registry.reference import RegistryRef
from nestbuild._tools import run
from nestbuild._util.cache import cache_dir
from nestbuild._util.progress import Transfer
from nestbuild.errors import ImageError, ToolError, UsageError


class RegistrySource(ImageSource):
    """``docker://HOST/REPO[:TAG|@DIGEST]``; blobs are fetched (verified) when read."""

    def __init__(self, ref: ImageRef, access: RegistryAccess | None = None,
                 client: RegistryClient | None = None) -> None:
        self.ref = ref
        self.target: RegistryRef = reference.parse(ref.name)
        self.client = client or (access or RegistryAccess()).client(self.target.host)

    @cached_property
    def top(self) -> tuple[bytes, str]:
        """What the reference names, exactly as stored (an image or an index)."""
        got = self.client.get_manifest(self.target.repo, self.target.ref)
        if got is None:
            raise ImageError(f"docker://{self.target}: no such image in the registry")
        return got

    @cached_property
    def manifest(self) -> Manifest:
        raw, media_type = self.top
        digest = self.target.digest or digest_of(raw)
        if media_type in INDEX_TYPES or b'"manifests"' in raw:
            desc = pick_platform(raw, str(self.ref))
            got = self.client.get_manifest(self.target.repo, desc.digest)
            if got is None:
                raise ImageError(f"{self.ref}: the index names {desc.digest}, which is missing")
            raw, digest = got[0], desc.digest
        return Manifest.parse(raw, digest, str(self.ref))

    #: download_blob hashes every blob as it arrives and refuses a mismatch; open_layer
    #: still proves each layer's diff_id.
    _blobs_verified = True

    @contextlib.contextmanager
    def _open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        with tempfile.TemporaryFile(dir=cache_dir("spool")) as f:
            self.client.download_blob(self.target.repo, desc.digest, f, desc.size)
            f.seek(0)
            yield f

    def recorded_base(self, name: str | None, digest: str | None) -> BaseLookup:
        """Local storage first (where builds leave the base), then this registry: the
        recorded name must resolve to the recorded digest (see ImageSource.recorded_base)."""
        why = "local storage cannot be read"
        with contextlib.suppress(ToolError):
            local, why = StorageSource(ImageRef("containers-storage", name or "")
                                       ).recorded_base(name, digest)
            if local is not None:
                return local, ""
        if not name or not digest:
            return None, why
        try:
            named = reference.parse(name)
        except UsageError:
            return None, why
        if named.host != self.target.host or named.digest is not None:
            return None, why
        got = self.client.get_manifest(named.repo, named.ref)
        if got is None:
            return None, f"{why}; {name} is not in {self.target.host} either"
        raw, media_type = got
        if digest_of(raw) == digest or (media_type in INDEX_TYPES
                                        and digest in index_children(raw)):
            return RegistrySource(ImageRef("docker", str(named.with_digest(digest))),
                                  client=self.client), ""
        return None, (f"{name} is {digest_of(raw)[:19]} in {self.target.host}, not the "
                      f"recorded {digest[:19]}")


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
    src = RegistrySource(ImageRef("docker", str(target)), access)
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
                run.run(["skopeo", "copy", "--quiet", "--preserve-digests", f"oci:{root}:{tag}",
                         f"containers-storage:{dest_ref.name}"],
                        what=f"storing {target} in containers-storage")
        return PullResult(str(target), str(dest_ref), manifest.digest, total)
    finally:
        info.close()
        src.client.close()


def inspect(image: str, *, access: RegistryAccess | None = None) -> dict[str, Any]:
    """What skopeo inspect shows, plus what nestbuild checks: bootable labels, kernel."""
    from nestbuild._image import open_image

    src: ImageSource
    if image.startswith("docker://"):
        src = RegistrySource(ImageRef("docker", image[len("docker://"):]), access)
    else:
        src = open_image(image)
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
        doc["referrers"] = [
            {"digest": r.get("digest"), "artifactType": r.get("artifactType")}
            for r in src.client.referrers(src.target.repo, src.manifest.digest)]
        src.client.close()
    return doc

