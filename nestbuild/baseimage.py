"""Base image recipes (``base-images/NAME/recipe.yaml``) and building them with buildah.

A recipe declares directories, symlinks, a rootfs overlay to copy, busybox applets, labels
and a kernel version; this module interprets it into an image in local storage, offline.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nestbuild import buildah
from nestbuild.errors import UsageError
from nestbuild.image.model import LABEL_LINUX

#: Fixed mtime for everything in a built base, so rebuilding gives the same layer.
SOURCE_DATE_EPOCH = 1_700_000_000


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
    return Path(__file__).resolve().parent.parent / "base-images"


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


def build_base(name: str = "mini", tag: str | None = None) -> BuiltBase:
    """Build the recipe ``name`` into local storage as ``tag``."""
    known = {r.name: r for r in list_recipes()}
    if name not in known:
        raise UsageError(f"no base recipe {name!r} (known: {', '.join(known) or 'none'}; "
                         f"recipes live in {recipes_dir()})")
    recipe = known[name]
    spec = recipe.load()
    tag = tag or default_tag(name)
    kernel = str(spec["kernel"])
    with buildah.working_container("scratch") as ctr:
        root = buildah.mount(ctr)
        _populate(root, recipe.path, spec, kernel)
        labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
        labels[LABEL_LINUX] = kernel
        buildah.config(ctr, labels=labels, env=spec.get("env") or {}, cmd=spec.get("cmd"),
                       created_by=f"nestbuild base build {name}")
        image_id = buildah.commit(ctr, tag, timestamp=SOURCE_DATE_EPOCH)
    return BuiltBase(name, tag, image_id, kernel)


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


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
