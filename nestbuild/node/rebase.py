"""Move a node onto an image: by digest, signature-enforced, checked first.

``plan()`` resolves the image to a digest and runs the checks a node cannot afford to fail
half-way (bootable, architecture, room); ``execute()`` runs the node tool and reads its status
before and after. bootc and rpm-ostree verify the signature themselves with the node's
``policy.json`` (``--enforce-container-sigpolicy`` / ``ostree-image-signed:``); nestbuild
never builds a command line without that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nestbuild._image.model import host_platform
from nestbuild._tools import bootc, rpmostree
from nestbuild._tools.skopeo import RemoteImage
from nestbuild.errors import EXIT_FAILED, NestbuildError, UsageError
from nestbuild.node.host import Host
from nestbuild.node.status import NodeStatus

VIAS = ("bootc", "rpm-ostree")


class RebaseRefused(NestbuildError):
    """A pre-check failed; nothing was changed on the node."""

    exit_code = EXIT_FAILED


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


@dataclass
class Plan:
    via: str
    host: Host
    image: RemoteImage
    command: list[str]
    checks: list[Check] = field(default_factory=list)

    @property
    def pinned(self) -> str:
        return f"{repository(self.image.name)}@{self.image.digest}"

    def to_json(self) -> dict[str, Any]:
        return {"via": self.via, "host": str(self.host), "image": self.image.name,
                "digest": self.image.digest, "command": self.command,
                "checks": [c.to_json() for c in self.checks]}


def repository(name: str) -> str:
    """``reg:5000/nodes/base:v1`` -> ``reg:5000/nodes/base`` (a registry port is not a tag)."""
    last = name.rsplit("/", 1)[-1]
    return name.rsplit(":", 1)[0] if ":" in last else name


def plan(image: RemoteImage, *, via: str, host: Host, apply: bool,
         node_arch: str | None = None, node_free: int | None = None) -> Plan:
    """The command to run and the checks it passed; raises RebaseRefused on a failed check."""
    pinned = f"{repository(image.name)}@{image.digest}"
    if via not in VIAS:
        raise NestbuildError(f"--via {via}: expected one of {', '.join(VIAS)}")
    if via == "bootc":
        command = bootc.switch_argv(pinned, apply=apply)
    else:
        command = rpmostree.rebase_argv(pinned, reboot=apply)
    p = Plan(via, host, image, command)
    bootable = image.labels.get("containers.bootc") == "1" or image.labels.get(
        "ostree.bootable") == "true"
    p.checks.append(Check("bootable", bootable,
                          "containers.bootc/ostree.bootable label" if bootable
                          else "no containers.bootc=1 or ostree.bootable=true label"))
    arch = node_arch or host_platform()[1]
    p.checks.append(Check("architecture", image.architecture == arch,
                          f"image {image.architecture}, node {arch}"))
    if node_free is not None:
        need = image.size * 2  # compressed layers, unpacked into the repository
        p.checks.append(Check("room", node_free >= need,
                              f"{node_free // 2**20} MiB free, about {need // 2**20} MiB needed"))
    how = "--enforce-container-sigpolicy" if via == "bootc" else "ostree-image-signed:"
    p.checks.append(Check("signature", True, f"enforced by the node's policy.json ({how})"))
    failed = [c for c in p.checks if not c.ok]
    if failed:
        raise RebaseRefused("refused before staging: " + "; ".join(
            f"{c.name}: {c.detail}" for c in failed))
    return p


def node_facts(host: Host) -> tuple[str, int]:
    """The node's OCI architecture and free bytes where deployments live."""
    machine = host.run(["uname", "-m"], what=f"reading the architecture of {host}")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(
        machine.stdout.decode().strip(), machine.stdout.decode().strip())
    df = host.run(["df", "-B1", "--output=avail", "/sysroot"], what=f"reading free space on {host}")
    free = int(df.stdout.decode().split()[-1])
    return arch, free


def status(via: str, host: Host) -> NodeStatus:
    return bootc.status(host) if via == "bootc" else rpmostree.status(host)


def execute(p: Plan, progress: Callable[[str], None] | None = None
            ) -> tuple[NodeStatus, NodeStatus]:
    say = progress or (lambda _m: None)
    before = status(p.via, p.host)
    say(f"running {' '.join(p.command)} on {p.host}")
    p.host.run(p.command, what=f"{p.via} on {p.host}")
    after = status(p.via, p.host)
    return before, after


# -- --via ostree: a local sysroot, for real ---------------------------------------------------


@dataclass
class OstreeRebase:
    image: str
    digest: str
    verdict: Any
    trust_from: str
    before: list[Any]
    after: list[Any]
    #: Blob bytes fetched: a config-only update fetches only its new layers.
    bytes_downloaded: int

    def to_json(self) -> dict[str, Any]:
        return {"via": "ostree", "image": self.image, "digest": self.digest,
                "trust": self.trust_from, "policy": self.verdict.to_json(),
                "bytesDownloaded": self.bytes_downloaded,
                "before": [d.to_json() for d in self.before],
                "after": [d.to_json() for d in self.after]}


def deployment_root(sysroot: Path, osname: str, checksum: str, serial: int) -> Path:
    return sysroot / "ostree" / "deploy" / osname / "deploy" / f"{checksum}.{serial}"


def rebase_sysroot(image: str, sysroot: Path, *, osname: str, trust_dir: Path | None,
                   access: Any = None, progress: Callable[[str], None] | None = None
                   ) -> OstreeRebase:
    """Verify ``image`` under the node's policy, then deploy it into ``sysroot`` by digest.

    Trust comes from the default deployment's /etc; a sysroot with no deployment yet takes it
    from ``trust_dir`` (what ``nestbuild node trust`` writes). Refusals raise
    :class:`RebaseRefused` before anything in the sysroot is touched.
    """
    from nestbuild._image.reference import ImageRef
    from nestbuild._registry import reference
    from nestbuild._registry.access import RegistryAccess
    from nestbuild._tools import ostree
    from nestbuild.node import deploy
    from nestbuild.node import policy as nodepolicy
    from nestbuild.shipping.pull import RegistrySource

    say = progress or (lambda _m: None)
    target = reference.parse(image)
    # one deploy at a time: the trust read from the default deployment must still be the
    # default's when the new deployment is made
    with deploy.sysroot_lock(sysroot, say):
        before = deploy.deployments(sysroot) if (ostree.repo_of(sysroot) / "config").is_file() \
            else []
        current = next((d for d in before if d.default), None)
        if current is not None:
            root = deployment_root(sysroot, osname, current.checksum, current.serial)
            which = current.digest or current.checksum[:12]
            trust_from = f"the default deployment's /etc ({which})"
        elif trust_dir is not None:
            root, trust_from = trust_dir, str(trust_dir)
        else:
            raise UsageError(f"{sysroot}: no deployment yet, so no trust to check against; pass "
                             "--trust DIR (written by `nestbuild node trust`)")
        with (access or RegistryAccess()).client(target.host) as client:
            digest = target.digest or client.resolve(target.repo, target.ref)
            if digest is None:
                raise UsageError(f"{image}: no such image in the registry")
            pinned = target.with_digest(digest)
            say(f"checking {pinned} against the policy from {trust_from}")
            verdict = nodepolicy.check(pinned, root, client)
            if not verdict.accepted:
                raise RebaseRefused(f"{pinned}: refused: {verdict.reason}; the sysroot is "
                                    "unchanged")
            src = RegistrySource(ImageRef("docker", str(pinned)), client=client)
            if not src.config.bootable:
                raise RebaseRefused(f"{pinned}: not bootable (no containers.bootc=1 or "
                                    "ostree.bootable=true label); the sysroot is unchanged")
            arch = host_platform()[1]
            if src.config.architecture != arch:
                raise RebaseRefused(f"{pinned}: built for {src.config.architecture}, this node is "
                                    f"{arch}; the sysroot is unchanged")
            name = str(target)  # the tag as given (or the digest, the same as pinned)
            deploy.deploy_image(src, sysroot, osname, origin_ref=name, progress=say)
            fetched = client.bytes_downloaded
        after = deploy.deployments(sysroot)
    return OstreeRebase(name, digest, verdict, trust_from, before, after, fetched)
