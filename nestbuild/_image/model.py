"""OCI and Docker v2 schema 2 manifests and configs, parsed into one model."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

from nestbuild._util.record import Value
from nestbuild._util.userfile import json_document
from nestbuild.errors import ImageError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

ANNOTATION_BASE_DIGEST = "org.opencontainers.image.base.digest"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
LABEL_FINAL_DIFFID = "ostree.final-diffid"
LABEL_BOOTC = "containers.bootc"
LABEL_BOOTABLE = "ostree.bootable"
LABEL_LINUX = "ostree.linux"


def digest_of(data: bytes) -> str:
    """The OCI content digest (``sha256:<hex>``) of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")


def _strings(value: object, what: str, field_name: str) -> dict[str, str]:
    """An annotations or labels object: string keys to string values, as Go reads it into a
    ``map[string]string`` (null: none; a null value: "")."""
    if value is None:
        return {}
    if not isinstance(value, dict) or \
            not all(isinstance(v, str) or v is None for v in value.values()):
        raise ImageError(f"{what}: {field_name} is not an object of strings")
    return {k: v or "" for k, v in value.items()}


class Descriptor(Value):
    """A blob as a manifest names it: media type, digest, size."""

    media_type: Final[str]
    digest: Final[str]
    size: Final[int]
    annotations: Final[dict[str, str]]
    platform: Final[dict[str, Any] | None]

    def __init__(self, media_type: str, digest: str, size: int,
                 annotations: dict[str, str] | None = None,
                 platform: dict[str, Any] | None = None) -> None:
        self.media_type = media_type
        self.digest = digest
        self.size = size
        self.annotations = {} if annotations is None else annotations
        self.platform = platform

    @classmethod
    def parse(cls, obj: Any, what: str) -> Descriptor:
        """A descriptor as the OCI spec types it. The digest is a sha256 of 64 lowercase hex
        digits: it names files in layouts and URLs in registries, so nothing else gets by."""
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: descriptor is not an object")
        media_type = obj.get("mediaType", "")
        digest = obj.get("digest")
        size = obj.get("size")
        if not isinstance(media_type, str):
            raise ImageError(f"{what}: malformed descriptor (mediaType is not a string)")
        if not isinstance(digest, str):
            raise ImageError(f"{what}: malformed descriptor (no digest string)")
        if type(size) is not int or size < 0:
            raise ImageError(f"{what}: malformed descriptor (size is not a non-negative "
                             "integer)")
        if not _SHA256.fullmatch(digest):
            raise ImageError(f"{what}: unsupported digest {digest[:80]!r}")
        annotations = _strings(obj.get("annotations"), what, "annotations")
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise ImageError(f"{what}: platform is not an object")
        return cls(media_type, digest, size, annotations, platform)


class Manifest(Value):
    """An image manifest as read, with its raw bytes and their digest."""

    media_type: Final[str]
    config: Final[Descriptor]
    layers: Final[list[Descriptor]]
    annotations: Final[dict[str, str]]
    raw: Final[bytes]
    digest: Final[str]

    def __init__(self, media_type: str, config: Descriptor, layers: list[Descriptor],
                 annotations: dict[str, str], raw: bytes, digest: str) -> None:
        self.media_type = media_type
        self.config = config
        self.layers = layers
        self.annotations = annotations
        self.raw = raw
        self.digest = digest

    @classmethod
    def parse(cls, raw: bytes, digest: str, what: str) -> Manifest:
        obj = load_json_object(raw, what)
        media_type = obj.get("mediaType") or OCI_MANIFEST
        if media_type in INDEX_TYPES or "manifests" in obj:
            raise ImageError(f"{what}: is an image index, not a single image")
        if media_type not in MANIFEST_TYPES:
            raise ImageError(f"{what}: unsupported manifest type {str(media_type)[:80]!r}")
        config = Descriptor.parse(obj.get("config"), f"{what} config")
        layers_obj = obj.get("layers")
        if not isinstance(layers_obj, list):
            raise ImageError(f"{what}: manifest has no layer list")
        layers = [Descriptor.parse(d, f"{what} layer {i}") for i, d in enumerate(layers_obj)]
        annotations = _strings(obj.get("annotations"), what, "annotations")
        return cls(media_type, config, layers, annotations, raw, digest)


class ImageConfig(Value):
    """The parts of an image config nestbuild reads, with its raw bytes."""

    architecture: Final[str]
    os: Final[str]
    labels: Final[dict[str, str]]
    diff_ids: Final[list[str]]
    raw: Final[bytes]

    def __init__(self, architecture: str, os: str, labels: dict[str, str],
                 diff_ids: list[str], raw: bytes) -> None:
        self.architecture = architecture
        self.os = os
        self.labels = labels
        self.diff_ids = diff_ids
        self.raw = raw

    @classmethod
    def parse(cls, raw: bytes, what: str) -> ImageConfig:
        obj = load_json_object(raw, what)
        rootfs = obj.get("rootfs")
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise ImageError(f"{what}: config has no rootfs.diff_ids")
        conf = obj.get("config") or {}
        if not isinstance(conf, dict):
            raise ImageError(f"{what}: config.config is not an object")
        architecture, os_name = obj.get("architecture", ""), obj.get("os", "")
        if not isinstance(architecture, str) or not isinstance(os_name, str):
            raise ImageError(f"{what}: architecture and os must be strings")
        return cls(
            architecture=architecture,
            os=os_name,
            labels=_strings(conf.get("Labels"), what, "config.Labels"),
            diff_ids=list(diff_ids),
            raw=raw,
        )

    @property
    def bootable(self) -> bool:
        return self.labels.get(LABEL_BOOTC) == "1" or self.labels.get(LABEL_BOOTABLE) == "true"


def load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object from untrusted bytes; anything else is an ImageError naming ``what``."""
    obj = json_document(raw, what, ImageError, lines=False)
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj


def index_manifests(index_raw: bytes, what: str) -> list[Descriptor]:
    """The descriptors an image index (or an OCI layout's index.json) lists, checked."""
    entries = load_json_object(index_raw, what).get("manifests") or []
    if not isinstance(entries, list):
        raise ImageError(f"{what}: manifests is not a list")
    return [Descriptor.parse(d, f"{what} manifest") for d in entries]


def host_platform() -> tuple[str, str]:
    """The OCI os/architecture of this machine, for picking from an index."""
    import platform

    machine = platform.machine()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)
    return "linux", arch


def pick_platform(
    index_raw: bytes, what: str, platform: tuple[str, str] | None = None
) -> Descriptor:
    """Choose the manifest for ``platform`` (default: this host) from an image index."""
    manifests = index_manifests(index_raw, what)
    want_os, want_arch = platform or host_platform()
    for desc in manifests:
        plat = desc.platform or {}
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            return desc
    found = ", ".join(
        f"{(d.platform or {}).get('os')}/{(d.platform or {}).get('architecture')}"
        for d in manifests
    )
    raise ImageError(f"{what}: no manifest for {want_os}/{want_arch} (has: {found or 'none'})")
