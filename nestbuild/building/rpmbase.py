"""The rpm base (``base-images/rpm``): real RPM packages, layered as rpm-ostree layers them.

The Debian and mini bases cannot stand in for what Fedora/CentOS bootc, Fedora CoreOS and
NestOS images bring: an rpm database at ``/usr/lib/sysimage/rpm/rpmdb.sqlite``, packages with
changelogs, and chunked layers (``rpm-ostree compose build-chunked-oci``) whose layers each
name the packages they hold in the ``ostree.components`` annotation. This module makes such an
image offline: it renders the recipe's spec files for one version of the base, builds them
with ``rpmbuild`` (cached by what goes into each package), installs them with ``rpm --root``,
and writes the tree as an OCI layout, one layer for the directories (where rpm-ostree puts the
ostree commit) and one per bin of packages, then copies it into local storage.

Packing follows ostree-ext's contract, not its statistics: the largest packages get layers of
their own, the rest share layers by name, the initramfs and the files no package owns share
one, and the last layer is kept empty for new packages. A later version keeps the layer
structure of the one before (as ``--previous-build-manifest`` does): upgraded packages stay in
their layer, removed ones leave it, added ones go into the reserved last layer; so a layer
whose packages did not change is byte-identical between versions.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import (
    LABEL_BOOTABLE,
    LABEL_BOOTC,
    LABEL_FINAL_DIFFID,
    LABEL_LINUX,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
)
from nestbuild._tools import run, skopeo
from nestbuild._util.cache import cache_dir
from nestbuild.errors import UsageError

#: Bumped when what this module makes from the same recipe changes (invalidates the caches).
FORMAT = 1
#: Where Fedora (and bootc images) keep the rpm database, relative to the root.
RPMDB = "usr/lib/sysimage/rpm"
#: ostree-ext's layer annotation naming the components a layer holds, and their separator.
CONTENT_ANNOTATION = "ostree.components"
COMPONENT_SEPARATOR = ","
#: rpm-ostree's component names for the files no package owns and for the initramfs.
UNPACKAGED = "rpmostree-unpackaged-content"
INITRAMFS = "initramfs"
#: ostree-ext's default and smallest number of package layers.
MAX_LAYERS = 64
MIN_LAYERS = 4
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LABEL_VERSION = "org.opencontainers.image.version"
LAYOUT_TAG = "base"
#: Every file in the image gets this mtime (as in the other bases), so layers are reproducible.
SOURCE_DATE_EPOCH = 1_700_000_000
RPMBUILD_TIMEOUT = 600
_ENTRY = re.compile(r"(?P<evr>\S+) (?P<date>\d{4}-\d\d-\d\d) (?:\[v(?P<since>\d+)\] )?(?P<text>.+)")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Release:
    """One version-release of a package and its changelog entries."""

    version: str
    release: str
    date: dt.date
    since: int
    changes: tuple[str, ...]

    @property
    def evr(self) -> str:
        return f"{self.version}-{self.release}"


@dataclass(frozen=True)
class Package:
    name: str
    spec: str
    kind: str
    size: int
    so: str
    arch: str
    requires: tuple[str, ...]
    summary: str
    since: int
    until: int | None
    releases: tuple[Release, ...]

    def present_in(self, version: int) -> bool:
        return self.since <= version and (self.until is None or version <= self.until) and bool(
            self.releases_in(version))

    def releases_in(self, version: int) -> list[Release]:
        return [r for r in self.releases if r.since <= version]

    def release_in(self, version: int) -> Release:
        return self.releases_in(version)[-1]


@dataclass(frozen=True)
class RpmRecipe:
    path: Path
    spec: dict[str, Any]
    maintainer: str
    versions: dict[int, dict[str, Any]]
    packages: tuple[Package, ...]

    def packages_in(self, version: int) -> list[Package]:
        return [p for p in self.packages if p.present_in(version)]


@dataclass(frozen=True)
class RpmLayout:
    """One version of the base as an OCI layout (tagged :data:`LAYOUT_TAG`)."""

    path: Path
    version: int
    kernel: str
    #: The packages of each layer after the first, as its ``ostree.components`` names them.
    structure: tuple[tuple[str, ...], ...]

    @property
    def ref(self) -> str:
        return f"oci:{self.path}:{LAYOUT_TAG}"


# --- the recipe ----------------------------------------------------------------------------

def recipe_dir() -> Path:
    """``base-images/rpm`` (where ``NESTBUILD_BASE_IMAGES`` puts the recipes, as for the others;
    not taken from baseimage, which imports this module)."""
    env = os.environ.get("NESTBUILD_BASE_IMAGES")
    return (Path(env) if env else Path(__file__).resolve().parents[2] / "base-images") / "rpm"


def load_recipe(path: Path | None = None) -> RpmRecipe:
    """The recipe at ``path`` (default: ``base-images/rpm``) with its packages.yaml."""
    path = path or recipe_dir()
    spec = _yaml(path / "recipe.yaml")
    data = _yaml(path / "packages.yaml")
    where = path / "packages.yaml"
    try:
        versions = {int(k): dict(v or {}) for k, v in (data.get("versions") or {}).items()}
        packages = tuple(_package(str(name), p) for name, p in (data["packages"] or {}).items())
        maintainer = str(data["maintainer"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"{where}: malformed package list ({exc})") from None
    if not versions:
        raise UsageError(f"{where}: no versions")
    for p in packages:
        if not (path / "specs" / f"{p.spec}.spec").is_file():
            raise UsageError(f"{where}: {p.name}: no specs/{p.spec}.spec")
    return RpmRecipe(path, spec, maintainer, versions, packages)


def _yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a mapping")
    return data


def _package(name: str, p: dict[str, Any]) -> Package:
    by_evr: dict[str, list[tuple[dt.date, int, str]]] = {}
    for line in p["changelog"]:
        m = _ENTRY.fullmatch(str(line))
        if m is None:
            raise ValueError(f"{name}: changelog line {line!r} is not 'EVR YYYY-MM-DD [vN] text'")
        by_evr.setdefault(m["evr"], []).append(
            (dt.date.fromisoformat(m["date"]), int(m["since"] or 1), m["text"]))
    releases = []
    for evr, entries in by_evr.items():
        version, _, release = evr.rpartition("-")
        if not version:
            raise ValueError(f"{name}: {evr!r} is not VERSION-RELEASE")
        releases.append(Release(version, release, entries[0][0], entries[0][1],
                                tuple(text for _, _, text in entries)))
    return Package(name=name, spec=str(p.get("spec", "template")), kind=str(p.get("kind", "")),
                   size=int(p.get("size", 4096)), so=str(p.get("so", f"lib{name}.so.1")),
                   arch=str(p.get("arch", "x86_64")),
                   requires=tuple(str(r) for r in p.get("requires") or ()),
                   summary=str(p.get("summary", name)), since=int(p.get("since", 1)),
                   until=int(p["until"]) if "until" in p else None, releases=tuple(releases))


# --- packages ------------------------------------------------------------------------------

def render_spec(recipe: RpmRecipe, pkg: Package, version: int) -> str:
    """The spec file of ``pkg`` as version ``version`` of the base carries it."""
    rel = pkg.release_in(version)
    text = (recipe.path / "specs" / f"{pkg.spec}.spec").read_text()
    log = []
    for r in reversed(pkg.releases_in(version)):
        log.append(f"* {r.date.strftime('%a %b %d %Y')} {recipe.maintainer} - {r.evr}")
        log += [f"- {c}" for c in r.changes]
        log.append("")
    values = {
        "NAME": pkg.name, "VERSION": rel.version, "RELEASE": rel.release,
        "SUMMARY": pkg.summary, "ARCH": pkg.arch,
        "REQUIRES": f"Requires:       {' '.join(pkg.requires)}" if pkg.requires else "",
        "FILES": "\n".join(sorted(_payload(pkg, rel))),
        "CHANGELOG": "\n".join(log).rstrip(),
    }
    return re.sub(r"@([A-Z]+)@", lambda m: values.get(m[1], m[0]), text)


def _payload(pkg: Package, rel: Release) -> dict[str, tuple[bytes, int]]:
    """What a generated package installs: path -> (content, mode)."""
    if pkg.spec != "template":
        return {}
    if pkg.kind == "bin":
        path, mode = f"/usr/bin/{pkg.name}", 0o755
        head = f'#!/usr/bin/sh\necho "{pkg.name} {rel.evr} (placeholder)"\n'.encode()
    elif pkg.kind == "lib":
        path, mode = f"/usr/lib64/{pkg.so}", 0o755
        head = f"placeholder {pkg.so} from {pkg.name}-{rel.evr}\n".encode()
    elif pkg.kind == "data":
        path, mode = f"/usr/share/{pkg.name}/{pkg.name}.dat", 0o644
        head = f"# placeholder data of {pkg.name}-{rel.evr}\n".encode()
    else:
        raise UsageError(f"{pkg.name}: kind must be bin, lib or data (got {pkg.kind!r})")
    block = hashlib.sha256(head).hexdigest().encode() + b"\n"
    filler = b"#" + block if pkg.kind == "bin" else block
    body = head + filler * (max(0, pkg.size - len(head)) // len(filler) + 1)
    return {path: (body[:max(pkg.size, len(head))], mode)}


def _busybox() -> Path:
    path = Path("/bin/busybox")
    if not path.is_file():
        raise UsageError("the rpm base packages the build host's static busybox: /bin/busybox "
                         "is missing (Debian: apt-get install busybox-static)")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def build_rpms(recipe: RpmRecipe, version: int, cache: Path, progress: Progress) -> list[Path]:
    """The RPM files of version ``version``, built with rpmbuild where the cache has none.

    Each package is cached under the hash of its rendered spec and sources, so the packages a
    version shares with another are built once and a rerun builds nothing.
    """
    busybox = _busybox()
    busybox_digest = _file_digest(busybox)
    wanted: dict[Path, tuple[Package, str]] = {}
    for pkg in recipe.packages_in(version):
        text = render_spec(recipe, pkg, version)
        payload = _payload(pkg, pkg.release_in(version))
        h = hashlib.sha256(f"{FORMAT}\0{text}".encode())
        for path, (data, mode) in sorted(payload.items()):
            h.update(f"\0{path}\0{mode:o}\0".encode() + data)
        if pkg.name == "busybox":
            h.update(busybox_digest.encode())
        wanted[cache / "rpms" / f"{pkg.name}-{h.hexdigest()[:16]}"] = (pkg, text)
    missing = {d: v for d, v in wanted.items() if not list(d.glob("*.rpm"))}
    if missing:
        progress(f"building {len(missing)} packages with rpmbuild (cached in {cache / 'rpms'})")
        _rpmbuild(missing, version, busybox, cache)
    return [next(d.glob("*.rpm")) for d in wanted]


def _rpmbuild(missing: Mapping[Path, tuple[Package, str]], version: int, busybox: Path,
              cache: Path) -> None:
    with tempfile.TemporaryDirectory(dir=cache, prefix=".rpmbuild-") as tmp:
        top = Path(tmp)
        sources = top / "SOURCES"
        sources.mkdir()
        shutil.copyfile(busybox, sources / "busybox")
        specs = []
        for pkg, text in missing.values():
            for path, (data, mode) in _payload(pkg, pkg.release_in(version)).items():
                target = sources / pkg.name / "root" / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(mode)
            spec = top / f"{pkg.name}.spec"
            spec.write_text(text)
            specs.append(spec)
        run.run(["rpmbuild", "-bb", "--quiet",
                 "--define", f"_topdir {top}", "--define", f"_sourcedir {sources}",
                 "--define", "__os_install_post %{nil}", "--define", "debug_package %{nil}",
                 "--define", "_build_id_links none", "--define", "_buildhost nestbuild",
                 # build time and file times from each package's newest changelog entry
                 "--define", "source_date_epoch_from_changelog 1",
                 "--define", "use_source_date_epoch_as_buildtime 1",
                 "--define", "clamp_mtime_to_source_date_epoch 1",
                 *specs], timeout=RPMBUILD_TIMEOUT, what="building the rpm base's packages")
        built = {p.name: p for p in (top / "RPMS").rglob("*.rpm")}
        for dest, (pkg, _) in missing.items():
            prefix = f"{pkg.name}-{pkg.release_in(version).evr}."
            names = [n for n in built if n.startswith(prefix) and n.count(".") - 1 == (
                prefix.count("."))]
            if len(names) != 1:
                raise UsageError(f"rpmbuild made no {prefix}ARCH.rpm")
            name = names[0]
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            shutil.move(built[name], partial / name)
            partial.rename(dest)


def rpm_argv(root: Path, *args: str) -> list[str]:
    """An ``rpm`` command on the database of the image root ``root``."""
    return ["rpm", "--root", str(root), "--dbpath", f"/{RPMDB}",
            "--define", "_db_backend sqlite", *args]


def install(rpms: Iterable[Path], root: Path) -> None:
    """Install ``rpms`` into ``root`` in one transaction (dependencies checked), then leave the
    database as a single file, as rpm-ostree does (no WAL, no lock file)."""
    run.run(rpm_argv(root, "-i", "--nosignature", *(str(p) for p in rpms)),
            what="installing the rpm base's packages")
    db = root / RPMDB / "rpmdb.sqlite"
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.execute("PRAGMA journal_mode=DELETE")
    finally:
        con.close()
    for leftover in ("rpmdb.sqlite-wal", "rpmdb.sqlite-shm", ".rpm.lock"):
        (root / RPMDB / leftover).unlink(missing_ok=True)


def file_owners(root: Path) -> dict[str, str]:
    """Path (relative to the root) -> the package owning it, from the rpm database."""
    out = run.run(rpm_argv(root, "-qa", "--qf", r"[%{=NAME}\t%{FILENAMES}\n]"),
                  what="reading the rpm base's database").stdout.decode()
    owners: dict[str, str] = {}
    for line in sorted(out.splitlines()):
        name, _, path = line.partition("\t")
        if path.startswith("/"):
            owners.setdefault(path.lstrip("/"), name)
    return owners


# --- layers --------------------------------------------------------------------------------

def components(root: Path, owners: Mapping[str, str]) -> dict[str, list[str]]:
    """Component -> the files and symlinks it holds: the owning package, ``initramfs`` for the
    kernel's initramfs (rpm-ostree gives it a component of its own, whoever owns it), else
    :data:`UNPACKAGED`. Directories belong to the first layer."""
    out: dict[str, list[str]] = {}
    for path in _walk(root):
        if stat.S_ISDIR(os.lstat(root / path).st_mode):
            continue
        if re.fullmatch(r"usr/lib/modules/[^/]+/initramfs\.img", path):
            comp = INITRAMFS
        else:
            comp = owners.get(path, UNPACKAGED)
        out.setdefault(comp, []).append(path)
    return out


def _walk(root: Path) -> list[str]:
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in [*dirnames, *filenames]:
            paths.append(name if rel == "." else f"{rel}/{name}")
    return sorted(paths)


def plan_layers(sizes: Mapping[str, int], max_layers: int = MAX_LAYERS,
                prior: list[list[str]] | None = None) -> list[list[str]]:
    """Group components into at most ``max_layers`` bins (layers after the first).

    Without ``prior``: one bin each when they fit (plus the empty bin for new packages);
    else the initramfs and unpackaged content share one bin, the largest 60% of the rest of
    the bins get one package each, and the others share the remaining bins in name order.
    With ``prior`` (the bins of the previous version): the same bins, removed components
    dropped, added ones in the last bin.
    """
    if max_layers < MIN_LAYERS:
        raise UsageError(f"max-layers must be at least {MIN_LAYERS} (got {max_layers})")
    if prior is not None:
        before = {c for b in prior for c in b if c}
        bins = [[c for c in b if c and c in sizes] for b in prior]
        if not bins:
            raise UsageError("the previous build has no package layers to keep")
        bins[-1] += sorted(set(sizes) - before)
        if len(bins) > max_layers:
            raise UsageError(f"the previous build has {len(bins)} package layers, more than "
                             f"max-layers {max_layers}")
        return bins
    order = sorted(sizes, key=lambda c: (-sizes[c], c))
    if len(order) < max_layers:
        return [[c] for c in order] + [[]]
    frequent = [c for c in order if c in (UNPACKAGED, INITRAMFS)]
    rest = [c for c in order if c not in frequent]
    reserved = 1 + (1 if frequent else 0)
    high = rest[: int(0.6 * (max_layers - reserved - 1))]
    others = sorted(rest[len(high):])
    n = max_layers - reserved - len(high)
    groups = [others[len(others) * i // n: len(others) * (i + 1) // n] for i in range(n)]
    return [[c] for c in high] + [g for g in groups if g] + ([frequent] if frequent else []) + [[]]


def bin_name(names: list[str]) -> str:
    """A layer's history entry, as ostree-ext names chunks."""
    if not names:
        return "Reserved for new packages"
    if len(names) <= 5:
        return " and ".join(names)
    return f"{len(names)} components"


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _layer(root: Path, paths: Iterable[str], out: IO[bytes]) -> None:
    """A reproducible tar of ``paths`` (and their parent directories) from ``root``."""
    wanted = set(paths)
    for p in list(wanted):
        wanted.update(_parents(p))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(wanted):
            full = root / path
            st = os.lstat(full)
            info = tarfile.TarInfo(path)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = SOURCE_DATE_EPOCH
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise UsageError(f"{path}: the rpm base holds only files, directories and "
                                 "symlinks")


def write_layout(root: Path, bins: list[list[str]], comps: Mapping[str, list[str]],
                 out: Path, *, labels: Mapping[str, str], env: Mapping[str, str],
                 cmd: list[str], created: str, version: int) -> list[Descriptor]:
    """Write ``root`` as an OCI layout in ``out``: the directories, then one layer per bin
    annotated with its components; ``ostree.final-diffid`` names the last. Returns the layers."""
    writer = LayoutWriter(out)
    dirs = [p for p in _walk(root) if stat.S_ISDIR(os.lstat(root / p).st_mode)]
    layers: list[Descriptor] = []
    history = [{"created": created,
                "created_by": f"nestbuild base build rpm: version {version}, directories"}]
    for names in [None, *bins]:
        with tempfile.TemporaryFile(dir=out) as f:
            if names is None:
                _layer(root, dirs, f)
            else:
                _layer(root, [p for c in names for p in comps.get(c, [])], f)
                history.append({"created": created, "created_by": bin_name(names)})
            f.seek(0)
            desc = writer.add_stream(f, OCI_LAYER_TAR)
        if names is not None:
            desc = Descriptor(desc.media_type, desc.digest, desc.size,
                              {CONTENT_ANNOTATION: COMPONENT_SEPARATOR.join(sorted(names))})
        layers.append(desc)
    all_labels = {**labels, LABEL_FINAL_DIFFID: layers[-1].digest}
    config = {
        "created": created, "architecture": "amd64", "os": "linux",
        "config": {"Env": [f"{k}={v}" for k, v in env.items()], "Cmd": cmd,
                   "Labels": all_labels},
        "rootfs": {"type": "layers", "diff_ids": [d.digest for d in layers]},
        "history": history,
    }
    cdesc = writer.add_bytes(json.dumps(config, sort_keys=True).encode(), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": cdesc.media_type, "digest": cdesc.digest, "size": cdesc.size},
        "layers": [{"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                    **({"annotations": d.annotations} if d.annotations else {})}
                   for d in layers],
        "annotations": all_labels,
    }
    writer.tag(writer.add_bytes(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST),
               LAYOUT_TAG)
    return layers


def structure_of(manifest: Mapping[str, Any]) -> list[list[str]]:
    """The bins of a chunked image's manifest: each layer's ``ostree.components`` after the
    first (the ostree commit's, which names none)."""
    bins = []
    for layer in manifest.get("layers", [])[1:]:
        value = (layer.get("annotations") or {}).get(CONTENT_ANNOTATION)
        if value is None:
            raise UsageError(f"a layer of the previous build has no {CONTENT_ANNOTATION}")
        bins.append([c for c in value.split(COMPONENT_SEPARATOR) if c])
    return bins


def read_layout_manifest(path: Path) -> dict[str, Any]:
    index = json.loads((path / "index.json").read_text())
    digest = index["manifests"][-1]["digest"]
    manifest: dict[str, Any] = json.loads(
        (path / "blobs" / "sha256" / digest.split(":", 1)[1]).read_text())
    return manifest


# --- the whole base ------------------------------------------------------------------------

def _kernel(root: Path) -> str:
    modules = root / "usr" / "lib" / "modules"
    found = sorted(d.name for d in modules.iterdir() if (d / "vmlinuz").is_file())
    if len(found) != 1:
        raise UsageError(f"the rpm base needs exactly one /usr/lib/modules/KVER/vmlinuz, "
                         f"found {found or 'none'}")
    return found[0]


def _recipe_key(recipe: RpmRecipe, version: int) -> str:
    h = hashlib.sha256(f"{FORMAT}\0{version}\0{_file_digest(_busybox())}".encode())
    h.update(Path(__file__).read_bytes())  # how the layout is made
    for path in sorted(p for p in recipe.path.rglob("*") if p.is_file()):
        h.update(b"\0" + str(path.relative_to(recipe.path)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_layout(version: int | None = None, *, recipe: RpmRecipe | None = None,
                 cache: Path | None = None, progress: Progress | None = None) -> RpmLayout:
    """Version ``version`` (default: the newest) of the rpm base as an OCI layout in ``cache``
    (default: nestbuild's cache, ``rpm-base/``), built when the cache has none for this recipe.

    A version after the first keeps the layer structure of the one before, which is built
    first if needed. Concurrent builds wait for each other; a failed one leaves nothing.
    """
    say = progress or (lambda _m: None)
    recipe = recipe or load_recipe()
    version = max(recipe.versions) if version is None else version
    if version not in recipe.versions:
        raise UsageError(f"the rpm base has versions {sorted(recipe.versions)}, not {version}")
    cache = cache or cache_dir("rpm-base")
    cache.mkdir(parents=True, exist_ok=True)
    prior = None
    if version - 1 in recipe.versions:
        before = build_layout(version - 1, recipe=recipe, cache=cache, progress=say)
        prior = [list(b) for b in before.structure]
    out = cache / f"layout-v{version}-{_recipe_key(recipe, version)}"
    with open(cache / f"v{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "index.json").is_file():
            say(f"building version {version} of the rpm base")
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            try:
                _build(recipe, version, prior, partial, cache, say)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
            partial.rename(out)
            for old in cache.glob(f"layout-v{version}-*"):
                if old != out:
                    shutil.rmtree(old, ignore_errors=True)  # an earlier recipe's
    manifest = read_layout_manifest(out)
    config = json.loads((out / "blobs" / "sha256" /
                         manifest["config"]["digest"].split(":", 1)[1]).read_text())
    return RpmLayout(out, version, str(config["config"]["Labels"][LABEL_LINUX]),
                     tuple(tuple(b) for b in structure_of(manifest)))


def _build(recipe: RpmRecipe, version: int, prior: list[list[str]] | None, out: Path,
           cache: Path, say: Progress) -> None:
    rpms = build_rpms(recipe, version, cache, say)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".root-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        root.chmod(0o755)
        say(f"installing {len(rpms)} packages with rpm --root")
        install(rpms, root)
        overlay = recipe.path / "rootfs"
        if overlay.is_dir():
            shutil.copytree(overlay, root, dirs_exist_ok=True, symlinks=True)
        kernel = _kernel(root)
        comps = components(root, file_owners(root))
        unmapped = {p.name for p in recipe.packages_in(version)} - set(comps)
        if unmapped:
            raise UsageError(f"no files of {', '.join(sorted(unmapped))} found in the rpm base")
        sizes = {c: sum(os.lstat(root / p).st_size for p in ps) for c, ps in comps.items()}
        bins = plan_layers(sizes, int(recipe.spec.get("max-layers", MAX_LAYERS)), prior)
        meta = recipe.versions[version]
        labels = {str(k): str(v) for k, v in (recipe.spec.get("labels") or {}).items()}
        labels.setdefault(LABEL_BOOTC, "1")
        labels.setdefault(LABEL_BOOTABLE, "true")
        labels[LABEL_LINUX] = kernel
        labels[LABEL_VERSION] = str(meta.get("image-version", version))
        cmd = recipe.spec.get("cmd")
        created = max(r.date for p in recipe.packages_in(version)
                      for r in p.releases_in(version))
        say(f"writing {len(bins) + 1} layers")
        write_layout(root, bins, comps, out, labels=labels,
                     env={str(k): str(v) for k, v in (recipe.spec.get("env") or {}).items()},
                     cmd=[str(cmd)] if isinstance(cmd, str) else [str(c) for c in cmd or []],
                     created=f"{created.isoformat()}T00:00:00Z", version=version)


@dataclass(frozen=True)
class BuiltRpmBase:
    """A version of the rpm base in local storage (the fields of baseimage.BuiltBase, and the
    layout it was copied from)."""

    name: str
    tag: str
    image_id: str
    kernel: str
    layout: RpmLayout


def build_rpm_base(version: int | None = None, tag: str | None = None, *,
                   recipe: Path | None = None, cache: Path | None = None,
                   progress: Progress | None = None) -> BuiltRpmBase:
    """Build version ``version`` (default: the newest) of the rpm base (the recipe at
    ``recipe``, default ``base-images/rpm``) into local storage as ``tag`` (default:
    ``localhost/nestbuild/NAME:latest``, as the other bases)."""
    loaded = load_recipe(recipe)
    layout = build_layout(version, recipe=loaded, cache=cache, progress=progress)
    tag = tag or f"localhost/nestbuild/{loaded.path.name}:latest"
    skopeo.copy(layout.ref, f"containers-storage:{tag}", what=f"storing the rpm base as {tag}")
    image_id = read_layout_manifest(layout.path)["config"]["digest"].split(":", 1)[1]
    return BuiltRpmBase(loaded.path.name, tag, image_id, layout.kernel, layout)
