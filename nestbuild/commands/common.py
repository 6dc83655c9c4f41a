"""Flags several command groups share (registry access as skopeo spells it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def registry_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registry access (as skopeo)")
    g.add_argument("--authfile", type=Path, metavar="FILE",
                   help="credentials file (default: REGISTRY_AUTH_FILE, containers' or "
                        "docker's auth.json)")
    g.add_argument("--cert-dir", type=Path, metavar="DIR",
                   help="directory with *.crt (CAs), *.cert and *.key (client certificate) "
                        "(default: /etc/containers/certs.d/HOST)")
    g.add_argument("--tls-verify", type=parse_bool, default=True, metavar="BOOL",
                   help="verify the registry's TLS certificate (default true; false also "
                        "allows plain HTTP)")


def registry_access(args: argparse.Namespace) -> Any:
    from nestbuild.registry.access import RegistryAccess

    return RegistryAccess(authfile=args.authfile, cert_dir=args.cert_dir,
                          tls_verify=args.tls_verify)
