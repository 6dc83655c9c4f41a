"""Reading an image's package database for the package attestation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._pkgdb.dpkg import parse_status
from nestbuild.building.baseimage import BuiltBase
from nestbuild.errors import LayerError
from nestbuild.validation import packages
from tests.ocibuilder import BOOTABLE, Layer, bootable_base, compress

STATUS = """\
Package: openssl
Status: install ok installed
Architecture: amd64
Version: 3.0.11-1~deb12u2
Description: Secure Sockets Layer toolkit
 a continuation line: Version: not-this

Package: removed-tool
Status: deinstall ok config-files
Version: 1.0

Package: bash
Status: install ok installed
Architecture: amd64
Version: 5.2.15-2+b2
"""


def test_only_installed_packages_are_listed_in_name_order() -> None:
    assert packages.entries(parse_status(STATUS.encode())) == [
        {"name": "bash", "version": "5.2.15-2+b2", "architecture": "amd64"},
        {"name": "openssl", "version": "3.0.11-1~deb12u2", "architecture": "amd64"},
    ]


def test_an_image_without_a_package_database_has_no_list(mini_base: BuiltBase) -> None:
    assert packages.package_list(open_image(mini_base.tag)) is None


def test_the_package_list_comes_only_from_proven_layer_bytes(tmp_path: Path) -> None:
    """A config that lies about the layer holding the dpkg database: the attested package
    list would state what the registry's bytes never proved, so reading it fails."""
    layer = bootable_base(Layer().file("/usr/lib/sysimage/dpkg/status", STATUS.encode()))
    blob, media_type = compress(layer.tar(), "gzip")
    writer = LayoutWriter(tmp_path / "lying")
    other = "sha256:" + hashlib.sha256(b"another image's layer").hexdigest()
    writer.add_image([writer.add_bytes(blob, media_type)], [other], labels=BOOTABLE, tag="v1")
    with pytest.raises(LayerError, match="diff"):
        packages.package_list(open_image(f"oci:{tmp_path / 'lying'}:v1"))
