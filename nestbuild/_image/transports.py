"""A reference to the source that reads its transport: the one place that knows them all."""

from __future__ import annotations

from nestbuild._image.reference import ImageRef, parse_reference
from nestbuild._image.source import ImageSource, OCIArchiveSource, OCILayoutSource, StorageSource
from nestbuild.errors import ImageError


def open_image(ref: str | ImageRef) -> ImageSource:
    """Open an image by reference; nothing is read until asked for."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    if ref.transport == "oci":
        return OCILayoutSource(ref)
    if ref.transport == "oci-archive":
        return OCIArchiveSource(ref)
    if ref.transport == "containers-storage":
        return StorageSource(ref)
    if ref.transport == "docker":
        # here: the registry client is not loaded for local images
        from nestbuild._image.registry_source import RegistrySource

        return RegistrySource(ref)
    raise ImageError(f"{ref}: the {ref.transport} transport is not supported")
