"""One image layer as a node stores it: read once, judged, rewritten, hashed.

The layer's tar stream is read in order and every entry gets the node's verdict
(:func:`~nestbuild.node.nodetree.verdict`) and passes the :class:`~.nodetree.SymlinkGuard`:
a refused entry stops the import with one line naming the layer and the path; a dropped one
is left out. What is kept is written out again as a plain tar stream for
``ostree commit --tree=tar=`` (so ostree writes each file once, straight into its objects;
nothing is unpacked on the way), under ``root/`` with ``/etc`` as ``/usr/etc``. What a tar
stream cannot say to ostree is returned as :class:`LayerFacts`: the whiteouts, the hard links
to files of lower layers, and the directories the layer did not list (created here so ostree
has them, but they must not override a lower layer's directory).

The writer does not hash: the caller proves the stream (``LayerStream.finish()``, which
compares it with the layer's diff_id) between :meth:`LayerWriter.run` and
:meth:`LayerWriter.finish`, so the tar is ended only for a layer whose content is what the
image's config says, and nothing of any other layer is ever committed.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import IO, Any

from nestbuild._image.tarstream import TarStream
from nestbuild._image.tree import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    Whiteout,
    item_of,
    read_errors,
)
from nestbuild.errors import LayerError
from nestbuild.node import nodetree

#: Layout of a layer commit: the layer's tree, and the facts beside it.
TREE_DIR = "root"
FACTS_FILE = "nestbuild-layer.json"
#: Bumped whenever what a layer commit holds changes; older commits are imported again.
FORMAT = 2
_BLOCK = 512
_ZEROS = bytes(_BLOCK)
#: Extended attributes the node sets itself (from its SELinux policy), never from an image.
_SKIP_XATTRS = ("security.selinux",)


def map_path(path: str) -> str:
    """Image paths to ostree paths: /etc is stored as /usr/etc."""
    if path == "/etc" or path.startswith("/etc/"):
        return "/usr" + path
    return path


@dataclass
class LayerFacts:
    """What a layer commit's trees do not say by themselves (paths are ostree paths).

    A layer is one tree unless it changes a path's type (or a path a hard link of its names)
    part-way: ostree cannot replace within one stream, so the rest goes into a further tree,
    a *segment*, applied after the first as tar would. Most layers have one.
    """

    diff_id: str
    segments: int = 1
    #: (path, opaque) in layer order; applied before the first segment.
    whiteouts: list[tuple[str, bool]] = field(default_factory=list)
    #: (segment, path, target): hard links to files the layer itself does not have.
    lower_links: list[tuple[int, str, str]] = field(default_factory=list)
    #: Per segment, the directories it has only because something below them is in it.
    implicit_dirs: list[list[str]] = field(default_factory=list)
    #: (segment, path, target): the layer's own hard links below /var (a node's /var is
    #: seeded with the image's hard links, and no others).
    var_links: list[tuple[int, str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "diff_id": self.diff_id, "segments": self.segments,
                "whiteouts": [[p, o] for p, o in self.whiteouts],
                "lower_links": [list(x) for x in self.lower_links],
                "implicit_dirs": self.implicit_dirs,
                "var_links": [list(x) for x in self.var_links]}

    @classmethod
    def from_json(cls, obj: Any) -> LayerFacts | None:
        """None for anything but facts of the current format (the layer is imported again)."""
        try:
            if obj.get("format") != FORMAT:
                return None
            facts = cls(str(obj["diff_id"]), int(obj["segments"]),
                        [(str(p), bool(o)) for p, o in obj["whiteouts"]],
                        [(int(n), str(p), str(t)) for n, p, t in obj["lower_links"]],
                        [[str(p) for p in seg] for seg in obj["implicit_dirs"]],
                        [(int(n), str(p), str(t)) for n, p, t in obj["var_links"]])
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        return facts if len(facts.implicit_dirs) == facts.segments >= 1 else None


def tree_dir(segment: int) -> str:
    """Where a segment's tree is in a layer commit."""
    return TREE_DIR if segment == 0 else f"{TREE_DIR}.{segment}"


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body)
    length = n + len(str(n))
    if len(str(length)) != len(str(n)):
        length = n + len(str(length))
    return str(length).encode() + body


def tar_header(name: str, kind: bytes, *, mode: int = 0o755, uid: int = 0, gid: int = 0,
               size: int = 0, link: str = "", xattrs: dict[str, bytes] | None = None) -> bytes:
    """One member's header (a PAX header before it when ustar's fields cannot hold it)."""
    raw_name, raw_link = name.encode("utf-8"), link.encode("utf-8")
    pax: list[bytes] = []
    if len(raw_name) > 100:
        pax.append(_pax_record(b"path", raw_name))
    if len(raw_link) > 100:
        pax.append(_pax_record(b"linkpath", raw_link))
    if uid >= 8 ** 7:
        pax.append(_pax_record(b"uid", str(uid).encode()))
    if gid >= 8 ** 7:
        pax.append(_pax_record(b"gid", str(gid).encode()))
    if size >= 8 ** 11:
        pax.append(_pax_record(b"size", str(size).encode()))
    for key, value in (xattrs or {}).items():
        pax.append(_pax_record(b"SCHILY.xattr." + key.encode("utf-8", "surrogateescape"),
                               value))
    out = b""
    if pax:
        data = b"".join(pax)
        out = _ustar(b"././@PaxHeader", b"x", 0o644, 0, 0, len(data), b"") + data + \
            bytes(-len(data) % _BLOCK)
    return out + _ustar(raw_name[:100], kind, mode, uid if uid < 8 ** 7 else 0,
                        gid if gid < 8 ** 7 else 0, size if size < 8 ** 11 else 0,
                        raw_link[:100])


def _ustar(name: bytes, kind: bytes, mode: int, uid: int, gid: int, size: int,
           link: bytes) -> bytes:
    h = bytearray(_BLOCK)
    h[0:len(name)] = name
    h[100:108] = _octal(mode, 8)
    h[108:116] = _octal(uid, 8)
    h[116:124] = _octal(gid, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(0, 12)
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[157:157 + len(link)] = link
    h[257:265] = b"ustar\x0000"
    h[329:337] = _octal(0, 8)
    h[337:345] = _octal(0, 8)
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


_LOWER = "lower"
_KIND_OF = {DIR: "directory", FILE: "file", SYMLINK: "symlink",
            _LOWER: "hard link to a lower layer's file"}


class LayerWriter:
    """Filter one layer's tar stream into ``out`` (a tar stream for ostree).

    ``what`` names the layer in refusals ("IMAGE layer 2/3 (sha256:...)").
    """

    def __init__(self, out: IO[bytes], diff_id: str, what: str) -> None:
        self._out = out
        self._what = what
        self.facts = LayerFacts(diff_id)
        self._guard = nodetree.SymlinkGuard()
        self._seg = -1
        #: What each ostree path is in the current segment: directory, file, symlink, or
        #: "hard link to a lower layer".
        self._kinds: dict[str, str] = {}
        self._implicit: set[str] = set()
        #: Paths a hard link of the current segment used: changing one starts a segment
        #: (ostree resolves hard links at the end of the stream, tar at the link).
        self._linked: set[str] = set()
        #: The latest segment and kind of every non-directory of the layer.
        self._latest: dict[str, tuple[int, str]] = {}

    def refuse(self, path: str, why: str) -> LayerError:
        return LayerError(f"{self._what}: {path}: {why}; refused, the sysroot is unchanged")

    def run(self, fileobj: IO[bytes]) -> None:
        """Filter the whole stream (and read it to its end, for the caller's proof)."""
        self._write(tar_header("./", b"5"))
        self._segment()
        stream = TarStream(fileobj, seekable=False, what=self._what)
        try:
            for member in stream:
                item = item_of(member, -1)
                self._apply(item, stream, member)
            while fileobj.read(1 << 20):  # the end of archive and padding, for the proof
                pass
        except read_errors() as exc:
            raise LayerError(f"{self._what}: corrupt or truncated tar ({exc})") from None
        self.facts.implicit_dirs.append(sorted(self._implicit))
        self.facts.segments = self._seg + 1

    def facts_json(self) -> bytes:
        return json.dumps(self.facts.to_json(), sort_keys=True).encode()

    def finish(self, facts_json: bytes) -> None:
        """The facts file and the end of the archive (after run() and any further checks)."""
        self._write(tar_header(FACTS_FILE, b"0", mode=0o644, size=len(facts_json)))
        self._write(facts_json + bytes(-len(facts_json) % _BLOCK))
        self._write(_ZEROS * 2)

    def _write(self, data: bytes) -> None:
        self._out.write(data)

    def _segment(self) -> None:
        if self._seg >= 0:
            self.facts.implicit_dirs.append(sorted(self._implicit))
        self._seg += 1
        self._kinds, self._implicit, self._linked = {}, set(), set()
        self._dir("/", explicit=False, mode=0o755, uid=0, gid=0, xattrs={})

    def _apply(self, item: Any, stream: TarStream, member: Any) -> None:
        link = self._guard.through(item)  # fed every item, as validate feeds it
        v = nodetree.verdict(item)
        if v.action == nodetree.REFUSE:
            raise self.refuse(item.path, v.reason)
        if link is not None:
            raise self.refuse(item.path, f"reached through the symlink {link}; unpacking it "
                                         "would write outside the tree")
        # What the node drops (the children of /run, /tmp...) is kept in the layer all the
        # same: a later hard link may name it, and the tree's own rules apply to it. The
        # composed tree drops it (deploy). Device nodes and fifos there are left out: ostree
        # cannot hold them, and nothing of the node's may be one.
        if isinstance(item, Entry) and item.type in (CHAR, BLOCK, FIFO):
            return
        if isinstance(item, Whiteout):
            self.facts.whiteouts.append((map_path(item.path), item.opaque))
            return
        assert isinstance(item, Entry)
        path = map_path(item.path)
        if item.type == HARDLINK:
            self._hardlink(item, path)
            return
        if path == "/":
            if item.type != DIR:
                raise self.refuse("/", f"the root is a {item.type}, not a directory")
            self._dir("/", explicit=True, mode=item.mode, uid=item.uid, gid=item.gid,
                      xattrs=item.xattrs)
            return
        self._replacing(path, item.type)
        self._parents(item.path, path)
        if item.type == DIR:
            self._dir(path, explicit=True, mode=item.mode, uid=item.uid, gid=item.gid,
                      xattrs=item.xattrs)
            self._latest.pop(path, None)
        elif item.type == SYMLINK:
            self._note(path, SYMLINK)
            self._write(tar_header(self._name(path), b"2", mode=0o777, uid=item.uid,
                                   gid=item.gid, link=item.link, xattrs=_xattrs(item)))
        else:
            self._note(path, FILE)
            self._write(tar_header(self._name(path), b"0", mode=item.mode, uid=item.uid,
                                   gid=item.gid, size=member.size, xattrs=_xattrs(item)))
            for chunk in stream.body(member):
                self._write(chunk)
            self._write(bytes(-member.size % _BLOCK))

    def _note(self, path: str, kind: str) -> None:
        self._kinds[path] = kind
        self._latest[path] = (self._seg, kind)

    def _name(self, path: str, segment: int | None = None) -> str:
        return tree_dir(self._seg if segment is None else segment) + path

    def _dir(self, path: str, *, explicit: bool, mode: int, uid: int, gid: int,
             xattrs: dict[str, bytes]) -> None:
        self._kinds[path] = DIR
        if explicit:
            self._implicit.discard(path)
        else:
            self._implicit.add(path)
        name = self._name("/" if path == "/" else path + "/")
        self._write(tar_header(name, b"5", mode=mode, uid=uid, gid=gid,
                               xattrs={k: v for k, v in xattrs.items()
                                       if k not in _SKIP_XATTRS}))

    def _parents(self, shown: str, path: str) -> None:
        """Make sure every parent of ``path`` is a directory of this segment (the missing
        ones implicit); a parent that is something else refuses ``shown``."""
        missing: list[str] = []
        parent = posixpath.dirname(path)
        while parent not in self._kinds:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        kind = self._kinds[parent]
        if kind != DIR:
            raise self.refuse(shown, f"its parent {parent} is a {_KIND_OF.get(kind, kind)} "
                                     "in this layer")
        for p in reversed(missing):
            self._dir(p, explicit=False, mode=0o755, uid=0, gid=0, xattrs={})

    def _replacing(self, path: str, kind: str) -> None:
        """Start a segment if ``path`` changes in a way one ostree tree cannot hold."""
        before = self._kinds.get(path)
        if before is None:
            return
        if path in self._linked or (before == DIR) != (kind == DIR):
            self._segment()

    def _hardlink(self, item: Entry, path: str) -> None:
        target = map_path(item.link)
        latest = self._latest.get(target)
        if self._kinds.get(target) == DIR or (latest is None and target in self._kinds):
            raise self.refuse(item.path, f"hard link to the directory {item.link}")
        self._replacing(path, FILE if latest is None else latest[1])
        self._parents(item.path, path)
        self._linked.update((path, target))
        if latest is None or latest[1] == _LOWER:
            self.facts.lower_links.append((self._seg, path, target))
            self._note(path, _LOWER)
            return
        seg, kind = latest
        self._note(path, kind)
        if path.startswith("/var/"):
            self.facts.var_links.append((self._seg, path, target))
        self._write(tar_header(self._name(path), b"1", mode=item.mode, uid=item.uid,
                               gid=item.gid, link=self._name(target, seg)))


def _xattrs(item: Entry) -> dict[str, bytes]:
    return {k: v for k, v in item.xattrs.items() if k not in _SKIP_XATTRS}
