"""What a reboot into NEW changes on a node that runs OLD: ``nestbuild changelog OLD NEW``.

Read from the two images themselves, never by running their package managers: the packages
added, removed, upgraded and downgraded (each database read natively by
:mod:`nestbuild.validation.packages`, versions ordered as rpm or dpkg orders them), and for
each upgrade the changelog entries it brings; the kernel and the kernel arguments bootc takes
from ``/usr/lib/bootc/kargs.d``; the files of the image's ``/etc`` that change (the node's own
edits still win its three-way merge); and what a node on OLD downloads: the layers of NEW it
does not have, by digest or diff_id.

OLD is an image, or what a node runs: the default deployment of a local ostree sysroot, the
booted deployment bootc or rpm-ostree reports (here, over ssh, or a recorded status document).
Each image is read once, layer by layer, keeping only the paths this needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild._image import paths
from nestbuild._image.tarstream import TarStream
from nestbuild._image.tree import DIR, FILE, HARDLINK, SYMLINK, Entry, Whiteout, item_of
from nestbuild._pkgdb.changes import entries_since
from nestbuild._pkgdb.dpkg import MAX_CHANGELOG, changelog_paths, parse_changelog
from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._pkgdb.model import ChangelogEntry, Package
from nestbuild._pkgdb.vercmp import compare_deb, compare_rpm
from nestbuild._util.record import replace
from nestbuild._util.terminal import printable
from nestbuild.errors import NestbuildError, UsageError
from nestbuild.validation.kernelconf import kargs_problem

if TYPE_CHECKING:
    from nestbuild._image.source import ImageSource
    from nestbuild._registry.access import RegistryAccess
    from nestbuild.node.host import Host
    from nestbuild.node.rebase import RebaseOptions
    from nestbuild.node.status import NodeStatus
    from nestbuild.node.sysroot import SysrootRebase, SysrootStatus
    from nestbuild.node.tool import ToolRebase
    from nestbuild.validation.packages import PackageDb

Progress = Callable[[str], None]

#: The JSON document's version: it changes only on a breaking change.
VERSION = 1
ADDED, REMOVED, UPGRADED, DOWNGRADED, MODIFIED = (
    "added", "removed", "upgraded", "downgraded", "modified")
#: Where an image keeps /etc: itself, or (ostree-native, as a node stores it) /usr/etc.
ETC_DIRS = ("/etc", "/usr/etc")
DOC_DIR = "/usr/share/doc"
#: A kargs.d file larger than this is not read (bootc's are a few lines).
MAX_KARGS_FILE = 1 << 20
#: Debian changelogs kept from one image, compressed, at most (the largest system has a few
#: hundred MiB of them; beyond this the entries are left out, with a note).
MAX_CHANGELOGS = 512 << 20
#: OCI architecture -> the name bootc matches ``match-architectures`` against (Rust's).
KARGS_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "386": "x86", "ppc64le": "powerpc64",
              "s390x": "s390x", "riscv64": "riscv64"}


class ChangelogError(NestbuildError):
    """OLD cannot be found or read (a node whose booted deployment has no image, say)."""


# --- the result -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PackageChange:
    """One package that a reboot adds, removes, upgrades or downgrades."""

    name: str
    arch: str
    change: str
    old: str | None
    new: str | None
    #: For an upgrade: the entries of the new changelog newer than the old version.
    entries: tuple[ChangelogEntry, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "arch": self.arch, "change": self.change,
                "old": self.old, "new": self.new,
                "entries": [_entry_json(e) for e in self.entries]}


def _entry_json(e: ChangelogEntry) -> dict[str, Any]:
    return {"date": _date(e.time), "author": e.author, "version": e.version, "text": e.text}


def _date(time: int | None) -> str | None:
    if time is None:
        return None
    try:
        return dt.datetime.fromtimestamp(time, dt.UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True)
class EtcChange:
    """A path of the image's /etc that NEW adds, removes or modifies."""

    path: str
    change: str
    #: For a modification: what differs (content, type, target, mode, owner).
    details: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "change": self.change, "details": list(self.details)}


@dataclass(frozen=True)
class Download:
    """What a node on OLD fetches to stage NEW: the layers it does not have."""

    layers: int
    bytes: int
    total_layers: int
    total_bytes: int

    def to_json(self) -> dict[str, int]:
        return {"layers": self.layers, "bytes": self.bytes, "totalLayers": self.total_layers,
                "totalBytes": self.total_bytes}


@dataclass(frozen=True)
class Side:
    """One of the two images as this compares them."""

    ref: str
    digest: str
    #: ``rpm-sqlite``, ``rpm-bdb``, ``rpm-ndb``, ``dpkg``; None: no package database.
    package_format: str | None
    packages: int
    kernels: tuple[str, ...]
    kargs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "digest": self.digest, "packageFormat": self.package_format,
                "packages": self.packages, "kernels": list(self.kernels),
                "kargs": list(self.kargs)}


@dataclass
class Changelog:
    """What a reboot from ``old`` into ``new`` changes (:func:`changelog`)."""

    old: Side
    new: Side
    packages: list[PackageChange]
    kargs_removed: list[str]
    kargs_added: list[str]
    etc: list[EtcChange]
    download: Download
    notes: list[str] = field(default_factory=list)

    def by_change(self, change: str) -> list[PackageChange]:
        return [p for p in self.packages if p.change == change]

    @property
    def kernel_changed(self) -> bool:
        return self.old.kernels != self.new.kernels

    @property
    def same_image(self) -> bool:
        return self.old.digest == self.new.digest

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "old": self.old.to_json(),
            "new": self.new.to_json(),
            "summary": {c: len(self.by_change(c)) for c in (ADDED, REMOVED, UPGRADED,
                                                           DOWNGRADED)}
                       | {"etc": len(self.etc), "kernelChanged": self.kernel_changed},
            "packages": [p.to_json() for p in self.packages],
            "kernel": {"old": list(self.old.kernels), "new": list(self.new.kernels)},
            "kargs": {"removed": self.kargs_removed, "added": self.kargs_added},
            "etc": [e.to_json() for e in self.etc],
            "download": self.download.to_json(),
            "notes": self.notes,
        }

    def summary(self) -> list[str]:
        """A few lines: the counts, the kernel, kargs, /etc, the download."""
        if self.same_image:
            return [f"{_short(self.new)}: the node already runs this image; nothing changes"]
        counts = ", ".join(f"{len(self.by_change(c))} {c}" for c in (UPGRADED, ADDED, REMOVED,
                                                                    DOWNGRADED))
        out = [f"{_short(self.old)} -> {_short(self.new)}",
               f"packages: {counts}" if self.new.package_format or self.old.package_format
               else "packages: neither image has a package database"]
        if self.kernel_changed:
            out.append(f"kernel: {_kernels(self.old)} -> {_kernels(self.new)}")
        else:
            out.append(f"kernel: {_kernels(self.new)} (unchanged)")
        if self.kargs_removed or self.kargs_added:
            out.append("kargs: " + " ".join([*(f"-{k}" for k in self.kargs_removed),
                                             *(f"+{k}" for k in self.kargs_added)]))
        out.append(f"/etc: {len(self.etc)} file(s) change")
        d = self.download
        out.append(f"download: {d.layers} of {d.total_layers} layers, {_size(d.bytes)} "
                   f"(of {_size(d.total_bytes)})")
        return out + [f"note: {n}" for n in self.notes]

    def lines(self) -> list[str]:
        """The table: the summary, then every package, entry and /etc path."""
        out = self.summary()
        rows = [(p.change, p.name, p.arch, p.old or "", p.new or "") for p in self.packages]
        if rows:
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            out.append("")
            for p, row in zip(self.packages, rows, strict=True):
                arrow = "->" if p.old and p.new else "  "
                out.append(f"{row[0]:{widths[0]}}  {row[1]:{widths[1]}}  {row[2]:{widths[2]}}  "
                           f"{row[3]:{widths[3]}} {arrow} {row[4]}".rstrip())
                for e in p.entries:
                    out.extend(f"    {line}" for line in _entry_lines(e))
        if self.etc:
            out.append("")
            out.extend(f"{e.change:8}  {e.path}"
                       + (f"  ({', '.join(e.details)})" if e.details else "")
                       for e in self.etc)
        return out

    def markdown(self) -> str:
        """For a merge-request comment: a summary, a package table, entries folded away."""
        out = [f"### Changelog: {_code(_short(self.old))} → {_code(_short(self.new))}", ""]
        if self.same_image:
            return "\n".join([*out, "The node already runs this image; nothing changes.", ""])
        out += ["| | |", "|---|---|"]
        out.append("| packages | " + ", ".join(
            f"{len(self.by_change(c))} {c}" for c in (UPGRADED, ADDED, REMOVED, DOWNGRADED))
                   + " |")
        kernel = (f"{_md(_kernels(self.old))} → {_md(_kernels(self.new))}"
                  if self.kernel_changed else f"{_md(_kernels(self.new))} (unchanged)")
        out.append(f"| kernel | {kernel} |")
        if self.kargs_removed or self.kargs_added:
            out.append("| kargs | " + " ".join(
                [*(_code(f"-{k}") for k in self.kargs_removed),
                 *(_code(f"+{k}") for k in self.kargs_added)]) + " |")
        out.append(f"| /etc | {len(self.etc)} file(s) change |")
        d = self.download
        out.append(f"| download | {d.layers} of {d.total_layers} layers, {_size(d.bytes)} |")
        out.append("")
        if self.packages:
            out += ["| change | package | old | new |", "|---|---|---|---|"]
            out += [f"| {p.change} | {_md(p.name)} ({_md(p.arch)}) | {_md(p.old or '')} | "
                    f"{_md(p.new or '')} |" for p in self.packages]
            out.append("")
        for p in self.packages:
            if p.entries:
                out += [f"<details><summary>{_html(p.name)} {_html(p.new or '')}: "
                        f"{len(p.entries)} changelog entr{'y' if len(p.entries) == 1 else 'ies'}"
                        "</summary>", "", "```"]
                for e in p.entries:
                    out += [printable(line).replace("```", "'''") for line in _entry_lines(e)]
                out += ["```", "", "</details>", ""]
        if self.etc:
            out += ["<details><summary>/etc changes</summary>", ""]
            out += [f"- {e.change} {_code(e.path)}"
                    + (f" ({', '.join(e.details)})" if e.details else "") for e in self.etc]
            out += ["", "</details>", ""]
        out += [f"> {_md(n)}" for n in self.notes]
        return "\n".join(out).rstrip("\n") + "\n"


def _short(side: Side) -> str:
    return f"{side.ref}@{side.digest[:19]}" if "@" not in side.ref else side.ref


def _kernels(side: Side) -> str:
    return ", ".join(side.kernels) or "none"


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _entry_lines(e: ChangelogEntry) -> list[str]:
    head = f"* {_date(e.time) or '?'} {e.author}"
    if e.version and e.version not in e.author:
        head += f" ({e.version})"
    return [head, *(f"  {line}" if line else "" for line in e.text.splitlines())]


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def _md(text: str) -> str:
    """Image content in a markdown table cell: nothing in it can become markup or a link."""
    return _MD_SPECIAL.sub(r"\\\1", printable(text))


def _code(text: str) -> str:
    """A code span (no escapes work inside one; a ``|`` must still not end a table cell)."""
    return "`" + printable(text).replace("`", "'").replace("|", "\\|") + "`"


def _html(text: str) -> str:
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- the comparisons (pure) ---------------------------------------------------------------------

def compare_versions(kind: str, old: str, new: str) -> int:
    """rpm's order for rpm packages, dpkg's for Debian's (-1, 0, 1)."""
    return compare_deb(old, new) if kind == "deb" else compare_rpm(old, new)


def diff_packages(old: Sequence[Package], new: Sequence[Package]) -> list[PackageChange]:
    """Packages added, removed, upgraded, downgraded, by name and architecture, in name order.

    Several versions of one name (rpm installs kernels side by side) are compared as sets: the
    versions only OLD has are removed, those only NEW has added.
    """
    def group(pkgs: Sequence[Package]) -> dict[tuple[str, str], dict[str, Package]]:
        out: dict[tuple[str, str], dict[str, Package]] = {}
        for p in pkgs:
            out.setdefault((p.name, p.arch), {})[p.evr] = p
        return out

    before, after = group(old), group(new)
    changes: list[PackageChange] = []
    for key in sorted(before.keys() | after.keys()):
        name, arch = key
        was, now = before.get(key, {}), after.get(key, {})
        if len(was) == 1 and len(now) == 1:
            (o,), (n,) = was.values(), now.values()
            try:
                order = compare_versions(n.kind, o.evr, n.evr)
            except PackageDbError:
                order = 0 if o.evr == n.evr else 1
            if order < 0:
                changes.append(PackageChange(name, arch, UPGRADED, o.evr, n.evr,
                                             entries_since(n, o)))
            elif order > 0:
                changes.append(PackageChange(name, arch, DOWNGRADED, o.evr, n.evr))
            continue
        for evr in sorted(was.keys() - now.keys()):
            changes.append(PackageChange(name, arch, REMOVED, evr, None))
        for evr in sorted(now.keys() - was.keys()):
            changes.append(PackageChange(name, arch, ADDED, None, evr))
    return changes


def kargs_of(files: Mapping[str, bytes], architecture: str) -> tuple[list[str], list[str]]:
    """(the kernel arguments bootc takes from kargs.d files, problems): files in name order,
    each read as bootc reads it, ``match-architectures`` against the image's architecture."""
    arch = KARGS_ARCH.get(architecture, architecture)
    kargs: list[str] = []
    problems: list[str] = []
    for path in sorted(files, key=posixpath.basename):
        data = files[path]
        problem = kargs_problem(data)
        if problem is not None:
            problems.append(f"{path}: {problem}; bootc refuses it")
            continue
        doc = tomllib.loads(data.decode("utf-8"))
        arches = doc.get("match-architectures")
        if arches and arch not in arches:
            continue
        kargs.extend(doc["kargs"])
    return kargs, problems


def diff_kargs(old: Sequence[str], new: Sequence[str]) -> tuple[list[str], list[str]]:
    """(removed, added): as bootc applies kargs.d on an upgrade, the old image's arguments
    that the new one no longer has go, the new ones come."""
    remaining = list(new)
    removed = []
    for k in old:
        if k in remaining:
            remaining.remove(k)
        else:
            removed.append(k)
    return removed, remaining


def diff_etc(old: Mapping[str, Entry], new: Mapping[str, Entry]) -> list[EtcChange]:
    """The /etc paths (image paths) that NEW adds, removes or modifies, in path order."""
    out = []
    for path in sorted(old.keys() | new.keys()):
        before, after = old.get(path), new.get(path)
        if before is None:
            out.append(EtcChange(path, ADDED))
        elif after is None:
            out.append(EtcChange(path, REMOVED))
        else:
            details = _differs(before, after)
            if details:
                out.append(EtcChange(path, MODIFIED, details))
    return out


def _differs(a: Entry, b: Entry) -> tuple[str, ...]:
    ta = FILE if a.type == HARDLINK else a.type
    tb = FILE if b.type == HARDLINK else b.type
    out = []
    if ta != tb:
        out.append("type")
    elif ta == FILE and (a.size != b.size or a.digest != b.digest):
        out.append("content")
    elif ta == SYMLINK and a.link != b.link:
        out.append("target")
    if a.mode != b.mode:
        out.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append("owner")
    return tuple(out)


def download(old: Iterable[tuple[str, str]], new: Sequence[tuple[str, str, int]]) -> Download:
    """The layers of NEW (digest, diff_id, size) whose digest and diff_id OLD's layers
    (digest, diff_id) both lack: a node fetches those, and only those."""
    have: set[str] = set()
    for digest, diff_id in old:
        have.update((digest, diff_id))
    missing = [(d, i, s) for d, i, s in new if d not in have and i not in have]
    # a layer listed twice is fetched once
    unique = {d: s for d, _, s in missing}
    return Download(len(unique), sum(unique.values()), len({d for d, _, _ in new}),
                    sum({d: s for d, _, s in new}.values()))


# --- reading an image ---------------------------------------------------------------------------

@dataclass
class Tree:
    """The final state of the paths a changelog needs, from one image's layers (each table is
    keyed by the path in the image)."""

    #: Entries below /etc and /usr/etc, with content digests.
    etc_entries: dict[str, Entry] = field(default_factory=dict)
    #: kargs.d files' content.
    kargs: dict[str, bytes] = field(default_factory=dict)
    #: /usr/lib/modules/KVER/vmlinuz -> KVER.
    vmlinuz: dict[str, str] = field(default_factory=dict)
    #: Package database files' content, with the layer each came from.
    db: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    #: Debian changelogs (compressed), when asked for.
    changelogs: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    kept: int = 0

    #: Every directory above a path ever kept: most entries of an image are not, and need no
    #: look through the tables when they replace or delete something.
    dirs: set[str] = field(default_factory=set)

    def keep(self, table: dict[str, Any], path: str, value: Any) -> None:
        table[path] = value
        parent = path
        while (parent := parent.rpartition("/")[0]) and parent not in self.dirs:
            self.dirs.add(parent)

    def forget(self, path: str, *, below_only: bool = False) -> None:
        """A whiteout or a replaced directory: ``path`` (unless ``below_only``) and what was
        below it are gone."""
        if path not in self.dirs and (below_only or not any(
                path in t for t in (self.etc_entries, self.kargs, self.vmlinuz, self.db,
                                    self.changelogs))):
            return
        prefix = path.rstrip("/") + "/"
        tables: tuple[dict[str, Any], ...] = (
            self.etc_entries, self.kargs, self.vmlinuz, self.db, self.changelogs)
        for table in tables:
            for key in [k for k in table if k.startswith(prefix) or (
                    not below_only and k == path)]:
                del table[key]

    @property
    def etc(self) -> dict[str, Entry]:
        """The /etc entries by /etc path (an ostree-native image's /usr/etc is its /etc)."""
        out: dict[str, Entry] = {}
        for p, e in self.etc_entries.items():
            if p.startswith("/usr/etc/"):
                out.setdefault(p[len("/usr"):], e)
            else:
                out[p] = e
        return out

    @property
    def kernels(self) -> set[str]:
        return set(self.vmlinuz.values())


def _in_etc(path: str) -> bool:
    return any(path.startswith(d + "/") for d in ETC_DIRS)


def _is_kargs(path: str) -> bool:
    return posixpath.dirname(path) == paths.KARGS_DIR and path.endswith(".toml")


def _kernel_of(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) == 6 and path.startswith(paths.MODULES_DIR + "/") and parts[5] == "vmlinuz":
        return parts[4]
    return None


def _is_changelog(path: str) -> bool:
    parts = path.split("/")
    return (len(parts) == 6 and path.startswith(DOC_DIR + "/")
            and parts[5].startswith("changelog.Debian") and parts[5].endswith(".gz"))


def read_tree(src: ImageSource, *, changelogs: bool, progress: Progress | None = None) -> Tree:
    """Apply the image's layers in order (whiteouts, opaque directories, replaced
    directories) keeping only what :class:`Tree` holds; every layer's digests are proven."""
    from nestbuild.validation import packages

    say = progress or (lambda _m: None)
    tree = Tree()
    total = len(src.manifest.layers)
    for i in range(total):
        say(f"reading {src.ref} layer {i + 1}/{total}")
        what = f"{src.ref} layer {i}"
        with src.open_layer(i) as layer:
            tar = TarStream(layer.fileobj, seekable=layer.seekable, what=what)
            for m in tar:
                item = item_of(m, i)
                if isinstance(item, Whiteout):
                    tree.forget(item.path, below_only=item.opaque)
                    continue
                if not isinstance(item, Entry):
                    continue  # unsafe: no node applies it (validate and deploy say so)
                path = item.path
                if item.type != DIR:
                    tree.forget(path, below_only=True)
                if _in_etc(path):
                    if item.type == FILE:
                        h = hashlib.sha256()
                        for chunk in tar.body(m):
                            h.update(chunk)
                        item.digest = h.hexdigest()
                    elif item.type == HARDLINK:
                        target = tree.etc_entries.get(item.link)
                        item.size, item.digest = (target.size, target.digest) if target else (
                            0, None)
                    tree.keep(tree.etc_entries, path, item)
                    continue
                if item.type != FILE:
                    continue
                kver = _kernel_of(path)
                if kver is not None:
                    tree.keep(tree.vmlinuz, path, kver)
                elif _is_kargs(path):
                    if m.size <= MAX_KARGS_FILE:
                        tree.keep(tree.kargs, path, b"".join(tar.body(m)))
                    else:
                        tree.notes.append(f"{path}: larger than {MAX_KARGS_FILE} bytes; "
                                          "not read")
                elif packages.is_candidate(path):
                    data = _capped(tar, m, what)
                    tree.keep(tree.db, path, (data, i))
                elif changelogs and _is_changelog(path):
                    if m.size > MAX_CHANGELOG or tree.kept + m.size > MAX_CHANGELOGS:
                        continue  # its package's entries are left out (parse notes none)
                    tree.keep(tree.changelogs, path, b"".join(tar.body(m)))
                    tree.kept += m.size
            layer.finish()
    return tree


def _capped(tar: TarStream, m: Any, what: str) -> bytes:
    from nestbuild._pkgdb.rpmdb import MAX_DB

    if m.size > MAX_DB:
        raise PackageDbError(f"{what}: /{m.name.lstrip('./')} is {m.size} bytes (limit {MAX_DB})")
    return b"".join(tar.body(m))


@dataclass
class _Read:
    src: ImageSource
    tree: Tree
    db: PackageDb | None


def _read(src: ImageSource, *, changelogs: bool, progress: Progress | None) -> _Read:
    from nestbuild.validation import packages

    tree = read_tree(src, changelogs=changelogs, progress=progress)
    found = None
    if tree.db:
        top = max(layer for _, layer in tree.db.values())
        found = packages.found_in({p: d for p, (d, layer) in tree.db.items()}, top)
    db = packages.parse(found, what=str(src.ref)) if found is not None else None
    return _Read(src, tree, db)


def _with_debian_changelogs(db: PackageDb, tree: Tree,
                            names: set[str]) -> tuple[list[Package], list[str]]:
    """The database's packages, the upgraded Debian ones with their changelog entries."""
    notes = []
    out = []
    for p in db.packages:
        if p.name not in names:
            out.append(p)
            continue
        data = next((tree.changelogs[f"/{c}"] for c in changelog_paths(p.name, p.arch)
                     if f"/{c}" in tree.changelogs), None)
        if data is None:
            notes.append(f"{p.name}: the new image has no changelog.Debian.gz for it")
            out.append(p)
            continue
        try:
            entries = parse_changelog(data, what=f"{p.name}'s changelog")
        except PackageDbError as exc:
            notes.append(exc.message)
            entries = ()
        out.append(replace(p, changelog=entries))
    return out, notes


def _side(r: _Read, kargs: list[str]) -> Side:
    return Side(str(r.src.ref), r.src.digest, r.db.format if r.db else None,
                len(r.db.packages) if r.db else 0, tuple(sorted(r.tree.kernels)), tuple(kargs))


def compare(old: ImageSource, new: ImageSource, progress: Progress | None = None) -> Changelog:
    """What a node running ``old`` gets by rebooting into ``new``."""
    a = _read(old, changelogs=False, progress=progress)
    b = _read(new, changelogs=True, progress=progress)
    notes = [*a.tree.notes, *b.tree.notes]
    old_pkgs = list(a.db.packages) if a.db else []
    new_pkgs = list(b.db.packages) if b.db else []
    if a.db and b.db and a.db.kind != b.db.kind:
        notes.append(f"the old image's packages are {a.db.kind}, the new one's {b.db.kind}")
    if b.db is not None and b.db.kind == "deb":
        names = {p.name for p in diff_packages(old_pkgs, new_pkgs) if p.change == UPGRADED}
        new_pkgs, more = _with_debian_changelogs(b.db, b.tree, names)
        notes += more
    if a.db is None and b.db is None:
        notes.append("neither image has a package database (rpm or dpkg)")
    elif a.db is None or b.db is None:
        which = "old" if a.db is None else "new"
        notes.append(f"the {which} image has no package database: every package counts as "
                     f"{'added' if which == 'old' else 'removed'}")
    old_kargs, _ = kargs_of(a.tree.kargs, old.config.architecture)
    new_kargs, more_problems = kargs_of(b.tree.kargs, new.config.architecture)
    notes += more_problems
    removed, added = diff_kargs(old_kargs, new_kargs)
    layers = old.manifest.layers
    have = [(d.digest, old.config.diff_ids[i]) for i, d in enumerate(layers)]
    want = [(d.digest, new.config.diff_ids[i], d.size)
            for i, d in enumerate(new.manifest.layers)]
    return Changelog(_side(a, old_kargs), _side(b, new_kargs),
                     diff_packages(old_pkgs, new_pkgs), removed, added,
                     diff_etc(a.tree.etc, b.tree.etc), download(have, want), notes)


def changelog(old: str | None, new: str, *, sysroot: Path | None = None,
              via: str | None = None, host: str | Host | None = None,
              status: str | None = None, access: RegistryAccess | None = None,
              progress: Progress | None = None) -> Changelog:
    """What a reboot into ``new`` changes on a node running ``old``.

    ``old`` is an image reference (any transport); or, with ``old=None``, what a node runs:
    a local sysroot's default deployment (``sysroot``), the booted deployment bootc or
    rpm-ostree reports (``via``, on ``host`` over ssh, default bootc), or a recorded
    ``bootc status --format=json`` / ``rpm-ostree status --json`` document (``status``,
    its text). A node's image is read from its registry by the digest the node reports.
    """
    from nestbuild._image.transports import open_image

    # one source: an image, a sysroot, a saved status, or a live node (--via tells how to
    # read a saved status too)
    sources = [x is not None for x in (old, sysroot, status, host)]
    if sum(sources) + (via is not None and not any(sources[1:])) != 1 or (
            via is not None and (old is not None or sysroot is not None)):
        raise UsageError("name the old image once: an image, --sysroot, --host/--via or "
                         "--status")
    old_ref = old if old is not None else node_image(
        sysroot=sysroot, via=via, host=host, status=status)
    return compare(_open(old_ref, access, open_image), _open(new, access, open_image),
                   progress)


def _open(ref: str, access: RegistryAccess | None, open_image: Any) -> ImageSource:
    src: ImageSource = open_image(ref)
    if access is not None and src.ref.transport == "docker":
        from nestbuild._image.registry_source import RegistrySource

        src = RegistrySource(src.ref, access=access)
    return src


def booted_image(status: NodeStatus | SysrootStatus) -> str:
    """``docker://REPO@DIGEST`` of the deployment a node runs: bootc's or rpm-ostree's booted
    one, a sysroot's default. ChangelogError when there is none, or it has no image digest."""
    from nestbuild.node.checks import repository
    from nestbuild.node.sysroot import SysrootStatus

    if isinstance(status, SysrootStatus):
        current = next((d for d in status.deployments if d.default), None)
        image, digest, what = (current.image, current.digest, "default") if current else (
            None, None, "default")
    else:
        booted = status.role("booted")
        image, digest = (booted.image, booted.digest) if booted else (None, None)
        what = "booted"
        current = booted  # type: ignore[assignment]
    if current is None:
        raise ChangelogError(f"the node has no {what} deployment")
    if image is None or digest is None:
        raise ChangelogError(f"the node's {what} deployment was not made from a container "
                             "image by digest (an ostree commit); nothing to compare with")
    if image.split(":", 1)[0] in ("oci", "oci-archive", "containers-storage", "dir"):
        raise ChangelogError(f"the node's {what} image came from {image}, not a registry; "
                             "name the old image instead")
    return f"docker://{repository(image.split('@', 1)[0])}@{digest}"


def node_image(*, sysroot: Path | None = None, via: str | None = None,
               host: str | Host | None = None, status: str | None = None) -> str:
    """The image reference of what a node runs (see :func:`changelog`)."""
    from nestbuild.node import status as statuses

    if status is not None:
        if via is None:  # bootc's Host document names its kind; rpm-ostree's does not
            via = "bootc" if '"apiVersion"' in status else "rpm-ostree"
        parse = statuses.parse_bootc if via == "bootc" else statuses.parse_rpm_ostree
        return booted_image(parse(status))
    from nestbuild.node.backend import backend_for

    if sysroot is not None:
        return booted_image(backend_for("ostree", sysroot=sysroot).status())
    return booted_image(backend_for(via or "bootc", host=host).status())


def rebase_changelog(options: RebaseOptions, result: ToolRebase | SysrootRebase,
                     progress: Progress | None = None) -> Changelog:
    """What the rebase ``result`` (checked, usually a dry run) changes: the node's current
    image (its booted deployment, a sysroot's default) against the target by digest."""
    from nestbuild.node.checks import repository
    from nestbuild.node.sysroot import SysrootRebase

    if isinstance(result, SysrootRebase):
        target = f"docker://{repository(result.image.split('@', 1)[0])}@{result.digest}"
        old = node_image(sysroot=options.sysroot)
    else:
        target = f"docker://{result.plan.pinned}"
        old = node_image(via=options.via, host=options.host)
    return changelog(old, target, access=options.access, progress=progress)
