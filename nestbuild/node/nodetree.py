"""What a node does with each entry of an image's layers: keep it, drop it, or refuse the image.

One definition for both sides of nestbuild's promise. ``validate`` reports every refusal as an
error and every drop as a finding; ``rebase --via ostree`` applies exactly the same verdicts
while it imports layers. So an image that validate passes deploys, and an image that deploy
refuses never passes validate. The rules follow ostree-ext's layer filter (what bootc and
rpm-ostree do on a node) and are stricter where docs/security.md says so.

The per-entry verdict is stateless. The one stateful rule, that no entry may be reached
through a symlink an earlier entry created, is :class:`SymlinkGuard`, used the same way by
both sides.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from nestbuild._image.tree import BLOCK, CHAR, FIFO, SYMLINK, Entry, Item, Unsafe, Whiteout, is_utf8
from nestbuild._util.record import Value

if TYPE_CHECKING:
    import configparser

KEEP, DROP, REFUSE = "keep", "drop", "refuse"

#: Directories the node keeps while dropping every child (ostree-ext's filter; /boot is
#: masked by the real /boot at runtime).
DROP_CHILDREN = ("/run", "/tmp", "/proc", "/sys", "/dev", "/boot")
#: Top-level names a bootable root may have; anything else needs composefs or root.transient.
ROOT_NAMES = frozenset({"usr", "etc", "var", "bin", "sbin", "lib", "lib64", "lib32", "sysroot",
                        "ostree", "boot", "dev", "proc", "sys", "run", "tmp"})
#: Where the node keeps the image's /etc; an image must not ship it itself.
USR_ETC = "/usr/etc"
PREPARE_ROOT_CONF = "/usr/lib/ostree/prepare-root.conf"


class Verdict(Value):
    __slots__ = ("action", "reason")
    action: Final[str]
    reason: Final[str]

    def __init__(self, action: str, reason: str = "") -> None:
        self.action = action
        self.reason = reason


_KEPT = Verdict(KEEP)


def dropped_by(path: str, keeps_toplevels: bool) -> str | None:
    """Why the node drops ``path`` (None when it keeps it)."""
    for d in DROP_CHILDREN:
        if path.startswith(d + "/"):
            return f"the node drops everything below {d}"
    parts = path.split("/", 2)
    top = parts[1] if len(parts) > 1 else ""
    if top and top not in ROOT_NAMES and not keeps_toplevels:
        return (f"/{top} is not kept: the base enables neither composefs nor root.transient")
    return None


def verdict(item: Item, *, keeps_toplevels: bool = True) -> Verdict:
    """The node's verdict on one layer item.

    ``keeps_toplevels`` is whether the image's prepare-root.conf enables composefs or
    root.transient (see :func:`keeps_toplevels`); callers that learn it only at the end pass
    True here and drop top-levels afterwards with :func:`dropped_by`.
    """
    if isinstance(item, Unsafe):
        return Verdict(REFUSE, item.reason)
    path = item.path
    if not is_utf8(path):
        return Verdict(REFUSE, "non-UTF-8 file name")
    why = dropped_by(path, keeps_toplevels)
    if why is not None:
        return Verdict(DROP, why)
    if isinstance(item, Whiteout):
        return _KEPT
    if item.type == SYMLINK and not is_utf8(item.link):
        return Verdict(REFUSE, "non-UTF-8 symlink target")
    if item.type in (CHAR, BLOCK):
        return Verdict(REFUSE, f"{item.type} device node {item.devmajor}:{item.devminor}; "
                               "nodes refuse device nodes")
    if item.type == FIFO:
        return Verdict(REFUSE, "a fifo; nodes refuse fifos")
    if path == USR_ETC or path.startswith(USR_ETC + "/"):
        return Verdict(REFUSE, "/usr/etc is where the node keeps the image's /etc; "
                               "ship configuration in /etc")
    return _KEPT


def prepare_root(data: bytes | None) -> configparser.ConfigParser | None:
    """prepare-root.conf parsed (None when missing or unreadable: the defaults apply)."""
    if data is None:
        return None
    import configparser  # here: validate and deploy import this module, few need the parser

    conf = configparser.ConfigParser()
    try:
        conf.read_string(data.decode("utf-8", "replace"))
    except configparser.Error:
        return None
    return conf


_TRUE = ("yes", "true", "1")


def composefs_enabled(conf: configparser.ConfigParser | None) -> bool:
    value = conf.get("composefs", "enabled", fallback="no") if conf else "no"
    return value.strip().lower() in (*_TRUE, "signed", "verity", "maybe")


def keeps_toplevels(prepare_root_conf: bytes | None) -> bool:
    """Whether prepare-root.conf enables composefs or root.transient (then the node keeps
    top-level directories other than the standard ones)."""
    conf = prepare_root(prepare_root_conf)
    transient = conf.get("root", "transient", fallback="no") if conf else "no"
    return composefs_enabled(conf) or transient.strip().lower() in _TRUE


class SymlinkGuard:
    """Refuses any entry that would be reached through a symlink in the tree built so far.

    Feed it every item in layer order (base layers first). A symlink at a path is fine; an
    entry, whiteout or hard link *below* a path that is a symlink at that moment is not: an
    unpacker that followed it would write outside the tree. Replacing the symlink itself by
    a directory (an entry at the same path) is allowed, as containers/storage does.
    """

    def __init__(self, links: Iterable[str] = ()) -> None:
        #: ``links``: where an earlier guard stopped (validate keeps a base's in its index).
        self._links: set[str] = set(links)

    @property
    def links(self) -> frozenset[str]:
        """The symlinks it has recorded, to resume from (see ``__init__``)."""
        return frozenset(self._links)

    def through(self, item: Item) -> str | None:
        """The symlink ``item`` would pass through, or None; then records the item."""
        if isinstance(item, Unsafe):
            return None
        found = self._ancestor_link(item.path)
        if found is not None:
            return found
        if isinstance(item, Whiteout):
            if item.opaque and item.path in self._links:
                return item.path  # emptying "the directory" would empty the link's target
            self._forget_below(item.path, include_self=not item.opaque)
            return None
        if item.type == "hardlink":
            found = self._ancestor_link(item.link)  # the link's target, reached the same way
            if found is not None:
                return found
        # An entry replaces what was at its path (a symlink included). Links below a replaced
        # directory are forgotten only by whiteouts: a stale one can only refuse, never pass.
        self._links.discard(item.path)
        if item.type == SYMLINK or (item.type == "hardlink" and item.link in self._links):
            self._links.add(item.path)  # a hard link to a symlink is that symlink
        return None

    def _ancestor_link(self, path: str) -> str | None:
        if not self._links:
            return None
        if path == "/etc" or path.startswith("/etc/"):  # stored as /usr/etc: reached via /usr
            found = self._ancestor_link("/usr" + path)
            if found is not None:
                return found
        links = self._links  # per entry of every layer: str.rfind, not posixpath.dirname
        end = path.rfind("/")
        while end > 0:
            parent = path[:end]
            if parent in links:
                return parent
            end = path.rfind("/", 0, end)
        return None

    def _forget_below(self, path: str, *, include_self: bool) -> None:
        if not self._links:  # whiteouts are few, so a scan of the links is cheap enough
            return
        if include_self:
            self._links.discard(path)
        prefix = path.rstrip("/") + "/"
        stale = [p for p in self._links if p.startswith(prefix)]
        for p in stale:
            self._links.discard(p)


def refusal(item: Item, guard: SymlinkGuard) -> str | None:
    """Why a node refuses the image at ``item`` (None if it does not): the item's own
    verdict, else the symlink it would be reached through. Feeds ``guard`` either way.

    Top-level directories are treated as kept: dropping is not refusing, and which ones are
    dropped is known only from the final prepare-root.conf (see :func:`dropped_by`).
    """
    link = guard.through(item)
    v = verdict(item)
    if v.action == REFUSE:
        return v.reason
    if link is not None:
        return f"reached through the symlink {link}; unpacking it would write outside the tree"
    return None


def describe(entry: Entry | Whiteout) -> str:
    """A short name of what an item is, for one-line refusals."""
    if isinstance(entry, Whiteout):
        return "opaque whiteout" if entry.opaque else "whiteout"
    return entry.type
