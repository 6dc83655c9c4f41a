"""The one small interface to skopeo: copies between local stores (containers-storage, the
Docker engine, OCI layouts), and local storage's manifests and configs as podman resolves
names. Registries are read with nestbuild's own client, never through skopeo."""

from __future__ import annotations

from nestbuild._tools import run


def copy(source: str, dest: str, *, what: str, preserve_digests: bool = False,
         src_daemon_host: str | None = None, dest_daemon_host: str | None = None) -> None:
    """``skopeo copy`` between two local transports (``oci:``, ``containers-storage:``,
    ``docker-daemon:``); ``what`` names the step in errors."""
    args = ["skopeo", "copy", "--quiet"]
    if preserve_digests:
        args.append("--preserve-digests")
    if src_daemon_host is not None:
        args += ["--src-daemon-host", src_daemon_host]
    if dest_daemon_host is not None:
        args += ["--dest-daemon-host", dest_daemon_host]
    run.run([*args, source, dest], what=what)


def inspect_local(ref: str, *, config: bool = False) -> bytes:
    """The exact manifest (or, with ``config``, config) bytes of a local image such as
    ``containers-storage:NAME``, its name resolved as podman resolves it."""
    flags = ["--config", "--raw"] if config else ["--raw"]
    return run.run(["skopeo", "inspect", *flags, ref]).stdout
