"""The package model shared by the rpm and dpkg readers.

One shape for both kinds, so that comparing two images ("what will this reboot change") does
not care which package manager wrote the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

Kind = Literal["rpm", "deb"]


@dataclass(frozen=True)
class ChangelogEntry:
    """One changelog entry, newest first in a package's tuple.

    ``time`` is seconds since the epoch (rpm stores a day; dpkg the full date), None when the
    date cannot be read. ``version`` is the version the entry is for, when it says one.
    """

    time: int | None
    author: str
    text: str
    version: str | None = None


@dataclass(frozen=True)
class Package:
    """An installed package.

    ``epoch`` is None when the package has none (comparisons treat that as 0). For a Debian
    package ``version`` is the upstream version and ``release`` the Debian revision ("" for a
    native package); ``size`` is bytes (dpkg's Installed-Size is KiB, so it is rounded to KiB).
    ``source`` is the source package: the source rpm's file name, or the dpkg source name.
    """

    name: str
    epoch: int | None
    version: str
    release: str
    arch: str
    size: int
    license: str
    source: str
    changelog: tuple[ChangelogEntry, ...]
    kind: Kind
    buildtime: int | None = None
    installtime: int | None = None
    #: Absolute paths of the files the package owns (rpm only; empty when not read).
    files: tuple[str, ...] = field(default=(), repr=False)

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
