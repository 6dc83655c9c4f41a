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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nestbuild._registry.reference import RegistryRef
from nestbuild._util import userfile
from nestbuild.errors import NestbuildError, UsageError
from nestbuild.node import trust
from nestbuild.signing import keys, payload
from nestbuild.signing import signatures as signing


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
    doc = trust.read_policy(path)
    if doc is None:
        raise UsageError(f"{path}: no policy.json (run `nestbuild node trust` or pass --trust "
                         "DIR)")
    return doc


def scope_for(policy: dict[str, Any], name: str) -> tuple[str, list[Any]]:
    """The requirements for ``HOST/REPO``: the most specific docker scope, else defaults.

    ``policy`` is as :func:`nestbuild.node.trust.read_policy` checked it."""
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
        doc = userfile.compose_yaml(userfile.read_text(path, UsageError), str(path), UsageError)
        if doc is None:
            continue
        if not isinstance(doc, yaml.MappingNode):
            raise UsageError(f"{path}: a registries.d file is a mapping (default-docker, "
                             "docker)")
        for key, value in doc.value:
            if key.value == "default-docker":
                found = _use_attachments(value, path)
                default = default if found is None else found
            elif key.value == "docker":
                if not isinstance(value, yaml.MappingNode):
                    raise UsageError(f"{path}:{value.start_mark.line + 1}: docker must map "
                                     "scopes to their settings")
                for scope_node, conf in value.value:
                    scope = userfile.yaml_plain(scope_node)
                    found = _use_attachments(conf, path)
                    if scope is None or found is None:
                        continue
                    applies = name == scope or name.startswith(scope + "/")
                    if applies and (best is None or len(scope) > best[0]):
                        best = (len(scope), found)
    return best[1] if best else default


def _use_attachments(node: yaml.Node, path: Path) -> bool | None:
    """A scope's ``use-sigstore-attachments``, or None when it does not say."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value == "use-sigstore-attachments":
            flag = userfile.yaml_boolean(value)
            if flag is None:  # containers/image refuses the file; so does nestbuild
                raise UsageError(f"{path}:{value.start_mark.line + 1}: "
                                 "use-sigstore-attachments must be true or false")
            return flag
    return None


def _keys(req: dict[str, Any], root: Path) -> list[tuple[str, keys.PublicKey]]:
    out: list[tuple[str, keys.PublicKey]] = []
    paths = _strings(req, "keyPath", "keyPaths")
    for p in paths:
        local = root / p.lstrip("/")
        try:
            out.append((p, keys.load_public_key(local.read_bytes(), p)))
        except (OSError, ValueError):  # ValueError: a NUL in the name
            raise UsageError(f"policy.json names key {p!r}, which is not in {root}") from None
    for i, data in enumerate(_strings(req, "keyData", "keyDatas")):
        try:
            pem = base64.b64decode(data, validate=True)
        except ValueError:  # binascii.Error is a ValueError
            raise UsageError(f"policy.json: keyData[{i}] is not base64") from None
        out.append((f"keyData[{i}]", keys.load_public_key(pem, "keyData")))
    return out


def _strings(req: dict[str, Any], one: str, many: str) -> list[str]:
    """``req[one]`` or the list ``req[many]``: strings, as containers/image requires."""
    values = [req[one]] if one in req else req.get(many) or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise UsageError(f"policy.json: {one}/{many} must be a string/a list of strings")
    return values


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
        identity = req.get("signedIdentity") or {}
        if not isinstance(identity, dict):
            return Verdict(False, scope, "signedIdentity is not an object (containers/image "
                           "refuses the policy)")
        rule = identity.get("type") or signing.DEFAULT_RULE
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
