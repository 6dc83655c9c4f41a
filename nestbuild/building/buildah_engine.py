"""The buildah engine, nestbuild's default: ``buildah bud`` with its log streamed as it runs.

With ``--layers`` buildah records the last cached step's intermediate image as the base, not
the FROM image, so the engine passes the real record itself (``--annotation``); the build
checks the layers either way. The base is in local storage by then (the build resolved and
pinned it); other stages' images are pulled only if missing (``--pull=never``: not at all),
through the same registry access.
"""

from __future__ import annotations

from nestbuild._tools import buildah, isolation, run
from nestbuild.building.engine import BuildFailed, Built, EngineJob
from nestbuild.errors import NestbuildError, ToolError


class BuildahEngine:
    def build(self, job: EngineJob) -> Built:
        opts = job.options
        mode = isolation.detect()
        if mode.reason:
            job.note(f"RUN steps use {mode.mode} isolation: {mode.reason}")
        iidfile = job.logfile.with_name("iid")
        never = (opts.pull_policy or ("always" if opts.pull else "missing")) == "never"
        code = buildah.bud_logged(
            job.containerfile, opts.context, job.tag, isolation=mode.mode, iidfile=iidfile,
            logfile=job.logfile, log=job.log, build_args=opts.build_args, labels=opts.labels,
            secrets=opts.secrets, layers=opts.layers, annotations=job.base.record,
            no_cache=opts.no_cache, pull="never" if never else "false",
            platform=opts.platform, registry_args=job.registry_args)
        text = job.logfile.read_text(errors="replace")
        if code != 0:
            raise _build_error(text, code, job)
        try:
            image_id = iidfile.read_text().strip().removeprefix("sha256:")
        except OSError:
            image_id = text.split()[-1]
        return Built(image_id, mode.mode, record_may_name_intermediate=opts.layers)


def _build_error(text: str, code: int, job: EngineJob) -> NestbuildError:
    """A failed RUN step is the user's (BuildFailed); anything else is buildah's."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    cause = next((ln for ln in reversed(lines) if ln.startswith(("Error:", "error"))),
                 lines[-1] if lines else f"buildah exited with status {code}")
    cause = cause.removeprefix("Error: ").strip()
    detail = run.tail(text) + f"\n(full log: {job.logfile})"
    if "error building at STEP \"RUN" in text or "building at STEP \"RUN" in text:
        return BuildFailed(f"build failed: {cause}", detail=detail)
    return ToolError(f"buildah could not build the image: {cause}", detail=detail)
