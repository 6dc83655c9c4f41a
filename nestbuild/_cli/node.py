"""``nestbuild node trust|status|rollback``: the node side."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild._cli.common import (
    HelpFormatter,
    health_flags,
    health_spec,
    printable,
    registry_access,
    registry_flags,
    show,
)
from nestbuild.errors import EXIT_OK, UsageError


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command("node", "node trust files, deployment status, rollback and upgrade",
                "What a node needs and does: trust files for verified pulls, and (for an\n"
                "ostree sysroot) its deployments and rollback, and the health-gated upgrade\n"
                "step a rollout runs on each node.",
                epilog="exit codes: 0 done, 1 unhealthy or rolled back (upgrade), 2 unusable\n"
                       "input or a failing tool\n")
    node_sub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)

    t = node_sub.add_parser(
        "trust", help="write the files a node needs to verify REPO's signatures",
        formatter_class=HelpFormatter,
        description="Write /etc/containers/policy.json (reject by default; sigstoreSigned for\n"
                    "REPO, matchRepository), /etc/containers/registries.d/NAME.yaml\n"
                    "(use-sigstore-attachments) and the key under /etc/pki/containers/, into\n"
                    "DIR, or with --sysroot into the default deployment's /etc of an ostree\n"
                    "sysroot (a node deployed from an image without trust files, whose updates\n"
                    "are then checked without --trust). An existing policy.json there is\n"
                    "extended, not replaced. Give --key twice while rotating keys: either key\n"
                    "is then accepted.\n\n"
                    "examples:\n  nestbuild node trust registry.example.com/nodes/base "
                    "--key cosign.pub --out ./overlay\n"
                    "  nestbuild node trust registry.example.com/nodes/base "
                    "--key cosign.pub --sysroot ./sysroot",
        epilog="exit codes: 0 written, 2 unusable input (a key, an existing policy.json)\n")
    t.add_argument("repo", metavar="REPO", help="REGISTRY/REPOSITORY the node pulls from")
    t.add_argument("--key", type=Path, action="append", required=True, metavar="K.pub",
                   help="public key (repeatable, for rotation)")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR",
                       help="root to write etc/... under (default: ./node-trust)")
    where.add_argument("--sysroot", type=absolute, metavar="DIR",
                       help="an ostree sysroot: write into its default deployment's /etc")
    t.add_argument("--os", default="nestos", metavar="NAME",
                   help="stateroot for --sysroot (default nestos)")
    t.add_argument("--authfile", type=Path, metavar="FILE",
                   help="containers auth.json to install as /etc/ostree/auth.json (0600)")
    t.add_argument("--format", choices=("table", "json"), default="table")
    t.set_defaults(func=cmd_trust)

    s = node_sub.add_parser(
        "status", help="a node's deployments (bootc, rpm-ostree or a sysroot)",
        formatter_class=HelpFormatter,
        description="List a node's deployments (image, digest, version, which is booted, the\n"
                    "default and the rollback): from a local ostree sysroot, or from the\n"
                    "node's bootc or rpm-ostree, here or over ssh with --host.\n\n"
                    "examples:\n  nestbuild node status --sysroot ./sysroot\n"
                    "  nestbuild node status --via bootc --host ssh://core@node1 --format json",
        epilog="exit codes: 0 shown, 2 unusable input or a failing tool\n")
    _node_flags(s, via_help="ask the node's tool")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_status)

    r = node_sub.add_parser(
        "rollback", help="make the previous deployment the default",
        formatter_class=HelpFormatter,
        description="Make the previous deployment the default again: in a local ostree\n"
                    "sysroot, or with the node's bootc or rpm-ostree (here or over ssh).\n"
                    "--apply reboots into it now; otherwise the next boot takes it.\n\n"
                    "examples:\n  nestbuild node rollback --sysroot ./sysroot\n"
                    "  nestbuild node rollback --via bootc --host ssh://core@node1 --apply",
        epilog="exit codes: 0 rolled back, 2 nothing to roll back to, unusable input or a\n"
               "failing tool\n")
    _node_flags(r, via_help="use the node's tool")
    r.add_argument("--apply", action="store_true", help="reboot into it now")
    r.add_argument("--os", default="nestos", metavar="NAME", help="stateroot (default nestos)")
    r.add_argument("--format", choices=("table", "json"), default="table")
    r.set_defaults(func=cmd_rollback)

    u = node_sub.add_parser(
        "upgrade", help="move this node onto IMAGE@DIGEST, health-gated (the rollout's step)",
        formatter_class=HelpFormatter,
        description="The per-node step of `nestbuild rollout`, usable by hand: take the next\n"
                    "step of moving this node onto IMAGE (by digest) and say where it stands.\n"
                    "Safe to run again at any point: not on the target -> stage it and reboot\n"
                    "(--reboot none: say a reboot is required); booted the target -> the health\n"
                    "gate (the booted digest is the target, systemd is not degraded, every\n"
                    "--health-cmd and --health-url passes within --health-timeout); unhealthy\n"
                    "with --rollback-on-failure -> roll back and check the previous digest runs\n"
                    "again. A target rolled back on this node is not taken again by a later run.\n"
                    "Health commands run with sh -c and NESTBUILD_ROOT set to the node's root\n"
                    "(/ on a node, the deployed tree of an ostree sysroot).\n\n"
                    "For --via ostree the sysroot's default deployment counts as booted;\n"
                    "--boot boots it under qemu and gates on that boot (the image's marker is\n"
                    "then NESTBUILD_BOOT_MARKER).\n\n"
                    "examples:\n"
                    "  nestbuild node upgrade registry.example.com/nodes/base@sha256:... \\\n"
                    "      --health-cmd 'systemctl is-active kubelet' --rollback-on-failure\n"
                    "  nestbuild node upgrade reg.example.com/nodes/base@sha256:... \\\n"
                    "      --via ostree --sysroot ./sysroot --check",
        epilog="exit codes: 0 healthy on the target (or staged: a reboot is required or under\n"
               "way; or checked), 1 unhealthy or rolled back, 2 unusable input, a refused\n"
               "image or a failing tool\n")
    u.add_argument("image", metavar="IMAGE", help="[docker://]REGISTRY/REPO@sha256:DIGEST")
    _move_flags(u, sysroot_help="the ostree sysroot for --via ostree",
                trust_help="trust files for --via ostree (see `nestbuild rebase --trust`)")
    health_flags(u, where="")
    u.add_argument("--rollback-on-failure", action="store_true",
                   help="roll back when the health gate fails")
    u.add_argument("--reboot", choices=("self", "none"), default="self",
                   help="self: reboot the node (default); none: report that a reboot is "
                        "required and let the caller reboot")
    u.add_argument("--check", action="store_true",
                   help="read the node and run the update's checks only; change nothing")
    u.add_argument("--boot", action="store_true",
                   help="--via ostree: boot the sysroot under qemu and gate on that boot")
    u.add_argument("--format", choices=("table", "json"), default="table")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    registry_flags(u)
    u.set_defaults(func=cmd_upgrade)

    b = command(
        "rebase", "move a node onto an image: by digest, signature-enforced, checked first",
        "Resolve IMAGE to its digest, check it is bootable, matches the node's architecture\n"
        "and fits, then run bootc switch --enforce-container-sigpolicy (or rpm-ostree rebase\n"
        "ostree-image-signed:docker://...) on the node, and show its status before and after.\n"
        "The node verifies the signature with its own /etc/containers/policy.json.\n\n"
        "--via ostree --sysroot DIR does it here, for real: the signature is checked first\n"
        "against --trust DIR (written by `nestbuild node trust`; needed for a sysroot with no\n"
        "deployment yet), else the policy in the default deployment's /etc, then the\n"
        "image's layers are imported into the sysroot's ostree repository (only the new\n"
        "ones) and deployed with ostree admin deploy; the previous deployment stays for\n"
        "rollback. An image without trust files of its own leaves a node that needs --trust\n"
        "on every update, until `nestbuild node trust ... --sysroot DIR` writes them in.\n\n"
        "exit codes: 0 staged, 1 refused by a check (nothing changed), 2 unusable input or\n"
        "a failing tool\n\n"
        "examples:\n"
        "  nestbuild rebase registry.example.com/nodes/base:v2 --dry-run\n"
        "  nestbuild rebase registry.example.com/nodes/base:v2 --host ssh://core@node1 --apply\n"
        "  nestbuild rebase reg.example.com/nodes/base:v2 --via ostree --sysroot ./sysroot \\\n"
        "      --trust ./node-trust",
        epilog="")
    b.add_argument("image", metavar="IMAGE", help="[docker://]REGISTRY/REPO[:TAG|@DIGEST]")
    _move_flags(b, sysroot_help="the ostree sysroot for --via ostree (created if missing)",
                trust_help="trust files (policy.json, keys) to check against; needed for a "
                           "sysroot's first deployment, and it wins over the deployment's own "
                           "/etc")
    b.add_argument("--host", metavar="ssh://[USER@]HOST[:PORT]", help="run on a node over ssh")
    b.add_argument("--apply", "--reboot", dest="apply", action="store_true",
                   help="reboot into the new deployment when it is staged")
    b.add_argument("--dry-run", action="store_true", help="show the plan and the checks only")
    b.add_argument("--format", choices=("table", "json"), default="table")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    registry_flags(b)
    b.set_defaults(func=cmd_rebase)


def absolute(text: str) -> Path:
    """A path argument made absolute where it is given (relative to the working directory
    the user typed it in): nothing further down depends on the process's directory."""
    return Path(os.path.abspath(text))


def cmd_trust(args: argparse.Namespace) -> int:
    from nestbuild import TrustSettings, write_trust, write_trust_to_sysroot

    settings = TrustSettings(args.repo, list(args.key), args.authfile)
    if args.sysroot is not None:
        written = write_trust_to_sysroot(settings, args.sysroot, args.os)
    else:
        written = write_trust(settings, args.out or Path("node-trust"))
    if args.format == "json":
        sys.stdout.write(json.dumps({"repo": args.repo, "files": [str(p) for p in written]},
                                    indent=2) + "\n")
    else:
        for p in written:
            print(f"wrote {p}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from nestbuild import node_status

    show(node_status(args.via, host=args.host, sysroot=args.sysroot), args.format)
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from nestbuild import rollback

    show(rollback(args.via, host=args.host, sysroot=args.sysroot, osname=args.os,
                   apply=args.apply), args.format)
    return EXIT_OK


def cmd_rebase(args: argparse.Namespace) -> int:
    from nestbuild import RebaseOptions, rebase

    quiet = args.quiet or args.format == "json"
    options = RebaseOptions(args.image, via=_via(args), host=args.host, sysroot=args.sysroot,
                            osname=args.os, trust=args.trust, apply=args.apply,
                            dry_run=args.dry_run, access=registry_access(args))
    result = rebase(options, progress=None if quiet else (lambda m: print(m, file=sys.stderr)))
    for note in getattr(result, "notes", ()):
        print(f"nestbuild: note: {note}", file=sys.stderr)
    changes = _dry_run_changelog(options, result, quiet) if args.dry_run else None
    if args.format == "json" and args.dry_run:
        doc = result.to_json() | {"changelog": changes.to_json() if changes else None}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    if changes is not None:
        for line in changes.summary():
            print(printable(line))
    show(result, args.format)
    return EXIT_OK


def cmd_upgrade(args: argparse.Namespace) -> int:
    from nestbuild import UpgradeOptions, upgrade

    quiet = args.quiet or args.format == "json"
    options = UpgradeOptions(
        args.image, via=_via(args), sysroot=args.sysroot, osname=args.os, trust=args.trust,
        health=health_spec(args),
        rollback_on_failure=args.rollback_on_failure, reboot=args.reboot,
        check_only=args.check, boot=args.boot, access=registry_access(args))
    result = upgrade(options, progress=None if quiet else (lambda m: print(m, file=sys.stderr)))
    show(result, args.format)
    return result.exit_code


def _dry_run_changelog(options: Any, result: Any, quiet: bool) -> Any:
    """What the switch would change (the node's current image against the target), or None
    with a note on stderr when the current image cannot be read: the checks still stand."""
    from nestbuild import rebase_changelog
    from nestbuild.errors import NestbuildError

    try:
        return rebase_changelog(options, result, progress=None if quiet else (
            lambda m: print(m, file=sys.stderr)))
    except NestbuildError as exc:
        print(f"nestbuild: note: no changelog: {exc.message}", file=sys.stderr)
        return None


def _via(args: argparse.Namespace) -> str:
    """--via as given, else what --sysroot implies; a sysroot with a node's tool is a
    contradiction, not something to ignore."""
    via: str = args.via or ("ostree" if args.sysroot is not None else "bootc")
    if via == "ostree" and args.sysroot is None:
        raise UsageError("--via ostree needs --sysroot DIR")
    if via != "ostree" and args.sysroot is not None:
        raise UsageError(f"--sysroot is for --via ostree, not --via {via}")
    return via


def _move_flags(parser: argparse.ArgumentParser, *, sysroot_help: str, trust_help: str
                ) -> None:
    """How the node moves: its tool, or a local sysroot (stateroot, trust files)."""
    parser.add_argument("--via", choices=("bootc", "rpm-ostree", "ostree"),
                        help="how the node moves (default: ostree with --sysroot, else bootc)")
    parser.add_argument("--sysroot", type=absolute, metavar="DIR", help=sysroot_help)
    parser.add_argument("--os", default="nestos", metavar="NAME",
                        help="stateroot for --via ostree (default nestos)")
    parser.add_argument("--trust", type=absolute, metavar="DIR", help=trust_help)


def _node_flags(parser: argparse.ArgumentParser, *, via_help: str) -> None:
    """Which node: a local sysroot, or the node's own tool (bootc, rpm-ostree), over ssh
    with --host."""
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--sysroot", type=absolute, metavar="DIR",
                        help="a local ostree sysroot")
    target.add_argument("--via", choices=("bootc", "rpm-ostree"), help=via_help)
    parser.add_argument("--host", metavar="ssh://[USER@]HOST[:PORT]", help="run it over ssh")
