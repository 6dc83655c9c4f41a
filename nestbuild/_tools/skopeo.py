"""The one small interface to skopeo: copies between local stores (containers-storage, the
Docker engine, OCI layouts), local storage's manifests and configs as podman resolves names, and
what the node side needs from a registry before it moves: the manifest digest to pin, and the
config (architecture, labels)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild._image.model import digest_of
from nestbuild._tools import run
from nestbuild.errors import ImageError, ToolError


@dataclass(frozen=True)
class RemoteImage:
    name: str
    digest: str
    architecture: str
    labels: dict[str, str]
    #: Compressed size of all layers, for the room check.
    size: int


def _flags(authfile: Path | None, tls_verify: bool, cert_dir: Path | None) -> list[str]:
    flags = []
    if authfile is not None:
        flags += ["--authfile", str(authfile)]
    if cert_dir is not None:
        flags += ["--cert-dir", str(cert_dir)]
    if not tls_verify:
        flags.append("--tls-verify=false")
    return flags


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


def inspect(image: str, *, authfile: Path | None = None, tls_verify: bool = True,
            cert_dir: Path | None = None) -> RemoteImage:
    """Resolve ``REG/REPO[:TAG|@DIGEST]`` to this host's platform manifest and its config."""
    ref = f"docker://{image}"
    flags = _flags(authfile, tls_verify, cert_dir)
    try:
        raw = run.run(["skopeo", "inspect", "--raw", *flags, ref],
                      what=f"reading {image}").stdout
        config = json.loads(run.run(["skopeo", "inspect", "--config", "--raw", *flags, ref],
                                    what=f"reading {image}'s config").stdout)
    except ToolError as exc:
        raise ImageError(f"{image}: {exc.message}") from None
    manifest: dict[str, Any] = json.loads(raw)
    digest = digest_of(raw)
    if "manifests" in manifest:  # an index: skopeo picked this host's platform for the config
        from nestbuild._image.model import pick_platform

        desc = pick_platform(raw, image)
        digest = desc.digest
        sub = run.run(["skopeo", "inspect", "--raw", *flags,
                       f"docker://{image.split('@')[0].rsplit(':', 1)[0]}@{digest}"],
                      what=f"reading {image}").stdout
        manifest = json.loads(sub)
    size = sum(int(layer.get("size", 0)) for layer in manifest.get("layers") or [])
    labels = (config.get("config") or {}).get("Labels") or {}
    name = image.split("@", 1)[0]
    return RemoteImage(name, digest, str(config.get("architecture", "")), dict(labels), size)
