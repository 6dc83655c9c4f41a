"""Reading container images from the places users keep them.

``open_image("oci:./out:v1")`` gives an :class:`~nestbuild.image.source.ImageSource` whatever the
transport; everything above this package works on manifests, configs and layer tar streams.
"""

from nestbuild.image.model import Descriptor, ImageConfig, Manifest
from nestbuild.image.reference import ImageRef, parse_reference
from nestbuild.image.source import ImageSource, open_image

__all__ = [
    "Descriptor",
    "ImageConfig",
    "ImageRef",
    "ImageSource",
    "Manifest",
    "open_image",
    "parse_reference",
]
