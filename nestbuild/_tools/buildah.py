"""The one small interface to buildah (driven as a subprocess through nestbuild._tools.run).

RUN steps use chroot isolation: the hosts nestbuild runs on (CI machines, containers) often
cannot run crun ("cgroups in hybrid mode not supported"), and chroot needs no runtime.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nestbuild._tools import run
from nestbuild.errors import ToolError

DEFAULT_ISOLATION = "chroot"


def _buildah(*args: str, what: str) -> str:
    return run.run(["buildah", *args], what=what).stdout.decode().strip()


def from_image(ref: str) -> str:
    """A working container from ``ref`` (``scratch`` for an empty one); returns its id."""
    pull = [] if ref == "scratch" else ["--pull-never"]
    return _buildah("from", "--quiet", *pull, ref,
                    what=f"creating a container from {ref}").splitlines()[-1]


def from_scratch() -> str:
    """An empty working container (a base is populated from outside, no RUN needed)."""
    return from_image("scratch")


def mount(ctr: str) -> Path:
    return Path(_buildah("mount", ctr, what="mounting the container"))


def umount(ctr: str) -> None:
    _buildah("umount", ctr, what="unmounting the container")


def config(ctr: str, *, labels: Mapping[str, str] | None = None,
           env: Mapping[str, str] | None = None, cmd: str | None = None,
           created_by: str | None = None, annotations: Mapping[str, str] | None = None) -> None:
    args: list[str] = []
    for k, v in (annotations or {}).items():
        args += ["--annotation", f"{k}={v}"]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    for k, v in (env or {}).items():
        args += ["--env", f"{k}={v}"]
    if cmd is not None:
        args += ["--cmd", cmd]
    if created_by is not None:
        args += ["--created-by", created_by]
    if args:
        _buildah("config", *args, ctr, what="configuring the container")


def commit(ctr: str, tag: str, *, timestamp: int | None = None) -> str:
    """Commit the container as ``tag``; returns the image id."""
    args = ["commit", "--quiet", "--format", "oci"]
    if timestamp is not None:
        args += ["--timestamp", str(timestamp)]
    return _buildah(*args, ctr, tag, what=f"committing {tag}").splitlines()[-1]


def remove(ctr: str) -> None:
    run.run(["buildah", "rm", ctr], check=False)


@contextlib.contextmanager
def working_container(ref: str) -> Iterator[str]:
    """A working container that is always removed, even when the body fails."""
    ctr = from_image(ref)
    try:
        yield ctr
    finally:
        remove(ctr)


def bud(containerfile: Path, context: Path, tag: str, *,
        build_args: Mapping[str, str] | None = None, isolation: str = DEFAULT_ISOLATION,
        layers: bool = False, extra: Sequence[str] | None = None,
        timeout: float | None = None) -> str:
    """A plain ``buildah bud``; returns the image id.

    stdout and stderr go through one pipe so a failure's log tail shows the RUN step's own
    output next to buildah's error, in order; the id comes from ``--iidfile``, not the log.
    With ``--layers`` a failed step leaves its working container behind unless ``--force-rm``
    (which buildah 1.28 accepts only together with ``--layers``).
    """
    if not containerfile.is_file():
        raise ToolError(f"{containerfile}: no such Containerfile")
    what = f"building {tag}"
    import tempfile  # here: every command that reads local storage imports this module

    with tempfile.TemporaryDirectory(prefix="nestbuild-bud-") as tmp:
        iidfile = Path(tmp) / "iid"
        args = ["buildah", "bud", "--isolation", isolation,
                "--iidfile", str(iidfile), "-f", str(containerfile), "-t", tag]
        for k, v in (build_args or {}).items():
            args += ["--build-arg", f"{k}={v}"]
        if layers:
            args += ["--layers", "--force-rm"]
        args += [*(extra or ()), str(context)]
        proc = run.popen(args)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except run.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise ToolError(f"{what}: buildah timed out after {timeout:.0f}s") from None
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if proc.returncode != 0:
            raise run.command_failed(args, proc.returncode, log, what)
        return iidfile.read_text().strip().removeprefix("sha256:")


def bud_logged(containerfile: Path, context: Path, tag: str, *, isolation: str,
               iidfile: Path, logfile: Path, log: Callable[[str], None] | None = None,
               build_args: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None, secrets: Sequence[str] = (),
               layers: bool = False, annotations: Mapping[str, str] | None = None,
               no_cache: bool = False, pull: bool | str = False,
               platform: str | None = None, registry_args: Sequence[str] = ()) -> int:
    """A ``buildah bud`` whose log (stdout and stderr, in order) is copied to ``logfile`` and
    handed to ``log`` line by line as it arrives; returns buildah's exit status (the caller
    reads the failure's cause from the log and the image id from ``iidfile``).

    Without ``pull`` the base must already be in local storage (``--pull-never``): the caller
    has pinned it by digest. A string is buildah's own policy (``--pull=false`` pulls only
    what is missing); ``registry_args`` are :func:`registry_args`' flags for those pulls.
    """
    args = ["buildah", "bud", "--isolation", isolation, "-f", str(containerfile), "-t", tag,
            "--iidfile", str(iidfile)]
    for k, v in (build_args or {}).items():
        args += ["--build-arg", f"{k}={v}"]
    for k, v in (labels or {}).items():
        args += ["--label", f"{k}={v}"]
    for secret in secrets:
        args += ["--secret", secret]
    if layers:
        args.append("--layers")
        for k, v in (annotations or {}).items():
            args += ["--annotation", f"{k}={v}"]
    if no_cache:
        args.append("--no-cache")
    if isinstance(pull, str):
        args.append(f"--pull={pull}")
    else:
        args.append("--pull" if pull else "--pull-never")
    args += registry_args
    if platform:
        args += ["--platform", platform]
    args.append(str(context))
    proc = run.popen(args)
    assert proc.stdout is not None
    try:
        with open(logfile, "wb") as out:
            for raw in proc.stdout:
                out.write(raw)
                if log is not None:
                    log(raw.decode(errors="replace").rstrip("\n"))
    except BaseException:
        _interrupt(proc)
        raise
    return proc.wait()


#: How long buildah may take to remove its working container once interrupted.
INTERRUPT_GRACE = 60.0


def _interrupt(proc: Any) -> None:
    """Stop a ``buildah bud`` as Ctrl-C does: on SIGINT buildah removes its working container
    (a SIGKILL would leave it in local storage). A Ctrl-C at the terminal has reached buildah
    already, and a second SIGINT could cut its clean-up short: it gets a moment first. Its
    output is drained meanwhile, so that it cannot block on a full pipe; killed only if it
    does not exit."""
    for sig in (None, signal.SIGINT):
        if sig is not None and proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.communicate(timeout=2.0 if sig is None else INTERRUPT_GRACE)
            return
        except Exception:  # subprocess.TimeoutExpired: still running
            continue
    proc.kill()
    proc.wait()


def pull(ref: str, registry_args: Sequence[str] = ()) -> None:
    """Pull ``ref`` into local storage (as podman would resolve and store it), once (no
    retries: the caller says what failed); ``registry_args`` from :func:`registry_args`."""
    run.run(["buildah", "pull", "--quiet", "--retry", "0", *registry_args, ref],
            what=f"pulling {ref}")


def registry_args(*, authfile: Path | None = None, cert_dir: Path | None = None,
                  tls_verify: bool = True) -> list[str]:
    """buildah's flags for reaching a registry, as skopeo's and nestbuild's are spelled."""
    args = []
    if authfile is not None:
        args += ["--authfile", str(authfile)]
    if cert_dir is not None:
        args += ["--cert-dir", str(cert_dir)]
    if not tls_verify:
        args.append("--tls-verify=false")
    return args


def tag(image: str, names: Sequence[str]) -> None:
    """Give ``image`` further names in local storage."""
    if names:
        run.run(["buildah", "tag", image, *names], what=f"tagging {image}")


def add_files(image: str, files: Mapping[str, tuple[bytes, int]], *, created_by: str,
              annotations: Mapping[str, str] | None = None) -> str:
    """Add ``files`` (image path -> content, mode; root-owned) as one new layer on ``image``,
    committed under the same name; returns the new image id. ``annotations`` keep the
    original base record (buildah would otherwise name ``image`` itself as the base); with no
    files the layer is empty and only the record changes.

    Timestamps are fixed (``SOURCE_DATE_EPOCH``, else 0) so the same files give the same
    layer: a rebuild with unchanged trust or kernel files adds a layer nodes already have."""
    stamp = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    with working_container(image) as ctr:
        root = mount(ctr)
        touched: set[Path] = set()
        for path, (data, mode) in sorted(files.items()):
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            target.chmod(mode)
            touched.add(target)
            touched.update(p for p in target.parents if p != root and root in p.parents)
        for p in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            os.utime(p, (stamp, stamp), follow_symlinks=False)
        config(ctr, created_by=created_by, annotations=annotations)
        return commit(ctr, image)


def image_exists(ref: str) -> bool:
    return run.run(["buildah", "inspect", "--type", "image", ref], check=False).returncode == 0


def remove_image(ref: str) -> None:
    run.run(["buildah", "rmi", "--force", ref], check=False)
