"""``nestbuild boot``: boot a deployed sysroot under qemu and read back a marker."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild.errors import EXIT_OK


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "boot", "boot a deployed sysroot under qemu and read back a marker",
        "Boot the default deployment of an ostree sysroot (as nestbuild's deploy writes it)\n"
        "under qemu-system-x86_64: the sysroot becomes an ext4 disk, the kernel, initramfs\n"
        "and ostree= argument come from the deployment's BLS entry. Waits until the image\n"
        "reports multi-user.target on the serial console (its nestbuild-boot-report unit,\n"
        "in the debian base) with the contents of /etc/nestbuild-marker.\n\n"
        "exit codes: 0 booted (and the marker matched), 1 did not boot or wrong marker\n"
        "(the console tail is shown), 2 unusable input\n\n"
        "example:\n  nestbuild boot --sysroot ./sysroot --marker 'built by CI'",
        epilog="")
    p.add_argument("--sysroot", type=Path, required=True, metavar="DIR",
                   help="the ostree sysroot (ostree/repo, ostree/deploy, boot/loader)")
    p.add_argument("--os", dest="osname", metavar="NAME",
                   help="stateroot whose default deployment to boot (default: the default)")
    p.add_argument("--marker", metavar="TEXT",
                   help="require /etc/nestbuild-marker to hold TEXT (a final newline ignored)")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="give up after S seconds (default 600; software emulation is slow)")
    p.add_argument("--memory", type=int, default=1536, metavar="MIB", help="guest memory")
    p.add_argument("--console-log", type=Path, metavar="FILE",
                   help="write the whole serial console to FILE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=cmd_boot)


def cmd_boot(args: argparse.Namespace) -> int:
    from nestbuild import BootError, boot

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"nestbuild: {msg}", file=sys.stderr)

    try:
        result = boot(args.sysroot, osname=args.osname, timeout=args.timeout,
                      memory_mib=args.memory, progress=say)
    except BootError as exc:
        if args.console_log is not None:
            args.console_log.write_text(exc.console)
        raise
    if args.console_log is not None:
        args.console_log.write_text(result.console)
    shown = result.shown_marker
    ok = args.marker is None or result.marker_matches(args.marker)
    if args.format == "json":
        sys.stdout.write(json.dumps({**result.to_json(), "marker_ok": ok}, indent=2) + "\n")
    else:
        print(f"booted {result.entry.osname} {result.entry.checksum[:12]} to "
              f"multi-user.target in {result.seconds:.0f}s; marker: {shown}")
        if result.failed_units:
            print(f"failed units: {', '.join(result.failed_units)}")
    if not ok:
        raise BootError(f"marker mismatch: expected {args.marker!r}, the image has {shown}")
    return EXIT_OK
