"""rpm's installed-package database, read from an image without rpm and without trusting it.

Supported backends, by what the target systems ship:

- **sqlite** (``rpmdb.sqlite``, table ``Packages(hnum, blob)``): rpm >= 4.16's default, Fedora
  33+, Fedora CoreOS, Fedora/CentOS Stream bootc images, RHEL 9 family.
- **Berkeley DB hash** (``Packages``): rpm <= 4.15 and the RHEL 8 family, which includes
  Alibaba Cloud Linux 3, the base of LifseaOS (see :mod:`nestbuild._pkgdb.bdb`).
- **ndb** (``Packages.db``): openEuler's rpm carries a patch making ndb its backend
  (openEuler 22.03 LTS, NestOS built from it); see :mod:`nestbuild._pkgdb.ndb`. Debian's rpm
  is built without ndb, so this reader is checked against rpm's documented layout (files made
  by the tests), not against rpm itself as the other two are.

The sqlite file is opened from a private copy, read-only and ``immutable`` (no locks, no
journal replay into the image), with untrusted schema objects disabled and a bound on the work
a query may do; a ``-wal`` file beside it, when the image has one, is replayed into the copy.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Final, Literal
from urllib.parse import quote

from nestbuild._pkgdb import bdb, ndb
from nestbuild._pkgdb.dpkg import STATUS_PATHS
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.header import parse_package
from nestbuild._pkgdb.model import Package
from nestbuild._util.record import Value

Format = Literal["rpm-sqlite", "rpm-bdb", "rpm-ndb", "dpkg"]

#: Where rpm's database lives, in the order looked at: rpm >= 4.17 and bootc/Fedora images
#: use /usr/lib/sysimage/rpm (/var/lib/rpm a symlink to it), rpm-ostree systems before that
#: /usr/share/rpm, classic systems /var/lib/rpm.
RPM_DIRS = ("usr/lib/sysimage/rpm", "usr/share/rpm", "var/lib/rpm")
RPM_FILES: tuple[tuple[str, Format], ...] = (
    ("rpmdb.sqlite", "rpm-sqlite"), ("Packages.db", "rpm-ndb"), ("Packages", "rpm-bdb"))
#: Largest database file read (a full Fedora workstation's is ~150 MiB).
MAX_DB = 1 << 30
MAX_HEADER = bdb.MAX_VALUE
MAX_PACKAGES = 1 << 20
#: sqlite virtual-machine steps (in thousands) one read may take before it is abandoned.
MAX_SQLITE_STEPS = 1 << 16
SQLITE_MAGIC = b"SQLite format 3\0"


class DbLocation(Value):
    """The file to read for an image's package database, and its format."""

    path: Final[str]
    format: Final[Format]
    #: The sqlite write-ahead log beside it, when the image has one.
    wal: Final[str | None]

    def __init__(self, path: str, format: Format, wal: str | None = None) -> None:
        self.path = path
        self.format = format
        self.wal = wal


def locate(paths: Collection[str]) -> DbLocation | None:
    """Which file holds the image's package database, given the image's paths (a mapping of
    them works too); paths are relative to the root, with or without a leading ``/``.

    rpm wins over dpkg (an rpm image may carry dpkg's tools, never the reverse in practice);
    in one directory sqlite wins over ndb and Berkeley DB, which a conversion leaves behind.
    """
    def has(p: str) -> bool:
        return p in paths or f"/{p}" in paths or f"./{p}" in paths

    for d in RPM_DIRS:
        for name, fmt in RPM_FILES:
            path = f"{d}/{name}"
            if has(path):
                wal = f"{path}-wal" if fmt == "rpm-sqlite" and has(f"{path}-wal") else None
                return DbLocation(path, fmt, wal)
    for path in STATUS_PATHS:
        if has(path):
            return DbLocation(path, "dpkg")
    return None


def detect(data: bytes) -> Format:
    """The rpm database format of a file's content, by its magic."""
    if data.startswith(SQLITE_MAGIC):
        return "rpm-sqlite"
    if ndb.is_ndb(data):
        return "rpm-ndb"
    if bdb.is_bdb_hash(data):
        return "rpm-bdb"
    raise PackageDbError("not an rpm database (neither sqlite, Berkeley DB nor ndb)")


def read_rpmdb(data: bytes, *, wal: bytes | None = None, what: str = "rpm database",
               files: bool = True) -> list[Package]:
    """The installed packages of an rpm database file's content, in database order."""
    return [parse_package(blob, what=f"{what}: package {hnum}", files=files)
            for hnum, blob in read_headers(data, wal=wal, what=what)]


def read_headers(data: bytes, *, wal: bytes | None = None,
                 what: str = "rpm database") -> list[tuple[int, bytes]]:
    """(instance number, header blob) of every package, in instance order."""
    if len(data) > MAX_DB:
        raise PackageDbError(f"{what}: {len(data)} bytes (limit {MAX_DB})")
    fmt = detect(data)
    if fmt == "rpm-sqlite":
        return _sqlite_headers(data, wal, what)
    if fmt == "rpm-bdb":
        return _bdb_headers(data, what)
    found = ndb.blobs(data, what=what)
    if len(found) > MAX_PACKAGES:
        raise PackageDbError(f"{what}: more than {MAX_PACKAGES} packages")
    return found


def read_rpmdb_file(path: Path, *, files: bool = True) -> list[Package]:
    """Like :func:`read_rpmdb` for a file on disk (a ``-wal`` beside it is applied); the path
    itself must not be a symlink, and only regular files are read."""
    wal_path = path.with_name(path.name + "-wal")
    wal = _read_regular(wal_path) if os.path.lexists(wal_path) else None
    return read_rpmdb(_read_regular(path), wal=wal or None, what=str(path), files=files)


def _read_regular(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PackageDbError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PackageDbError(f"{path}: not a regular file")
        data = f.read(MAX_DB + 1)
    if len(data) > MAX_DB:
        raise PackageDbError(f"{path}: larger than {MAX_DB} bytes")
    return data


def _bdb_headers(data: bytes, what: str) -> list[tuple[int, bytes]]:
    order: Literal["little", "big"] = \
        "little" if data[12:16] == b"\x61\x15\x06\x00" else "big"
    out: dict[int, bytes] = {}
    for key, value in bdb.records(data, what=what):
        if len(key) != 4:
            raise PackageDbError(f"{what}: a key of {len(key)} bytes")
        hnum = int.from_bytes(key, order)
        if hnum == 0:
            continue  # rpm's counter of the next instance number, not a package
        out.setdefault(hnum, value)
        if len(out) > MAX_PACKAGES:
            raise PackageDbError(f"{what}: more than {MAX_PACKAGES} packages")
    return sorted(out.items())


def _sqlite_headers(data: bytes, wal: bytes | None, what: str) -> list[tuple[int, bytes]]:
    with tempfile.TemporaryDirectory(prefix="nestbuild-rpmdb-") as tmp:
        db = Path(tmp, "rpmdb.sqlite")
        db.write_bytes(data)
        if wal:
            Path(tmp, "rpmdb.sqlite-wal").write_bytes(wal)
            # the copy is ours: opening it writable lets sqlite replay the log into it
            uri = f"file:{quote(str(db))}?mode=rw"
        else:
            uri = f"file:{quote(str(db))}?mode=ro&immutable=1"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise PackageDbError(f"{what}: cannot open ({exc})") from None
        try:
            return _query(conn, what)
        except sqlite3.Error as exc:
            raise PackageDbError(f"{what}: {exc}") from None
        finally:
            conn.close()


def _query(conn: sqlite3.Connection, what: str) -> list[tuple[int, bytes]]:
    steps = 0

    def budget() -> int:
        nonlocal steps
        steps += 1
        return 1 if steps > MAX_SQLITE_STEPS else 0  # non-zero aborts the statement

    conn.set_progress_handler(budget, 1000)
    conn.execute("PRAGMA trusted_schema = OFF")
    conn.execute("PRAGMA cell_size_check = ON")
    kind = conn.execute(
        "SELECT type FROM sqlite_master WHERE name = 'Packages'").fetchone()
    if kind is None or kind[0] != "table":
        raise PackageDbError(f"{what}: no Packages table")
    out: list[tuple[int, bytes]] = []
    cursor = conn.execute("SELECT hnum, length(blob), blob FROM Packages ORDER BY hnum")
    while rows := cursor.fetchmany(256):
        for hnum, size, blob in rows:
            if not isinstance(hnum, int) or not isinstance(blob, bytes):
                raise PackageDbError(f"{what}: a Packages row is not (integer, blob)")
            if size > MAX_HEADER:
                raise PackageDbError(f"{what}: package {hnum}: header of {size} bytes")
            out.append((hnum, blob))
        if len(out) > MAX_PACKAGES:
            raise PackageDbError(f"{what}: more than {MAX_PACKAGES} packages")
    return out
