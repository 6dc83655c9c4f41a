"""The package model shared by the rpm and dpkg readers.

One shape for both kinds, so that comparing two images ("what will this reboot change") does
not care which package manager wrote the database.
"""

from __future__ import annotations

from typing import Final, Literal
from urllib.parse import quote

from nestbuild._util.record import Value

Kind = Literal["rpm", "deb"]


class ChangelogEntry(Value):
    """One changelog entry, newest first in a package's tuple.

    ``time`` is seconds since the epoch (rpm stores a day; dpkg the full date), None when the
    date cannot be read. ``version`` is the version the entry is for, when it says one.
    """

    time: Final[int | None]
    author: Final[str]
    text: Final[str]
    version: Final[str | None]

    def __init__(self, time: int | None, author: str, text: str,
                 version: str | None = None) -> None:
        self.time = time
        self.author = author
        self.text = text
        self.version = version


class Package(Value):
    """An installed package.

    ``epoch`` is None when the package has none (comparisons treat that as 0). For a Debian
    package ``version`` is the upstream version and ``release`` the Debian revision ("" for a
    native package); ``size`` is bytes (dpkg's Installed-Size is KiB, so it is rounded to KiB).
    ``source`` is the source package: the source rpm's file name, or the dpkg source name.
    """

    _hidden = ("files",)
    name: Final[str]
    epoch: Final[int | None]
    version: Final[str]
    release: Final[str]
    arch: Final[str]
    size: Final[int]
    license: Final[str]
    source: Final[str]
    changelog: Final[tuple[ChangelogEntry, ...]]
    kind: Final[Kind]
    buildtime: Final[int | None]
    installtime: Final[int | None]
    #: Absolute paths of the files the package owns (rpm only; empty when not read).
    files: Final[tuple[str, ...]]

    def __init__(self, name: str, epoch: int | None, version: str, release: str, arch: str,
                 size: int, license: str, source: str, changelog: tuple[ChangelogEntry, ...],
                 kind: Kind, buildtime: int | None = None, installtime: int | None = None,
                 files: tuple[str, ...] = ()) -> None:
        self.name = name
        self.epoch = epoch
        self.version = version
        self.release = release
        self.arch = arch
        self.size = size
        self.license = license
        self.source = source
        self.changelog = changelog
        self.kind = kind
        self.buildtime = buildtime
        self.installtime = installtime
        self.files = files

    @property
    def evr(self) -> str:
        """``[epoch:]version[-release]`` as each tool prints it."""
        out = f"{self.epoch}:" if self.epoch is not None else ""
        out += self.version
        if self.release or self.kind == "rpm":
            out += f"-{self.release}"
        return out

    def purl(self, namespace: str | None = None) -> str:
        """The package URL (purl-spec): ``pkg:rpm/fedora/bash@5.2.26-3.fc40?arch=x86_64``.

        ``namespace`` is the distribution ("fedora", "openeuler", "debian"); the package
        database does not say which. rpm's epoch is a qualifier, dpkg's is part of the version.
        """
        ns = f"{quote(namespace, safe='')}/" if namespace else ""
        qualifiers = []
        if self.kind == "rpm":
            version = f"{self.version}-{self.release}"
            if self.arch:
                qualifiers.append(f"arch={quote(self.arch, safe='')}")
            if self.epoch is not None:
                qualifiers.append(f"epoch={self.epoch}")
        else:
            version = self.evr
            if self.arch:
                qualifiers.append(f"arch={quote(self.arch, safe='')}")
        query = f"?{'&'.join(qualifiers)}" if qualifiers else ""
        return f"pkg:{self.kind}/{ns}{quote(self.name, safe='')}@{quote(version, safe=':')}{query}"
