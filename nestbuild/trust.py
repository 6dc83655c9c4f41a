"""What a node needs to trust an image: containers' policy.json, registries.d, the key.

Nodes verify with containers/image (bootc and rpm-ostree use it): ``policy.json`` rejects by
default and requires a sigstore signature by the team's key for the repository
(``matchRepository``, since signatures name the repository), and ``registries.d`` tells it to
look for cosign's ``.sig`` attachments in the registry.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild.atomic import write_atomic
from nestbuild.errors import UsageError

POLICY = "etc/containers/policy.json"
REGISTRIES_D = "etc/containers/registries.d"
KEYS_DIR = "etc/pki/containers"
OSTREE_AUTH = "etc/ostree/auth.json"


def key_name(repo: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", repo).strip("-") or "nestbuild"


def policy_for(repo: str, key_paths: list[str],
               existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """A policy that rejects everything but ``repo`` signed by one of ``key_paths``.

    Several keys (rotation) are one ``sigstoreSigned`` requirement each would be ANDed by
    containers/image, so they go into one requirement's ``keyPaths``.
    """
    policy = existing or {"default": [{"type": "reject"}], "transports": {}}
    if policy.get("default") == [{"type": "insecureAcceptAnything"}]:
        policy["default"] = [{"type": "reject"}]  # bootc refuses verified pulls otherwise
    req: dict[str, Any] = {"type": "sigstoreSigned",
                           "signedIdentity": {"type": "matchRepository"}}
    if len(key_paths) == 1:
        req["keyPath"] = key_paths[0]
    else:
        req["keyPaths"] = key_paths
    policy.setdefault("transports", {}).setdefault("docker", {})[repo] = [req]
    return policy


def trust_files(repo: str, public_keys: list[bytes], *,
                existing_policy: dict[str, Any] | None = None,
                auth: dict[str, Any] | None = None) -> dict[str, tuple[bytes, int]]:
    """Path (relative to the root) -> (content, mode) of every file a node needs."""
    if "/" not in repo or repo.startswith("/") or "://" in repo:
        raise UsageError(f"{repo}: name the repository as REGISTRY/REPO (no scheme, no tag)")
    name = key_name(repo)
    files: dict[str, tuple[bytes, int]] = {}
    key_paths = []
    for i, pem in enumerate(public_keys):
        rel = f"{KEYS_DIR}/{name}{'' if i == 0 else f'-{i + 1}'}.pub"
        files[rel] = (pem, 0o644)
        key_paths.append("/" + rel)
    policy = policy_for(repo, key_paths, existing_policy)
    files[POLICY] = (json.dumps(policy, indent=2).encode() + b"\n", 0o644)
    files[f"{REGISTRIES_D}/{name}.yaml"] = (
        f"docker:\n  {repo}:\n    use-sigstore-attachments: true\n".encode(), 0o644)
    if auth is not None:
        files[OSTREE_AUTH] = (json.dumps(auth, indent=2).encode() + b"\n", 0o600)
    return files


def write_tree(root: Path, files: dict[str, tuple[bytes, int]]) -> list[Path]:
    """Write atomically, each file with its mode from the start (auth.json is never 0644)."""
    written = []
    for rel, (data, mode) in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, mode)
        written.append(path)
    return written


def read_existing_policy(root: Path) -> dict[str, Any] | None:
    path = root / POLICY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


@dataclass
class TrustSettings:
    repo: str
    keys: list[Path]
    authfile: Path | None = None

    def files(self, existing_policy: dict[str, Any] | None = None
              ) -> dict[str, tuple[bytes, int]]:
        """The trust files, as image paths, with the keys checked to be ECDSA P-256."""
        from nestbuild import keys as keys_mod

        pems = []
        for k in self.keys:
            try:
                data = k.read_bytes()
            except OSError as exc:
                raise UsageError(f"{k}: cannot read ({exc.strerror})") from None
            keys_mod.load_public_key(data, str(k))
            pems.append(data)
        auth = None
        if self.authfile is not None:
            try:
                auth = json.loads(self.authfile.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise UsageError(f"{self.authfile}: not a readable auth.json ({exc})") from None
        files = trust_files(self.repo, pems, auth=auth, existing_policy=existing_policy)
        return {"/" + rel: v for rel, v in files.items()}


def from_node(node: object, source: str) -> TrustSettings:
    """``trust:`` in nestbuild.yaml; problems name the file and line."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise UsageError(f"{source}: trust must be a mapping (repo, keys, authfile)")
    base = Path(source).parent
    values: dict[str, Any] = {}
    for k, v in node.value:
        where = f"{source}:{k.start_mark.line + 1}"
        if k.value == "repo" and isinstance(v, yaml.ScalarNode):
            values["repo"] = str(v.value)
        elif k.value == "keys" and isinstance(v, yaml.SequenceNode):
            values["keys"] = [base / str(i.value) for i in v.value]
        elif k.value == "authfile" and isinstance(v, yaml.ScalarNode):
            values["authfile"] = base / str(v.value)
        else:
            raise UsageError(f"{where}: trust.{k.value}: expected repo: REG/REPO, "
                             "keys: [K.pub, ...], authfile: FILE")
    if "repo" not in values or not values.get("keys"):
        raise UsageError(f"{source}:{node.start_mark.line + 1}: trust needs repo and keys")
    return TrustSettings(**values)
