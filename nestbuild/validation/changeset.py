"""What the derived layers change, path by path, against the base.

Derived layers are applied in order over an in-memory overlay (OCI whiteouts and opaque
directories included); then every path the overlay touches, and every base path a whiteout
hid, is compared with the base index. Only real mutations are reported: rewriting a file
with identical content and metadata, or touching a directory's mtime, is not a change.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Final

from nestbuild._image import paths
from nestbuild._image.tree import (
    BLOCK,
    CHAR,
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    Item,
    Unsafe,
    Whiteout,
)
from nestbuild._util.record import Value
from nestbuild.validation.baseindex import BaseIndex, comparable_type

ADDED, MODIFIED, DELETED, METADATA = "added", "modified", "deleted", "metadata"


class Change(Value):
    """One path the derived layers changed, and how."""

    _hidden = ("before", "after")
    path: Final[str]
    kind: Final[str]
    #: The entry type after the change (before it, for deletions).
    type: Final[str]
    #: Index of the image layer that made the change.
    layer: Final[int]
    #: What differs for modified/metadata: content, type, target, device, mode, owner, xattrs.
    details: Final[tuple[str, ...]]
    before: Final[Entry | None]
    after: Final[Entry | None]

    def __init__(self, path: str, kind: str, type: str, layer: int,
                 details: tuple[str, ...] = (), before: Entry | None = None,
                 after: Entry | None = None) -> None:
        self.path = path
        self.kind = kind
        self.type = type
        self.layer = layer
        self.details = details
        self.before = before
        self.after = after

    def _values(self) -> tuple[object, ...]:
        # before and after are not compared nor hashed (entries are mutable): the change is
        # its path, kind, type, layer and details
        return (self.path, self.kind, self.type, self.layer, self.details)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "path": self.path, "kind": self.kind, "type": self.type, "layer": self.layer,
        }
        if self.details:
            out["details"] = list(self.details)
        return out


def compare(before: Entry | None, after: Entry | None) -> tuple[str, tuple[str, ...]] | None:
    """Classify one path; None when nothing a node would notice changed."""
    if before is None and after is None:
        return None
    if before is None:
        return ADDED, ()
    if after is None:
        return DELETED, ()
    details: list[str] = []
    tb, ta = comparable_type(before.type), comparable_type(after.type)
    if tb != ta:
        details.append("type")
    elif ta == FILE:
        if before.size != after.size or before.digest is None or before.digest != after.digest:
            details.append("content")
    elif ta == SYMLINK:
        if before.link != after.link:
            details.append("target")
    elif ta in (CHAR, BLOCK) and (before.devmajor, before.devminor) != (
        after.devmajor, after.devminor,
    ):
        details.append("device")
    if before.mode != after.mode:
        details.append("mode")
    if (before.uid, before.gid) != (after.uid, after.gid):
        details.append("owner")
    if before.xattrs != after.xattrs:
        details.append("xattrs")
    if not details:
        return None
    structural = {"type", "content", "target", "device"}
    return (MODIFIED if structural.intersection(details) else METADATA), tuple(details)


class Overlay:
    """The derived layers' combined effect: the final entry (or deletion) of each path."""

    def __init__(self, base: BaseIndex, *, full_compare: bool = False) -> None:
        self.base = base
        #: The derived layers are a whole tree (a squashed image): base paths they do not
        #: name are deletions.
        self.full_compare = full_compare
        #: path -> final entry, or a Whiteout when the derived layers delete it.
        self.entries: dict[str, Entry | Whiteout] = {}
        #: Directories whose base contents are hidden (deleted or made opaque), with the layer.
        self.hidden: dict[str, int] = {}
        #: Content of small configuration files (paths.keeps_content) the derived layers wrote,
        #: with the entry it belongs to (a later layer may replace the file).
        self.contents: dict[str, tuple[Entry, bytes]] = {}
        self.unsafe: list[Unsafe] = []
        #: Parents already seen to be directories in the merged tree (reset when a whiteout
        #: or a non-directory entry may have replaced one).
        self._dirs: set[str] = set()

    def want_digest(self, entry: Entry) -> bool:
        """Hash a derived file only if the base has a file of the same size there."""
        before = self.base.get(entry.path)
        return before is not None and before.type in (FILE, HARDLINK) and before.size == entry.size

    def keep_content(self, entry: Entry, data: bytes) -> None:
        if paths.keeps_content(entry.path):
            self.contents[entry.path] = (entry, data)

    def apply(self, item: Item) -> str | None:
        """Apply one derived item; returns why a node would refuse it where the merged tree
        shows it (below a file, a hard link to a directory or to nothing), else None.

        The same refusals as deploy's (nestbuild.node.deploy), so validate reports what deploy
        refuses; what each item is by itself is nodetree's verdict (lints.LayerScanner).
        """
        if isinstance(item, Unsafe):
            self.unsafe.append(item)
            return None
        why = self._below_non_directory(item.path)
        if isinstance(item, Whiteout):
            self._dirs.clear()
            self._whiteout(item)
            return why
        if item.type != DIR and item.path in self._dirs:
            self._dirs.clear()  # a directory replaced: what was below it is gone
        if item.type == HARDLINK:
            why = why or self._resolve_hardlink(item)
        self.entries[item.path] = item
        return why

    def _below_non_directory(self, path: str) -> str | None:
        parent = posixpath.dirname(path)
        if parent in ("/", "") or parent in self._dirs:
            return None
        above = self.get(parent)
        if above is None or above.type == DIR:
            self._dirs.add(parent)  # missing parents are made as directories by the unpack
            return None
        if above.type == SYMLINK:
            return None  # nodetree.SymlinkGuard says so, with the link
        return f"below {parent}, which is a {above.type}, not a directory"

    def _whiteout(self, w: Whiteout) -> None:
        prefix = w.path.rstrip("/") + "/"
        if w.opaque:
            stale = [
                p for p, e in self.entries.items() if p.startswith(prefix) and e.layer < w.layer
            ]
        else:
            stale = [p for p in self.entries if p.startswith(prefix)]
            self.entries[w.path] = w
        for p in stale:
            del self.entries[p]
        self.hidden[w.path] = w.layer

    def _resolve_hardlink(self, e: Entry) -> str | None:
        target = self.get(e.link)
        if target is None:
            return f"a hard link to {e.link}, which no layer has at that point"
        if target.type == DIR:
            return f"a hard link to the directory {e.link}"
        e.size, e.digest = target.size, target.digest
        return None

    def _is_hidden(self, path: str) -> bool:
        if not self.hidden:
            return False
        parent = path
        while parent not in ("/", ""):
            parent = posixpath.dirname(parent)
            if parent in self.hidden:
                return True
        return False

    # --- the merged (base + derived) tree, for lints -------------------------------------

    def get(self, path: str) -> Entry | None:
        """The entry at ``path`` in the final image."""
        e = self.entries.get(path)
        if isinstance(e, Whiteout):
            return None
        if e is not None:
            return e
        if self._hidden_by(path):
            return None
        return self.base.get(path)

    def _hidden_by(self, path: str) -> bool:
        # A base path is hidden if an ancestor was whited out or made opaque.
        return self._is_hidden(path)

    def below(self, prefix: str) -> Iterator[Entry]:
        """Every entry strictly below ``prefix`` in the final image (unordered)."""
        return self._below(prefix, "", self.base.below(prefix))

    def below_ending(self, prefix: str, suffix: str) -> Iterator[Entry]:
        """The entries below ``prefix`` whose path ends with ``suffix`` (the base's are
        filtered by its index, not read one by one)."""
        return self._below(prefix, suffix, self.base.below_ending(prefix, suffix))

    def _below(self, prefix: str, suffix: str, base: Iterator[Entry]) -> Iterator[Entry]:
        seen: set[str] = set()
        pre = prefix.rstrip("/") + "/"
        for p, e in self.entries.items():
            if p.startswith(pre) and p.endswith(suffix):
                seen.add(p)
                if isinstance(e, Entry):
                    yield e
        # Linear in the entries: whether the prefix itself is hidden is asked once, and a base
        # entry is then hidden only by a whited-out directory below the prefix (one C-level
        # startswith per entry, none at all when nothing below it was deleted).
        top = prefix.rstrip("/")
        if top and (top in self.hidden or self._is_hidden(top)):
            return
        inner = tuple(h.rstrip("/") + "/" for h in self.hidden
                      if h.startswith(pre) and h.rstrip("/"))
        for e in base:
            if e.path not in seen and not (inner and e.path.startswith(inner)):
                yield e

    def children(self, path: str) -> Iterator[Entry]:
        depth = path.rstrip("/").count("/") + 1
        for e in self.below(path):
            if e.path.count("/") == depth:
                yield e

    def content(self, path: str) -> bytes | None:
        e = self.entries.get(path)
        if isinstance(e, Whiteout):
            return None
        if e is not None:
            kept = self.contents.get(path)
            return kept[1] if kept is not None and kept[0] is e else None
        if self._hidden_by(path):
            return None
        return self.base.content(path)

    # --- the changeset -------------------------------------------------------------------

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for path, e in self.entries.items():
            before = self.base.get(path)
            after = e if isinstance(e, Entry) else None
            result = compare(before, after)
            if result is not None:
                kind, details = result
                typ = (after or before).type  # type: ignore[union-attr]
                out.append(Change(path, kind, typ, e.layer, details, before, after))
        if self.full_compare:
            for b in self.base.below("/"):
                if b.path not in self.entries and not self._hidden_by(b.path):
                    out.append(Change(b.path, DELETED, b.type, -1, (), b, None))
        for prefix, layer in self.hidden.items():
            for b in self.base.below(prefix):
                if b.path not in self.entries:
                    out.append(Change(b.path, DELETED, b.type, layer, (), b, None))
        out.sort(key=lambda c: c.path)
        return out

