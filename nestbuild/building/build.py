"""``nestbuild build``: a Containerfile to a bootable derived image, then validated.

Before building, the OS base is resolved from FROM (ARGs substituted, stages followed), refused
if it is not bootable, and pinned by digest; after building, the image must start with that
base's layers and record that base (name and digest), and it is validated with the project's
policy. The result keeps the base's layers (never squashed), so nodes can tell where the OS
ends and the changes begin.

With ``--layers`` buildah records the last cached step's intermediate image as the base, not
the FROM image; the build passes the real record itself (``--annotation``), and when the layer
cache hands back an image recorded otherwise, records it again in an empty layer: validate
(and push) take a base only from a record whose name resolves to its digest.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild._image import ImageSource, open_image
from nestbuild._image.model import ANNOTATION_BASE_DIGEST
from nestbuild._tools import buildah
from nestbuild.building import containerfile
from nestbuild.building.engine import (
    BuildOptions,
    Engine,
    EngineJob,
    LogSink,
    ResolvedBase,
)
from nestbuild.errors import ImageError, NestbuildError, UsageError
from nestbuild.validation.policy import Policy
from nestbuild.validation.report import Report


@dataclass
class BuildResult:
    image: str
    image_id: str
    digest: str
    base_name: str
    base_digest: str
    engine: str
    isolation: str | None
    seconds: float
    #: The build log, kept only when the build failed (None: built, the log was removed).
    log: Path | None
    report: Report | None = None

    @property
    def passed(self) -> bool:
        return self.report is None or self.report.passed

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "image_id": self.image_id,
            "digest": self.digest,
            "base": {"name": self.base_name, "digest": self.base_digest},
            "engine": self.engine,
            "isolation": self.isolation,
            "seconds": round(self.seconds, 3),
            "log": None if self.log is None else str(self.log),
            "validation": None if self.report is None else self.report.to_json(),
            "passed": self.passed,
        }


def find_containerfile(context: Path, explicit: Path | None) -> Path:
    if not context.is_dir():
        raise UsageError(f"{context}: the build context is not a directory")
    if explicit is not None:
        if not explicit.is_file():
            raise UsageError(f"{explicit}: no such Containerfile")
        return explicit
    for name in ("Containerfile", "Dockerfile"):
        if (context / name).is_file():
            return context / name
    raise UsageError(f"{context}: no Containerfile or Dockerfile (use -f FILE)")


def resolve_base(cf: containerfile.Containerfile, *, pull: bool,
                 log: LogSink | None = None) -> ResolvedBase:
    """The final stage's OS base, bootable, in local storage, with its digest."""
    name, stage = cf.final_base()
    if name == "scratch":
        raise ImageError(f"{cf.path}:{stage.line}: FROM scratch is not a bootable OS base")
    if pull:
        buildah.pull(name)
    src = open_image(f"containers-storage:{name}")
    try:
        digest = src.digest
    except ImageError:
        raise ImageError(
            f"{cf.path}:{stage.line}: base {name} is not in local storage (pull it with "
            "--pull, or build one with 'nestbuild base build mini')") from None
    if not src.config.bootable:
        raise ImageError(f"{cf.path}:{stage.line}: base {name} is not a bootable OS image "
                         "(no containers.bootc=1 or ostree.bootable=true label)")
    return ResolvedBase(name, digest, tuple(src.config.diff_ids))


def _engine(name: str, cf: containerfile.Containerfile) -> Engine:
    """The engine named ``name``, once it has accepted the Containerfile (imported here: a
    build loads only the engine it uses)."""
    if name == "docker":
        from nestbuild.building.docker_engine import DockerEngine

        docker = DockerEngine()
        docker.check(cf)
        return docker
    from nestbuild.building.buildah_engine import BuildahEngine

    return BuildahEngine()


def build(opts: BuildOptions, *, policy: Policy | None = None, log: LogSink | None = None,
          note: Callable[[str], None] | None = None) -> BuildResult:
    """Build, check the recorded base, validate. Raises BuildFailed / NestbuildError."""
    say = note or (lambda _m: None)
    start = time.monotonic()
    path = find_containerfile(opts.context, opts.containerfile)
    cf = containerfile.parse(path, opts.build_args)
    base = resolve_base(cf, pull=opts.pull, log=log)
    engine = _engine(opts.engine, cf)
    tag = opts.image or f"localhost/{opts.context.resolve().name or 'image'}:latest"

    logdir = Path(tempfile.mkdtemp(prefix="nestbuild-build-"))
    logfile = logdir / "build.log"
    try:
        built = engine.build(EngineJob(opts, path, tag, base, logfile, log, say))
    except NestbuildError:
        if not logfile.is_file() or not logfile.stat().st_size:
            shutil.rmtree(logdir, ignore_errors=True)
        raise  # a log stays: the engine's error says where it is
    except BaseException:
        shutil.rmtree(logdir, ignore_errors=True)  # interrupted: nothing left behind
        raise
    shutil.rmtree(logdir, ignore_errors=True)  # built: the log was streamed already
    image_id = built.image_id

    image = open_image(f"containers-storage:{tag}")
    _check_built_on(image, tag, base, layered=built.record_may_name_intermediate)
    rerecord = image.manifest.annotations.get(ANNOTATION_BASE_DIGEST) != base.digest
    if opts.extra_files:
        say(f"adding {len(opts.extra_files)} file(s): "
            + ", ".join(sorted(opts.extra_files)[:4]) + (" ..." if len(opts.extra_files) > 4
                                                          else ""))
        image_id = buildah.add_files(
            tag, opts.extra_files, created_by="nestbuild: kernel profiles and node trust",
            annotations=base.record)
        image = open_image(f"containers-storage:{tag}")
    elif rerecord:
        say(f"the layer cache gave back an image that records another base; recording "
            f"{base.name} (an empty layer)")
        image_id = buildah.add_files(tag, {}, created_by=f"nestbuild: built on {base.name}",
                                     annotations=base.record)
        image = open_image(f"containers-storage:{tag}")
    result = BuildResult(tag, image_id, image.digest, base.name, base.digest, opts.engine,
                         built.isolation, time.monotonic() - start, None)
    if opts.validate:
        from nestbuild.validation.validate import validate

        result.report = validate(f"containers-storage:{tag}",
                                 base_ref=f"containers-storage:{base.name}",
                                 policy=policy).with_base_found_by("build")
    result.seconds = time.monotonic() - start
    return result


def _check_built_on(image: ImageSource, tag: str, base: ResolvedBase, *, layered: bool) -> None:
    """The engine must have built on the pinned base: the image starts with its layers.

    Without ``--layers`` buildah's own record must name it as well; with ``--layers`` the
    record names the last cached step's image (an intermediate), so the layers are the proof.
    """
    moved = (f"{base.name} was {base.digest} when the build started (the base tag moved "
             "during the build); build again")
    diff_ids = image.config.diff_ids
    if list(base.diff_ids) != diff_ids[: len(base.diff_ids)]:
        raise ImageError(f"{tag}: does not start with the base's layers, but {moved}")
    recorded = image.manifest.annotations.get(ANNOTATION_BASE_DIGEST)
    if not layered and recorded is not None and recorded != base.digest:
        raise ImageError(f"{tag}: built on {recorded}, but {moved}")


def project_policy() -> Policy:
    """The policy a project's build validates with: nestbuild.yaml's ``policy:``, else strict
    (``build(policy=None)`` alone is strict, whatever the project says)."""
    from nestbuild.validation.policy import resolve

    return resolve(None, None)


def node_files(*, kargs: Sequence[str] = (), modules: Sequence[str] = (),
               trust_repo: str | None = None, trust_keys: Sequence[Path] = (),
               project_nodes: Mapping[str, object] | None = None,
               project_source: str = "") -> dict[str, tuple[bytes, int]]:
    """The files a build bakes into the image for its nodes (``BuildOptions.extra_files``):
    kernel argument and module profiles, and node trust files for ``trust_repo``.

    Each comes from the arguments, else from the project's ``kernel:`` and ``trust:`` settings
    (``project_nodes``, read from ``project_source``); every profile and key is checked here.
    """
    from nestbuild.building import kernel
    from nestbuild.node import trust

    nodes = project_nodes or {}
    files: dict[str, tuple[bytes, int]] = {}
    ks = kernel.KernelSettings(list(kargs), list(modules))
    if ks.empty and "kernel" in nodes:
        ks = kernel.from_node(nodes["kernel"], project_source)
    files.update(kernel.render(ks))
    if trust_repo:
        files.update(trust.TrustSettings(trust_repo, list(trust_keys)).files())
    elif "trust" in nodes:
        files.update(trust.from_node(nodes["trust"], project_source).files())
    return files

