"""``nestbuild build``: a Containerfile to a bootable derived image, then validated.

Before building, the OS base is resolved from FROM (ARGs substituted, stages followed), refused
if it is not bootable, and pinned by digest; after building, the image must start with that
base's layers and record that base (name and digest), and it is validated with the project's
policy. The result keeps the base's layers (never squashed), so nodes can tell where the OS
ends and the changes begin. A base missing from local storage is pulled first, as buildah and
podman do (``--pull=missing``; ``always``, ``never``), through the registry access given
(authfile, cert-dir, TLS verification, credentials).

With ``--layers`` buildah records the last cached step's intermediate image as the base, not
the FROM image; the build passes the real record itself (``--annotation``), and when the layer
cache hands back an image recorded otherwise, records it again in an empty layer: validate
(and push) take a base only from a record whose name resolves to its digest.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild._image import ImageSource, open_image
from nestbuild._image.model import ANNOTATION_BASE_DIGEST
from nestbuild._tools import buildah
from nestbuild._util.atomic import write_atomic
from nestbuild.building import containerfile
from nestbuild.building.engine import (
    BuildOptions,
    Engine,
    EngineJob,
    LogSink,
    ResolvedBase,
)
from nestbuild.errors import ImageError, NestbuildError, UsageError

if TYPE_CHECKING:
    # validation's catalogue loads every lint: a build that does not validate never needs it
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


PULL_POLICIES = ("missing", "always", "never")


def resolve_base(cf: containerfile.Containerfile, *, pull: bool | str,
                 log: LogSink | None = None, registry_args: Sequence[str] = ()
                 ) -> ResolvedBase:
    """The final stage's OS base, bootable, in local storage, with its digest.

    ``pull`` is the policy: ``"missing"`` pulls a base that is not in local storage (as
    buildah and podman do), ``"always"`` (or True) pulls it anyway, ``"never"`` (or False)
    takes only what is there; ``registry_args`` reach its registry."""
    policy = pull if isinstance(pull, str) else ("always" if pull else "never")
    if policy not in PULL_POLICIES:
        raise UsageError(f"--pull={policy}: expected one of {', '.join(PULL_POLICIES)}")
    name, stage = cf.final_base()
    where = f"{cf.path}:{stage.line}"
    if name == "scratch":
        raise ImageError(f"{where}: FROM scratch is not a bootable OS base")
    src = open_image(f"containers-storage:{name}")
    present = _in_storage(src)
    local_only = name.startswith("localhost/")  # podman's and buildah's local names
    if policy == "always" or (policy == "missing" and not present and not local_only):
        try:
            buildah.pull(name, registry_args)
        except NestbuildError as exc:
            how = "" if present else "is not in local storage and "
            raise ImageError(f"{where}: base {name} {how}could not be pulled: {exc.message}"
                             " (registry access: --authfile, --cert-dir, --tls-verify, "
                             "--creds)", detail=exc.detail) from None
        src = open_image(f"containers-storage:{name}")
    try:
        digest = src.digest
    except ImageError:
        hint = "--pull=never; pull it" if policy == "never" else "pull it"
        raise ImageError(f"{where}: base {name} is not in local storage ({hint}, or build "
                         "one with 'nestbuild base build mini')") from None
    if not src.config.bootable:
        raise ImageError(f"{cf.path}:{stage.line}: base {name} is not a bootable OS image "
                         "(no containers.bootc=1 or ostree.bootable=true label)")
    return ResolvedBase(name, digest, tuple(src.config.diff_ids))


def _in_storage(src: ImageSource) -> bool:
    try:
        src.digest  # noqa: B018 - reading it is the check
    except ImageError:
        return False
    return True


@contextlib.contextmanager
def registry_args(opts: BuildOptions, base_name: str) -> Iterator[list[str]]:
    """buildah's flags for ``opts``' registry access. ``--creds`` go into a private auth file
    (0600, in a 0700 directory removed afterwards) for the base's registry, on top of the
    --authfile's entries: a password is never an argument of any process."""
    from nestbuild._tools.buildah import registry_args as flags

    access = opts.access
    authfile = access.authfile if access is not None else None
    cert_dir = access.cert_dir if access is not None else None
    tls_verify = access.tls_verify if access is not None else True
    if opts.credentials is None:
        yield flags(authfile=authfile, cert_dir=cert_dir, tls_verify=tls_verify)
        return
    user, sep, password = opts.credentials.partition(":")
    if not user or not sep:
        raise UsageError("--creds: expected USER:PASSWORD")
    host = _registry_of(base_name)
    auths: dict[str, Any] = {}
    if authfile is not None:
        try:
            doc = json.loads(authfile.read_bytes())
        except OSError as exc:
            raise UsageError(f"--authfile {authfile}: cannot read ({exc.strerror})") from None
        except ValueError:
            raise UsageError(f"--authfile {authfile}: not valid JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("auths"), dict):
            auths = dict(doc["auths"])
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    auths[host] = {"auth": token}
    with tempfile.TemporaryDirectory(prefix="nestbuild-creds-") as tmp:
        private = Path(tmp) / "auth.json"
        write_atomic(private, json.dumps({"auths": auths}).encode(), 0o600)
        yield flags(authfile=private, cert_dir=cert_dir, tls_verify=tls_verify)


def _registry_of(name: str) -> str:
    """The registry a base name is pulled from (a name without one: docker.io, as buildah
    resolves it without a short-name alias)."""
    first, sep, _ = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


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
    start = time.monotonic()
    path = find_containerfile(opts.context, opts.containerfile)
    cf = containerfile.parse(path, opts.build_args)
    with registry_args(opts, cf.final_base()[0]) as reach:
        return _build(opts, path, cf, reach, start, policy=policy, log=log, note=note)


def _build(opts: BuildOptions, path: Path, cf: containerfile.Containerfile,
           reach: list[str], start: float, *, policy: Policy | None, log: LogSink | None,
           note: Callable[[str], None] | None) -> BuildResult:
    say = note or (lambda _m: None)
    pulling = opts.pull_policy or ("always" if opts.pull else "missing")
    base = resolve_base(cf, pull=pulling, log=log, registry_args=reach)
    engine = _engine(opts.engine, cf)
    tag = opts.image or f"localhost/{opts.context.resolve().name or 'image'}:latest"

    logdir = Path(tempfile.mkdtemp(prefix="nestbuild-build-"))
    logfile = logdir / "build.log"
    try:
        built = engine.build(EngineJob(opts, path, tag, base, logfile, log, say,
                                       tuple(reach)))
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
    buildah.tag(tag, opts.tags)
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

