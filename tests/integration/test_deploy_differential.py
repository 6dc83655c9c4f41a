"""Differential test of deploy: generated layer stacks, deployed by nestbuild into a fresh
ostree sysroot, must give the tree containers/storage unpacks from the same image, less what
a node changes by design. Stacks the node must refuse are refused, and nothing outside the
sysroot changes either way.

The reference is containers/storage with the vfs driver, in a private store (skopeo copy,
``buildah from --pull-never``, ``buildah mount``). vfs applies each layer over a full copy of
the layers below, the plainest reading of the OCI layer rules; the overlay driver refuses a
hard link to a lower layer's file ("processing tar file(no such file or directory)"), which
the image spec allows. The store is the test's own, so it does not touch the machine's images.

Differences a node makes by design (nestbuild.node.nodetree), expected:
- the children of /run, /tmp, /proc, /sys, /dev and /boot are dropped; top-level names other
  than a bootable root's are dropped unless the final prepare-root.conf enables composefs or
  root.transient (``nodetree.dropped_by``, ``nodetree.keeps_toplevels``);
- /etc is committed as /usr/etc; ``ostree admin deploy`` copies it to the deployment's /etc
  (a copy: it must have the same entries, but hard links are not kept in it, and nothing in
  it may share an inode with anything outside it);
- the children of /var are not in the deployment: they are seeded into the stateroot's /var
  on first install, never over what ``ostree admin os-init`` put there (its entries win).
  Seeded /var is writable, so its hard-link groups must be the image's exactly, and none of
  its files may share an inode with the deployment or the repository.

ostree's own normalisations, accepted: ostree keeps no hard links, only content objects,
and a deployment is a checkout that hard-links them, so there files of identical content and
metadata share one inode: the image's hard-link groups must hold but may merge further;
except that ostree copies empty files rather than link them, so a group of empty files is one
file in the image and several in a deployment. ``ostree admin deploy`` adds
/.ostree-selabeled to the stateroot's /var. Not compared: mtimes, xattrs, the
root directory's own metadata. Nothing else is normalised: the sysroot's repository is in
bare mode, which keeps setuid, setgid and sticky bits and the owner of files, directories and
symlinks, so those are compared exactly.

The generator writes only well-defined stacks, as image builders do: every entry's parent
directories are in its layer before it, with their current metadata (an implicit parent is
unpacked differently by the overlay and vfs drivers); no path is twice in one layer
(containers/storage refuses that); whiteouts come first in their layer (the spec: they apply
to lower layers only); a hard link (a member of a hard-link group is the same node in the
model) carries its target's mode and owner in its header, as tar writers write it.
Absolute and escaping symlinks point into a "host" directory next to the sysroot, so an
unpacker that follows one shows up as a changed host. The sysroots run without fsync, which
changes no tree.

``NESTBUILD_DIFF_EXAMPLES`` raises the number of generated stacks; ``NESTBUILD_DIFF_SHRINK=1``
shrinks a failure to a minimal stack (slow: every step deploys and unpacks an image).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from nestbuild._image import open_image
from nestbuild._tools import run
from nestbuild.errors import NestbuildError
from nestbuild.node import deploy, nodetree
from tests.ocibuilder import KVER, Layer, bootable_base, write_image

#: The components this file runs itself (tests/conftest.py adds the fixtures' ones).
pytestmark = [pytest.mark.buildah, pytest.mark.skopeo, pytest.mark.ostree]

OSNAME = "difftest"
HOST, HOSTREL = "{HOST}", "{HOSTREL}"
OS_RELEASE = b'NAME="difftest"\nID=difftest\n'
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: What ``ostree admin deploy`` itself adds to the stateroot's /var (its SELinux-labelled mark).
OSTREE_VAR = frozenset({"/.ostree-selabeled"})

# What a generated stack is made of. Few names, so later layers meet earlier paths often.
AREAS = ("/etc", "/usr", "/usr/share", "/var", "/var/lib", "/run", "/tmp", "/opt", "/boot", "")
NAMES = ("a", "b", "c", "sp ace", "ünï", ".h")
FILE_MODES = (0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1644, 0o444, 0o000, 0o640)
DIR_MODES = (0o755, 0o700, 0o1777, 0o2775, 0o750, 0o555, 0o000)
OWNERS = ((0, 0), (1, 1), (1000, 1000), (0, 1000), (65534, 65534), (100000, 100000))
CONTENTS = (b"", b"same\n", b"other\n", b"\x00\xff binary \x01")
#: A file body of 300 kB, named in ops by this token so failures print short.
BIG, BIG_BODY = "BIG", b"\x00big\xff" * 60_000
LINK_TARGETS = (f"{HOST}/file", f"{HOST}/dir", f"{HOST}/missing", f"{HOST}/dir/inner",
                "../" * 24 + f"{HOSTREL}/file", "../" * 24 + f"{HOSTREL}/dir",
                "a", "../a", "b/c", "../../usr/bin/tool", ".")
#: What a deployable base needs; no generated entry removes or replaces these.
PROTECTED = frozenset({
    "/usr", "/usr/lib", "/usr/lib/os-release", "/usr/lib/modules", f"/usr/lib/modules/{KVER}",
    f"/usr/lib/modules/{KVER}/vmlinuz", f"/usr/lib/modules/{KVER}/initramfs.img",
    "/usr/lib/ostree", nodetree.PREPARE_ROOT_CONF, "/etc", "/var", "/sysroot", "/boot", "/run",
    "/tmp", "/proc", "/sys", "/dev", "/usr/bin"})

Op = tuple[Any, ...]


# ---------------------------------------------------------------------------------------------
# The generator: a model of the tree, so every op it writes is well defined


@dataclass
class Node:
    kind: str  # "dir", "file" or "symlink"
    mode: int
    uid: int
    gid: int
    data: bytes | str = b""  # str: a token (BIG)
    link: str = ""


class Model:
    """The image's tree after each op, as containers/storage applies layers."""

    def __init__(self, composefs: bool) -> None:
        self.nodes: dict[str, Node] = {"/": Node("dir", 0o755, 0, 0)}
        self.base = base_layer(composefs)
        for ti, data in self.base.members:
            path = "/" + ti.name
            if ti.isdir():
                self.nodes[path] = Node("dir", ti.mode, ti.uid, ti.gid)
            elif ti.issym():
                self.nodes[path] = Node("symlink", 0o777, ti.uid, ti.gid, link=ti.linkname)
            else:
                self.nodes[path] = Node("file", ti.mode, ti.uid, ti.gid, data or b"")
        self.layer = Layer()
        self._emitted: set[str] = set()

    def new_layer(self) -> Layer:
        self.layer, self._emitted = Layer(), set()
        return self.layer

    def below(self, path: str) -> list[str]:
        return [p for p in self.nodes if p.startswith(path.rstrip("/") + "/")]

    def _touches_protected(self, path: str, *, subtree: bool) -> bool:
        return path in PROTECTED or (subtree and any(p in PROTECTED for p in self.below(path)))

    def _remove(self, path: str) -> None:
        for p in [path, *self.below(path)]:
            self.nodes.pop(p, None)

    def _parents_ok(self, path: str) -> bool:
        parent = posixpath.dirname(path)
        while parent != "/":
            node = self.nodes.get(parent)
            if node is not None and node.kind != "dir":
                return False
            parent = posixpath.dirname(parent)
        return True

    def _emit_parents(self, path: str) -> None:
        parents = []
        parent = posixpath.dirname(path)
        while parent != "/":
            parents.append(parent)
            parent = posixpath.dirname(parent)
        for p in reversed(parents):
            node = self.nodes.get(p)
            if node is None:
                node = self.nodes[p] = Node("dir", 0o755, 0, 0)
            elif p in self._emitted:
                continue
            self._member(p, tarfile.DIRTYPE, node.mode, node.uid, node.gid)

    def _member(self, path: str, kind: bytes, mode: int, uid: int, gid: int,
                data: bytes | str | None = None, link: str = "") -> None:
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = kind, mode, uid, gid, 1_700_000_000
        ti.linkname = link
        body = BIG_BODY if data == BIG else data
        assert not isinstance(body, str)
        ti.size = len(body) if body is not None else 0
        self.layer.members.append((ti, body))
        self._emitted.add(path)

    def apply(self, op: Op) -> bool:
        """Write ``op`` into the current layer and the model; False (nothing written) when it
        is not well defined in the current tree."""
        kind, path = op[0], op[1]
        if path in ("/", "") or not self._parents_ok(path) or path in self._emitted:
            return False  # containers/storage refuses a path twice in one layer
        old = self.nodes.get(path)
        if kind in ("whiteout", "opaque") and any(p.startswith(path + "/")
                                                 for p in self._emitted):
            return False  # a whiteout hides lower layers only
        if kind == "whiteout":
            head, _, name = path.rpartition("/")
            marker = f"{head}/.wh.{name}"
            if marker in self._emitted or self._touches_protected(path, subtree=True):
                return False
            self._emit_parents(path)
            self._member(marker, tarfile.REGTYPE, 0o644, 0, 0, b"")
            self._remove(path)
            return True
        if kind == "opaque":
            if (old is None or old.kind != "dir" or f"{path}/.wh..wh..opq" in self._emitted
                    or any(p in PROTECTED for p in self.below(path))):
                return False
            self._emit_parents(path + "/x")
            self._member(f"{path}/.wh..wh..opq", tarfile.REGTYPE, 0o644, 0, 0, b"")
            for p in self.below(path):
                self.nodes.pop(p)
            return True
        if kind == "dir":
            _, _, mode, uid, gid = op
            if old is not None and old.kind != "dir" and self._touches_protected(path,
                                                                                subtree=False):
                return False
            self._emit_parents(path)
            if old is None or old.kind != "dir":
                self._remove(path)
            self._member(path, tarfile.DIRTYPE, mode, uid, gid)
            self.nodes[path] = Node("dir", mode, uid, gid)
            return True
        if self._touches_protected(path, subtree=True) and not (
                kind == "file" and path == nodetree.PREPARE_ROOT_CONF):
            return False
        if kind == "hardlink":
            target = self.nodes.get(op[2])
            if op[2] == path or target is None or target.kind == "dir":
                return False
            self._emit_parents(path)
            self._remove(path)
            self._member(path, tarfile.LNKTYPE, target.mode, target.uid, target.gid,
                         link=op[2].lstrip("/"))
            self.nodes[path] = target  # the same inode
            return True
        self._emit_parents(path)
        self._remove(path)
        if kind == "file":
            _, _, data, mode, uid, gid = op
            self._member(path, tarfile.REGTYPE, mode, uid, gid, data)
            self.nodes[path] = Node("file", mode, uid, gid, data)
        else:  # symlink
            _, _, link, uid, gid = op
            self._member(path, tarfile.SYMTYPE, 0o777, uid, gid, link=link)
            self.nodes[path] = Node("symlink", 0o777, uid, gid, link=link)
        return True


def base_layer(composefs: bool) -> Layer:
    return bootable_base(Layer().file("/usr/lib/os-release", OS_RELEASE), composefs=composefs)


def prepare_root(composefs: bool) -> bytes:
    return b"[composefs]\nenabled = yes\n" if composefs else b"[composefs]\nenabled = no\n"


@dataclass
class Stack:
    """A base (composefs on or off) and the ops of each layer above it."""

    composefs: bool
    layers: list[list[Op]] = field(default_factory=list)
    #: Layers of tar members written as they are, after the ops' layers (refusal cases).
    raw: list[list[Op]] = field(default_factory=list)
    #: If set, an update: the image of the base and this many op layers is deployed first.
    first: int | None = None
    #: Ops the last ``layers_for`` left out.
    skipped: list[Op] = field(default_factory=list, repr=False, compare=False)

    def __repr__(self) -> str:
        layers = "".join("\n    [" + ",\n     ".join(_op_repr(o) for o in ops) + "],"
                         for ops in self.layers)
        raw = f", raw={self.raw!r}" if self.raw else ""
        first = f", first={self.first}" if self.first is not None else ""
        return f"Stack(composefs={self.composefs}, layers=[{layers}]{raw}{first})"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # how hypothesis prints it
        p.text(repr(self))

    def layers_for(self, host: Path) -> list[Layer]:
        """The image's layers, with the host directory put into symlink targets. Ops not
        well defined where they stand (left so by shrinking) are left out."""
        model = Model(self.composefs)
        out = [model.base]
        self.skipped = []
        for ops in self.layers:
            out.append(model.new_layer())
            for o in ops:
                if not model.apply(_with_host(o, host)):
                    self.skipped.append(o)
        for ops in self.raw:
            layer = Layer()
            for o in ops:
                _raw_member(layer, _with_host(o, host))
            out.append(layer)
        return out


def _op_repr(op: Op) -> str:
    """An op as Python source, modes in octal."""
    mode_at = {"file": 3, "dir": 2}.get(op[0])
    return "(" + ", ".join(oct(x) if i == mode_at else repr(x) for i, x in enumerate(op)) + ")"


def _with_host(op: Op, host: Path) -> Op:
    """The op as written: the host directory in symlink targets."""
    return tuple(x.replace(HOST, str(host)).replace(HOSTREL, str(host).lstrip("/"))
                 if isinstance(x, str) else x for x in op)


def _raw_member(layer: Layer, op: Op) -> None:
    kind, name = op[0], op[1]
    ti = tarfile.TarInfo(name)
    ti.mtime = 1_700_000_000
    data: bytes | None = None
    if kind == "file":
        ti.type, ti.mode, data = tarfile.REGTYPE, 0o644, op[2]
        ti.size = len(data)
    elif kind == "dir":
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
    elif kind in ("symlink", "hardlink"):
        ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        ti.mode, ti.linkname = 0o777 if kind == "symlink" else 0o644, op[2]
    else:
        ti.type = {"char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
                   "fifo": tarfile.FIFOTYPE}[kind]
        ti.mode, ti.devmajor, ti.devminor = 0o600, 1, 3
    layer.members.append((ti, data))


# hypothesis strategies


def _fresh_path(draw: st.DrawFn) -> str:
    area = draw(st.sampled_from(AREAS))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2))
    return area + "/" + "/".join(names)


def _path(draw: st.DrawFn, model: Model) -> str:
    existing = sorted(p for p in model.nodes if p != "/")
    if draw(st.integers(0, 2)) == 0:
        return draw(st.sampled_from(existing))
    return _fresh_path(draw)


def _owner(draw: st.DrawFn) -> tuple[int, int]:
    return draw(st.sampled_from(OWNERS))


def _content(draw: st.DrawFn) -> bytes | str:
    if draw(st.integers(0, 19)) == 0:
        return BIG
    return draw(st.one_of(st.sampled_from(CONTENTS), st.binary(max_size=40)))


def _op(draw: st.DrawFn, model: Model) -> Op:
    kind = draw(st.sampled_from(("file", "file", "dir", "dir", "symlink", "hardlink",
                                 "chmod", "chmod", "replace", "prepare-root")))
    if kind == "prepare-root":
        return ("file", nodetree.PREPARE_ROOT_CONF, prepare_root(draw(st.booleans())), 0o644,
                0, 0)
    if kind == "hardlink":
        files = sorted(p for p, n in model.nodes.items() if n.kind != "dir")
        return ("hardlink", _fresh_path(draw), draw(st.sampled_from(files)))
    if kind in ("chmod", "replace"):
        path = draw(st.sampled_from(sorted(p for p in model.nodes if p != "/")))
        node = model.nodes[path]
        uid, gid = _owner(draw)
        if (kind == "chmod" and node.kind == "dir") or (kind == "replace" and node.kind != "dir"):
            return ("dir", path, draw(st.sampled_from(DIR_MODES)), uid, gid)
        if kind == "chmod" and node.kind == "file":
            return ("file", path, node.data, draw(st.sampled_from(FILE_MODES)), uid, gid)
        if kind == "chmod":
            return ("symlink", path, node.link, uid, gid)
        kind = draw(st.sampled_from(("file", "symlink")))
        return _entry(draw, kind, path)
    return _entry(draw, kind, _path(draw, model))


def _entry(draw: st.DrawFn, kind: str, path: str) -> Op:
    uid, gid = _owner(draw)
    if kind == "file":
        return ("file", path, _content(draw), draw(st.sampled_from(FILE_MODES)), uid, gid)
    if kind == "dir":
        return ("dir", path, draw(st.sampled_from(DIR_MODES)), uid, gid)
    return ("symlink", path, draw(st.sampled_from(LINK_TARGETS)), uid, gid)


def _layers(draw: st.DrawFn, model: Model, count: int) -> list[list[Op]]:
    layers = []
    for _ in range(count):
        model.new_layer()
        ops: list[Op] = []
        for _ in range(draw(st.integers(0, 3))):  # whiteouts first: they hide lower layers
            path = _path(draw, model)
            op = ("opaque", path) if draw(st.integers(0, 3)) == 0 else ("whiteout", path)
            if model.apply(op):
                ops.append(op)
        for _ in range(draw(st.integers(1, 14))):
            op = _op(draw, model)
            if model.apply(op):
                ops.append(op)
        layers.append(ops)
    return layers


@st.composite
def stacks(draw: st.DrawFn) -> Stack:
    composefs = draw(st.booleans())
    model = Model(composefs)
    layers = _layers(draw, model, draw(st.integers(1, 4)))
    first = draw(st.one_of(st.none(), st.integers(0, len(layers) - 1)))
    return Stack(composefs, layers, first=first)


#: Every kind of change the generator makes, in one stack that runs whatever hypothesis draws:
#: types replaced both ways (file/dir, dir/symlink), a mode change of a lower directory, hard
#: links in a layer and to a lower layer's file and symlink (and to files the node drops), a
#: whiteout of one of a hard-link group, an opaque directory refilled, setuid, sticky and
#: no-permission modes and odd owners, /etc and /var content (owners, links), dropped
#: children of /boot, /run and /tmp, absolute and escaping symlinks to the host, a symlink to
#: a host directory replaced by a directory, a 300 kB file and names with a space, non-ASCII
#: letters and a leading dot.
EVERY_CONSTRUCT = Stack(True, [
    [("file", "/opt/f2d", b"file\n", 0o644, 0, 0),
     ("dir", "/opt/d2f", 0o755, 0, 0), ("file", "/opt/d2f/child", b"c\n", 0o644, 0, 0),
     ("dir", "/opt/d2l", 0o750, 1, 1),
     ("symlink", "/opt/l2d", f"{HOST}/dir", 0, 0),
     ("dir", "/opt/chmod", 0o755, 0, 0),
     ("file", "/opt/suid", b"s\n", 0o4755, 5, 6),
     ("hardlink", "/opt/suid-link", "/opt/suid"),
     ("symlink", "/opt/abs", f"{HOST}/file", 1000, 1000),
     ("symlink", "/opt/esc", "../" * 24 + f"{HOSTREL}/dir", 0, 0),
     ("hardlink", "/opt/link-to-symlink", "/opt/abs"),
     ("dir", "/opt/opq", 0o700, 0, 0), ("file", "/opt/opq/old", b"old\n", 0o644, 0, 0),
     ("file", "/var/lib/seed", b"var\n", 0o640, 1000, 1000),
     ("hardlink", "/var/lib/seed-link", "/var/lib/seed"),
     ("dir", "/var/owned", 0o2775, 1000, 100),
     ("symlink", "/var/owned/l", "../lib/seed", 7, 7),
     ("file", "/etc/conf", b"conf\n", 0o600, 0, 1000),
     ("hardlink", "/etc/conf-link", "/etc/conf"),
     ("symlink", "/etc/rel", "conf", 0, 0),
     ("file", "/boot/dropped", b"b\n", 0o644, 0, 0),
     ("file", "/run/dropped", b"r\n", 0o644, 0, 0),
     ("hardlink", "/opt/link-to-dropped", "/run/dropped"),
     ("dir", "/tmp/dropped", 0o700, 0, 0), ("file", "/tmp/dropped/f", b"t\n", 0o600, 1, 1),
     ("file", "/usr/share/sp ace", b"", 0o1644, 65534, 65534),
     ("file", "/usr/share/ünï", BIG, 0o6711, 100000, 100000),
     ("dir", "/usr/share/.h", 0o000, 0, 0)],
    [("whiteout", "/opt/suid"), ("opaque", "/opt/opq"),
     ("dir", "/opt/f2d", 0o711, 2, 2), ("file", "/opt/f2d/new", b"n\n", 0o644, 0, 0),
     ("file", "/opt/d2f", b"now a file\n", 0o600, 0, 0),
     ("symlink", "/opt/d2l", "../usr", 3, 3),
     ("dir", "/opt/l2d", 0o755, 0, 0), ("file", "/opt/l2d/inner", b"mine\n", 0o644, 0, 0),
     ("dir", "/opt/chmod", 0o1770, 4, 4),
     ("file", "/opt/opq/new", b"new\n", 0o644, 0, 0),
     ("hardlink", "/opt/lower-link", "/opt/suid-link"),
     ("hardlink", "/opt/lower-symlink-link", "/opt/abs"),
     ("hardlink", "/usr/share/lower-dropped-link", "/tmp/dropped/f"),
     ("symlink", "/opt/abs", f"{HOST}/file", 9, 9),
     ("file", "/etc/conf", b"conf\n", 0o644, 0, 0),
     ("dir", "/var/lib", 0o700, 0, 0), ("file", "/var/lib/more", b"m\n", 0o644, 1, 1)],
])
#: The same stack as an update: its first layer deployed, then the whole image.
UPDATE = Stack(True, EVERY_CONSTRUCT.layers, first=1)
#: Top-level names outside a bootable root's: kept while prepare-root.conf enables composefs,
#: dropped once the final one does not.
TOPLEVELS_DROPPED = Stack(False, [
    [("file", "/opt/a", b"x\n", 0o644, 0, 0), ("file", "/top", b"t\n", 0o644, 0, 0),
     ("file", "/usr/share/kept", b"k\n", 0o644, 0, 0)],
    [("file", nodetree.PREPARE_ROOT_CONF, prepare_root(True), 0o644, 0, 0)],
    [("file", nodetree.PREPARE_ROOT_CONF, prepare_root(False), 0o644, 0, 0)],
])


#: Constructs a node refuses. Names are tar member names; ``usr/l`` is a symlink the
#: refusal's own layers make (in the same layer as the entry or the one below).
LINK = "usr/l"
REFUSALS: dict[str, list[Op]] = {
    "file below a symlink": [("file", f"{LINK}/inner", b"evil\n")],
    "dir below a symlink": [("dir", f"{LINK}/sub")],
    "symlink below a symlink": [("symlink", f"{LINK}/s", "x")],
    "hard link below a symlink": [("hardlink", f"{LINK}/h", "usr/bin/tool")],
    "hard link to a file reached through a symlink": [("hardlink", "usr/h", f"{LINK}/inner")],
    "whiteout below a symlink": [("file", f"{LINK}/.wh.inner", b"")],
    "opaque whiteout below a symlink": [("file", f"{LINK}/.wh..wh..opq", b"")],
    "char device": [("char", "usr/dev")],
    "block device": [("block", "usr/blk")],
    "fifo": [("fifo", "usr/fifo")],
    "file in /usr/etc": [("file", "usr/etc/x", b"x\n")],
    "path with ..": [("file", "usr/../../escape", b"x\n")],
    "hard link leaving the root": [("hardlink", "usr/h", "../../etc/passwd")],
    "malformed whiteout": [("file", "usr/.wh..wh.x", b"")],
    "non-UTF-8 name": [("file", "usr/\udcff", b"x\n")],
}


ESCAPE_DIR = "../" * 24 + f"{HOSTREL}/dir"
#: Where the refusals' symlink points: a host directory, the same by climbing out, a directory
#: of the image, nothing.
LINK_TARGETS_OUT = (f"{HOST}/dir", ESCAPE_DIR, "lib", f"{HOST}/missing")
#: The symlink each symlink case goes through when no layers are generated around it: where it
#: points, and whether a lower layer made it. Each would reach or change the host if followed.
LINK_CASES = {
    "file below a symlink": (f"{HOST}/dir", False),
    "dir below a symlink": (ESCAPE_DIR, True),
    "symlink below a symlink": ("lib", False),
    "hard link below a symlink": (f"{HOST}/missing", True),
    "hard link to a file reached through a symlink": (f"{HOST}/dir", True),
    "whiteout below a symlink": (f"{HOST}/dir", False),
    "opaque whiteout below a symlink": (ESCAPE_DIR, True),
}


def refused_stack(name: str, layers: list[list[Op]], *, target: str, lower: bool) -> Stack:
    """Generated ``layers``, then the refused construct; its symlink in the construct's own
    layer or (``lower``) the one below."""
    bad = list(REFUSALS[name])
    if LINK not in repr(bad):
        return Stack(True, layers, [bad])
    link: list[Op] = [("symlink", LINK, target)]
    return Stack(True, layers, [link, bad] if lower else [link + bad])


@st.composite
def refused_stacks(draw: st.DrawFn) -> tuple[str, Stack]:
    name = draw(st.sampled_from(sorted(REFUSALS)))
    layers = _layers(draw, Model(True), draw(st.integers(1, 3)))
    return name, refused_stack(name, layers, target=draw(st.sampled_from(LINK_TARGETS_OUT)),
                               lower=draw(st.booleans()))


# ---------------------------------------------------------------------------------------------
# Trees as they are on disk, never following a symlink


@dataclass(frozen=True)
class Desc:
    kind: str
    mode: int | None
    uid: int
    gid: int
    content: str  # sha256 of a file's content, a symlink's target, "" for a directory

    def __str__(self) -> str:
        mode = "" if self.mode is None else f" {self.mode:04o}"
        return f"{self.kind}{mode} {self.uid}:{self.gid} {self.content[:16]}"


@dataclass(frozen=True)
class Seen:
    desc: Desc
    inode: tuple[int, int]
    nlink: int


def scan(root: Path) -> dict[str, Seen]:
    """Every entry below ``root`` by absolute path inside it ("/" is root itself)."""
    out: dict[str, Seen] = {}

    def walk(dir_fd_path: str, rel: str) -> None:
        with os.scandir(dir_fd_path) as it:
            for e in it:
                p = f"{rel}/{e.name}" if rel != "/" else f"/{e.name}"
                st_ = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(st_.st_mode):
                    d = Desc("dir", stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, "")
                elif stat.S_ISLNK(st_.st_mode):
                    d = Desc("symlink", None, st_.st_uid, st_.st_gid, os.readlink(e.path))
                elif stat.S_ISREG(st_.st_mode):
                    d = Desc("file", stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid,
                             _sha256(e.path))
                else:
                    d = Desc(f"other({stat.S_IFMT(st_.st_mode):o})",
                             stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid, "")
                out[p] = Seen(d, (st_.st_dev, st_.st_ino), st_.st_nlink)
                if d.kind == "dir":
                    walk(e.path, p)

    walk(str(root), "/")
    return out


def _sha256(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def host_snapshot(host: Path) -> dict[str, tuple[Any, ...]]:
    """Everything that would show a write, chmod, chown, link or unlink in the host tree."""
    out: dict[str, tuple[Any, ...]] = {}
    for p in [host, *sorted(host.rglob("*"))]:
        s = p.lstat()
        out[str(p)] = (s.st_mode, s.st_uid, s.st_gid, s.st_size, s.st_nlink, s.st_mtime_ns,
                       s.st_ctime_ns, s.st_ino)
    return out


def make_host(host: Path) -> None:
    (host / "dir" / "sub").mkdir(parents=True)
    (host / "file").write_bytes(b"host file\n")
    (host / "dir" / "inner").write_bytes(b"host inner\n")
    for p in (host / "file", host / "dir" / "inner"):
        p.chmod(0o644)


# ---------------------------------------------------------------------------------------------
# The reference, the expectation, the comparison


class Store:
    """A private containers/storage (vfs driver) for the reference unpacks."""

    def __init__(self, root: Path) -> None:
        self.root, self.runroot = root / "root", root / "run"

    def buildah(self, *args: str) -> str:
        return run.run(["buildah", "--root", str(self.root), "--runroot", str(self.runroot),
                        "--storage-driver", "vfs", *args],
                       what=f"buildah {args[0]}").stdout.decode().strip()

    @contextmanager
    def rootfs(self, layout: Path, tag: str) -> Iterator[Path]:
        name = f"localhost/difftest-{uuid.uuid4().hex[:8]}:latest"
        run.run(["skopeo", "copy", "-q", f"oci:{layout}:{tag}",
                 f"containers-storage:[vfs@{self.root}+{self.runroot}]{name}"],
                what="copying the image into containers-storage")
        try:
            ctr = self.buildah("from", "--pull-never", "-q", name)
            try:
                yield Path(self.buildah("mount", ctr))
            finally:
                self.buildah("rm", ctr)
        finally:
            self.buildah("rmi", "-f", name)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("difftest-storage"))
    yield s
    shutil.rmtree(s.root.parent, ignore_errors=True)


@dataclass
class Expected:
    deployment: dict[str, Desc] = field(default_factory=dict)
    var: dict[str, Desc] = field(default_factory=dict)
    #: hard-link groups that must hold: in the deployment, and in the stateroot's /var
    deployment_links: list[list[str]] = field(default_factory=list)
    var_links: list[list[str]] = field(default_factory=list)


def expect(ref: dict[str, Seen], ref_root: Path, os_init_var: set[str]) -> Expected:
    """What the node must show for the image containers/storage unpacked as ``ref``."""
    conf = ref.get(nodetree.PREPARE_ROOT_CONF)
    keeps = nodetree.keeps_toplevels(
        (ref_root / nodetree.PREPARE_ROOT_CONF.lstrip("/")).read_bytes()
        if conf is not None and conf.desc.kind == "file" else None)
    exp = Expected()
    groups: dict[tuple[int, int], list[str]] = {}
    for path, seen in ref.items():
        if nodetree.dropped_by(path, keeps) is not None:
            continue
        if path.startswith("/var/"):
            rel = path[len("/var"):]
            if rel not in os_init_var:
                exp.var[rel] = seen.desc
                if seen.desc.kind != "dir":
                    groups.setdefault(seen.inode, []).append(path)
            continue
        if path == "/etc" or path.startswith("/etc/"):
            exp.deployment[path] = seen.desc  # ostree's copy
            path = "/usr" + path
        exp.deployment[path] = seen.desc
        if seen.desc.kind != "dir":
            groups.setdefault(seen.inode, []).append(path)
    for members in groups.values():
        dep = [p for p in members if not p.startswith("/var/")]
        if dep and exp.deployment[dep[0]].content == EMPTY_SHA256:
            dep = []  # ostree's checkout copies empty files rather than link them
        var = [p[len("/var"):] for p in members if p.startswith("/var/")]
        if len(dep) > 1:
            exp.deployment_links.append(dep)
        if len(var) > 1:
            exp.var_links.append(var)
    return exp


def _compare_entries(where: str, want: dict[str, Desc], got: dict[str, Seen]) -> list[str]:
    diffs = []
    for path in sorted(set(want) | set(got)):
        w, g = want.get(path), got.get(path)
        if g is None:
            diffs.append(f"{where}{path}: missing (image: {w})")
        elif w is None:
            diffs.append(f"{where}{path}: not in the image ({g.desc})")
        elif w != g.desc:
            diffs.append(f"{where}{path}: image {w}, node {g.desc}")
    return diffs


def _compare_links(where: str, groups: list[list[str]], got: dict[str, Seen]) -> list[str]:
    diffs = []
    for members in groups:
        inodes = {got[p].inode for p in members if p in got}
        if len(inodes) > 1:
            diffs.append(f"{where}: hard links {members} are not one file")
    return diffs


def _private_inodes(where: str, got: dict[str, Seen], groups: list[list[str]]) -> list[str]:
    """Writable trees: no file shares its inode with anything the image did not link."""
    diffs = []
    by_inode: dict[tuple[int, int], list[str]] = {}
    for p, s in got.items():
        if s.desc.kind != "dir":
            by_inode.setdefault(s.inode, []).append(p)
    allowed = [set(g) for g in groups]
    for paths in by_inode.values():
        nlink = got[paths[0]].nlink
        if nlink != len(paths):
            diffs.append(f"{where}{paths[0]}: {nlink} links, {len(paths)} of them here "
                         "(shares an inode with the repository or the deployment)")
        elif len(paths) > 1 and not any(set(paths) <= g for g in allowed):
            diffs.append(f"{where}: {sorted(paths)} are one file; in the image they are not")
    return diffs


def differences(exp: Expected, deployment: dict[str, Seen], var: dict[str, Seen] | None,
                os_init_var: set[str]) -> list[str]:
    """Everything in which the node differs from ``exp`` (its /var too, unless None)."""
    etc = {p: s for p, s in deployment.items() if p.startswith("/etc/")}
    diffs = [*_compare_entries("deployment ", exp.deployment, deployment),
             *_compare_links("deployment", exp.deployment_links, deployment),
             *_private_inodes("deployment ", etc, [])]
    if var is not None:
        var = {p: s for p, s in var.items() if p not in os_init_var}
        diffs += [*_compare_entries("stateroot /var", exp.var, var),
                  *_compare_links("stateroot /var", exp.var_links, var),
                  *_private_inodes("stateroot /var", var, exp.var_links)]
    return diffs


# ---------------------------------------------------------------------------------------------
# The tests


@contextmanager
def example_dir(factory: pytest.TempPathFactory) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="ex-", dir=factory.getbasetemp()))
    try:
        yield work
    finally:
        # ostree marks deployment roots immutable
        subprocess.run(["chattr", "-R", "-i", str(work)], check=False,
                       stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def new_sysroot(sysroot: Path) -> Path:
    """An empty sysroot with its stateroot, as a node has before its first deploy; without
    fsync (a throwaway sysroot needs no durability, and the trees are the same)."""
    sysroot.mkdir()
    run.run(["ostree", "admin", "init-fs", "--modern", str(sysroot)], what="init-fs")
    run.run(["ostree", "admin", "os-init", f"--sysroot={sysroot}", OSNAME], what="os-init")
    run.run(["ostree", f"--repo={sysroot / 'ostree' / 'repo'}", "config", "set", "core.fsync",
             "false"], what="ostree config")
    return sysroot / "ostree" / "deploy" / OSNAME / "var"


def _examples(default: int) -> int:
    return int(os.environ.get("NESTBUILD_DIFF_EXAMPLES", default))


def _phases() -> list[Phase]:
    phases = [Phase.explicit, Phase.generate]
    if os.environ.get("NESTBUILD_DIFF_SHRINK") == "1":
        phases.append(Phase.shrink)
    return phases


SETTINGS = settings(deadline=None, derandomize=True, database=None, phases=_phases(),
                    suppress_health_check=list(HealthCheck), print_blob=False)


def check_deploys_like_containers_storage(stack: Stack, store: Store,
                                          factory: pytest.TempPathFactory) -> None:
    """Deploy ``stack`` (after its first layers, for an update) and compare it with what
    containers/storage unpacks. An update must leave the stateroot's /var as the first
    deploy seeded it."""
    with example_dir(factory) as work:
        host = work / "host"
        make_host(host)
        layers = stack.layers_for(host)
        write_image(work / "oci", [*layers], tag="t")
        sysroot = work / "sysroot"
        var_dir = new_sysroot(sysroot)
        os_init_var = (set(scan(var_dir)) | OSTREE_VAR) - {"/"}
        before = host_snapshot(host)
        seeded = None
        if stack.first is not None:
            write_image(work / "oci", [*layers[:stack.first + 1]], tag="first")
            deploy.deploy_image(open_image(f"oci:{work / 'oci'}:first"), sysroot, OSNAME,
                                origin_ref="localhost/difftest:first")
            seeded = scan(var_dir)
        d = deploy.deploy_image(open_image(f"oci:{work / 'oci'}:t"), sysroot, OSNAME,
                                origin_ref="localhost/difftest:latest")
        assert host_snapshot(host) == before, f"the deploy changed the host tree\n{stack!r}"
        with store.rootfs(work / "oci", "t") as ref_root:
            ref = scan(ref_root)
            exp = expect(ref, ref_root, os_init_var)
        root = sysroot / "ostree" / "deploy" / OSNAME / "deploy" / f"{d.checksum}.{d.serial}"
        var = scan(var_dir)
        diffs = differences(exp, scan(root), var if seeded is None else None, os_init_var)
        if seeded is not None and var != seeded:
            diffs.append("stateroot /var: changed by the update: "
                         f"{sorted(set(var.items()) ^ set(seeded.items()))[:5]}")
        assert not diffs, ("deployed tree differs from containers-storage's:\n  "
                           + "\n  ".join(diffs[:40]) + f"\n{stack!r}")


@settings(SETTINGS, max_examples=_examples(6))
@example(stack=EVERY_CONSTRUCT)
@example(stack=TOPLEVELS_DROPPED)
@example(stack=UPDATE)
@given(stack=stacks())
def test_deploy_gives_the_tree_containers_storage_unpacks(
        stack: Stack, store: Store, tmp_path_factory: pytest.TempPathFactory) -> None:
    check_deploys_like_containers_storage(stack, store, tmp_path_factory)


def check_refused(name: str, stack: Stack, factory: pytest.TempPathFactory) -> None:
    """Deploy refuses with one line, and leaves the sysroot, its /var and the host as they
    were."""
    with example_dir(factory) as work:
        host = work / "host"
        make_host(host)
        write_image(work / "oci", [*stack.layers_for(host)], tag="t")
        var_dir = new_sysroot(work / "sysroot")
        var_before = scan(var_dir)
        before = host_snapshot(host)
        with pytest.raises(NestbuildError) as caught:
            deploy.deploy_image(open_image(f"oci:{work / 'oci'}:t"), work / "sysroot",
                                OSNAME, origin_ref="localhost/difftest:latest")
        message = str(caught.value)
        assert message and "\n" not in message, f"{name}: not one line: {message!r}"
        assert deploy.deployments(work / "sysroot") == [], name
        assert scan(var_dir) == var_before, f"{name}: the stateroot's /var changed"
        assert host_snapshot(host) == before, f"{name}: the host tree changed\n{stack!r}"


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_deploy_refuses_what_a_node_refuses(
        name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    target, lower = LINK_CASES.get(name, ("", False))
    check_refused(name, refused_stack(name, [], target=target, lower=lower), tmp_path_factory)


@settings(SETTINGS, max_examples=_examples(4))
@given(case=refused_stacks())
def test_deploy_refuses_them_amid_generated_layers(
        case: tuple[str, Stack], tmp_path_factory: pytest.TempPathFactory) -> None:
    check_refused(*case, tmp_path_factory)


def test_the_fixed_stacks_are_written_whole(tmp_path: Path) -> None:
    """The explicit examples mean what they say: no op is left out as ill-defined."""
    for stack in (EVERY_CONSTRUCT, TOPLEVELS_DROPPED, UPDATE):
        stack.layers_for(tmp_path)
        assert stack.skipped == []
