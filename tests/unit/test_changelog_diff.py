"""The comparisons behind ``nestbuild changelog``: packages, kargs, /etc, the download, the
node's booted image, and what the markdown lets through."""

from __future__ import annotations

from pathlib import Path

import pytest

from nestbuild._image.tree import Entry
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild.errors import UsageError
from nestbuild.node.changelog import (
    Changelog,
    ChangelogError,
    Download,
    Side,
    booted_image,
    changelog,
    diff_etc,
    diff_kargs,
    diff_packages,
    download,
    kargs_of,
    node_image,
)
from nestbuild.node.status import StatusError, parse_bootc
from tests.unit.test_nodecmd import bootc_status_json

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference"


def rpm(name: str, version: str, release: str, *, epoch: int | None = None,
        arch: str = "x86_64", log: tuple[ChangelogEntry, ...] = ()) -> Package:
    return Package(name, epoch, version, release, arch, 0, "", "", log, "rpm")


def deb(name: str, version: str, revision: str = "1", *, epoch: int | None = None) -> Package:
    return Package(name, epoch, version, revision, "amd64", 0, "", "", (), "deb")


def entry(version: str, text: str) -> ChangelogEntry:
    return ChangelogEntry(1_700_000_000, f"Jane <j@example.org> - {version}", text, version)


def test_rpm_order_decides_upgrade_and_downgrade() -> None:
    old = [rpm("a", "1.10", "1"), rpm("b", "2.0", "1"), rpm("c", "1.0", "1", epoch=1),
           rpm("d", "1.0", "1")]
    new = [rpm("a", "1.9", "1"), rpm("b", "2.0", "1"), rpm("c", "9.0", "1"),
           rpm("d", "1.0", "1.el9")]
    got = [(p.name, p.change, p.old, p.new) for p in diff_packages(old, new)]
    # 1.9 < 1.10 (numeric segments); a dropped epoch is a downgrade whatever the version
    assert got == [("a", "downgraded", "1.10-1", "1.9-1"), ("c", "downgraded", "1:1.0-1", "9.0-1"),
                   ("d", "upgraded", "1.0-1", "1.0-1.el9")]


def test_dpkg_order_tilde_and_epoch() -> None:
    old = [deb("x", "2.0~rc1"), deb("y", "9.0"), deb("z", "1.0")]
    new = [deb("x", "2.0"), deb("y", "1.0", epoch=1), deb("z", "1.0", "0")]
    got = [(p.name, p.change) for p in diff_packages(old, new)]
    assert got == [("x", "upgraded"), ("y", "upgraded"), ("z", "downgraded")]


def test_upgrade_entries_stop_at_the_old_version() -> None:
    log = (entry("1.3-1", "- three"), entry("1.2-1", "- two"), entry("1.1-1", "- one"))
    (change,) = diff_packages([rpm("p", "1.1", "1")], [rpm("p", "1.3", "1", log=log)])
    assert [e.text for e in change.entries] == ["- three", "- two"]


def test_added_removed_and_side_by_side_versions() -> None:
    old = [rpm("kernel", "6.1", "1"), rpm("kernel", "6.2", "1"), rpm("gone", "1", "1"),
           rpm("multi", "1", "1", arch="i686"), rpm("multi", "1", "1")]
    new = [rpm("kernel", "6.2", "1"), rpm("kernel", "6.3", "1"), rpm("fresh", "1", "1"),
           rpm("multi", "1", "1")]
    got = [(p.name, p.arch, p.change, p.old, p.new) for p in diff_packages(old, new)]
    assert got == [("fresh", "x86_64", "added", None, "1-1"),
                   ("gone", "x86_64", "removed", "1-1", None),
                   ("kernel", "x86_64", "removed", "6.1-1", None),
                   ("kernel", "x86_64", "added", None, "6.3-1"),
                   ("multi", "i686", "removed", "1-1", None)]


def test_kargs_as_bootc_reads_them() -> None:
    files = {"/usr/lib/bootc/kargs.d/20-b.toml": b'kargs = ["b"]\n',
             "/usr/lib/bootc/kargs.d/10-a.toml": b'kargs = ["a", "quiet"]\n',
             "/usr/lib/bootc/kargs.d/30-arm.toml":
                 b'kargs = ["arm"]\nmatch-architectures = ["aarch64"]\n',
             "/usr/lib/bootc/kargs.d/40-bad.toml": b'kargs = "not a list"\n'}
    kargs, problems = kargs_of(files, "amd64")
    assert kargs == ["a", "quiet", "b"]
    assert problems == ["/usr/lib/bootc/kargs.d/40-bad.toml: kargs must be a list of strings; "
                        "bootc refuses it"]
    assert kargs_of(files, "arm64")[0] == ["a", "quiet", "b", "arm"]
    assert diff_kargs(["a", "quiet", "b"], ["a", "b", "console=ttyS0", "quiet"]) == (
        [], ["console=ttyS0"])
    assert diff_kargs(["a", "a"], ["a"]) == (["a"], [])


def test_etc_changes() -> None:
    def f(path: str, digest: str = "d1", mode: int = 0o644) -> Entry:
        return Entry(path, "file", mode, 0, 0, 3, digest)

    old = {"/etc/a": f("/etc/a"), "/etc/b": f("/etc/b"), "/etc/c": f("/etc/c"),
           "/etc/l": Entry("/etc/l", "symlink", 0o777, 0, 0, link="x")}
    new = {"/etc/a": f("/etc/a", "d2"), "/etc/b": f("/etc/b", mode=0o600), "/etc/d": f("/etc/d"),
           "/etc/l": Entry("/etc/l", "symlink", 0o777, 0, 0, link="y")}
    got = [(c.path, c.change, c.details) for c in diff_etc(old, new)]
    assert got == [("/etc/a", "modified", ("content",)), ("/etc/b", "modified", ("mode",)),
                   ("/etc/c", "removed", ()), ("/etc/d", "added", ()),
                   ("/etc/l", "modified", ("target",))]


def test_download_counts_layers_the_node_lacks_by_digest_or_diff_id() -> None:
    old = [("sha256:a", "sha256:1"), ("sha256:b", "sha256:2")]
    new = [("sha256:a", "sha256:1", 10),        # the same blob
           ("sha256:B", "sha256:2", 20),        # recompressed: the node has its content
           ("sha256:c", "sha256:3", 30),
           ("sha256:c", "sha256:3", 30)]        # listed twice, fetched once
    assert download(old, new) == Download(1, 30, 3, 60)


def side(ref: str, digest: str, kernels: tuple[str, ...] = ("6.1",)) -> Side:
    return Side(ref, digest, "rpm-sqlite", 3, kernels, ())


def test_markdown_keeps_image_text_from_becoming_markup() -> None:
    hostile = "evil](http://x) <script>`|\x1b[31m"
    log = (ChangelogEntry(0, "<b>Eve</b>", "- ```\n- fixed", "2-1"),)
    changes = diff_packages([rpm(hostile, "1", "1")], [rpm(hostile, "2", "1", log=log)])
    result = Changelog(side("a", "sha256:" + "1" * 64), side("b", "sha256:" + "2" * 64, ("6.2",)),
                       changes, ["quiet"], ["console=`x|y`"], [], Download(1, 10, 2, 20))
    md = result.markdown()
    assert "<script>" not in md and "\x1b" not in md
    assert "evil\\]" in md and "\\<script\\>" in md and "\\`\\|" in md  # the table
    assert "&lt;script&gt;" in md  # the summary of the entries
    assert md.count("```") == 2  # the entry's own fence cannot close the block
    outside = md.split("```")[0] + md.split("```")[2]
    assert "<b>" not in outside  # the author is text inside the code block
    assert "`+console='x\\|y'`" in md
    doc = result.to_json()
    assert doc["summary"] == {"added": 0, "removed": 0, "upgraded": 1, "downgraded": 0,
                              "etc": 0, "kernelChanged": True}
    assert doc["packages"][0]["entries"][0]["date"] == "1970-01-01"


def _bootc(name: str) -> str:
    return bootc_status_json(name)


def test_booted_image_from_bootc_documents() -> None:
    status = parse_bootc(_bootc("spec-staged-booted.yaml"))
    assert booted_image(status) == (
        "docker://quay.io/example/someimage@sha256:"
        "736b359467c9437c1ac915acaae952aad854e07eb4a16a94999a48af08c83c34")
    assert node_image(status=_bootc("spec-staged-booted.yaml")) == booted_image(status)


@pytest.mark.parametrize("name", sorted(p.name for p in (REFERENCE / "bootc" / "fixtures")
                                        .glob("*.yaml")))
def test_every_bootc_document_names_a_registry_image_or_says_why_not(name: str) -> None:
    try:
        status = parse_bootc(_bootc(name))
    except StatusError:
        return  # documents parse_bootc refuses are its own tests' concern
    booted = status.role("booted")
    if booted is not None and booted.image and booted.digest and ":" not in \
            booted.image.split("/", 1)[0].replace(".", ""):
        assert booted_image(status).endswith(f"@{booted.digest}")
    else:
        with pytest.raises(ChangelogError):
            booted_image(status)


def test_rpm_ostree_document_without_an_image() -> None:
    text = (REFERENCE / "rpm-ostree" / "workstation-status.json").read_text()
    with pytest.raises(ChangelogError, match="not made from a container image"):
        node_image(status=text)


@pytest.mark.parametrize("kw", [
    {"old": None}, {"old": "a", "via": "bootc"}, {"old": "a", "sysroot": Path("s")},
    {"old": None, "status": "{}", "host": "ssh://n"}, {"old": None, "sysroot": Path("s"),
                                                       "via": "bootc"}])
def test_old_is_named_exactly_once(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError, match="name the old image once"):
        changelog(new="oci:/nonexistent", **kw)  # type: ignore[arg-type]
