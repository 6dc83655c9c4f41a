"""``nestbuild sbom``: an image's SPDX 2.3 SBOM, written without pushing anything."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild._cli.common import check_output, write_output
from nestbuild.errors import EXIT_OK


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "sbom", "write an image's SBOM (SPDX 2.3 JSON) from its package database",
        "Read the image's package database (rpm: sqlite, Berkeley DB or ndb; dpkg's status)\n"
        "without running anything inside it, and write an SPDX 2.3 JSON document: the image,\n"
        "and every installed package with its package URL (pkg:rpm/..., pkg:deb/...).\n"
        "It is the document `push --sign-key` attests (predicate type\n"
        "https://spdx.dev/Document, as `cosign attest --type spdxjson`).\n\n"
        "exit codes: 0 written, 1 registry content that does not match its digest,\n"
        "2 unusable input\n\n"
        "examples:\n  nestbuild sbom localhost/node:1 --output node.spdx.json\n"
        "  nestbuild sbom oci:./out:v1 | jq '.packages | length'",
        epilog="")
    p.add_argument("image", metavar="IMAGE", help="the image (as for validate)")
    p.add_argument("--base", metavar="REF", help="its base image (default: found from the image)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write the document to FILE (default: standard output)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_sbom)


def cmd_sbom(args: argparse.Namespace) -> int:
    from nestbuild import sbom

    check_output(args.output, "--output")

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"nestbuild: {msg}", file=sys.stderr)

    result = sbom(args.image, base_ref=args.base, progress=say)
    if args.output is None:
        sys.stdout.write(result.to_json())
    else:
        write_output(args.output, result.to_json(), "--output")
    if result.database is None:
        say(f"{args.image}: no package database found; the SBOM lists the image alone")
    else:
        say(f"{result.packages} packages from {result.database.path}")
    return EXIT_OK
