"""The package database readers against the real tools: packages built with rpmbuild and
installed with rpm into sqlite and Berkeley DB databases, read back by nestbuild and by
``rpm -q`` entry by entry; version order against ``rpm.vercmp`` and ``dpkg --compare-versions``.

Needs Debian's ``rpm`` (rpm, rpmbuild; its sqlite backend and read-only Berkeley DB backend)
and ``db5.3-util`` (db5.3_load writes the Berkeley DB file rpm then reads); scripts/setup
installs both.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nestbuild._pkgdb.changes import entries_since
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import Package
from nestbuild._pkgdb.rpmdb import locate, read_rpmdb, read_rpmdb_file
from nestbuild._pkgdb.vercmp import compare_deb, compare_rpm
from nestbuild._tools.run import run
from nestbuild._util.record import replace

SQLITE_DBPATH = "/usr/lib/sysimage/rpm"
BDB_DBPATH = "/var/lib/rpm"
FIELD, RECORD = "\x1f", "\x1e"
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None)

BETA_LOG = "\n".join(
    f"* {(date(2021, 1, 1) + timedelta(days=i)).strftime('%a %b %d %Y')} "
    f"Packager {i} <p{i}@example.org> - 2.1^git{i}-1\n"
    f"- change {i}: {'long text ' * (i % 7 + 1)}\n- second line of {i}\n"
    for i in range(60, 0, -1))

SPECS = {
    "alpha": """\
Name: alpha
Epoch: 2
Version: 1.0~rc1
Release: 3
Summary: epoch, tilde and a unicode changelog
License: MIT
BuildArch: noarch
%description
alpha
%install
mkdir -p %{buildroot}/usr/share/alpha %{buildroot}/etc/alpha
echo a > %{buildroot}/usr/share/alpha/a.txt
echo b > %{buildroot}/etc/alpha/alpha.conf
%files
/usr/share/alpha
/etc/alpha/alpha.conf
%changelog
* Tue Mar 05 2024 Jane Doe <jane@example.org> - 2:1.0~rc1-3
- second entry
  with a continuation line
* Mon Jan 01 2024 Zoë Ünicode <z@example.org> 1.0-1
- first
""",
    "beta": f"""\
Name: beta
Version: 2.1^git1
Release: 1.fc40
Summary: caret version, many changelog entries and files
License: GPL-2.0-only AND (MIT OR Apache-2.0)
BuildArch: noarch
%description
beta
%install
for d in 1 2 3 4 5; do mkdir -p %{{buildroot}}/usr/lib/beta/dir$d
  for f in $(seq 1 40); do echo $d$f > %{{buildroot}}/usr/lib/beta/dir$d/file-$f; done
done
%files
/usr/lib/beta
%changelog
{BETA_LOG}""",
    "gamma": """\
Name: gamma
Epoch: 0
Version: 3
Release: 0
Summary: epoch 0, no changelog, no files
License: Apache-2.0
%description
gamma
%files
""",
}


def rpm(root: Path, dbpath: str, backend: str, *args: str) -> str:
    return run(["rpm", "--root", str(root), "--dbpath", dbpath,
                "--define", f"_db_backend {backend}", *args], timeout=120).stdout.decode()


@pytest.fixture(scope="module")
def rpms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    top = tmp_path_factory.mktemp("rpmbuild")
    for name, spec in SPECS.items():
        path = top / f"{name}.spec"
        path.write_text(spec)
        run(["rpmbuild", "-bb", "--define", f"_topdir {top}", "--define", "debug_package %{nil}",
             "--define", "_build_id_links none", str(path)], timeout=120)
    built = sorted(top.glob("RPMS/*/*.rpm"))
    assert len(built) == 3
    return built


@pytest.fixture(scope="module")
def sqlite_root(rpms: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    rpm(root, SQLITE_DBPATH, "sqlite", "-i", "--nodeps", "--justdb", "--ignorearch",
        *map(str, rpms))
    return root


@pytest.fixture(scope="module")
def sqlite_file(sqlite_root: Path) -> Path:
    return sqlite_root / SQLITE_DBPATH.lstrip("/") / "rpmdb.sqlite"


def bdb_dump(records: list[tuple[bytes, bytes]], pagesize: int) -> str:
    """db_dump's byte-value format, which db5.3_load reads."""
    lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={pagesize}",
             "HEADER=END"]
    for key, value in records:
        lines += [f" {key.hex()}", f" {value.hex()}"]
    return "\n".join([*lines, "DATA=END", ""])


def make_bdb_root(sqlite_file: Path, root: Path, pagesize: int) -> Path:
    """A root whose /var/lib/rpm/Packages holds the same headers, written by Berkeley DB."""
    conn = sqlite3.connect(f"file:{sqlite_file}?mode=ro&immutable=1", uri=True)
    rows = conn.execute("SELECT hnum, blob FROM Packages ORDER BY hnum").fetchall()
    conn.close()
    records = [(struct.pack("=I", 0), struct.pack("=I", max(h for h, _ in rows) + 1))]
    records += [(struct.pack("=I", hnum), blob) for hnum, blob in rows]
    dbdir = root / BDB_DBPATH.lstrip("/")
    dbdir.mkdir(parents=True)
    dump = root / "dump.txt"
    dump.write_text(bdb_dump(records, pagesize))
    run(["db5.3_load", "-f", str(dump), str(dbdir / "Packages")], timeout=60)
    return dbdir / "Packages"


GROUP, ITEM = "\x1d", "\x1c"
#: One record per package: its fields, then its changelog entries, then its files. Only -qa
#: works on a Berkeley DB holding just Packages (-q NAME needs the Name index).
QUERY = (FIELD.join(["%{NAME}", "%{EPOCH}", "%{VERSION}", "%{RELEASE}", "%{ARCH}", "%{LONGSIZE}",
                     "%{LICENSE}", "%{SOURCERPM}", "%{BUILDTIME}", "%{INSTALLTIME}"])
         + GROUP + f"[%{{CHANGELOGTIME}}{FIELD}%{{CHANGELOGNAME}}{FIELD}%{{CHANGELOGTEXT}}{ITEM}]"
         + GROUP + f"[%{{FILENAMES}}{ITEM}]" + RECORD)


def items(text: str) -> list[str]:
    return [i for i in text.split(ITEM) if i]


def check_against_rpm(packages: list[Package], root: Path, dbpath: str, backend: str) -> None:
    """Every field, changelog entry and file of every package, as rpm itself reads them."""
    records = [r.split(GROUP) for r in rpm(root, dbpath, backend, "-qa", "--qf", QUERY)
               .split(RECORD) if r]
    assert sorted(r[0].split(FIELD)[0] for r in records) == \
        sorted(p.name for p in packages) == ["alpha", "beta", "gamma"]
    by_name = {p.name: p for p in packages}
    for fields, log, files in records:
        name, epoch, version, release, arch, size, lic, source, built, installed = \
            fields.split(FIELD)
        p = by_name[name]
        assert (str(p.epoch) if p.epoch is not None else "(none)") == epoch
        assert (p.version, p.release, p.arch, str(p.size), p.license, p.source) == \
            (version, release, arch, size, lic, source)
        assert (str(p.buildtime), str(p.installtime)) == (built, installed)
        assert [(str(e.time), e.author, e.text) for e in p.changelog] == \
            [tuple(e.split(FIELD)) for e in items(log)]
        assert list(p.files) == items(files)


def test_sqlite_rpmdb_matches_rpm(sqlite_root: Path, sqlite_file: Path) -> None:
    packages = read_rpmdb_file(sqlite_file)
    check_against_rpm(packages, sqlite_root, SQLITE_DBPATH, "sqlite")
    alpha = next(p for p in packages if p.name == "alpha")
    assert alpha.evr == "2:1.0~rc1-3"
    assert [e.version for e in alpha.changelog] == ["2:1.0~rc1-3", "1.0-1"]
    assert alpha.changelog[1].author.startswith("Zoë Ünicode")
    assert alpha.purl("fedora") == "pkg:rpm/fedora/alpha@1.0~rc1-3?arch=noarch&epoch=2"
    beta = next(p for p in packages if p.name == "beta")
    assert (len(beta.changelog), len(beta.files)) == (60, 206)
    older = replace(beta, version="2.1^git30", release="1")
    assert [e.version for e in entries_since(beta, older)] == \
        [f"2.1^git{i}-1" for i in range(60, 30, -1)]
    # the image's own paths say which file to read
    image_paths = {str(p.relative_to(sqlite_root)) for p in sqlite_root.rglob("*")}
    found = locate(image_paths)
    assert found is not None and found.format == "rpm-sqlite"
    assert read_rpmdb((sqlite_root / found.path).read_bytes()) == packages


@pytest.mark.parametrize("pagesize", [512, 65536])
def test_berkeley_db_rpmdb_matches_rpm(sqlite_file: Path, tmp_path: Path, pagesize: int) -> None:
    packages_file = make_bdb_root(sqlite_file, tmp_path, pagesize)
    packages = read_rpmdb_file(packages_file)
    check_against_rpm(packages, tmp_path, BDB_DBPATH, "bdb_ro")
    assert packages == read_rpmdb_file(sqlite_file)


@pytest.fixture(scope="module")
def real_dbs(sqlite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    bdb = make_bdb_root(sqlite_file, tmp_path_factory.mktemp("bdb"), 1024)
    return [sqlite_file.read_bytes(), bdb.read_bytes()]


@settings(PROPERTY, max_examples=60)
@given(data=st.data())
def test_corrupted_real_databases_raise_only_package_db_errors(
        real_dbs: list[bytes], data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(real_dbs)))
    for _ in range(data.draw(st.integers(1, 30))):
        i = data.draw(st.integers(16, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(PackageDbError):
        read_rpmdb(bytes(raw[:data.draw(st.sampled_from([len(raw), len(raw) // 3, 2048]))]))


# --- version order against the tools -----------------------------------------------------

RPM_CHARS = "0123456789abzAZ.~^-:_+!é"
rpm_versions = st.text(RPM_CHARS, min_size=1, max_size=12)


def rpm_vercmp(pairs: list[tuple[str, str]]) -> list[int]:
    """rpm's own answers, many comparisons in one Lua call."""
    table = ",".join(f"{{[[{a}]],[[{b}]]}}" for a, b in pairs)
    lua = (f"%{{lua: for _, p in ipairs({{{table}}}) do "
           f"print(rpm.vercmp(p[1], p[2]) .. ' ') end}}")
    return [int(x) for x in run(["rpm", "--eval", lua], timeout=60).stdout.split()]


@PROPERTY
@given(st.lists(st.tuples(rpm_versions, rpm_versions), min_size=1, max_size=50))
def test_rpm_order_matches_rpm(pairs: list[tuple[str, str]]) -> None:
    assert [compare_rpm(a, b) for a, b in pairs] == rpm_vercmp(pairs)


def test_rpm_order_of_known_cases_matches_rpm() -> None:
    pairs = [("1.0~rc1", "1.0"), ("1.0^git1", "1.0.1"), ("1.0^git1~pre", "1.0^git1"),
             ("1:1.0", "2.0"), ("1.0-1", "1.0"), ("1.0-", "1.0"), (":1", "1"),
             ("5.5p1", "5.5p10"), ("1e.fc33", "1.fc33"), ("a+", "a_"), ("0001", "1"),
             ("9" * 40, "9" * 39 + "8")]
    assert [compare_rpm(a, b) for a, b in pairs] == rpm_vercmp(pairs)


#: -1, 0 or 1 per pair; E where dpkg refuses a version (exit status 2).
DPKG_LOOP = """\
while [ $# -gt 0 ]; do
  dpkg --compare-versions "$1" lt "$2" 2>/dev/null; lt=$?
  dpkg --compare-versions "$1" eq "$2" 2>/dev/null; eq=$?
  if [ $lt -gt 1 ]; then echo E
  elif [ $lt -eq 0 ]; then echo -1
  elif [ $eq -eq 0 ]; then echo 0
  else echo 1; fi
  shift 2
done
"""


def dpkg_compare(pairs: list[tuple[str, str]]) -> list[str]:
    argv = [v for pair in pairs for v in pair]
    return run(["sh", "-c", DPKG_LOOP, "sh", *argv], timeout=120).stdout.decode().split()


def our_compare(pairs: list[tuple[str, str]]) -> list[str]:
    """compare_deb's answers in dpkg_compare's terms (a refused version is E)."""
    out = []
    for a, b in pairs:
        try:
            out.append(str(compare_deb(a, b)))
        except PackageDbError:
            out.append("E")
    return out


@st.composite
def deb_versions(draw: st.DrawFn) -> str:
    epoch = draw(st.sampled_from(["", "0:", "1:", "10:"]))
    upstream = draw(st.sampled_from("0123456789")) + draw(
        st.text("0123456789abzAZ.+~-", max_size=10))
    revision = draw(st.text("0123456789abzAZ.+~", max_size=6))
    return f"{epoch}{upstream}" + (f"-{revision}" if revision else "")


#: Anything dpkg's command line takes as a version (a leading "-" would be an option):
#: refusals, warnings and the signed-char order of non-ASCII bytes are compared too.
any_deb_text = st.text("0123456789aZ.+~-:_!é ", min_size=1, max_size=9).filter(
    lambda v: not v.startswith("-"))
deb_strings = st.one_of(deb_versions(), any_deb_text)


@PROPERTY
@given(st.lists(st.tuples(deb_strings, deb_strings), min_size=1, max_size=40))
def test_deb_order_matches_dpkg(pairs: list[tuple[str, str]]) -> None:
    assert our_compare(pairs) == dpkg_compare(pairs)


def iter_known_deb() -> Iterator[tuple[str, str]]:
    yield from [("1.0~rc1", "1.0"), ("1.0a", "1.0+"), ("1:0.1", "2.0"), ("1.002", "1.2"),
                ("3.0.11-1~deb12u2", "3.0.11-1"), ("1.0-1", "1.0-1.1"), ("1~~", "1~"),
                ("2.30-1", "2.3-1"), ("1.2-3-4", "1.2-3-5"), ("a", "1"), ("1a-", "1"),
                ("1:", "1"), (":1", "1"), ("x:1", "1"), ("1 2", "1"), ("1é", "1.")]


def test_deb_order_and_refusals_of_known_cases_match_dpkg() -> None:
    pairs = list(iter_known_deb())
    assert our_compare(pairs) == dpkg_compare(pairs)
