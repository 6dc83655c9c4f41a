"""One view of a node's deployments, parsed from bootc's or rpm-ostree's JSON status."""

from __future__ import annotations

import json
import re
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

    def lines(self) -> list[str]:
        """One table line per deployment: role, image, digest, version, verified."""
        out = []
        for d in self.deployments:
            signed = {True: "verified", False: "UNVERIFIED", None: ""}[d.verified]
            out.append(f"{d.role:9} {d.image or '?'}  {d.digest or '?'}  {d.version or ''}  "
                       f"{signed}")
        return out


#: A manifest digest the rest of nestbuild can check (the algorithms it hashes with).
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")


def _load(text: str, tool: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StatusError(f"{tool} status is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise StatusError(f"{tool} status is not a JSON object")
    return data


def _obj(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object (null: empty), so a hostile shape is one line, not a crash."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StatusError(f"{what} is not an object")
    return value


def _str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise StatusError(f"{what} is not a string")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise StatusError(f"{what} is not true or false")
    return value


def _digest(value: Any, what: str) -> str | None:
    """A digest nestbuild may compare and pin by; anything else is refused, not passed on."""
    if value is None:
        return None
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise StatusError(f"{what} is not a sha256 or sha512 digest")
    return value


def parse_bootc(text: str) -> NodeStatus:
    """``bootc status --format=json`` (schema: bootc docs/src/host-v1.schema.json)."""
    data = _load(text, "bootc")
    if "apiVersion" not in data or "kind" not in data:
        raise StatusError("bootc status lacks apiVersion/kind: not a bootc Host document")
    spec = _obj(data.get("spec"), "bootc status: spec")
    status = _obj(data.get("status"), "bootc status: status")
    spec_ref = spec.get("image")
    spec_image = None if spec_ref is None else _bootc_reference(spec_ref, "spec.image")[0]
    out = NodeStatus("bootc", spec_image=spec_image, rollback_queued=_bool(
        status.get("rollbackQueued", False), "bootc status: status.rollbackQueued"))
    for role in ("staged", "booted", "rollback"):
        entry = status.get(role)
        if entry is not None:
            out.deployments.append(_bootc_entry(role, entry))
    others = status.get("otherDeployments")
    if others is not None and not isinstance(others, list):
        raise StatusError("bootc status: status.otherDeployments is not a list")
    for entry in others or []:
        out.deployments.append(_bootc_entry("other", entry))
    return out


def _bootc_reference(value: Any, where: str) -> tuple[str, bool]:
    """bootc's ImageReference as one name and whether bootc enforced signatures fetching it.

    A transport other than ``registry`` stays in the name (``oci:/var/mnt/osupdate``): the
    bare path is not a registry repository. bootc writes no signature for a fetch that let the
    node's policy accept anything (its ContainerPolicyAllowInsecure), and older bootc wrote
    ``insecure`` for the same; ``containerPolicy`` and ``ostreeRemote`` mean it verified."""
    ref = _obj(value, f"bootc status: {where}")
    image = _str(ref.get("image"), f"bootc status: {where}.image")
    transport = _str(ref.get("transport"), f"bootc status: {where}.transport")
    if not image or not transport:
        raise StatusError(f"bootc status: {where} lacks image/transport")
    name = image if transport == "registry" else f"{transport}:{image}"
    signature = ref.get("signature")
    if signature is None or signature == "insecure":
        return name, False
    if signature == "containerPolicy" or (
            isinstance(signature, dict) and list(signature) == ["ostreeRemote"]
            and isinstance(signature["ostreeRemote"], str)):
        return name, True
    raise StatusError(f"bootc status: {where}.signature is not containerPolicy, insecure or "
                      "ostreeRemote")


def _bootc_entry(role: str, value: Any) -> NodeDeployment:
    entry = _obj(value, f"bootc status: {role}")
    if "incompatible" not in entry or "pinned" not in entry:
        raise StatusError(f"bootc status: {role} entry lacks incompatible/pinned")
    ostree = _obj(entry.get("ostree"), f"bootc status: {role}.ostree")
    checksum = _str(ostree.get("checksum"), f"bootc status: {role}.ostree.checksum")
    image = entry.get("image")
    if image is None:  # an ostree deployment not made from a container image
        return NodeDeployment(role, None, None, checksum=checksum)
    image = _obj(image, f"bootc status: {role}.image")
    for key in ("image", "imageDigest", "architecture"):
        if key not in image:
            raise StatusError(f"bootc status: {role}.image lacks {key}")
    name, verified = _bootc_reference(image["image"], f"{role}.image.image")
    # bootc writes "" for the digest and architecture of a composefs deployment whose image
    # it could no longer open: unknown, not a value
    digest = None if image["imageDigest"] == "" else _digest(
        image["imageDigest"], f"bootc status: {role}.image.imageDigest")
    architecture = _str(image["architecture"], f"bootc status: {role}.image.architecture")
    return NodeDeployment(
        role, name, digest,
        _str(image.get("version"), f"bootc status: {role}.image.version"),
        architecture or None, verified, checksum)


def parse_rpm_ostree(text: str) -> NodeStatus:
    """``rpm-ostree status --json``: ``deployments[]`` with booted/staged flags."""
    data = _load(text, "rpm-ostree")
    deployments = data.get("deployments")
    if not isinstance(deployments, list):
        raise StatusError("rpm-ostree status has no deployments list")
    out = NodeStatus("rpm-ostree")
    seen_booted = False
    for i, value in enumerate(deployments):
        d = _obj(value, f"rpm-ostree status: deployments[{i}]")
        ref = _str(d.get("container-image-reference"),
                   f"rpm-ostree status: deployments[{i}].container-image-reference")
        image, verified = None, None
        if ref is not None:
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
        where = f"rpm-ostree status: deployments[{i}]"
        out.deployments.append(NodeDeployment(
            role, image,
            _digest(d.get("container-image-reference-digest"),
                    f"{where}.container-image-reference-digest"),
            _str(d.get("version"), f"{where}.version"), None, verified,
            _str(d.get("checksum"), f"{where}.checksum")))
    return out
