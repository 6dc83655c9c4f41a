"""``serve``: a registry for the demo, benchmarks or a person, described as one JSON line on
stdout, running until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from registryfixtures.proxy import FaultProxy
from registryfixtures.registry import Registry, log_tail


def _serve(args: argparse.Namespace) -> int:
    registry = Registry(args.mode, root=Path(args.root) if args.root else None,
                        port=args.port, client_auth=args.client_auth,
                        username=args.username, password=args.password)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy: FaultProxy | None = None
    with registry:
        info = registry.describe()
        if args.proxy:
            proxy = FaultProxy(registry).start()
            info["proxy"] = {"host": proxy.host, "url": proxy.url}
        print(json.dumps(info), flush=True)
        while not stop.wait(1):
            if not registry.running:
                print(log_tail(registry.log_path), file=sys.stderr)
                return 1
        if proxy is not None:
            proxy.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``serve``: start a registry, print its details as one JSON line, run until killed."""
    parser = argparse.ArgumentParser(prog="registryfixtures", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a registry until SIGTERM/SIGINT")
    serve.add_argument("--mode", choices=["plain", "tls", "token"], default="plain")
    serve.add_argument("--port", type=int, default=0, help="default: a free port")
    serve.add_argument("--root", help="state directory (default: a temp dir, deleted)")
    serve.add_argument("--client-auth", action="store_true", help="require client certs")
    serve.add_argument("--username")
    serve.add_argument("--password")
    serve.add_argument("--proxy", action="store_true",
                       help="also start a pass-through FaultProxy in front")
    args = parser.parse_args(argv)
    return _serve(args)

