"""OCI and Docker v2 schema 2 manifests and configs, parsed into one model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None

    @classmethod
    def parse(cls, obj: Any, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise ImageError(f"{what}: descriptor is not an object")
        try:
            media_type = str(obj.get("mediaType", ""))
            digest = str(obj["digest"])
            size = int(obj["size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageError(f"{what}: malformed descriptor ({exc})") from None
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise ImageError(f"{what}: unsupported digest {digest!r}")
        annotations = obj.get("annotations") or {}
        platform = obj.get("platform")
        return cls(media_type, digest, size, dict(annotations), platform)


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: dict[str, str]
    raw: bytes
    digest: str

    @classmethod
    def parse(cls, raw: bytes, digest: str, what: str) -> Manifest:
        obj = _load_json(raw, what)
        media_type = obj.get("mediaType") or OCI_MANIFEST
        if media_type in INDEX_TYPES or "manifests" in obj:
            raise ImageError(f"{what}: is an image index, not a single image")
        if media_type not in MANIFEST_TYPES:
            raise ImageError(f"{what}: unsupported manifest type {media_type}")
        config = Descriptor.parse(obj.get("config"), f"{what} config")
        layers_obj = obj.get("layers")
        if not isinstance(layers_obj, list):
            raise ImageError(f"{what}: manifest has no layer list")
        layers = [Descriptor.parse(d, f"{what} layer {i}") for i, d in enumerate(layers_obj)]
        return cls(media_type, config, layers, dict(obj.get("annotations") or {}), raw, digest)


@dataclass(frozen=True)
class ImageConfig:
    architecture: str
    os: str
    labels: dict[str, str]
    diff_ids: list[str]
    raw: bytes

    @classmethod
    def parse(cls, raw: bytes, what: str) -> ImageConfig:
        obj = _load_json(raw, what)
        rootfs = obj.get("rootfs") or {}
        diff_ids = rootfs.get("diff_ids")
        if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
            raise ImageError(f"{what}: config has no rootfs.diff_ids")
        conf = obj.get("config") or {}
        labels = conf.get("Labels") or {}
        return cls(
            architecture=str(obj.get("architecture", "")),
            os=str(obj.get("os", "")),
            labels={str(k): str(v) for k, v in labels.items()},
            diff_ids=list(diff_ids),
            raw=raw,
        )

    @property
    def bootable(self) -> bool:
        return self.labels.get(LABEL_BOOTC) == "1" or self.labels.get(LABEL_BOOTABLE) == "true"


def _load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{what}: not a JSON object")
    return obj


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
    obj = _load_json(index_raw, what)
    manifests = [Descriptor.parse(d, f"{what} manifest") for d in obj.get("manifests") or []]
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
