"""Reading an image's dpkg database for the package attestation."""

from __future__ import annotations

from nestbuild import packages
from nestbuild.baseimage import BuiltBase
from nestbuild.image import open_image

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
    assert packages.parse_dpkg_status(STATUS) == [
        {"name": "bash", "version": "5.2.15-2+b2", "architecture": "amd64"},
        {"name": "openssl", "version": "3.0.11-1~deb12u2", "architecture": "amd64"},
    ]


def test_an_image_without_a_package_database_has_no_list(mini_base: BuiltBase) -> None:
    assert packages.package_list(open_image(mini_base.tag)) is None
