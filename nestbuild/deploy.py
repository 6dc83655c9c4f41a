"""Deploy an image into a real ostree sysroot, as bootc and rpm-ostree do on a node.

Each layer is imported once into the sysroot's repository as its own commit
(``nestbuild/layer/<diffid>``), with ``/etc`` stored as ``/usr/etc`` and the layer's whiteouts
recorded in the commit; an image is then the hard-link union of its layer commits with the
whiteouts applied, committed and deployed with ``ostree admin deploy``. A config-only update
imports only its new layers. The image reference and digest go into the deployment's origin.
Until ``ostree admin deploy`` runs nothing visible to the node changes, so a refused or failed
deploy leaves the previous default as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nestbuild import ostree
from nestbuild.errors import LayerError, NestbuildError
from nestbuild.image import ImageSource
from nestbuild.tree import OPAQUE_MARKER, READ_ERRORS, WHITEOUT_PREFIX, normalize

LAYER_REF = "nestbuild/layer/{}"
IMAGE_REF = "nestbuild/image/{}"
DROP_CHILDREN = ("/run", "/tmp", "/proc", "/sys", "/dev")
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


def map_path(path: str) -> str:
    """Image paths to ostree paths: /etc is stored as /usr/etc."""
    if path == "/etc" or path.startswith("/etc/"):
        return "/usr" + path
    return path


def _inside(root: Path, path: str) -> Path:
    target = root / path.lstrip("/")
    parent = os.path.realpath(target.parent)
    if parent != str(root) and not parent.startswith(str(root) + os.sep):
        raise LayerError(f"{path}: a symlink in its parent leads out of the image root")
    return target


def extract_layer(fileobj: IO[bytes], seekable: bool, dest: Path,
                  what: str) -> tuple[list[tuple[str, bool]], list[tuple[str, str]]]:
    """Unpack one layer into ``dest``; returns its whiteouts and hard links to lower layers."""
    whiteouts: list[tuple[str, bool]] = []
    lower_links: list[tuple[str, str]] = []
    dirs: list[tuple[Path, tarfile.TarInfo]] = []
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r:" if seekable else "r|",  # noqa: SIM115
                          encoding="utf-8", errors="surrogateescape")
    except READ_ERRORS as exc:
        raise LayerError(f"{what}: not a tar stream ({exc})") from None
    with tf:
        try:
            for m in tf:
                tf.members.clear()  # type: ignore[attr-defined]  # we stream
                _extract_member(tf, m, dest, whiteouts, lower_links, dirs, what)
        except READ_ERRORS as exc:
            raise LayerError(f"{what}: corrupt or truncated tar ({exc})") from None
    for path, m in reversed(dirs):  # after their contents, as tar does
        os.chown(path, m.uid, m.gid, follow_symlinks=False)
        path.chmod(m.mode & 0o7777)
    return whiteouts, lower_links


def _extract_member(tf: tarfile.TarFile, m: tarfile.TarInfo, dest: Path,
                    whiteouts: list[tuple[str, bool]], lower_links: list[tuple[str, str]],
                    dirs: list[tuple[Path, tarfile.TarInfo]], what: str) -> None:
    path = normalize(m.name)
    if path is None:
        raise LayerError(f"{what}: entry {m.name!r} leaves the image root")
    base = posixpath.basename(path)
    if base.startswith(WHITEOUT_PREFIX):
        parent = posixpath.dirname(path)
        if base == OPAQUE_MARKER:
            whiteouts.append((map_path(parent), True))
        else:
            whiteouts.append((map_path(posixpath.join(parent, base[len(WHITEOUT_PREFIX):])),
                              False))
        return
    if path == "/":
        return
    if any(path.startswith(d + "/") for d in DROP_CHILDREN):
        return  # the node drops these (ostree-ext's filter)
    target = _inside(dest, map_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    if m.isdir():
        target.mkdir(exist_ok=True)
        dirs.append((target, m))
        return
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    if m.isreg():
        src = tf.extractfile(m)
        assert src is not None
        with open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    elif m.issym():
        os.symlink(m.linkname, target)
        os.chown(target, m.uid, m.gid, follow_symlinks=False)
        return
    elif m.islnk():
        link = normalize(m.linkname)
        if link is None:
            raise LayerError(f"{what}: hard link {path} leaves the image root")
        source = dest / map_path(link).lstrip("/")
        if source.exists():
            os.link(source, target)
        else:
            lower_links.append((map_path(path), map_path(link)))
        return
    else:
        raise LayerError(f"{what}: {path} is a device node or fifo; nodes refuse those")
    os.chown(target, m.uid, m.gid)
    target.chmod(m.mode & 0o7777)
    for key, value in (m.pax_headers or {}).items():
        if key.startswith("SCHILY.xattr.") and not key.endswith("security.selinux"):
            with contextlib.suppress(OSError):
                os.setxattr(target, key[len("SCHILY.xattr."):],
                            value.encode("utf-8", "surrogateescape"))


def import_layers(source: ImageSource, repo: Path, progress: Progress) -> tuple[list[str], int]:
    """Import the image's layers not already in the repository; returns refs and how many
    were imported (the rest came from earlier deployments)."""
    refs = []
    imported = 0
    total = len(source.config.diff_ids)
    for i, diff_id in enumerate(source.config.diff_ids):
        ref = LAYER_REF.format(diff_id.split(":", 1)[1])
        refs.append(ref)
        if ostree.has_ref(repo, ref):
            continue
        progress(f"importing layer {i + 1}/{total} ({diff_id[:19]})")
        with tempfile.TemporaryDirectory(prefix="nestbuild-layer-", dir=repo.parent) as tmp:
            root = Path(tmp) / "root"
            root.mkdir()
            with source.open_layer(i) as stream:
                whiteouts, links = extract_layer(stream.fileobj, stream.seekable, root,
                                                 f"{source.ref} layer {i}")
                stream.finish()
            ostree.commit(repo, ref, root, subject=f"layer {diff_id}", metadata={
                "nestbuild.diff-id": diff_id,
                "nestbuild.whiteouts": json.dumps(whiteouts),
                "nestbuild.hardlinks": json.dumps(links),
            })
        imported += 1
    return refs, imported


def _apply_whiteouts(staging: Path, whiteouts: list[list[Any]]) -> None:
    for path, opaque in whiteouts:
        target = staging / str(path).lstrip("/")
        if opaque:
            if target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    _remove(child)
        elif target.is_symlink() or target.exists():
            _remove(target)


def _seed_var(src: Path, dest: Path) -> None:
    """First install only: copy the image's /var into the node's, never over what is there."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in [*dirnames, *filenames]:
            s, d = Path(dirpath) / name, dest / rel / name
            if d.exists() or d.is_symlink():
                continue
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
            elif s.is_dir():
                d.mkdir()
                shutil.copystat(s, d)
            else:
                shutil.copy2(s, d)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


@contextlib.contextmanager
def _staged_tree(repo: Path, refs: list[str]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="nestbuild-stage-", dir=repo.parent) as tmp:
        staging = Path(tmp) / "root"
        staging.mkdir()
        for ref in refs:
            _apply_whiteouts(staging, json.loads(
                ostree.metadata(repo, ref, "nestbuild.whiteouts") or "[]"))
            ostree.checkout_union(repo, ref, staging)
            for path, link in json.loads(ostree.metadata(repo, ref, "nestbuild.hardlinks")
                                         or "[]"):
                dst, src = staging / path.lstrip("/"), staging / link.lstrip("/")
                if dst.exists():
                    dst.unlink()
                os.link(src, dst)
        yield staging


def deploy_image(source: ImageSource, sysroot: Path, osname: str, *, origin_ref: str,
                 progress: Progress | None = None) -> Deployment:
    """Deploy ``source`` as the new default; the previous default stays for rollback."""
    say = progress or (lambda _m: None)
    ostree.ensure_sysroot(sysroot, osname)
    repo = ostree.repo_of(sysroot)
    first_install = not ostree.status(sysroot)
    refs, imported = import_layers(source, repo, say)
    say(f"{imported} new layer(s) imported, {len(refs) - imported} already present")
    digest = source.digest
    labels = source.config.labels
    version = labels.get("org.opencontainers.image.version") or labels.get("version") or (
        digest[7:19])
    with _staged_tree(repo, refs) as staging:
        if not (staging / "usr" / "lib" / "os-release").exists() and not (
                staging / "usr" / "etc" / "os-release").exists():
            raise DeployError(f"{source.ref}: no /usr/lib/os-release; not a bootable OS tree")
        var = staging / "var"
        if var.is_dir():
            if first_install:
                _seed_var(var, sysroot / "ostree" / "deploy" / osname / "var")
            for child in var.iterdir():
                _remove(child)
        say("committing the image tree")
        rev = ostree.commit(repo, IMAGE_REF.format(osname), staging,
                            subject=f"{origin_ref}", metadata={
                                "version": version,
                                "nestbuild.image": origin_ref,
                                "nestbuild.image-digest": digest,
                                "ostree.manifest-digest": digest,
                            })
    with tempfile.NamedTemporaryFile("w", suffix=".origin", delete=False) as f:
        f.write(origin_text(origin_ref, digest))
        origin = Path(f.name)
    try:
        say("deploying")
        ostree.deploy(sysroot, osname, rev, origin)
    finally:
        origin.unlink()
    return deployments(sysroot)[0]


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
