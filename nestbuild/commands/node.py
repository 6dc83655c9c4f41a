"""``nestbuild node trust|status|rollback``: the node side."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild.errors import EXIT_OK, UsageError


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("node", "node trust files, deployment status and rollback",
                "What a node needs and does: trust files for verified pulls, and (for an\n"
                "ostree sysroot) its deployments and rollback.", epilog="")
    node_sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)

    t = node_sub.add_parser(
        "trust", help="write the files a node needs to verify REPO's signatures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write /etc/containers/policy.json (reject by default; sigstoreSigned for\n"
                    "REPO, matchRepository), /etc/containers/registries.d/NAME.yaml\n"
                    "(use-sigstore-attachments) and the key under /etc/pki/containers/, into\n"
                    "DIR. An existing policy.json there is extended, not replaced. Give --key\n"
                    "twice while rotating keys: either key is then accepted.\n\n"
                    "example:\n  nestbuild node trust registry.example.com/nodes/base "
                    "--key cosign.pub --out ./overlay")
    t.add_argument("repo", metavar="REPO", help="REGISTRY/REPOSITORY the node pulls from")
    t.add_argument("--key", type=Path, action="append", required=True, metavar="K.pub",
                   help="public key (repeatable, for rotation)")
    t.add_argument("--out", type=Path, default=Path("node-trust"), metavar="DIR",
                   help="root to write etc/... under (default: ./node-trust)")
    t.add_argument("--authfile", type=Path, metavar="FILE",
                   help="containers auth.json to install as /etc/ostree/auth.json (0600)")
    t.add_argument("--format", choices=("table", "json"), default="table")
    t.set_defaults(func=cmd_trust)

    s = node_sub.add_parser("status", help="list an ostree sysroot's deployments")
    s.add_argument("--sysroot", type=Path, required=True, metavar="DIR")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_status)

    r = node_sub.add_parser("rollback", help="make the previous deployment the default")
    r.add_argument("--sysroot", type=Path, required=True, metavar="DIR")
    r.add_argument("--os", default="nestos", metavar="NAME", help="stateroot (default nestos)")
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.set_defaults(func=cmd_rollback)


def cmd_trust(args: argparse.Namespace) -> int:
    from nestbuild import keys, trust

    pems = []
    for path in args.key:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
        keys.load_public_key(data, str(path))  # refuse anything but an ECDSA P-256 key
        pems.append(data)
    auth = None
    if args.authfile is not None:
        try:
            auth = json.loads(args.authfile.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"{args.authfile}: not a readable auth.json ({exc})") from None
    files = trust.trust_files(args.repo, pems, auth=auth,
                              existing_policy=trust.read_existing_policy(args.out))
    written = trust.write_tree(args.out, files)
    if args.format == "json":
        sys.stdout.write(json.dumps({"repo": args.repo, "files": [str(p) for p in written]},
                                    indent=2) + "\n")
    else:
        for p in written:
            print(f"wrote {p}")
    return EXIT_OK


def _print_deployments(deps: list[Any], fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps([d.to_json() for d in deps], indent=2) + "\n")
        return
    for d in deps:
        mark = "* " if d.default else ("  " if not d.rollback else "r ")
        print(f"{mark}{d.index}  {d.image or '?'}  {d.digest or '?'}  version {d.version}"
              f"{'  (default)' if d.default else ''}{'  (rollback)' if d.rollback else ''}")


def cmd_status(args: argparse.Namespace) -> int:
    from nestbuild import deploy

    _print_deployments(deploy.deployments(args.sysroot), args.format)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from nestbuild import deploy

    deploy.rollback(args.sysroot, args.os)
    _print_deployments(deploy.deployments(args.sysroot), args.format)
    return EXIT_OK
