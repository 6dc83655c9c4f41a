"""The Docker engine as an alternative builder, through the ``docker`` SDK.

The image must end up where buildah's images are, so validate, sign and push do not care
which engine built it: the base goes into the engine first (skopeo, no layers re-encoded),
the built image comes back through an OCI layout, where nestbuild records the base in the
``org.opencontainers.image.base.*`` annotations as buildah would, into containers-storage.
The engine's layer tars are replayed byte for byte, so the base's diff_ids stay the same.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from nestbuild._image import open_image
from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_MANIFEST
from nestbuild._tools import run, skopeo
from nestbuild.building.containerfile import Containerfile
from nestbuild.building.engine import BuildFailed, Built, EngineJob, ResolvedBase
from nestbuild.errors import ToolError, UsageError

DEFAULT_HOST = "unix:///var/run/docker.sock"


def host(explicit: str | None = None) -> str:
    return explicit or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def client(base_url: str) -> Any:
    import docker
    from docker.errors import DockerException

    try:
        api = docker.APIClient(base_url=base_url, version="auto", timeout=600)
        api.ping()
    except DockerException:
        raise ToolError(f"the Docker engine at {base_url} is unreachable; start dockerd or "
                        "set DOCKER_HOST") from None
    return api


class DockerEngine:
    """The classic builder (no BuildKit): Containerfiles that need BuildKit are refused."""

    def check(self, cf: Containerfile) -> None:
        """Refuse, before anything is resolved, what the classic builder cannot build."""
        if cf.needs_buildkit:
            raise UsageError(f"{cf.needs_buildkit}: needs BuildKit, which the Docker engine's "
                             "classic builder does not have; use --engine buildah")

    def build(self, job: EngineJob) -> Built:
        """Build with the Docker engine, then store the image in local storage."""
        opts = job.options
        if opts.secrets:
            raise UsageError("--secret needs BuildKit, which the Docker engine's classic "
                             "builder does not have; use --engine buildah")
        base_url = host(opts.docker_host)
        api = client(base_url)
        _ensure_base(api, base_url, job.base.name)
        try:
            rel = job.containerfile.resolve().relative_to(opts.context.resolve())
            dockerfile = str(rel)
        except ValueError:
            dockerfile = str(job.containerfile.resolve())
        image_id = None
        error = None
        from docker.errors import DockerException

        with open(job.logfile, "w") as out:
            try:
                for event in api.build(
                    path=str(opts.context), dockerfile=dockerfile, tag=job.tag,
                    buildargs=opts.build_args or None, labels=opts.labels or None,
                    nocache=opts.no_cache, pull=opts.pull, platform=opts.platform,
                    network_mode="none", rm=True, forcerm=True, decode=True,
                ):
                    if "stream" in event:
                        for line in str(event["stream"]).splitlines():
                            out.write(line + "\n")
                            if job.log is not None and line.strip():
                                job.log(line)
                    if "error" in event:
                        error = str(event["error"]).strip()
                        out.write(error + "\n")
                    if ("aux" in event and isinstance(event["aux"], dict)
                            and "ID" in event["aux"]):
                        image_id = str(event["aux"]["ID"])
            except DockerException as exc:
                error = str(exc)
        text = job.logfile.read_text(errors="replace")
        if error is not None or image_id is None:
            detail = run.tail(text) + f"\n(full log: {job.logfile})"
            cause = error or "the engine reported no image"
            if "returned a non-zero code" in cause:
                raise BuildFailed(f"build failed: {cause}", detail=detail)
            raise ToolError(f"the Docker engine could not build the image: {cause}",
                            detail=detail)
        _import(base_url, job.tag, job.base)
        return Built(image_id.removeprefix("sha256:"))


def _ensure_base(api: Any, base_url: str, base_name: str) -> None:
    """Give the engine the base from local storage, unless it already has that exact image."""
    from docker.errors import DockerException

    src = open_image(f"containers-storage:{base_name}")
    try:
        if api.inspect_image(base_name).get("Id") == src.manifest.config.digest:
            return
    except DockerException:
        pass
    skopeo.copy(f"containers-storage:{base_name}", f"docker-daemon:{_daemon_name(base_name)}",
                dest_daemon_host=base_url,
                what=f"copying the base {base_name} into the Docker engine")


def _daemon_name(name: str) -> str:
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last or "@" in name else name + ":latest"


def _import(base_url: str, tag: str, base: ResolvedBase) -> None:
    """Docker engine image -> OCI layout (+ base annotations) -> containers-storage."""
    tmp = Path(tempfile.mkdtemp(prefix="nestbuild-docker-"))
    try:
        layout = tmp / "oci"
        skopeo.copy(f"docker-daemon:{_daemon_name(tag)}", f"oci:{layout}:image",
                    src_daemon_host=base_url, what=f"exporting {tag} from the Docker engine")
        src = open_image(f"oci:{layout}:image")
        manifest = json.loads(src.manifest.raw)
        manifest.setdefault("annotations", {}).update(base.record)
        writer = LayoutWriter(layout)
        desc = writer.add_bytes(json.dumps(manifest).encode(), OCI_MANIFEST)
        writer.tag(desc, "image")
        skopeo.copy(f"oci:{layout}:image", f"containers-storage:{tag}",
                    what=f"storing {tag} in local storage")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
