"""What a node needs from the registry before it moves: the manifest digest to pin, and the
config (architecture, labels), read with nestbuild's own registry client.

The client verifies what it reads: a manifest fetched by digest must hash to it, the config
blob to its descriptor's digest. The access flags are the ones every registry command takes
(``--authfile``, ``--cert-dir``, ``--tls-verify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess


@dataclass(frozen=True)
class RemoteImage:
    #: The image as given, without ``docker://`` or a digest (``REG/REPO[:TAG]``).
    name: str
    #: The manifest digest to pin: this host's platform's manifest if the name is an index.
    digest: str
    architecture: str
    labels: dict[str, str]
    #: Compressed size of all layers, for the room check.
    size: int


def remote_image(image: str, access: RegistryAccess | None = None) -> RemoteImage:
    """Resolve ``[docker://]REG/REPO[:TAG|@DIGEST]`` to this host's platform manifest and its
    config."""
    from nestbuild._image.reference import ImageRef
    from nestbuild._image.registry_source import RegistrySource
    from nestbuild._registry import reference

    target = reference.parse(image)
    src = RegistrySource(ImageRef.of_registry(target), access)
    try:
        manifest = src.manifest
        config = src.config
    finally:
        src.client.close()
    name = image.removeprefix("docker://").split("@", 1)[0]
    return RemoteImage(name, manifest.digest, config.architecture, dict(config.labels),
                       sum(layer.size for layer in manifest.layers))
