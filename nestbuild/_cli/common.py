"""What several command groups share: flags (registry access as skopeo spells it) and help."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nestbuild.errors import UsageError

if TYPE_CHECKING:
    from nestbuild import RegistryAccess


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's, measuring the terminal without ``shutil``.

    argparse makes a formatter for every ``add_argument`` and each one imports shutil (with
    bz2 and lzma: ~3 ms of every command, before ``sign`` can even start its scrypt).
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """What ``shutil.get_terminal_size().columns`` says: $COLUMNS, the terminal, else 80."""
    try:
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size().columns or 80
    except (ValueError, OSError):
        return 80


#: Width of output that is not a terminal: wide enough that no table wraps or folds a path.
PIPE_WIDTH = 10_000


def console(*, stderr: bool = False) -> Any:
    """A rich console for tables and reports. On a terminal it fits the terminal; piped (CI
    logs, ``| grep``) it does not wrap at all, so a path is never split mid-word. COLUMNS
    still wins when set."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if "COLUMNS" not in os.environ and not stream.isatty():
        width = PIPE_WIDTH
    return Console(stderr=stderr, highlight=False, soft_wrap=False, width=width)


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


def registry_access(args: argparse.Namespace) -> RegistryAccess:
    """What :func:`registry_flags` said, as every registry call takes it."""
    from nestbuild import RegistryAccess

    return RegistryAccess(authfile=args.authfile, cert_dir=args.cert_dir,
                          tls_verify=args.tls_verify)


def printable(text: str) -> str:
    """``text`` from an image or a registry, safe to show on a terminal (no escapes)."""
    from nestbuild._util.terminal import printable

    return printable(text)


def show(result: Any, fmt: str) -> None:
    """A result with ``to_json`` and ``lines``: its JSON, or its table, each line made safe
    for the terminal (a node's health output, an image's names are not ours)."""
    if fmt == "json":
        import json

        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        return
    for line in result.lines():
        print(printable(line))


def check_output(path: Path | None, option: str) -> None:
    """Refuse, before any work, an output file that could not be written: a push or a build
    must not succeed and then end in an error about where its digest goes."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"{option} {path}: no such directory {path.parent}")


def write_output(path: Path, text: str, option: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (never a truncated report or digest),
    with the mode a plain write would give it."""
    from nestbuild._util.atomic import write_atomic

    umask = os.umask(0o022)
    os.umask(umask)
    try:
        write_atomic(path, text.encode(), 0o666 & ~umask)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write it ({exc.strerror})") from None


_UNITS = {"s": 1, "m": 60, "h": 3600}


def duration(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``1h`` as seconds (argparse type)."""
    value = text.strip()
    unit = _UNITS.get(value[-1:])
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a duration such as 90, 30s, 5m or 1h") from None
    if seconds < 0 or seconds != seconds:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration is not negative")
    return seconds


def health_flags(p: argparse.ArgumentParser, *, where: str) -> None:
    """The health gate's flags, as ``node upgrade`` and ``rollout`` both take them."""
    p.add_argument("--health-cmd", action="append", default=[], metavar="CMD",
                   help=f"a command that must exit 0{where} (repeatable)")
    p.add_argument("--health-url", action="append", default=[], metavar="URL",
                   help=f"a URL that must answer 2xx{where} (repeatable)")
    p.add_argument("--health-timeout", type=duration, default=300.0, metavar="DURATION",
                   help="time for every health check to pass (default 5m)")


def health_spec(args: argparse.Namespace) -> Any:
    from nestbuild import HealthSpec

    return HealthSpec(tuple(args.health_cmd), tuple(args.health_url), args.health_timeout)
