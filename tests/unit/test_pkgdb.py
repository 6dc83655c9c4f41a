"""Package database readers: rpm headers, sqlite and Berkeley DB rpmdbs, dpkg status and
changelogs, version order, the common model; hostile input yields PackageDbError only.

The real rpm and dpkg check the same code in tests/integration/test_pkgdb_real.py; here the
inputs are made by small writers of the formats, so the checks stay pure and fast.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestbuild._pkgdb import bdb, header, ndb
from nestbuild._pkgdb.changes import entries_since
from nestbuild._pkgdb.dpkg import changelog_paths, gunzip, parse_changelog, parse_status
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.header import (
    INT16,
    INT32,
    INT64,
    STRING,
    STRING_ARRAY,
    Header,
    parse_package,
)
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild._pkgdb.rpmdb import DbLocation, detect, locate, read_headers, read_rpmdb
from nestbuild._pkgdb.vercmp import (
    compare_deb,
    compare_rpm,
    parse_deb_version,
    parse_rpm_evr,
)
from nestbuild.errors import ImageError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None)

# --- writers of the formats --------------------------------------------------------------


def header_blob(entries: Sequence[tuple[int, int, object]]) -> bytes:
    """An rpm header blob (as a database stores it) with entries (tag, type, value)."""
    index, data = [], bytearray()
    for tag, typ, value in entries:
        align = {INT16: 2, INT32: 4, INT64: 8}.get(typ, 1)
        data += b"\0" * (-len(data) % align)
        offset = len(data)
        if typ == STRING:
            assert isinstance(value, str)
            data += value.encode() + b"\0"
            count = 1
        elif typ in (STRING_ARRAY, header.I18NSTRING):
            assert isinstance(value, list)
            for v in value:
                data += v.encode() + b"\0"
            count = len(value)
        else:
            assert isinstance(value, list)
            code = {header.INT8: "B", INT16: "H", INT32: "I", INT64: "Q"}[typ]
            data += struct.pack(f">{len(value)}{code}", *value)
            count = len(value)
        index.append(struct.pack(">iIiI", tag, typ, offset, count))
    return struct.pack(">II", len(index), len(data)) + b"".join(index) + bytes(data)


@functools.cache
def package_blob(name: str = "bash", *, epoch: int | None = 1, version: str = "5.2.26",
                 release: str = "3.fc40", changelog: int = 2, files: bool = True) -> bytes:
    entries: list[tuple[int, int, object]] = [
        (header.NAME, STRING, name), (header.VERSION, STRING, version),
        (header.RELEASE, STRING, release), (header.ARCH, STRING, "x86_64"),
        (header.SIZE, INT32, [8_000_000]), (header.LICENSE, STRING, "GPL-3.0-or-later"),
        (header.SOURCERPM, STRING, f"{name}-{version}-{release}.src.rpm"),
        (header.BUILDTIME, INT32, [1_700_000_000]), (header.INSTALLTIME, INT32, [4_000_000_000]),
    ]
    if epoch is not None:
        entries.append((header.EPOCH, INT32, [epoch]))
    if changelog:
        entries += [
            (header.CHANGELOGTIME, INT32, [1_700_000_000 - i * 86400 for i in range(changelog)]),
            (header.CHANGELOGNAME, STRING_ARRAY,
             [f"Jane Doe <jane@example.org> - {version}-{i}" for i in range(changelog)]),
            (header.CHANGELOGTEXT, STRING_ARRAY, [f"- change {i}\n- ünïcode" for i in
                                                  range(changelog)]),
        ]
    if files:
        entries += [
            (header.DIRINDEXES, INT32, [0, 1, 1]),
            (header.BASENAMES, STRING_ARRAY, ["bash", "README", "COPYING"]),
            (header.DIRNAMES, STRING_ARRAY, ["/usr/bin/", f"/usr/share/doc/{name}/"]),
        ]
    return header_blob(entries)


def sqlite_db(path: Path, rows: list[tuple[int, bytes]], *, wal: bool = False) -> None:
    """An rpmdb.sqlite as rpm >= 4.16 lays it out (the tables the reader uses)."""
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB)")
    conn.execute("CREATE TABLE Name (key TEXT, hnum INTEGER, idx INTEGER)")
    conn.executemany("INSERT INTO Packages VALUES (?, ?)", rows)
    if not wal:
        conn.close()
    else:
        # leave the rows in the log: copy the files while the connection is still open
        path.with_name(path.name + ".main").write_bytes(path.read_bytes())
        path.with_name(path.name + ".wal").write_bytes(
            path.with_name(path.name + "-wal").read_bytes())
        conn.close()


def bdb_hash(records: list[tuple[bytes, bytes]], *, pagesize: int = 4096,
             order: str = "<") -> bytes:
    """A Berkeley DB hash file with one key/value pair per page, long values off-page."""
    pages: list[bytes] = []
    overflow_pages: list[bytes] = []
    first_overflow = 1 + len(records)

    def page(pgno: int, nxt: int, entries: int, hf: int, ptype: int, body: bytes) -> bytes:
        head = struct.pack(f"{order}8xIIIHHBB", pgno, 0, nxt, entries, hf, 0, ptype)
        return (head + body).ljust(pagesize, b"\0")

    room = pagesize - 26
    for n, (key, value) in enumerate(records):
        items = [b"\x01" + key]
        if len(value) + 1 + 26 + 4 + len(key) + 1 < pagesize:
            items.append(b"\x01" + value)
        else:
            pgno = first_overflow + len(overflow_pages)
            items.append(struct.pack(f"{order}B3xII", 3, pgno, len(value)))
            chunks = [value[i:i + room] for i in range(0, len(value), room)]
            for i, chunk in enumerate(chunks):
                nxt = pgno + i + 1 if i + 1 < len(chunks) else 0
                overflow_pages.append(page(pgno + i, nxt, 0, len(chunk), bdb.P_OVERFLOW, chunk))
        raw = bytearray(pagesize)
        end, offsets = pagesize, []
        for item in items:
            end -= len(item)
            raw[end:end + len(item)] = item
            offsets.append(end)
        body = struct.pack(f"{order}{len(offsets)}H", *offsets)
        pg = bytearray(page(1 + n, 0, len(offsets), end, bdb.P_HASH, body))
        pg[end:] = raw[end:]
        pages.append(bytes(pg))
    last = len(pages) + len(overflow_pages)
    meta = struct.pack(f"{order}8xIIIIBBBxIII", 0, bdb.HASH_MAGIC, 9, pagesize, 0,
                       bdb.P_HASHMETA, 0, 0, last, 0)
    return b"".join([meta.ljust(pagesize, b"\0"), *pages, *overflow_pages])


# --- rpm headers -------------------------------------------------------------------------


def test_a_header_gives_the_package_its_changelog_and_files() -> None:
    pkg = parse_package(package_blob())
    assert (pkg.name, pkg.epoch, pkg.version, pkg.release, pkg.arch) == \
        ("bash", 1, "5.2.26", "3.fc40", "x86_64")
    assert (pkg.size, pkg.license, pkg.source, pkg.kind) == \
        (8_000_000, "GPL-3.0-or-later", "bash-5.2.26-3.fc40.src.rpm", "rpm")
    assert pkg.installtime == 4_000_000_000  # unsigned: past 2038
    assert [(e.time, e.version) for e in pkg.changelog] == \
        [(1_700_000_000, "5.2.26-0"), (1_699_913_600, "5.2.26-1")]
    assert pkg.changelog[0].author == "Jane Doe <jane@example.org> - 5.2.26-0"
    assert pkg.changelog[0].text == "- change 0\n- ünïcode"
    assert pkg.files == ("/usr/bin/bash", "/usr/share/doc/bash/README",
                         "/usr/share/doc/bash/COPYING")
    assert parse_package(package_blob(), files=False).files == ()


def test_no_epoch_no_changelog_and_longsize() -> None:
    blob = package_blob(epoch=None, changelog=0, files=False)
    pkg = parse_package(blob)
    assert (pkg.epoch, pkg.changelog, pkg.files, pkg.evr) == (None, (), (), "5.2.26-3.fc40")
    big = header_blob([(header.NAME, STRING, "k"), (header.VERSION, STRING, "1"),
                       (header.RELEASE, STRING, "1"), (header.SIZE, INT32, [1]),
                       (header.LONGSIZE, INT64, [5 << 32])])
    assert parse_package(big).size == 5 << 32


def test_i18n_strings_read_the_c_locale() -> None:
    blob = header_blob([(header.NAME, STRING, "x"), (header.VERSION, STRING, "1"),
                        (header.RELEASE, STRING, "1"),
                        (1004, header.I18NSTRING, ["summary", "résumé"])])
    assert Header(blob).string(1004) == "summary"


@pytest.mark.parametrize(("blob", "cause"), [
    (b"", "truncated"),
    (struct.pack(">II", 0, 0), "0 index entries"),
    (struct.pack(">II", 70000, 0), "70000 index entries"),
    (struct.pack(">II", 1, 0x10000000), "bytes of data"),
    (struct.pack(">II", 2, 4) + b"\0" * 16, "says 2 entries"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 6, 5, 1) + b"x\0\0\0", "outside the data store"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 6, -1, 1) + b"x\0\0\0", "outside the data store"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 11, 0, 1) + b"x\0\0\0", "unknown type"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 6, 0, 0) + b"x\0\0\0", "no elements"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 6, 0, 1) + b"xyzw", "unterminated"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 4, 0, 1) + b"\0\0\0\1", "type 4"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 6, 0, 2) + b"x\0y\0", "2 elements"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 8, 0, 10) + b"x\0y\0", "runs past"),
    (struct.pack(">IIiIiI", 1, 4, 1000, 8, 0, 1 << 21) + b"x\0y\0", "elements"),
])
def test_malformed_headers_fail_with_a_cause(blob: bytes, cause: str) -> None:
    with pytest.raises(PackageDbError, match=cause):
        parse_package(blob)


def test_inconsistent_changelog_and_file_lists_are_refused() -> None:
    base = [(header.NAME, STRING, "x"), (header.VERSION, STRING, "1"),
            (header.RELEASE, STRING, "1")]
    ints_past_end = [*base, (header.EPOCH, INT32, [1])]
    blob = bytearray(header_blob(ints_past_end))
    struct.pack_into(">I", blob, 8 + 16 * 3 + 12, 1000)  # the epoch's count
    with pytest.raises(PackageDbError, match="runs past"):
        parse_package(bytes(blob))
    with pytest.raises(PackageDbError, match="changelog has 2 times, 1 names"):
        parse_package(header_blob([
            *base, (header.CHANGELOGTIME, INT32, [1, 2]),
            (header.CHANGELOGNAME, STRING_ARRAY, ["a"]),
            (header.CHANGELOGTEXT, STRING_ARRAY, ["t"])]))
    with pytest.raises(PackageDbError, match="directory index is out of range"):
        parse_package(header_blob([
            *base, (header.DIRINDEXES, INT32, [3]), (header.BASENAMES, STRING_ARRAY, ["f"]),
            (header.DIRNAMES, STRING_ARRAY, ["/"])]))
    with pytest.raises(PackageDbError, match="no name"):
        parse_package(header_blob(base[1:]))
    assert issubclass(PackageDbError, ImageError)


@FUZZ
@given(st.data())
def test_mutated_headers_raise_only_package_db_errors(data: st.DataObject) -> None:
    blob = bytearray(package_blob())
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    with contextlib.suppress(PackageDbError):
        parse_package(bytes(blob[:cut] if data.draw(st.booleans()) else blob))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_package_db_errors(blob: bytes) -> None:
    with contextlib.suppress(PackageDbError):
        parse_package(blob)


def ndb_file(records: list[tuple[int, bytes]], slotpages: int = 1) -> bytes:
    """rpm's ndb Packages.db: header, slot pages, then the blobs in 16-byte blocks."""
    data = bytearray(slotpages * ndb.PAGE)
    data[:32] = struct.pack("<4s4I12x", b"RpmP", 0, 3, slotpages, len(records) + 1)
    for off in range(32, len(data), 16):
        data[off:off + 4] = b"Slot"
    for n, (idx, blob) in enumerate(records):
        blkoff = len(data) // 16
        body = struct.pack("<4s3I", b"BlbS", idx, 7, len(blob)) + blob
        body += b"\0" * (-(len(body) + 12) % 16)
        data += body + struct.pack("<2I4s", zlib.adler32(body), len(blob), b"BlbE")
        struct.pack_into("<4s3I", data, 32 + 16 * n, b"Slot", idx, blkoff,
                         (len(data) // 16) - blkoff)
    return bytes(data)


@functools.cache
def small_ndb() -> bytes:
    return ndb_file([(i + 1, package_blob(f"p{i}", changelog=20)) for i in range(3)])


@functools.cache
def small_bdb() -> bytes:
    return bdb_hash([(struct.pack("<I", i + 1), package_blob(f"p{i}", changelog=20))
                     for i in range(3)], pagesize=512)


# --- rpm databases -----------------------------------------------------------------------


def test_sqlite_rpmdb_is_read_in_instance_order(tmp_path: Path) -> None:
    db = tmp_path / "rpmdb.sqlite"
    sqlite_db(db, [(7, package_blob("zsh")), (3, package_blob("bash"))])
    assert detect(db.read_bytes()) == "rpm-sqlite"
    assert [p.name for p in read_rpmdb(db.read_bytes())] == ["bash", "zsh"]
    assert [h for h, _ in read_headers(db.read_bytes())] == [3, 7]


def test_sqlite_write_ahead_log_is_replayed(tmp_path: Path) -> None:
    db = tmp_path / "rpmdb.sqlite"
    sqlite_db(db, [(1, package_blob("bash"))], wal=True)
    main = tmp_path.joinpath("rpmdb.sqlite.main").read_bytes()
    wal = tmp_path.joinpath("rpmdb.sqlite.wal").read_bytes()
    assert wal
    assert [p.name for p in read_rpmdb(main, wal=wal)] == ["bash"]


def test_sqlite_without_a_packages_table_or_with_bad_rows(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (hnum INTEGER, blob BLOB)")
    conn.execute("CREATE VIEW Packages AS SELECT hnum, blob FROM t")
    conn.commit()
    conn.close()
    with pytest.raises(PackageDbError, match="no Packages table"):
        read_rpmdb(db.read_bytes())
    db2 = tmp_path / "b.sqlite"
    conn = sqlite3.connect(db2)
    conn.execute("CREATE TABLE Packages (hnum, blob)")
    conn.execute("INSERT INTO Packages VALUES ('x', 'text')")
    conn.commit()
    conn.close()
    with pytest.raises(PackageDbError, match="not \\(integer, blob\\)"):
        read_rpmdb(db2.read_bytes())


@pytest.fixture(scope="module")
def small_sqlite(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    db = tmp_path_factory.mktemp("db") / "rpmdb.sqlite"
    sqlite_db(db, [(1, package_blob("bash")), (2, package_blob("zsh"))])
    return db.read_bytes()


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(data=st.data())
def test_corrupt_sqlite_raises_only_package_db_errors(small_sqlite: bytes,
                                                      data: st.DataObject) -> None:
    raw = bytearray(small_sqlite)
    for _ in range(data.draw(st.integers(1, 40))):
        i = data.draw(st.integers(16, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.sampled_from([len(raw), len(raw) // 2, 4096, 100]))
    with contextlib.suppress(PackageDbError):
        read_rpmdb(bytes(raw[:cut]))


@pytest.mark.parametrize(("pagesize", "order"), [(512, "<"), (4096, ">"), (65536, "<")])
def test_berkeley_db_hash_is_read_inline_and_off_page(pagesize: int, order: str) -> None:
    blobs = [package_blob(f"p{i}", changelog=i * 40) for i in range(4)]
    records = [(struct.pack(f"{order}I", 0), struct.pack(f"{order}I", 5))]  # rpm's counter
    records += [(struct.pack(f"{order}I", i + 1), b) for i, b in enumerate(blobs)]
    data = bdb_hash(records, pagesize=pagesize, order=order)
    assert detect(data) == "rpm-bdb"
    assert [p.name for p in read_rpmdb(data)] == ["p0", "p1", "p2", "p3"]
    assert read_headers(data) == [(i + 1, b) for i, b in enumerate(blobs)]


def test_berkeley_db_bad_structures_fail_with_a_cause() -> None:
    blob = package_blob(changelog=30)
    good = bdb_hash([(struct.pack("<I", 1), blob)], pagesize=512)
    loop = bytearray(good)
    struct.pack_into("<I", loop, 2 * 512 + 16, 2)  # first overflow page points at itself
    with pytest.raises(PackageDbError, match="broken overflow chain"):
        read_rpmdb(bytes(loop))
    far = bytearray(good)
    struct.pack_into("<I", far, 2 * 512 + 16, 99999)
    with pytest.raises(PackageDbError, match="broken overflow chain"):
        read_rpmdb(bytes(far))
    entries = bytearray(good)
    struct.pack_into("<H", entries, 512 + 20, 1000)
    with pytest.raises(PackageDbError, match="1000 entries"):
        read_rpmdb(bytes(entries))
    # ten small values turned into pointers at the big value's overflow chain: each page
    # would be read ten times over, so the values add up to more than the file holds
    big = package_blob(changelog=200)
    records = [(struct.pack("<I", 1), big)] + [(struct.pack("<I", i), b"v" * 12)
                                               for i in range(2, 12)]
    shared = bytearray(bdb_hash(records, pagesize=512))
    for pg in range(2, 12):
        start = struct.unpack_from("<H", shared, pg * 512 + 26 + 2)[0]
        struct.pack_into("<B3xII", shared, pg * 512 + start, bdb.H_OFFPAGE, 12, len(big))
    with pytest.raises(PackageDbError, match="more than the file"):
        read_rpmdb(bytes(shared))
    encrypted = bytearray(good)
    encrypted[24] = 1
    with pytest.raises(PackageDbError, match="encrypted"):
        read_rpmdb(bytes(encrypted))
    odd = bytearray(good)
    struct.pack_into("<I", odd, 20, 1000)
    with pytest.raises(PackageDbError, match="page size 1000"):
        read_rpmdb(bytes(odd))


@FUZZ
@given(st.data())
def test_corrupt_berkeley_db_raises_only_package_db_errors(data: st.DataObject) -> None:
    raw = bytearray(small_bdb())
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(PackageDbError):
        read_rpmdb(bytes(raw[:data.draw(st.integers(0, len(raw)))]))


def test_ndb_packages_file_is_read_and_checked() -> None:
    blobs = [(9, package_blob("zsh")), (2, package_blob("bash", changelog=50))]
    data = ndb_file(blobs, slotpages=2)
    assert detect(data) == "rpm-ndb"
    assert [p.name for p in read_rpmdb(data)] == ["bash", "zsh"]
    assert read_headers(data) == sorted(blobs)
    start = 2 * ndb.PAGE
    for offset, value, cause in [
        (start + 40, b"X", "checksum mismatch"),          # a byte of the header blob
        (start + 4, b"\x05", "bad blob head"),            # the head's package index
        (32 + 8, b"\xff\xff", "out of bounds"),           # the first slot's block offset
        (32 + 16, b"Slxx", "bad slot"),                   # the second slot's magic
        (4, b"\x01", "version 1"),
        (12, b"\x09", "9 slot pages"),
    ]:
        bad = bytearray(data)
        bad[offset:offset + len(value)] = value
        with pytest.raises(PackageDbError, match=cause):
            read_rpmdb(bytes(bad))
    shared = bytearray(data)  # the second slot's blob made the first's, as a third package
    shared[32 + 32:32 + 48] = bytes(shared[32:48])
    shared[32 + 36:32 + 40] = struct.pack("<I", 7)
    with pytest.raises(PackageDbError, match="bad blob head"):
        read_rpmdb(bytes(shared))
    twice = ndb_file([(1, package_blob("a")), (1, package_blob("b"))])
    with pytest.raises(PackageDbError, match="two slots for package 1"):
        read_rpmdb(twice)
    with pytest.raises(PackageDbError, match="whole blocks"):
        read_rpmdb(data + b"x")


@FUZZ
@given(st.data())
def test_corrupt_ndb_raises_only_package_db_errors(data: st.DataObject) -> None:
    raw = bytearray(small_ndb())
    for _ in range(data.draw(st.integers(1, 12))):
        i = data.draw(st.sampled_from([data.draw(st.integers(0, 200)),
                                       data.draw(st.integers(0, len(raw) - 1))]))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(PackageDbError):
        read_rpmdb(bytes(raw[:data.draw(st.sampled_from([len(raw), len(raw) - 16, 4096]))]))


def test_unknown_databases_are_refused() -> None:
    with pytest.raises(PackageDbError, match="not an rpm database"):
        read_rpmdb(b"hello")


def test_locate_prefers_the_sysimage_sqlite_and_its_log() -> None:
    fedora = {"usr/lib/sysimage/rpm/rpmdb.sqlite": 1, "usr/lib/sysimage/rpm/rpmdb.sqlite-wal": 1,
              "var/lib/rpm": 1, "usr/bin/bash": 1}
    assert locate(fedora) == DbLocation("usr/lib/sysimage/rpm/rpmdb.sqlite", "rpm-sqlite",
                                        "usr/lib/sysimage/rpm/rpmdb.sqlite-wal")
    assert locate({"/usr/share/rpm/rpmdb.sqlite"}) == \
        DbLocation("usr/share/rpm/rpmdb.sqlite", "rpm-sqlite")
    assert locate(["./var/lib/rpm/Packages"]) == DbLocation("var/lib/rpm/Packages", "rpm-bdb")
    assert locate(["var/lib/rpm/Packages.db", "var/lib/rpm/Index.db"]) == \
        DbLocation("var/lib/rpm/Packages.db", "rpm-ndb")
    assert locate(["var/lib/dpkg/status"]) == DbLocation("var/lib/dpkg/status", "dpkg")
    assert locate(["usr/lib/sysimage/dpkg/status", "var/lib/dpkg/status"]) == \
        DbLocation("usr/lib/sysimage/dpkg/status", "dpkg")
    assert locate(["etc/motd"]) is None


# --- version order -----------------------------------------------------------------------

# (a, b, order) known from rpm's and dpkg's own test suites and documentation
RPM_CASES = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0.1", "2.0", 1), ("2.0", "2.0.1", -1),
    ("5.5p1", "5.5p10", -1), ("xyz10", "xyz10.1", -1), ("1.0aa", "1.0a", 1),
    ("10xyz", "10.1xyz", -1), ("1.0", "1.0a", -1), ("1e.fc33", "1.fc33", -1),
    ("1.0~rc1", "1.0", -1), ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc1~git123", "1.0~rc1", -1),
    ("1.0^", "1.0", 1), ("1.0^git1", "1.0", 1), ("1.0^git1", "1.0.1", -1),
    ("1.0^git1~pre", "1.0^git1", -1), ("1.0~rc1^git1", "1.0~rc1", 1),
    ("1.010", "1.9", 1), ("1.01", "1.1", 0), ("a+", "a_", 0), ("+a", "_a", 0),
    ("1:1.0", "2.0", 1), ("0:1.0", "1.0", 0), (":1.0", "1.0", 0), ("1.0-1", "1.0", 1),
    ("1.0-2", "1.0-10", -1), ("2:1-1", "1:9-9", 1), ("1.0-", "1.0", 1), ("1", "1a", -1),
]
DEB_CASES = [
    ("1.0", "1.0", 0), ("1.0", "1.0-0", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0+b1", -1),
    ("1.0a", "1.0+", -1), ("1.0", "1.0a", -1), ("1:0.1", "2.0", 1), ("0:1.0", "1.0", 0),
    ("1.0-1~bpo1", "1.0-1", -1), ("2.30-1", "2.3-1", 1), ("1.002", "1.2", 0),
    ("3.0.11-1~deb12u2", "3.0.11-1", -1), ("1.0-1", "1.0-1.1", -1), ("~~", "~", -1),
    ("1~", "1", -1), ("1.0.0", "1.0", 1), ("a", "b", -1),
]


@pytest.mark.parametrize(("a", "b", "order"), RPM_CASES)
def test_rpm_order(a: str, b: str, order: int) -> None:
    assert compare_rpm(a, b) == order
    assert compare_rpm(b, a) == -order


@pytest.mark.parametrize(("a", "b", "order"), DEB_CASES)
def test_deb_order(a: str, b: str, order: int) -> None:
    assert compare_deb(a, b) == order
    assert compare_deb(b, a) == -order


def test_version_parsing() -> None:
    assert str(parse_rpm_evr("2:1.0~rc1-3.fc40")) == "2:1.0~rc1-3.fc40"
    assert parse_rpm_evr("1.0").release is None
    assert parse_rpm_evr(":1").epoch == "0"
    v = parse_deb_version("1:2.36-9+deb12u4")
    assert (v.epoch, v.upstream, v.revision) == (1, "2.36", "9+deb12u4")
    assert parse_deb_version("1.2-3-4").upstream == "1.2-3"
    for bad, cause in [("", "empty"), ("a b", "spaces"), (":1", "epoch is empty"),
                       ("x:1", "not a number"), ("99999999999:1", "too big"),
                       ("1:", "nothing after"), ("1.0-", "revision is empty"),
                       ("-1", "version number is empty")]:
        with pytest.raises(PackageDbError, match=cause):
            parse_deb_version(bad)
    with pytest.raises(PackageDbError, match="empty"):
        compare_rpm("", "1")
    with pytest.raises(PackageDbError, match="limit"):
        compare_rpm("1" * 5000, "1")
    assert compare_rpm("9" * 4000 + ":1", "1") == 1  # no int conversion of huge epochs


@FUZZ
@given(st.text(max_size=20), st.text(max_size=20))
def test_version_order_is_antisymmetric_and_total(a: str, b: str) -> None:
    for compare in (compare_rpm, compare_deb):
        try:
            ab = compare(a, b)
        except PackageDbError:
            continue
        assert ab in (-1, 0, 1)
        assert compare(b, a) == -ab
        assert compare(a, a) == 0


# --- dpkg --------------------------------------------------------------------------------

STATUS = b"""\
Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Source: glibc (2.36-9+deb12u4)
Version: 2.36-9+deb12u4
Installed-Size: 12986
Description: GNU C Library
 Version: not-this

Package: removed-tool
Status: deinstall ok config-files
Version: 1.0

Package: dpkg
Status: install ok unpacked
Architecture: amd64
Version: 1:1.21.22
Installed-Size: junk
"""


def test_dpkg_status_gives_packages_with_files_on_disk() -> None:
    dpkg, libc = parse_status(STATUS)
    assert (libc.name, libc.epoch, libc.version, libc.release, libc.arch, libc.size,
            libc.source, libc.kind) == \
        ("libc6", None, "2.36", "9+deb12u4", "amd64", 12986 * 1024, "glibc", "deb")
    assert (dpkg.epoch, dpkg.version, dpkg.release, dpkg.size, dpkg.source, dpkg.evr) == \
        (1, "1.21.22", "", 0, "dpkg", "1:1.21.22")
    with pytest.raises(PackageDbError, match=r"package bad: .*epoch is not a number"):
        parse_status(b"Package: bad\nStatus: install ok installed\nVersion: x:1\n")
    assert parse_status(b"\xff\xfe garbage\n\n\n:::\n") == []


CHANGELOG = """\
hello (2.10-3) unstable; urgency=medium

  * Fix the greeting.
    Closes: #123

 -- Jane Doe <jane@example.org>  Tue, 05 Mar 2024 10:00:00 +0100

hello (1:2.10-2+b1) unstable; urgency=low, binary-only=yes

  * Binary-only rebuild.

 -- Zoë Builder <buildd@example.org> Not a date

Old Changelog:
hello (0.1) the past
""".encode()


def test_debian_changelog_entries() -> None:
    first, second = parse_changelog(gzip.compress(CHANGELOG))
    assert first.version == "2.10-3"
    assert first.author == "Jane Doe <jane@example.org>"
    assert first.time == 1709629200
    assert first.text == "  * Fix the greeting.\n    Closes: #123"
    assert (second.version, second.time, second.author) == \
        ("1:2.10-2+b1", None, "Zoë Builder <buildd@example.org>")
    assert parse_changelog(CHANGELOG, compressed=False) == (first, second)
    assert changelog_paths("hello", "amd64") == (
        "usr/share/doc/hello/changelog.Debian.amd64.gz", "usr/share/doc/hello/changelog.Debian.gz")


def test_gzip_is_bounded_and_checked() -> None:
    bomb = gzip.compress(b"\0" * (2 << 20))
    with pytest.raises(PackageDbError, match="more than 1048576 bytes"):
        gunzip(bomb, limit=1 << 20)
    assert gunzip(gzip.compress(b"a") + gzip.compress(b"b")) == b"ab"
    with pytest.raises(PackageDbError, match="truncated"):
        gunzip(gzip.compress(b"hello world" * 100)[:-12])
    with pytest.raises(PackageDbError, match="not gzip"):
        gunzip(b"plain text")


@FUZZ
@given(st.binary(max_size=200))
def test_dpkg_inputs_raise_only_package_db_errors(raw: bytes) -> None:
    for call in (lambda: parse_status(raw), lambda: parse_changelog(raw),
                 lambda: parse_changelog(raw, compressed=False)):
        with contextlib.suppress(PackageDbError):
            call()


# --- model -------------------------------------------------------------------------------


def test_evr_and_purl() -> None:
    rpm = parse_package(package_blob())
    assert rpm.evr == "1:5.2.26-3.fc40"
    assert rpm.purl("fedora") == "pkg:rpm/fedora/bash@5.2.26-3.fc40?arch=x86_64&epoch=1"
    deb = Package("libstdc++6", 1, "12.2.0", "14", "amd64", 0, "", "gcc-12", (), "deb")
    assert deb.evr == "1:12.2.0-14"
    assert deb.purl("debian") == "pkg:deb/debian/libstdc%2B%2B6@1:12.2.0-14?arch=amd64"
    native = Package("base-files", None, "12.4+deb12u5", "", "", 0, "", "", (), "deb")
    assert native.purl() == "pkg:deb/base-files@12.4%2Bdeb12u5"


def test_entries_since_the_old_version() -> None:
    def rpm(version: str, release: str, log: tuple[str | None, ...] = ()) -> Package:
        entries = tuple(ChangelogEntry(0, "J <j@example.org>", "-", v) for v in log)
        return Package("p", 1, version, release, "noarch", 0, "", "", entries, "rpm")

    new = rpm("2.0", "1", ("1:2.0-1", None, "1.1-2", "1.1-1", "1.0-1"))
    assert [e.version for e in entries_since(new, rpm("1.1", "1"))] == \
        ["1:2.0-1", None, "1.1-2"]  # the epoch of the entries is not compared
    assert entries_since(new, rpm("2.0", "1")) == ()
    assert len(entries_since(new, rpm("0.9", "1"))) == 5
    assert len(entries_since(rpm("2.0", "1", ("2.0~rc1-1",)), rpm("1.9", "1"))) == 1
    deb_log = tuple(ChangelogEntry(0, "J", "-", v) for v in ("1:2.0-1", "1:1.0-2", "1.0-1"))
    new_deb = Package("d", 1, "2.0", "1", "amd64", 0, "", "d", deb_log, "deb")
    old_deb = Package("d", 1, "1.0", "2", "amd64", 0, "", "d", (), "deb")
    assert [e.version for e in entries_since(new_deb, old_deb)] == ["1:2.0-1"]
