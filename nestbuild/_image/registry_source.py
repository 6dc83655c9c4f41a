"""``docker://HOST/REPO[:TAG|@DIGEST]``: an image read straight from a registry.

Blobs are fetched when read and verified against their digest as they stream in, so the image
readers above see a registry image as any other source; ``nestbuild pull`` and ``inspect`` use it
too.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from functools import cached_property
from typing import BinaryIO

from nestbuild._image.model import INDEX_TYPES, Descriptor, Manifest, digest_of, pick_platform
from nestbuild._image.reference import ImageRef
from nestbuild._image.source import BaseLookup, ImageSource, StorageSource, index_children
from nestbuild._registry import reference
from nestbuild._registry.access import RegistryAccess
from nestbuild._registry.client import RegistryClient
from nestbuild._registry.reference import RegistryRef
from nestbuild._util.cache import cache_dir
from nestbuild.errors import ImageError, ToolError, UsageError


class RegistrySource(ImageSource):
    """``docker://HOST/REPO[:TAG|@DIGEST]``; blobs are fetched (verified) when read."""

    def __init__(self, ref: ImageRef, access: RegistryAccess | None = None,
                 client: RegistryClient | None = None) -> None:
        self.ref = ref
        if ref.registry is None:
            raise UsageError(f"{ref}: not a registry image")
        self.target: RegistryRef = ref.registry
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
            return RegistrySource(ImageRef.of_registry(named.with_digest(digest)),
                                  client=self.client), ""
        return None, (f"{name} is {digest_of(raw)[:19]} in {self.target.host}, not the "
                      f"recorded {digest[:19]}")
