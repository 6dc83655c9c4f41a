"""Debian's package database: ``var/lib/dpkg/status`` and each package's changelog.

The one dpkg reader (the package attestation and ``nestbuild changelog`` use it). Both inputs
come from an image: sizes are capped, text is decoded leniently, and any malformed input is a
PackageDbError.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild._pkgdb.vercmp import parse_deb_version

#: Where dpkg keeps its status file (an ostree-native image moves it under /usr).
STATUS_PATHS = ("usr/lib/sysimage/dpkg/status", "var/lib/dpkg/status")
MAX_STATUS = 256 << 20
#: A changelog larger than this once decompressed is refused (the biggest in Debian are a few
#: MiB); the compressed size is capped by the same number.
MAX_CHANGELOG = 16 << 20
#: Package states whose files are on disk (dpkg(1) "package states"); "config-files" and
#: "not-installed" have only configuration or nothing.
ON_DISK = frozenset({"installed", "unpacked", "half-configured", "triggers-awaited",
                     "triggers-pending", "half-installed"})


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs: ``Field: value`` with continuation lines folded in with newlines."""
    out: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                out.append(fields)
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line[1:]
        elif ":" in line:
            key, _, value = line.partition(":")
            last = key.strip()
            fields.setdefault(last, value.strip())
        else:
            last = None  # not deb822; skipped like dpkg's parser would refuse it
    if fields:
        out.append(fields)
    return out


def parse_status(data: bytes, *, what: str = "dpkg status") -> list[Package]:
    """The packages whose files are installed, in name order (then architecture)."""
    if len(data) > MAX_STATUS:
        raise PackageDbError(f"{what}: {len(data)} bytes (limit {MAX_STATUS})")
    packages = []
    for fields in parse_stanzas(data.decode("utf-8", "replace")):
        name = fields.get("Package", "")
        status = fields.get("Status", "").split()
        if not name or len(status) != 3 or status[2] not in ON_DISK:
            continue
        try:
            v = parse_deb_version(fields.get("Version", ""))
        except PackageDbError as exc:
            raise PackageDbError(f"{what}: package {name}: {exc.message}") from None
        packages.append(Package(
            name=name, epoch=v.epoch if ":" in fields["Version"] else None,
            version=v.upstream, release=v.revision, arch=fields.get("Architecture", ""),
            size=_kib(fields.get("Installed-Size", "")) * 1024,
            license="",  # dpkg does not record it (it is in copyright files, free-form)
            source=_source_name(fields.get("Source", ""), name), changelog=(), kind="deb"))
    return sorted(packages, key=lambda p: (p.name, p.arch))


def _kib(text: str) -> int:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 15 else 0


def _source_name(field: str, name: str) -> str:
    """``Source: glibc (2.36-9)`` names the source glibc; no field means the same name."""
    return field.split(" ", 1)[0].strip() or name


def changelog_paths(name: str, arch: str = "") -> tuple[str, ...]:
    """Where a package's Debian changelog may be, most specific first (a binNMU rebuild
    keeps its own entries in ``changelog.Debian.ARCH.gz``)."""
    base = f"usr/share/doc/{name}/changelog.Debian"
    return ((f"{base}.{arch}.gz",) if arch else ()) + (f"{base}.gz",)


def gunzip(data: bytes, *, limit: int = MAX_CHANGELOG, what: str = "changelog") -> bytes:
    """Every gzip member of ``data``, refusing more than ``limit`` bytes out."""
    if len(data) > limit:
        raise PackageDbError(f"{what}: {len(data)} bytes compressed (limit {limit})")
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(wbits=31)
            chunk = d.decompress(rest, limit - size + 1)
            size += len(chunk)
            out.append(chunk)
            if size > limit:
                raise PackageDbError(f"{what}: more than {limit} bytes decompressed")
            if not d.eof:
                if d.unconsumed_tail:
                    raise PackageDbError(f"{what}: more than {limit} bytes decompressed")
                raise PackageDbError(f"{what}: truncated gzip data")
            rest = d.unused_data.lstrip(b"\0")  # gzip allows zero padding between members
    except zlib.error as exc:
        raise PackageDbError(f"{what}: not gzip data ({exc})") from None
    return b"".join(out)


_HEADER = re.compile(r"^(\S+) \(([^()\s]+)\)")
_TRAILER = re.compile(r"^ -- (.*)$")


def parse_changelog(data: bytes, *, compressed: bool = True,
                    what: str = "changelog") -> tuple[ChangelogEntry, ...]:
    """Entries of a Debian changelog, newest first, as the file lists them.

    Each is ``PKG (VERSION) DIST; urgency=U``, indented text, and `` -- Author <mail>  DATE``.
    The free-form history some files keep after the last entry ("Old Changelog:") is left out.
    """
    raw = gunzip(data, what=what) if compressed else data
    if len(raw) > MAX_CHANGELOG:
        raise PackageDbError(f"{what}: {len(raw)} bytes (limit {MAX_CHANGELOG})")
    return tuple(_entries(raw.decode("utf-8", "replace").splitlines()))


def _entries(lines: Iterable[str]) -> Iterable[ChangelogEntry]:
    version: str | None = None
    body: list[str] = []
    for line in lines:
        if version is None:
            m = _HEADER.match(line)
            if m:
                version, body = m.group(2), []
            elif line.startswith(("Old Changelog:", "Local variables:")):
                return
            continue
        m = _TRAILER.match(line)
        if m:
            author, date = _split_trailer(m.group(1))
            yield ChangelogEntry(time=_date(date), author=author,
                                 text="\n".join(body).strip("\n"), version=version)
            version = None
        else:
            body.append(line)


def _split_trailer(text: str) -> tuple[str, str]:
    """``Name <mail>  Mon, 01 Jan 2024 ...``: the author ends at the mail's ``>`` (policy asks
    for two spaces before the date, which some files lack)."""
    if ">" in text:
        author, _, date = text.partition(">")
        return author.strip() + ">", date.strip()
    author, _, date = text.partition("  ")
    return author.strip(), date.strip()


def _date(text: str) -> int | None:
    import email.utils  # changelogs only: the status file (every validate) needs no dates

    try:
        return int(email.utils.parsedate_to_datetime(text.strip()).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
