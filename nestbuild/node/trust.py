"""What a node needs to trust an image: containers' policy.json, registries.d, the key.

Nodes verify with containers/image (bootc and rpm-ostree use it): ``policy.json`` rejects by
default and requires a sigstore signature by the team's key for the repository
(``matchRepository``, since signatures name the repository), and ``registries.d`` tells it to
look for cosign's ``.sig`` attachments in the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild._util import beneath, userfile
from nestbuild._util.atomic import write_atomic
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
    """Write atomically, each file with its mode from the start (auth.json is never 0644).

    A file in the way of a directory is found before anything is written: the tree gets all
    of its files or none of them."""
    for rel in files:
        parent = (root / rel).parent
        there = next(p for p in (parent, *parent.parents) if p.exists() or p.is_symlink())
        if not there.is_dir():
            raise UsageError(f"{there}: not a directory, so {root / rel} cannot be written; "
                             "nothing written")
    written = []
    for rel, (data, mode) in sorted(files.items()):
        path = root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data, mode)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write it ({exc.strerror})") from None
        written.append(path)
    return written


def read_policy(path: Path) -> dict[str, Any] | None:
    """A node's policy.json (None if there is none), its shape checked as containers/image
    checks it: ``default`` a list of requirement objects, ``transports`` an object of
    transports, each an object of scopes, each a list of requirement objects. A file that is
    not that is refused whole, never half read."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_policy(data, path)


def parse_policy(data: bytes, path: Path | str) -> dict[str, Any]:
    """A policy.json's content, checked as :func:`read_policy` says (``path`` names it)."""
    doc = userfile.json_object(data, str(path), UsageError, "policy.json")
    _requirements(doc.get("default", []), f"{path}: default")
    transports = doc.get("transports", {})
    if not isinstance(transports, dict):
        raise UsageError(f"{path}: transports must be an object of transports")
    for transport, scopes in transports.items():
        if not isinstance(scopes, dict):
            raise UsageError(f"{path}: transports.{transport} must be an object of scopes")
        for scope, reqs in scopes.items():
            _requirements(reqs, f"{path}: transports.{transport}[{json.dumps(scope)}]")
    return doc


def _requirements(value: object, where: str) -> None:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise UsageError(f"{where} must be a list of requirement objects")


def read_existing_policy(root: Path) -> dict[str, Any] | None:
    """The policy.json already under ``root``, to extend rather than replace."""
    return read_policy(root / POLICY)


@dataclass
class TrustSettings:
    repo: str
    keys: list[Path]
    authfile: Path | None = None

    def files(self, existing_policy: dict[str, Any] | None = None
              ) -> dict[str, tuple[bytes, int]]:
        """The trust files, as image paths, with the keys checked to be ECDSA P-256."""
        from nestbuild.signing import keys as keys_mod

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
                auth = json.loads(self.authfile.read_bytes())
            except OSError as exc:
                raise UsageError(f"{self.authfile}: cannot read ({exc.strerror})") from None
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                raise UsageError(f"{self.authfile}: not valid JSON") from None
            if not isinstance(auth, dict):
                raise UsageError(f"{self.authfile}: an auth.json holds a JSON object")
        files = trust_files(self.repo, pems, auth=auth, existing_policy=existing_policy)
        return {"/" + rel: v for rel, v in files.items()}


def from_node(node: object, source: str) -> TrustSettings:
    """``trust:`` in nestbuild.yaml; problems name the file and line."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise UsageError(f"{source}: trust must be a mapping (repo, keys, authfile)")
    base = Path(source).parent
    values: dict[str, Any] = {}
    def file_name(n: yaml.Node) -> Path | None:
        ok = isinstance(n, yaml.ScalarNode) and n.value and "\0" not in n.value
        return base / str(n.value) if ok else None

    for k, v in node.value:
        where = f"{source}:{k.start_mark.line + 1}"
        name = k.value if isinstance(k, yaml.ScalarNode) else "?"
        if name == "repo" and isinstance(v, yaml.ScalarNode):
            values["repo"] = str(v.value)
        elif name == "keys" and isinstance(v, yaml.SequenceNode) and \
                all(file_name(i) for i in v.value):
            values["keys"] = [file_name(i) for i in v.value]
        elif name == "authfile" and file_name(v):
            values["authfile"] = file_name(v)
        else:
            raise UsageError(f"{where}: trust.{name}: expected repo: REG/REPO, "
                             "keys: [K.pub, ...], authfile: FILE")
    if "repo" not in values or not values.get("keys"):
        raise UsageError(f"{source}:{node.start_mark.line + 1}: trust needs repo and keys")
    return TrustSettings(**values)


def write_trust(settings: TrustSettings, out: Path) -> list[Path]:
    """Write the trust files under ``out`` (``etc/...``), extending a policy.json already
    there; the paths written. All of them or none."""
    files = settings.files(existing_policy=read_existing_policy(out))
    return write_tree(out, {rel.lstrip("/"): v for rel, v in files.items()})


#: The most of a policy.json :func:`write_tree_beneath` reads back to extend it.
POLICY_LIMIT = 1 << 20


def write_tree_beneath(root: beneath.Root, files: dict[str, tuple[bytes, int]],
                       shown: Path) -> list[Path]:
    """:func:`write_tree` into a tree an image made (a deployment's root): every directory
    is opened beneath ``root`` without following a symlink, and each file is written under a
    temporary name with its mode from the start and renamed only once all of them are written.
    A symlink or a file in the way refuses the whole tree before anything is written."""
    dirs: dict[str, int] = {}
    staged: list[tuple[int, str, str]] = []
    try:
        for rel in sorted(files):
            parent = "/".join(beneath.split(rel)[:-1])
            if parent not in dirs:
                dirs[parent] = _open_beneath(root, parent, shown)
        written = []
        for rel, (data, mode) in sorted(files.items()):
            name = beneath.split(rel)[-1]
            dfd = dirs["/".join(beneath.split(rel)[:-1])]
            tmp = f".{name}.nestbuild-tmp"
            try:
                beneath.remove_at(dfd, tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, mode, dir_fd=dfd)
                try:
                    os.fchmod(fd, mode)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise UsageError(f"{shown / rel}: cannot write it ({exc.strerror}); nothing "
                                 "changed") from None
            staged.append((dfd, tmp, name))
            written.append(shown / rel)
        for dfd, tmp, name in staged:
            try:
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except OSError as exc:
                raise UsageError(f"{shown}: cannot put {name} in place ({exc.strerror})"
                                 ) from None
        staged.clear()
        return written
    finally:
        for dfd, tmp, _ in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        for fd in dirs.values():
            os.close(fd)


def _open_beneath(root: beneath.Root, path: str, shown: Path) -> int:
    """The directory ``path`` beneath ``root``, made (0755) where missing."""
    try:
        return root.open_dir(path, create=True, mode=0o755)
    except beneath.SymlinkInPath as exc:
        raise UsageError(f"{shown}{exc.link}: a symlink where a directory is needed; nothing "
                         "written") from None
    except NotADirectoryError:
        raise UsageError(f"{shown / path}: not a directory, so nothing can be written below "
                         "it; nothing written") from None
    except OSError as exc:
        raise UsageError(f"{shown / path}: cannot open it ({exc.strerror}); nothing written"
                         ) from None


def read_policy_beneath(root: beneath.Root, shown: Path) -> dict[str, Any] | None:
    """The policy.json under ``root`` read without following a symlink (None if there is
    none), to extend it."""
    try:
        data = root.read_file("/" + POLICY, POLICY_LIMIT + 1)
    except beneath.SymlinkInPath as exc:
        raise UsageError(f"{shown}{exc.link}: a symlink where a directory is needed") from None
    if data is None:
        return None
    if len(data) > POLICY_LIMIT:
        raise UsageError(f"{shown / POLICY}: larger than {POLICY_LIMIT} bytes")
    return parse_policy(data, shown / POLICY)
