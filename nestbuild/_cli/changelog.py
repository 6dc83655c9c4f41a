"""``nestbuild changelog OLD NEW``: what a reboot into NEW changes on a node running OLD."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild._cli.common import printable, registry_access, registry_flags
from nestbuild.errors import EXIT_OK, UsageError


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "changelog", "what a reboot from OLD into NEW changes: packages, kernel, /etc, download",
        "Compare two images as a node sees them: the packages added, removed, upgraded and\n"
        "downgraded (rpm or dpkg database, read natively; rpm's or dpkg's version order) with\n"
        "each upgrade's new changelog entries, the kernel, the kernel arguments of\n"
        "/usr/lib/bootc/kargs.d, the files of /etc that change, and the layers (and bytes) a\n"
        "node on OLD downloads for NEW.\n\n"
        "OLD is an image (any transport), or what a node runs: --sysroot DIR (its default\n"
        "deployment), --host ssh://... or --via bootc|rpm-ostree (the booted deployment the\n"
        "node's tool reports), --status FILE (a saved `bootc status --format=json` or\n"
        "`rpm-ostree status --json`); a node's image is read from its registry by digest.\n\n"
        "examples:\n"
        "  nestbuild changelog localhost/nodes/base:v1 localhost/nodes/base:v2\n"
        "  nestbuild changelog --host ssh://core@node1 registry.example.com/nodes/base:v2\n"
        "  nestbuild changelog --sysroot ./sysroot docker://reg.example.com/nodes/base:v2 \\\n"
        "      --format markdown > comment.md",
        epilog="exit codes: 0 compared, 1 registry content that does not match its digest,\n"
               "2 unusable input (an image, a node or a status file)\n")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="OLD NEW, or NEW alone when a node names OLD")
    node = p.add_argument_group("OLD from a node")
    node.add_argument("--sysroot", type=Path, metavar="DIR",
                      help="a local ostree sysroot: its default deployment")
    node.add_argument("--host", metavar="ssh://[USER@]HOST[:PORT]",
                      help="a node over ssh: its booted deployment")
    node.add_argument("--via", choices=("bootc", "rpm-ostree"),
                      help="the node's tool (default bootc; with --status, read from the file)")
    node.add_argument("--status", type=Path, metavar="FILE",
                      help="a saved bootc or rpm-ostree status document (- for stdin)")
    p.add_argument("--format", choices=("table", "json", "markdown"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    registry_flags(p)
    p.set_defaults(func=cmd_changelog)


def cmd_changelog(args: argparse.Namespace) -> int:
    from nestbuild import changelog

    from_node = (args.sysroot is not None or args.host is not None or args.via is not None
                 or args.status is not None)
    want = 1 if from_node else 2
    if len(args.images) != want:
        raise UsageError("give OLD and NEW" if not from_node else
                         "give only NEW: the node names OLD")
    old, new = (None, args.images[0]) if from_node else args.images
    status = None
    if args.status is not None:
        status = _read_status(args.status)
    quiet = args.quiet or args.format != "table"
    result = changelog(
        old, new, sysroot=args.sysroot, via=args.via, host=args.host, status=status,
        access=registry_access(args),
        progress=None if quiet else (lambda m: print(f"nestbuild: {printable(m)}",
                                                     file=sys.stderr)))
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    elif args.format == "markdown":
        sys.stdout.write(result.markdown())
    else:
        for line in result.lines():
            print(printable(line))
    return EXIT_OK


def _read_status(path: Path) -> str:
    try:
        if str(path) == "-":
            return sys.stdin.read()
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})"
                         ) from None
