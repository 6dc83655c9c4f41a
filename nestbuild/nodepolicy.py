"""A node's ``policy.json`` applied to an image before it is staged, as containers/image does.

The node's own tool (bootc, rpm-ostree) enforces the policy again when it pulls; checking it
here first means a refused image never reaches the sysroot, and the operator sees why on the
workstation. Supported: ``insecureAcceptAnything``, ``reject`` and ``sigstoreSigned`` with
public keys (``keyPath``/``keyPaths``/``keyData``/``keyDatas``) and the ``matchRepository``,
``matchRepoDigestOrExact`` and ``matchExact`` identities. Anything else (GPG ``signedBy``,
Fulcio, ``exactReference``) is refused with the reason, never silently accepted.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nestbuild import keys, payload, signing, trust
from nestbuild.errors import NestbuildError, UsageError
from nestbuild.registry.reference import RegistryRef


@dataclass
class Verdict:
    accepted: bool
    #: The policy scope that applied ("127.0.0.1:5000/fleet/node", "default", ...).
    scope: str
    reason: str
    report: dict[str, Any] | None = None
    checks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "scope": self.scope, "reason": self.reason,
                "verification": self.report}


def _load_policy(root: Path) -> dict[str, Any]:
    path = root / trust.POLICY
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no policy.json (run `nestbuild node trust` or pass --trust "
                         "DIR)") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: policy.json must hold a JSON object")
    return doc


def scope_for(policy: dict[str, Any], name: str) -> tuple[str, list[Any]]:
    """The requirements for ``HOST/REPO``: the most specific docker scope, else defaults."""
    docker = (policy.get("transports") or {}).get("docker") or {}
    candidate = name
    while True:
        if candidate in docker:
            return candidate, list(docker[candidate])
        if "/" not in candidate:
            break
        candidate = candidate.rsplit("/", 1)[0]
    if "" in docker:
        return "docker default", list(docker[""])
    return "default", list(policy.get("default") or [])


def sigstore_attachments_enabled(root: Path, name: str) -> bool:
    """Whether registries.d tells containers/image to look for cosign attachments."""
    best: tuple[int, bool] | None = None
    default = False
    for path in sorted((root / trust.REGISTRIES_D).glob("*.yaml")):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({exc})") from None
        d = doc.get("default-docker") or {}
        if isinstance(d, dict) and "use-sigstore-attachments" in d:
            default = bool(d["use-sigstore-attachments"])
        for scope, conf in (doc.get("docker") or {}).items():
            if not isinstance(conf, dict) or "use-sigstore-attachments" not in conf:
                continue
            applies = name == scope or name.startswith(scope + "/")
            if applies and (best is None or len(scope) > best[0]):
                best = (len(scope), bool(conf["use-sigstore-attachments"]))
    return best[1] if best else default


def _keys(req: dict[str, Any], root: Path) -> list[tuple[str, keys.PublicKey]]:
    out: list[tuple[str, keys.PublicKey]] = []
    paths = [req["keyPath"]] if "keyPath" in req else list(req.get("keyPaths") or [])
    for p in paths:
        local = root / str(p).lstrip("/")
        try:
            out.append((str(p), keys.load_public_key(local.read_bytes(), str(p))))
        except OSError:
            raise UsageError(f"policy.json names key {p}, which is not in {root}") from None
    datas = [req["keyData"]] if "keyData" in req else list(req.get("keyDatas") or [])
    for i, data in enumerate(datas):
        out.append((f"keyData[{i}]", keys.load_public_key(base64.b64decode(data), "keyData")))
    return out


def check(image: RegistryRef, root: Path, store: signing.SignatureStore) -> Verdict:
    """Apply the policy under ``root`` (a deployment's or ``node trust``'s tree) to ``image``
    (pinned by digest, as the node will pull it)."""
    policy = _load_policy(root)
    scope, reqs = scope_for(policy, image.name)
    if not reqs:
        return Verdict(False, scope, f"policy scope {scope!r} has no requirements (containers/"
                       "image refuses an empty list)")
    report = None
    for req in reqs:
        kind = req.get("type") if isinstance(req, dict) else None
        if kind == "insecureAcceptAnything":
            continue
        if kind == "reject":
            return Verdict(False, scope, f"policy.json rejects {image.name} (scope {scope!r})")
        if kind != "sigstoreSigned":
            return Verdict(False, scope, f"requirement {kind!r} is not one nestbuild can check "
                           "(supported: sigstoreSigned with keys, reject, "
                           "insecureAcceptAnything)")
        if not sigstore_attachments_enabled(root, image.name):
            return Verdict(False, scope, f"registries.d does not set use-sigstore-attachments "
                           f"for {image.name}: the node would find no signatures")
        rule = str((req.get("signedIdentity") or {}).get("type") or signing.DEFAULT_RULE)
        if rule not in payload.RULES:
            return Verdict(False, scope, f"signedIdentity {rule!r} is not supported here")
        try:
            pubs = _keys(req, root)
            target = signing.open_target(image.transport, store=store)
            result = signing.verify(target, pubs, rule=rule)
        except NestbuildError as exc:
            return Verdict(False, scope, exc.message)
        report = result.to_json()
        if not result.passed:
            return Verdict(False, scope, f"signature check failed: {result.cause()}", report)
    return Verdict(True, scope, "accepted by policy.json", report)
