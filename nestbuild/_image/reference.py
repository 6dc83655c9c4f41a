"""Image references in the transport syntax users know from skopeo and podman."""

from __future__ import annotations

from dataclasses import dataclass

from nestbuild.errors import UsageError

TRANSPORTS = ("containers-storage", "oci", "oci-archive", "docker")
DEFAULT_TRANSPORT = "containers-storage"


@dataclass(frozen=True)
class ImageRef:
    transport: str
    #: For containers-storage and docker: the image name/ID; for oci and oci-archive: the path.
    name: str
    #: oci/oci-archive: the tag (``org.opencontainers.image.ref.name``) or None for the only image.
    tag: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.name}"
        text = f"{self.transport}:{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        return text


def parse_reference(text: str) -> ImageRef:
    """Parse ``[TRANSPORT:]REF``; without a transport the image is in containers-storage."""
    if not text:
        raise UsageError("empty image reference")
    if text.startswith("docker://"):
        return ImageRef("docker", text[len("docker://") :])
    transport, sep, rest = text.partition(":")
    if sep and transport in ("oci", "oci-archive"):
        if not rest:
            raise UsageError(f"{transport}: needs a path, as in {transport}:./image[:TAG]")
        path, tag = _split_path_tag(rest)
        return ImageRef(transport, path, tag)
    if sep and transport == "containers-storage":
        if not rest:
            raise UsageError("containers-storage: needs an image name or ID")
        return ImageRef("containers-storage", rest)
    if sep and transport in ("docker-archive", "dir", "docker-daemon"):
        raise UsageError(
            f"transport {transport}: is not supported; use one of "
            "containers-storage:, oci:, oci-archive:, docker://"
        )
    return ImageRef(DEFAULT_TRANSPORT, text)


def _split_path_tag(rest: str) -> tuple[str, str | None]:
    # oci:PATH[:TAG] - a path may contain no ':' for the tag split to be unambiguous (as skopeo).
    path, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        return rest, None
    return path, tag or None
