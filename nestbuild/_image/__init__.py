"""Reading container images from the places users keep them.

``open_image("oci:./out:v1")`` gives an :class:`~nestbuild._image.source.ImageSource` whatever the
transport (:mod:`nestbuild._image.transports`); everything above this package works on manifests,
configs and layer tar streams.

The names below are loaded on first use: ``nestbuild._image.model`` (media types, which the
registry client and signing need) must not drag in the image readers (tarfile, compression,
subprocess), which would cost every ``nestbuild sign`` run their import time.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nestbuild._image.model import Descriptor, ImageConfig, Manifest
    from nestbuild._image.reference import ImageRef, parse_reference
    from nestbuild._image.source import ImageSource
    from nestbuild._image.transports import open_image

__all__ = [
    "Descriptor",
    "ImageConfig",
    "ImageRef",
    "ImageSource",
    "Manifest",
    "open_image",
    "parse_reference",
]

_WHERE = {
    "Descriptor": "model",
    "ImageConfig": "model",
    "Manifest": "model",
    "ImageRef": "reference",
    "parse_reference": "reference",
    "ImageSource": "source",
    "open_image": "transports",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
