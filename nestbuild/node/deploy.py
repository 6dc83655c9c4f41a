"""Deploy an image into a real ostree sysroot, as bootc and rpm-ostree do on a node.

Runs as root over trees whose content, names and symlinks the image chose, so
docs/security.md ("Deploy: what an image can and cannot do to a node") is the contract:

- Each layer is imported once into the sysroot's repository as its own commit
  (``nestbuild/layer/<diffid>``): its tar stream is judged entry by entry
  (:mod:`~nestbuild.node.layerfilter`, with :mod:`~nestbuild.node.nodetree`'s verdicts),
  hashed against its diff_id, and streamed into ``ostree commit`` (ostree writes the
  objects; nothing is unpacked on the way). A config-only update imports only its new layers.
- The image's tree is composed from fresh hard-link checkouts of those commits: the lowest
  layer is checked out as the tree, each higher one beside it and moved in, its whiteouts
  and hard links to lower layers applied, every step through :mod:`nestbuild._util.beneath`
  (directory descriptors, no symlink followed). An entry that would have to pass through a
  symlink refuses the image with one line naming the layer and the path.
- Only then are refs written, the tree committed and ``ostree admin deploy`` run; the image
  reference and digest go into the deployment's origin. A refused or failed deploy leaves
  the previous default, the refs and the stateroot's /var as they were.

One deploy at a time per sysroot: :func:`sysroot_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild._image import ImageSource
from nestbuild._image.model import LABEL_FINAL_DIFFID
from nestbuild._tools import ostree
from nestbuild._util import beneath
from nestbuild._util.beneath import SymlinkInPath
from nestbuild.errors import ImageError, LayerError, NestbuildError
from nestbuild.node import nodetree
from nestbuild.node.layerfilter import FACTS_FILE, LayerFacts, LayerWriter, tree_dir

LAYER_REF = "nestbuild/layer/{}"
IMAGE_REF = "nestbuild/image/{}"
#: How long a deploy waits for another one into the same sysroot (seconds).
LOCK_TIMEOUT_ENV = "NESTBUILD_SYSROOT_LOCK_TIMEOUT"
LOCK_TIMEOUT = 600.0
_DIFF_ID = re.compile(r"sha256:[0-9a-f]{64}")
Progress = Callable[[str], None]


class DeployError(NestbuildError):
    """The image cannot be deployed; the sysroot is unchanged."""


@dataclass(frozen=True)
class Deployment:
    index: int
    checksum: str
    serial: int
    image: str | None
    digest: str | None
    version: str | None
    default: bool
    rollback: bool

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "commit": self.checksum, "serial": self.serial,
                "image": self.image, "digest": self.digest, "version": self.version,
                "default": self.default, "rollback": self.rollback}


# -- one deploy at a time ----------------------------------------------------------------------

_held: dict[tuple[int, int], int] = {}


@contextlib.contextmanager
def sysroot_lock(sysroot: Path, progress: Progress | None = None,
                 timeout: float | None = None) -> Iterator[None]:
    """Hold the sysroot's deploy lock (``flock`` on the sysroot directory itself).

    ``ostree admin`` locks ``ostree/lock`` only while it runs, but a deploy reads the current
    default, imports layers and stages a tree long before that; two at once would trip over
    each other. A second deploy waits (saying so), and gives up after ``timeout`` seconds
    (``NESTBUILD_SYSROOT_LOCK_TIMEOUT``, default 600) before it has changed anything.
    Re-entrant within a process (rebase holds it around deploy_image).
    """
    say = progress or (lambda _m: None)
    if timeout is None:
        try:
            timeout = float(os.environ.get(LOCK_TIMEOUT_ENV, LOCK_TIMEOUT))
        except ValueError:
            timeout = LOCK_TIMEOUT
    sysroot.mkdir(parents=True, exist_ok=True)
    fd = os.open(sysroot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if key in _held:
        os.close(fd)
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    try:
        deadline = time.monotonic() + timeout
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    say(f"waiting for another deploy into {sysroot} to finish")
                    waiting = True
                if time.monotonic() >= deadline:
                    raise DeployError(
                        f"{sysroot}: another deploy has held it for {timeout:.0f}s; gave up "
                        f"(set {LOCK_TIMEOUT_ENV} to wait longer), the sysroot is "
                        "unchanged") from None
                time.sleep(0.1)
        _held[key] = 1
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # releases the lock


# -- layers ------------------------------------------------------------------------------------


@dataclass
class Layer:
    """One layer of the image in the repository: a commit whose ``/root`` is its tree."""

    index: int
    diff_id: str
    rev: str
    facts: LayerFacts
    what: str
    #: Imported by this deploy (its ref is written once the whole image passed).
    new: bool

    @property
    def ref(self) -> str:
        return LAYER_REF.format(self.diff_id.split(":", 1)[1])

    def refuse(self, path: str, why: str) -> LayerError:
        return LayerError(f"{self.what}: {image_path(path)}: {why}; refused, the sysroot is "
                          "unchanged")


def image_path(path: str) -> str:
    """An ostree path as the image names it (/usr/etc is the image's /etc)."""
    if path == "/usr/etc" or path.startswith("/usr/etc/"):
        return path[len("/usr"):]
    return path


def _cached(repo: Path, ref: str, diff_id: str) -> tuple[str, LayerFacts] | None:
    if not ostree.has_ref(repo, ref):
        return None
    rev = ostree.rev_parse(repo, ref)
    raw = ostree.cat(repo, rev, "/" + FACTS_FILE)
    try:
        facts = LayerFacts.from_json(json.loads(raw)) if raw is not None else None
    except ValueError:
        facts = None
    if facts is None or facts.diff_id != diff_id:
        return None  # an older format, or not what the ref claims: import it again
    return rev, facts


def import_layers(source: ImageSource, repo: Path, progress: Progress) -> list[Layer]:
    """The image's layers in the repository, importing those not already there."""
    out = []
    diff_ids = source.config.diff_ids
    for i, diff_id in enumerate(diff_ids):
        if not _DIFF_ID.fullmatch(diff_id):
            raise ImageError(f"{source.ref}: layer {i + 1}'s diff_id {diff_id[:80]!r} is not "
                             "a sha256 digest; refused, the sysroot is unchanged")
        what = f"{source.ref} layer {i + 1}/{len(diff_ids)} ({diff_id[:19]})"
        ref = LAYER_REF.format(diff_id.split(":", 1)[1])
        cached = _cached(repo, ref, diff_id)
        if cached is not None:
            out.append(Layer(i, diff_id, cached[0], cached[1], what, False))
            continue
        progress(f"importing layer {i + 1}/{len(diff_ids)} ({diff_id[:19]})")
        rev, facts = _import_layer(source, i, repo, diff_id, what)
        out.append(Layer(i, diff_id, rev, facts, what, True))
    return out


def _import_layer(source: ImageSource, index: int, repo: Path, diff_id: str,
                  what: str) -> tuple[str, LayerFacts]:
    commit = ostree.TarCommit(repo, f"layer {diff_id}")
    try:
        with source.open_layer(index, what) as stream:
            writer = LayerWriter(commit.stdin, diff_id, what)
            writer.run(stream.fileobj)
            # the blob's digest and the diff_id, before the tar may end: ostree sees a
            # truncated stream otherwise and keeps nothing
            stream.finish()
            writer.finish(writer.facts_json())
    except BrokenPipeError:
        raise commit.failure() from None
    except BaseException:
        commit.abort()
        raise
    return commit.finish(), writer.facts


# -- composing the image's tree ----------------------------------------------------------------


def base_layers(source: ImageSource) -> int:
    """How many layers are the base (their top-level entries are kept whatever the final
    prepare-root.conf says): up to ``ostree.final-diffid`` if the image has that label,
    else the first, as a node lays out an image that is not ostree-chunked."""
    final = source.config.labels.get(LABEL_FINAL_DIFFID)
    if final and final in source.config.diff_ids:
        return source.config.diff_ids.index(final) + 1
    return 1


class _Composer:
    """Builds the image's tree in ``work/root`` from its layers, never leaving it."""

    def __init__(self, repo: Path, work: Path) -> None:
        self.repo = repo
        self.work = work
        self.tree = work / "root"
        self.root: beneath.Root | None = None
        self.layers: list[Layer] = []
        #: For every non-directory below /var: the layer (and segment) that last wrote it,
        #: to seed a node's /var with the image's hard links and no others.
        self.var_origin: dict[str, tuple[int, int]] = {}
        #: Top-level names the base layers have, and those a layer above the base touched.
        self.base_tops: set[str] = set()
        self.derived_tops: set[str] = set()

    def compose(self, layers: list[Layer], base: int) -> beneath.Root:
        self.layers = layers
        steps = [(layer, seg) for layer in layers for seg in range(layer.facts.segments)]
        ostree.checkout(self.repo, layers[0].rev, self.tree, subpath="/" + tree_dir(0))
        self.root = beneath.Root(self.tree)
        self.base_tops.update(os.listdir(self.root.fd))
        self._track_var_below(self.root.fd, "/", (0, 0))
        for layer, seg in steps[1:]:
            ldir = self.work / f"layer{layer.index}.{seg}"
            ostree.checkout(self.repo, layer.rev, ldir, subpath="/" + tree_dir(seg))
            try:
                with beneath.Root(ldir) as lroot:
                    if layer.index >= base:
                        self._note_tops(layer, lroot)
                    else:
                        self.base_tops.update(os.listdir(lroot.fd))
                    self._apply(layer, seg, lroot)
            finally:
                shutil.rmtree(ldir, ignore_errors=True)
        return self.root

    def _note_tops(self, layer: Layer, lroot: beneath.Root) -> None:
        self.derived_tops.update(os.listdir(lroot.fd))
        for path in [p for p, _ in layer.facts.whiteouts] + [
                p for _, p, _ in layer.facts.lower_links]:
            parts = beneath.split(path)
            if parts:
                self.derived_tops.add(parts[0])

    def _apply(self, layer: Layer, seg: int, lroot: beneath.Root) -> None:
        """Apply one segment of a layer (the whiteouts with its first)."""
        assert self.root is not None
        implicit = set(layer.facts.implicit_dirs[seg])
        step = (layer.index, seg)
        path = "/"
        try:
            for path, opaque in layer.facts.whiteouts if seg == 0 else []:
                self._whiteout(layer, lroot, implicit, path, opaque)
            held = self.work / "held"
            os.mkdir(held, 0o700)
            hfd = os.open(held, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                # hard links to lower layers' files take the content those have now, before
                # this layer's entries replace anything (tar order: the links come first)
                names: dict[str, str] = {}
                for i, (n, path, target) in enumerate(layer.facts.lower_links):
                    if n == seg:
                        self._hold(layer, hfd, str(i), path, target, names)
                        names[path] = str(i)
                path = "/"
                if "/" not in implicit:
                    beneath.copy_dir_metadata(lroot.fd, self.root.fd)
                self._merge(layer, step, lroot.fd, self.root.fd, "/", implicit)
                for path, name in names.items():
                    self._place(step, hfd, name, path)
            finally:
                os.close(hfd)
                shutil.rmtree(held, ignore_errors=True)
        except SymlinkInPath as exc:
            raise layer.refuse(path, f"reached through the symlink {image_path(exc.link)} "
                                     "of a lower layer") from None
        except OSError as exc:
            raise DeployError(f"{layer.what}: {image_path(path)}: "
                              f"{exc.strerror or exc}; the sysroot is unchanged") from None

    def _whiteout(self, layer: Layer, lroot: beneath.Root, implicit: set[str], path: str,
                  opaque: bool) -> None:
        """Remove ``path`` (``opaque``: empty it) from the layers below, never following a
        symlink. Below something this layer replaces by a directory there is nothing left
        to remove; through a lower layer's symlink it does not replace, the image is
        refused."""
        assert self.root is not None
        parts = beneath.split(path)

        def through(link: str) -> LayerError:
            kind = "opaque whiteout" if opaque else "whiteout"
            return layer.refuse(path, f"{kind} through the symlink {image_path(link)} of a "
                                      "lower layer")

        def replaced(here: str) -> bool:
            return here not in implicit and _is_dir(lroot, here)

        fd = os.dup(self.root.fd)
        try:
            for i, name in enumerate(parts[:-1]):
                here = "/" + "/".join(parts[: i + 1])
                st = beneath.lstat_at(fd, name)
                if st is None:
                    return
                if not stat.S_ISDIR(st.st_mode):
                    if stat.S_ISLNK(st.st_mode) and not replaced(here):
                        raise through(here)
                    return  # a file, or a symlink this layer replaces: nothing below it
                nxt = beneath.open_dir_at(fd, name, here)
                os.close(fd)
                fd = nxt
            if not parts:  # an opaque whiteout of the root
                self._forget_var("/", below_only=True)
                beneath.clear_dir(fd)
                return
            st = beneath.lstat_at(fd, parts[-1])
            if st is None:
                return
            if not opaque:
                self._forget_var(path, below_only=False)
                beneath.remove_at(fd, parts[-1])
            elif stat.S_ISDIR(st.st_mode):
                sub = beneath.open_dir_at(fd, parts[-1], path)
                try:
                    self._forget_var(path, below_only=True)
                    beneath.clear_dir(sub)
                finally:
                    os.close(sub)
            elif stat.S_ISLNK(st.st_mode) and not replaced(path):
                raise through(path)
        finally:
            os.close(fd)

    def _merge(self, layer: Layer, step: tuple[int, int], src: int, dst: int, path: str,
               implicit: set[str]) -> None:
        """Move the layer's entries in ``src`` into the tree's directory ``dst``."""
        for name in os.listdir(src):
            here = path + name
            s = os.stat(name, dir_fd=src, follow_symlinks=False)
            d = beneath.lstat_at(dst, name)
            if stat.S_ISDIR(s.st_mode):
                if d is not None and stat.S_ISDIR(d.st_mode):
                    sfd = beneath.open_dir_at(src, name, here)
                    try:
                        dfd = beneath.open_dir_at(dst, name, here)
                        try:
                            if here not in implicit:
                                beneath.copy_dir_metadata(sfd, dfd)
                            self._merge(layer, step, sfd, dfd, here + "/", implicit)
                        finally:
                            os.close(dfd)
                    finally:
                        os.close(sfd)
                    continue
                if d is not None and here in implicit:
                    # the layer has entries below a lower layer's symlink or file, not the
                    # directory itself: an unpacker would go through it (or fail)
                    below = _first_below(layer, src, name, here, implicit)
                    if stat.S_ISLNK(d.st_mode):
                        raise layer.refuse(below, "reached through the symlink "
                                                  f"{image_path(here)} of a lower layer")
                    raise layer.refuse(below, f"its parent {image_path(here)} is a file in a "
                                              "lower layer")
            if d is not None:
                self._forget_var(here, below_only=False)
                beneath.remove_at(dst, name)
            os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
            self._track_var(dst, name, here, step)

    def _hold(self, layer: Layer, hfd: int, name: str, path: str, target: str,
              held: dict[str, str]) -> None:
        """Link ``target`` (a lower layer's file, or one held before) as ``name`` in the
        holding directory."""
        assert self.root is not None
        if target in held:
            os.link(held[target], name, src_dir_fd=hfd, dst_dir_fd=hfd, follow_symlinks=False)
            return
        st = self.root.lstat(target)
        if st is None or stat.S_ISDIR(st.st_mode):
            raise layer.refuse(path, f"hard link to {image_path(target)}, which no lower "
                                     "layer has as a file")
        tfd, tname = self.root.parent(target)
        try:
            os.link(tname, name, src_dir_fd=tfd, dst_dir_fd=hfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def _place(self, step: tuple[int, int], hfd: int, name: str, path: str) -> None:
        """Move a held link to its path (its directories are the layer's, now merged)."""
        assert self.root is not None
        dfd, dname = self.root.parent(path, create=True)
        try:
            self._forget_var(path, below_only=False)
            beneath.remove_at(dfd, dname)
            os.link(name, dname, src_dir_fd=hfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(dfd)
        if _in_var(path):
            self.var_origin[path] = step

    # /var bookkeeping: which layer wrote each file, for the image's own hard links

    def _track_var(self, dirfd: int, name: str, path: str, step: tuple[int, int]) -> None:
        if not (path == "/var" or _in_var(path)):
            return
        st = beneath.lstat_at(dirfd, name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            if _in_var(path):
                self.var_origin[path] = step
            return
        fd = beneath.open_dir_at(dirfd, name, path)
        try:
            self._track_var_below(fd, path + "/", step)
        finally:
            os.close(fd)

    def _track_var_below(self, fd: int, path: str, step: tuple[int, int]) -> None:
        for name, st in beneath.walk(fd):
            here = path + name
            if here != "/var" and not _in_var(here):
                continue
            if stat.S_ISDIR(st.st_mode):
                sub = beneath.open_dir_at(fd, name, here)
                try:
                    self._track_var_below(sub, here + "/", step)
                finally:
                    os.close(sub)
            elif _in_var(here):
                self.var_origin[here] = step

    def _forget_var(self, path: str, *, below_only: bool) -> None:
        if not self.var_origin or not (path == "/var" or _in_var(path) or path == "/"):
            return
        prefix = path.rstrip("/") + "/"
        for p in [p for p in self.var_origin if p.startswith(prefix) or
                  (not below_only and p == path)]:
            del self.var_origin[p]


def _first_below(layer: Layer, dirfd: int, name: str, path: str, implicit: set[str]) -> str:
    """An entry of the layer below its implicit directory ``path``, to name in a refusal."""
    fd = beneath.open_dir_at(dirfd, name, path)
    try:
        for child, st in sorted(beneath.walk(fd)):
            here = f"{path}/{child}"
            if stat.S_ISDIR(st.st_mode) and here in implicit:
                return _first_below(layer, fd, child, here, implicit)
            return here
    finally:
        os.close(fd)
    links = sorted(p for _, p, _ in layer.facts.lower_links if p.startswith(path + "/"))
    return links[0] if links else path + "/"


def _in_var(path: str) -> bool:
    return path.startswith("/var/")


def _is_dir(root: beneath.Root, path: str) -> bool:
    try:
        st = root.lstat(path)
    except SymlinkInPath:
        return False
    return st is not None and stat.S_ISDIR(st.st_mode)


def _var_groups(layers: list[Layer], origin: dict[str, tuple[int, int]]) -> dict[str, str]:
    """The image's hard-link groups below /var: each linked path -> its group's first path.

    A link a layer made still holds if the link is that layer's last word on its path and
    the target has not been written since.
    """
    parent: dict[str, str] = {}

    def find(p: str) -> str:
        while parent.get(p, p) != p:
            p = parent[p]
        return p

    never = (1 << 30, 0)
    for layer in layers:
        for seg, path, target in [*layer.facts.var_links, *layer.facts.lower_links]:
            if not _in_var(path) or not _in_var(target):
                continue
            step = (layer.index, seg)
            if origin.get(path) == step and origin.get(target, never) <= step:
                a, b = find(path), find(target)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return {p: find(p) for p in parent} | {find(p): find(p) for p in parent}


def _seed_var(src: int, dest: beneath.Root, groups: dict[str, str]) -> None:
    """First install only: copy the image's /var into the node's, never over what is there
    and never through a symlink; the image's hard links stay links, nothing else is shared."""
    seeded: dict[str, str] = {}

    def copy(sfd: int, dfd: int, path: str, rel: str) -> None:
        for name, st in beneath.walk(sfd):
            here, drel = path + name, rel + name
            existing = beneath.lstat_at(dfd, name)
            if stat.S_ISDIR(st.st_mode):
                if existing is None:
                    os.mkdir(name, 0o700, dir_fd=dfd)
                elif not stat.S_ISDIR(existing.st_mode):
                    continue
                s2 = beneath.open_dir_at(sfd, name, here)
                try:
                    d2 = beneath.open_dir_at(dfd, name, drel)
                    try:
                        if existing is None:
                            beneath.copy_dir_metadata(s2, d2)
                        copy(s2, d2, here + "/", drel + "/")
                    finally:
                        os.close(d2)
                finally:
                    os.close(s2)
                continue
            if existing is not None:
                continue
            group = groups.get(here)
            if group is not None and group in seeded:
                dest.link(seeded[group], drel)
                continue
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=sfd), name, dir_fd=dfd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            else:
                _copy_file(sfd, dfd, name, st)
            if group is not None:
                seeded[group] = drel

    copy(src, dest.fd, "/var/", "/")


def _copy_file(sfd: int, dfd: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                  dir_fd=sfd)
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            return
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                      os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            while chunk := os.read(src, 1 << 20):
                os.write(out, chunk)
            for key in os.listxattr(src):
                with contextlib.suppress(OSError):
                    os.setxattr(out, key, os.getxattr(src, key))
            os.chown(out, st.st_uid, st.st_gid)
            os.chmod(out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(out)
    finally:
        os.close(src)


def _drop_children(root: beneath.Root) -> None:
    """What the node drops: the children of /run, /tmp, /proc, /sys, /dev and /boot
    (nodetree.DROP_CHILDREN); the layers keep them until here for hard links."""
    for path in nodetree.DROP_CHILDREN:
        st = root.lstat(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            fd = root.open_dir(path)
            try:
                beneath.clear_dir(fd)
            finally:
                os.close(fd)


def _drop_toplevels(root: beneath.Root, derived: set[str], base_tops: set[str]) -> None:
    """Without composefs or root.transient the node keeps only a bootable root's top-level
    names from layers above the base (nodetree.dropped_by)."""
    for name in os.listdir(root.fd):
        if nodetree.dropped_by("/" + name, False) is None:
            continue
        if name in base_tops and name not in derived:
            continue  # the base's own, untouched
        beneath.remove_at(root.fd, name)


# -- the deploy --------------------------------------------------------------------------------


def deploy_image(source: ImageSource, sysroot: Path, osname: str, *, origin_ref: str,
                 progress: Progress | None = None) -> Deployment:
    """Deploy ``source`` as the new default; the previous default stays for rollback."""
    say = progress or (lambda _m: None)
    with sysroot_lock(sysroot, say):
        return _deploy(source, sysroot, osname, origin_ref, say)


def _deploy(source: ImageSource, sysroot: Path, osname: str, origin_ref: str,
            say: Progress) -> Deployment:
    ostree.ensure_sysroot(sysroot, osname)
    repo = ostree.repo_of(sysroot)
    first_install = not ostree.status(sysroot)
    layers = import_layers(source, repo, say)
    new = sum(1 for layer in layers if layer.new)
    say(f"{new} new layer(s) imported, {len(layers) - new} already present")
    if not layers:
        raise DeployError(f"{source.ref}: the image has no layers")
    digest = source.digest
    labels = source.config.labels
    version = labels.get("org.opencontainers.image.version") or labels.get("version") or (
        digest[7:19])
    base = base_layers(source)
    with tempfile.TemporaryDirectory(prefix="nestbuild-stage-", dir=repo.parent) as tmp:
        work = Path(tmp)
        composer = _Composer(repo, work)
        try:
            root = composer.compose(layers, base)
            _drop_children(root)
            conf = root.read_file(nodetree.PREPARE_ROOT_CONF, 1 << 20)
            if not nodetree.keeps_toplevels(conf):
                _drop_toplevels(root, composer.derived_tops, composer.base_tops)
            if root.lstat("/usr/lib/os-release") is None and root.lstat(
                    "/usr/etc/os-release") is None:
                raise DeployError(f"{source.ref}: no /usr/lib/os-release; not a bootable OS "
                                  "tree; the sysroot is unchanged")
            var_seed = _split_var(root, work)
            say("committing the image tree")
            rev = ostree.commit(repo, IMAGE_REF.format(osname), composer.tree,
                                subject=f"{origin_ref}", metadata={
                                    "version": version,
                                    "nestbuild.image": origin_ref,
                                    "nestbuild.image-digest": digest,
                                    "ostree.manifest-digest": digest,
                                })
        except SymlinkInPath as exc:  # outside any one layer: the merged tree's own links
            raise DeployError(f"{source.ref}: {image_path(exc.link)} is a symlink where the "
                              "node needs a directory; refused, the sysroot is unchanged"
                              ) from None
        finally:
            if composer.root is not None:
                composer.root.close()
        for layer in layers:
            if layer.new:
                ostree.set_ref(repo, layer.ref, layer.rev)
        with tempfile.NamedTemporaryFile("w", suffix=".origin", dir=work, delete=False) as f:
            f.write(origin_text(origin_ref, digest))
            origin = Path(f.name)
        say("deploying")
        ostree.deploy(sysroot, osname, rev, origin)
        if first_install and var_seed is not None:
            groups = _var_groups(layers, composer.var_origin)
            try:
                with beneath.Root(sysroot / "ostree" / "deploy" / osname / "var") as dest:
                    fd = os.open(var_seed, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                    try:
                        _seed_var(fd, dest, groups)
                    finally:
                        os.close(fd)
            except (OSError, SymlinkInPath) as exc:
                raise DeployError(f"{source.ref}: deployed, but seeding the stateroot's /var "
                                  f"stopped: {exc}") from None
    return deployments(sysroot)[0]


def _split_var(root: beneath.Root, work: Path) -> Path | None:
    """Move the tree's /var aside (to seed a first install's /var from it) and leave an
    empty /var with the same metadata: a node's /var is its own, not the image's."""
    st = root.lstat("/var")
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    aside = work / "var"
    os.mkdir(aside, 0o700)
    fd = root.open_dir("/var")
    try:
        afd = os.open(aside, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in os.listdir(fd):
                os.rename(name, name, src_dir_fd=fd, dst_dir_fd=afd)
        finally:
            os.close(afd)
    finally:
        os.close(fd)
    return aside


def origin_text(image_ref: str, digest: str) -> str:
    pinned = image_ref.split("@", 1)[0]
    return ("[origin]\n"
            f"container-image-reference=ostree-image-signed:docker://{pinned}@{digest}\n"
            "[nestbuild]\n"
            f"image={image_ref}\n"
            f"digest={digest}\n")


def _read_origin(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            key, eq, value = line.partition("=")
            if eq:
                out[key.strip()] = value.strip()
    return out


def deployments(sysroot: Path) -> list[Deployment]:
    """The sysroot's deployments, default first; the second is the rollback target."""
    if not (ostree.repo_of(sysroot) / "config").is_file():
        raise DeployError(f"{sysroot}: not an ostree sysroot")
    repo = ostree.repo_of(sysroot)
    out = []
    for d in ostree.status(sysroot):
        origin = _read_origin(sysroot / "ostree" / "deploy" / d.osname / "deploy" /
                              f"{d.dirname}.origin")
        out.append(Deployment(
            d.index, d.checksum, d.serial, origin.get("image"), origin.get("digest"),
            ostree.metadata(repo, d.checksum, "version"), d.index == 0, d.index == 1))
    return out


def rollback(sysroot: Path, osname: str) -> Deployment:
    """Make the previous deployment the default again (the current one becomes rollback)."""
    with sysroot_lock(sysroot):
        current = deployments(sysroot)
        if len(current) < 2:
            raise DeployError(f"{sysroot}: there is no previous deployment to roll back to")
        target = current[1]
        deploy_dir = sysroot / "ostree" / "deploy" / osname / "deploy"
        origin = deploy_dir / f"{target.checksum}.{target.serial}.origin"
        ostree.deploy(sysroot, osname, target.checksum, origin, retain=True)
        after = deployments(sysroot)
        # the old copy of the target is now redundant; the previous default stays as rollback
        for d in reversed(after[2:]):
            if d.checksum == target.checksum:
                ostree.undeploy(sysroot, d.index)
        return deployments(sysroot)[0]
