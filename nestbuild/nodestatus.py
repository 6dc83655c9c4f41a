"""One view of a node's deployments, parsed from bootc's or rpm-ostree's JSON status."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from nestbuild.errors import NestbuildError


class StatusError(NestbuildError):
    """The node's status output is not what the documented schema says."""


@dataclass(frozen=True)
class NodeDeployment:
    role: str  # booted, staged, rollback, other
    image: str | None
    digest: str | None
    version: str | None = None
    architecture: str | None = None
    verified: bool | None = None
    checksum: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "image": self.image, "digest": self.digest,
                "version": self.version, "architecture": self.architecture,
                "verified": self.verified, "checksum": self.checksum}


@dataclass
class NodeStatus:
    tool: str
    deployments: list[NodeDeployment] = field(default_factory=list)
    #: The image the node follows (bootc's spec.image), if it says.
    spec_image: str | None = None
    rollback_queued: bool = False

    def role(self, role: str) -> NodeDeployment | None:
        return next((d for d in self.deployments if d.role == role), None)

    def to_json(self) -> dict[str, Any]:
        return {"tool": self.tool, "spec_image": self.spec_image,
                "rollback_queued": self.rollback_queued,
                "deployments": [d.to_json() for d in self.deployments]}


def _load(text: str, tool: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StatusError(f"{tool} status is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StatusError(f"{tool} status is not a JSON object")
    return data


def parse_bootc(text: str) -> NodeStatus:
    """``bootc status --format=json`` (schema: bootc docs/src/host-v1.schema.json)."""
    data = _load(text, "bootc")
    if "apiVersion" not in data or "kind" not in data:
        raise StatusError("bootc status lacks apiVersion/kind: not a bootc Host document")
    spec = data.get("spec") or {}
    status = data.get("status") or {}
    spec_image = (spec.get("image") or {}).get("image")
    out = NodeStatus("bootc", spec_image=spec_image,
                     rollback_queued=bool(status.get("rollbackQueued", False)))
    for role in ("staged", "booted", "rollback"):
        entry = status.get(role)
        if entry:
            out.deployments.append(_bootc_entry(role, entry))
    for entry in status.get("otherDeployments") or []:
        out.deployments.append(_bootc_entry("other", entry))
    return out


def _bootc_entry(role: str, entry: dict[str, Any]) -> NodeDeployment:
    if "incompatible" not in entry or "pinned" not in entry:
        raise StatusError(f"bootc status: {role} entry lacks incompatible/pinned")
    image = entry.get("image")
    ostree = entry.get("ostree") or {}
    if image is None:
        return NodeDeployment(role, None, None, checksum=ostree.get("checksum"))
    for key in ("image", "imageDigest", "architecture"):
        if key not in image:
            raise StatusError(f"bootc status: {role}.image lacks {key}")
    ref = image["image"]
    signature = ref.get("signature")
    verified = None if signature is None else signature != "insecure"
    return NodeDeployment(role, ref.get("image"), image["imageDigest"], image.get("version"),
                          image["architecture"], verified, ostree.get("checksum"))


def parse_rpm_ostree(text: str) -> NodeStatus:
    """``rpm-ostree status --json``: ``deployments[]`` with booted/staged flags."""
    data = _load(text, "rpm-ostree")
    deployments = data.get("deployments")
    if not isinstance(deployments, list):
        raise StatusError("rpm-ostree status has no deployments list")
    out = NodeStatus("rpm-ostree")
    seen_booted = False
    for d in deployments:
        ref = d.get("container-image-reference")
        image, verified = None, None
        if isinstance(ref, str):
            verified = ref.startswith("ostree-image-signed:") or ref.startswith(
                "ostree-remote-image:")
            image = ref.split("docker://", 1)[-1] if "docker://" in ref else ref.split(":", 1)[-1]
        if d.get("staged"):
            role = "staged"
        elif d.get("booted"):
            role, seen_booted = "booted", True
        elif seen_booted and out.role("rollback") is None:
            role = "rollback"
        else:
            role = "other"
        out.deployments.append(NodeDeployment(
            role, image, d.get("container-image-reference-digest"), d.get("version"), None,
            verified, d.get("checksum")))
    return out
