"""Base image recipes (``base-images/NAME/recipe.yaml``) and building them with buildah.

A recipe declares an optional root filesystem source (``rootfs: {mmdebstrap: ...}``: a Debian
root built from a package mirror, cached as a tarball keyed by what produces it), then
directories, symlinks, a rootfs overlay to copy, busybox applets, labels and a kernel version
(``auto``: the one the packages installed); this module interprets it into an image in local
storage, offline apart from the package mirror on a cold cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nestbuild._image.model import LABEL_LINUX
from nestbuild._tools import buildah, run
from nestbuild._util.cache import cache_dir
from nestbuild.errors import ToolError, UsageError

#: Fixed mtime for everything in a built base, so rebuilding gives the same layer.
SOURCE_DATE_EPOCH = 1_700_000_000
#: Bumped when the way a cached rootfs is produced changes, so old tarballs are not reused.
ROOTFS_FORMAT = 1
ROOTFS_TIMEOUT = 1800
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    path: Path

    def load(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load((self.path / "recipe.yaml").read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"{self.path / 'recipe.yaml'}: cannot read recipe ({exc})") from None
        if not isinstance(data, dict):
            raise UsageError(f"{self.path / 'recipe.yaml'}: a recipe is a mapping")
        return data


@dataclass(frozen=True)
class BuiltBase:
    name: str
    tag: str
    image_id: str
    kernel: str


def recipes_dir() -> Path:
    env = os.environ.get("NESTBUILD_BASE_IMAGES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "base-images"


def list_recipes() -> list[Recipe]:
    out = []
    root = recipes_dir()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if (d / "recipe.yaml").is_file():
            desc = Recipe(d.name, "", d).load().get("description", "")
            out.append(Recipe(d.name, str(desc), d))
    return out


def default_tag(name: str) -> str:
    return f"localhost/nestbuild/{name}:latest"


@dataclass(frozen=True)
class UpstreamBase:
    """A published base nestbuild knows how to check (it cannot be pulled in every place)."""

    name: str
    reference: str
    checks: str


UPSTREAM_BASES = (
    UpstreamBase("fedora-bootc", "quay.io/fedora/fedora-bootc:41",
                 "containers.bootc=1; bootc lints (validate --as-base); kargs.d; "
                 "node: bootc switch --enforce-container-sigpolicy"),
    UpstreamBase("centos-bootc", "quay.io/centos-bootc/centos-bootc:stream9",
                 "containers.bootc=1; bootc lints (validate --as-base); kargs.d; "
                 "node: bootc switch --enforce-container-sigpolicy"),
    UpstreamBase("fedora-coreos", "quay.io/fedora/fedora-coreos:stable",
                 "ostree.bootable=true; base found by ostree.final-diffid; kargs.d unused; "
                 "node: rpm-ostree rebase ostree-image-signed:"),
    UpstreamBase("nestos", "NestOS For Container (openEuler), from your NestOS registry",
                 "ostree.bootable=true; base found by ostree.final-diffid; "
                 "node: rpm-ostree rebase ostree-image-signed:"),
)


def build_base(name: str = "mini", tag: str | None = None, *, rootfs_cache: Path | None = None,
               progress: Progress | None = None) -> BuiltBase:
    """Build the recipe ``name`` into local storage as ``tag``.

    ``rootfs_cache`` is where a ``rootfs:`` source keeps its tarball (default: nestbuild's
    cache, ``rootfs/``); tests pass a directory that outlives the run.
    """
    say = progress or (lambda _m: None)
    known = {r.name: r for r in list_recipes()}
    if name not in known:
        raise UsageError(f"no base recipe {name!r} (known: {', '.join(known) or 'none'}; "
                         f"recipes live in {recipes_dir()})")
    recipe = known[name]
    spec = recipe.load()
    tag = tag or default_tag(name)
    if spec.get("builder") == "rpm":  # RPM packages layered as rpm-ostree does: rpmbase.py
        from nestbuild.building.rpmbase import build_rpm_base

        rpm = build_rpm_base(tag=tag, recipe=recipe.path, progress=say)
        return BuiltBase(name, rpm.tag, rpm.image_id, rpm.kernel)
    tarball = None
    if spec.get("rootfs"):
        tarball = rootfs_tarball(recipe, spec, rootfs_cache or cache_dir("rootfs"), say)
    with buildah.working_container("scratch") as ctr:
        root = buildah.mount(ctr)
        if tarball is not None:
            say(f"unpacking {tarball.name}")
            _unpack(tarball, root)
        kernel = str(spec["kernel"])
        if kernel == "auto":
            kernel = _installed_kernel(root, recipe)
        _populate(root, recipe.path, spec, kernel)
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        labels[LABEL_LINUX] = kernel
        buildah.config(ctr, labels=labels, env=spec.get("env") or {}, cmd=spec.get("cmd"),
                       created_by=f"nestbuild base build {name}")
        image_id = buildah.commit(ctr, tag, timestamp=SOURCE_DATE_EPOCH)
    return BuiltBase(name, tag, image_id, kernel)


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


# --- rootfs sources ----------------------------------------------------------------------

def rootfs_key(recipe: Recipe, spec: dict[str, Any]) -> str:
    """What the cached rootfs depends on: the ``rootfs:`` section and the hook files it names
    (not the overlay, directories or labels, which are applied on every build)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": ROOTFS_FORMAT, "rootfs": spec["rootfs"]},
                        sort_keys=True).encode())
    for hook in _mmdebstrap_spec(recipe, spec).get("customize-hooks") or []:
        try:
            data = (recipe.path / str(hook)).read_bytes()
        except OSError as exc:
            raise UsageError(f"{recipe.path / 'recipe.yaml'}: customize hook {hook}: "
                             f"{exc.strerror}") from None
        h.update(str(hook).encode() + b"\0" + data)
    return h.hexdigest()[:16]


def _mmdebstrap_spec(recipe: Recipe, spec: dict[str, Any]) -> dict[str, Any]:
    source = spec["rootfs"]
    if not isinstance(source, dict) or set(source) != {"mmdebstrap"} or not isinstance(
            source["mmdebstrap"], dict):
        raise UsageError(f"{recipe.path / 'recipe.yaml'}: rootfs: must be "
                         "{mmdebstrap: {suite: ..., ...}} (the only source so far)")
    md: dict[str, Any] = source["mmdebstrap"]
    if "suite" not in md:
        raise UsageError(f"{recipe.path / 'recipe.yaml'}: rootfs.mmdebstrap needs a suite")
    return md


def rootfs_tarball(recipe: Recipe, spec: dict[str, Any], cache: Path,
                   progress: Progress) -> Path:
    """The recipe's root filesystem as a tarball in ``cache``, built with mmdebstrap when it
    is missing (minutes) and reused otherwise (seconds). A lock keeps concurrent builds of the
    same recipe from running mmdebstrap twice; a failed build leaves nothing behind."""
    cache.mkdir(parents=True, exist_ok=True)
    key = rootfs_key(recipe, spec)
    tarball = cache / f"{recipe.name}-{key}.tar"
    with open(cache / f"{recipe.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            progress(f"using the cached root filesystem {tarball}")
            return tarball
        progress(f"building the root filesystem with mmdebstrap (minutes; cached as {tarball})")
        partial = tarball.with_suffix(".partial")
        partial.unlink(missing_ok=True)  # left by an interrupted build
        try:
            run.run(_mmdebstrap_argv(recipe, _mmdebstrap_spec(recipe, spec), partial),
                    env={"SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)},
                    timeout=ROOTFS_TIMEOUT, what=f"building the {recipe.name} root filesystem")
        except ToolError:
            partial.unlink(missing_ok=True)
            raise
        partial.rename(tarball)
        for old in cache.glob(f"{recipe.name}-*.tar"):
            if old != tarball:
                old.unlink()  # an earlier version of the recipe
    return tarball


def _mmdebstrap_argv(recipe: Recipe, md: dict[str, Any], out: Path) -> list[str]:
    argv = ["mmdebstrap", f"--variant={md.get('variant', 'minbase')}", "--format=tar",
            f"--components={','.join(md.get('components') or ['main'])}"]
    if md.get("include"):
        argv.append(f"--include={','.join(str(p) for p in md['include'])}")
    for opt in md.get("dpkg-options") or []:
        argv.append(f"--dpkgopt={opt}")
    for hook in md.get("customize-hooks") or []:
        path = (recipe.path / str(hook)).resolve()
        if not os.access(path, os.X_OK) or any(c.isspace() for c in str(path)):
            raise UsageError(f"{path}: a customize hook must be an executable file whose path "
                             "has no spaces (mmdebstrap runs it with the root as $1)")
        argv.append(f"--customize-hook={path}")
    argv += [str(md["suite"]), str(out)]
    mirror = os.environ.get("NESTBUILD_DEBIAN_MIRROR")
    for m in md.get("mirrors") or [DEFAULT_DEBIAN_MIRROR]:
        m = str(m)
        if mirror:  # a local mirror of deb.debian.org (not of the security archive)
            m = " ".join(mirror if w == DEFAULT_DEBIAN_MIRROR else w for w in m.split(" "))
        argv.append(m)
    return argv


def _unpack(tarball: Path, root: Path) -> None:
    """Extract as root with owners, modes and xattrs; /dev's nodes stay out of the image."""
    run.run(["tar", "-C", root, "-xpf", tarball, "--numeric-owner", "--xattrs",
             "--xattrs-include=*", "--exclude=./dev/*"], what=f"unpacking {tarball.name}")


def _installed_kernel(root: Path, recipe: Recipe) -> str:
    modules = root / "usr" / "lib" / "modules"
    found = sorted(d.name for d in modules.iterdir() if (d / "vmlinuz").is_file()) if (
        modules.is_dir()) else []
    if len(found) != 1:
        raise UsageError(f"{recipe.name}: kernel: auto needs exactly one "
                         f"/usr/lib/modules/KVER/vmlinuz in the root, found {found or 'none'}")
    return found[0]


def _populate(root: Path, recipe_dir: Path, spec: dict[str, Any], kernel: str) -> None:
    for path, mode in (spec.get("directories") or {}).items():
        d = _inside(root, path)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(int(str(mode), 8))
    overlay = recipe_dir / "rootfs"
    if overlay.is_dir():
        for src in sorted(overlay.rglob("*")):
            rel = str(src.relative_to(overlay)).replace("{kernel}", kernel)
            dst = _inside(root, rel)
            if src.is_dir():
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)
    bb = spec.get("busybox")
    if bb:
        target = _inside(root, bb["install"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bb["binary"], target)
        target.chmod(0o755)
        for applet in bb.get("applets") or []:
            link = target.parent / str(applet)
            if not link.exists():
                link.symlink_to("busybox")
    for path, target_path in (spec.get("symlinks") or {}).items():
        link = _inside(root, path)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target_path)
    for path, mode in (spec.get("modes") or {}).items():
        _inside(root, path).chmod(int(str(mode), 8))
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH),
                     follow_symlinks=False)
    os.utime(root, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
