"""Image references in the transport syntax users know from skopeo and podman.

A bare reference (no transport) follows one rule in every command. Where local storage cannot
hold what the command works on (``sign``, ``verify``, ``attest``, ``tree``: signatures live in
a registry or an OCI layout), a name that starts with a registry host (:func:`registry_host`)
is a registry image, as cosign reads it: ``HOST/REPO[:TAG|@DIGEST]`` is
``docker://HOST/REPO[:TAG|@DIGEST]``. Where it can (``validate``, ``inspect``, ``push``'s
source), a bare name is looked up in local storage first, as podman does, and a miss
suggests the ``docker://`` reference (:func:`missing_locally`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal

from nestbuild._util.record import Value
from nestbuild.errors import UsageError

if TYPE_CHECKING:
    from nestbuild._registry.reference import RegistryRef

TRANSPORTS = ("containers-storage", "oci", "oci-archive", "docker")
DEFAULT_TRANSPORT = "containers-storage"


class ImageRef(Value):
    """Any image a user can name: a transport and where the image is in it.

    A ``docker://`` image carries its parsed :class:`~nestbuild._registry.reference.RegistryRef`
    (``registry``), made once when the reference is made and handed on as it is; nothing
    below formats it into a string to parse again.
    """

    transport: Final[str]
    #: For containers-storage and docker: the image name/ID; for oci and oci-archive: the path.
    name: Final[str]
    #: oci/oci-archive: the tag (``org.opencontainers.image.ref.name``) or None for the only image.
    tag: Final[str | None]
    #: docker: the registry reference (host, repository, tag or digest). Not compared or
    #: hashed (see ``_values``).
    registry: Final[RegistryRef | None]

    def __init__(self, transport: str, name: str, tag: str | None = None,
                 registry: RegistryRef | None = None) -> None:
        self.transport = transport
        self.name = name
        self.tag = tag
        if transport == "docker" and registry is None:
            # here: a local image (validate's usual case) needs no registry grammar
            from nestbuild._registry.reference import parse as parse_registry

            registry = parse_registry(name)
        self.registry = registry

    def _values(self) -> tuple[Any, ...]:
        # equality and hash leave ``registry`` out: it is parsed from ``name``, or handed in
        return (self.transport, self.name, self.tag)

    @classmethod
    def of_registry(cls, ref: RegistryRef) -> ImageRef:
        """The ``docker://`` image of an already parsed registry reference."""
        return cls("docker", str(ref), registry=ref)

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self.name}"
        text = f"{self.transport}:{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        return text


#: What a bare reference means: a local image first (``"local"``), or a registry image when
#: it starts with a host (``"registry"``).
Bare = Literal["local", "registry"]


def registry_host(name: str) -> str | None:
    """The registry host a bare ``HOST/REPO...`` name starts with, or None.

    As docker and cosign decide, the first path component is a host when it has a ``.`` or a
    ``:`` (a port): ``registry.example.com/...``, ``127.0.0.1:5000/...``,
    ``localhost:5000/...``. ``library/alpine`` or ``my-node:v1`` name none, and neither does
    a plain ``localhost/...``: podman and buildah name local images so (``nestbuild build``
    too), and a registry on localhost has a port.
    """
    first, sep, rest = name.partition("/")
    if not sep or not rest or not first:
        return None
    if "." in first or ":" in first:
        return first
    return None


def parse_reference(text: str, *, bare: Bare = "local") -> ImageRef:
    """Parse ``[TRANSPORT:]REF``.

    Without a transport the image is in containers-storage, unless ``bare`` is ``"registry"``
    (commands whose images cannot be in local storage) and the name starts with a registry
    host: then it is ``docker://`` (see the module docstring).
    """
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
    if bare == "registry" and registry_host(text) is not None:
        return ImageRef("docker", text)
    return ImageRef(DEFAULT_TRANSPORT, text)


def missing_locally(ref: ImageRef) -> str:
    """The message for a local image that is not there; when its name starts with a registry
    host, it names the ``docker://`` reference the user may have meant."""
    host = registry_host(ref.name) if ref.transport == DEFAULT_TRANSPORT else None
    if host is None:
        return f"{ref}: no such image in local containers-storage"
    return f"{ref.name}: not in local storage; did you mean docker://{ref.name}?"


def _split_path_tag(rest: str) -> tuple[str, str | None]:
    # oci:PATH[:TAG] - a path may contain no ':' for the tag split to be unambiguous (as skopeo).
    path, sep, tag = rest.rpartition(":")
    if not sep or "/" in tag:
        return rest, None
    return path, tag or None
