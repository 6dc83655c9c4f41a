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

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild._image import ImageSource, open_image
from nestbuild._image.model import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME
from nestbuild._tools import buildah, isolation, run
from nestbuild.building import containerfile
from nestbuild.errors import EXIT_FAILED, ImageError, NestbuildError, ToolError, UsageError
from nestbuild.validation.policy import Policy
from nestbuild.validation.report import Report

#: Called with each line of the engine's build log as it arrives.
LogSink = Callable[[str], None]


class BuildFailed(NestbuildError):
    """The user's build failed (a RUN step exited non-zero): exit 1, like a failed test."""

    exit_code = EXIT_FAILED


@dataclass
class BuildOptions:
    context: Path = Path(".")
    containerfile: Path | None = None
    image: str | None = None
    engine: str = "buildah"
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    layers: bool = False
    no_cache: bool = False
    pull: bool = False
    platform: str | None = None
    validate: bool = True
    docker_host: str | None = None
    #: Files to add as one layer after the build (kernel profiles, node trust files).
    extra_files: dict[str, tuple[bytes, int]] = field(default_factory=dict)


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
    log: Path
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
            "log": str(self.log),
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


@dataclass(frozen=True)
class ResolvedBase:
    name: str
    digest: str
    #: Its layers: the built image must start with them.
    diff_ids: tuple[str, ...] = ()

    @property
    def record(self) -> dict[str, str]:
        """The manifest annotations that name this base (as buildah writes them)."""
        return {ANNOTATION_BASE_DIGEST: self.digest, ANNOTATION_BASE_NAME: self.name}


def resolve_base(cf: containerfile.Containerfile, *, pull: bool,
                 log: LogSink | None = None) -> ResolvedBase:
    """The final stage's OS base, bootable, in local storage, with its digest."""
    name, stage = cf.final_base()
    if name == "scratch":
        raise ImageError(f"{cf.path}:{stage.line}: FROM scratch is not a bootable OS base")
    if pull:
        run.run(["buildah", "pull", "--quiet", name], what=f"pulling {name}")
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


def build(opts: BuildOptions, *, policy: Policy | None = None, log: LogSink | None = None,
          note: Callable[[str], None] | None = None) -> BuildResult:
    """Build, check the recorded base, validate. Raises BuildFailed / NestbuildError."""
    say = note or (lambda _m: None)
    start = time.monotonic()
    path = find_containerfile(opts.context, opts.containerfile)
    cf = containerfile.parse(path, opts.build_args)
    base = resolve_base(cf, pull=opts.pull, log=log)
    tag = opts.image or f"localhost/{opts.context.resolve().name or 'image'}:latest"

    logdir = Path(tempfile.mkdtemp(prefix="nestbuild-build-"))
    logfile = logdir / "build.log"
    if opts.engine == "docker":
        from nestbuild.building import docker_engine

        if cf.needs_buildkit:
            raise UsageError(f"{cf.needs_buildkit}: needs BuildKit, which the Docker engine's "
                             "classic builder does not have; use --engine buildah")
        image_id = docker_engine.build(opts, path, tag, base.name, base.digest, logfile, log)
        iso: str | None = None
    else:
        iso_mode = isolation.detect()
        if iso_mode.reason:
            say(f"RUN steps use {iso_mode.mode} isolation: {iso_mode.reason}")
        image_id = _buildah_bud(opts, path, tag, iso_mode.mode, logfile, log, base)
        iso = iso_mode.mode

    image = open_image(f"containers-storage:{tag}")
    layered = opts.layers and opts.engine != "docker"
    _check_built_on(image, tag, base, layered=layered)
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
    result = BuildResult(tag, image_id, image.digest, base.name, base.digest, opts.engine, iso,
                         time.monotonic() - start, logfile)
    if opts.validate:
        from nestbuild.validation.validate import validate

        result.report = validate(f"containers-storage:{tag}",
                                 base_ref=f"containers-storage:{base.name}", policy=policy)
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


def _buildah_args(opts: BuildOptions, path: Path, tag: str, iso: str, iidfile: Path,
                  base: ResolvedBase) -> list[str]:
    args = ["buildah", "bud", "--isolation", iso, "-f", str(path), "-t", tag,
            "--iidfile", str(iidfile)]
    for k, v in opts.build_args.items():
        args += ["--build-arg", f"{k}={v}"]
    for k, v in opts.labels.items():
        args += ["--label", f"{k}={v}"]
    for secret in opts.secrets:
        args += ["--secret", secret]
    if opts.layers:
        # buildah would record the last cached step's image as the base: record the real one
        args.append("--layers")
        for k, v in base.record.items():
            args += ["--annotation", f"{k}={v}"]
    if opts.no_cache:
        args.append("--no-cache")
    args.append("--pull-never" if not opts.pull else "--pull")
    if opts.platform:
        args += ["--platform", opts.platform]
    args.append(str(opts.context))
    return args


def _buildah_bud(opts: BuildOptions, path: Path, tag: str, iso: str, logfile: Path,
                 log: LogSink | None, base: ResolvedBase) -> str:
    iidfile = logfile.with_name("iid")
    argv = _buildah_args(opts, path, tag, iso, iidfile, base)
    proc = run.popen(argv)
    assert proc.stdout is not None
    with open(logfile, "wb") as out:
        for raw in proc.stdout:
            out.write(raw)
            if log is not None:
                log(raw.decode(errors="replace").rstrip("\n"))
    code = proc.wait()
    text = logfile.read_text(errors="replace")
    if code != 0:
        raise _build_error(text, code, logfile)
    with contextlib.suppress(OSError):
        return iidfile.read_text().strip().removeprefix("sha256:")
    return text.split()[-1]


def _build_error(text: str, code: int, logfile: Path) -> NestbuildError:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if ln.startswith(("Error:", "error"))),
                 lines[-1] if lines else f"buildah exited with status {code}")
    cause = cause.removeprefix("Error: ").strip()
    detail = run.tail(text) + f"\n(full log: {logfile})"
    if "error building at STEP \"RUN" in text or "building at STEP \"RUN" in text:
        return BuildFailed(f"build failed: {cause}", detail=detail)
    return ToolError(f"buildah could not build the image: {cause}", detail=detail)


def write_digestfile(path: Path, digest: str) -> None:
    path.write_text(digest)


def result_json(result: BuildResult) -> str:
    return json.dumps(result.to_json(), indent=2) + "\n"
