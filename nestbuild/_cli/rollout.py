"""``nestbuild rollout``: a signed image onto a fleet, in waves, health-gated."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild._cli.common import (
    duration,
    health_flags,
    health_spec,
    printable,
    registry_access,
    registry_flags,
    show,
)
from nestbuild.errors import UsageError


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "rollout", "move a fleet onto a signed image in waves, with health gates and rollback",
        "Roll IMAGE out to the hosts of an Ansible inventory (or, with --engine kubernetes,\n"
        "as system-upgrade-controller Plans). Before any node is touched: the tag is\n"
        "resolved to one digest for every node, the signature is checked against the\n"
        "nodes' trust files (--trust), every node is read and pre-checked (bootable,\n"
        "architecture, room; a sysroot also checks the signature under its own policy),\n"
        "and what the reboot changes is shown per version the fleet runs. --dry-run stops\n"
        "there and prints the waves.\n\n"
        "Then the canary wave (--canary nodes), then waves of --max-unavailable, with\n"
        "--soak between them. Each node runs `nestbuild node upgrade IMAGE@DIGEST`: stage,\n"
        "reboot, health gate (the booted digest, systemd not degraded, every --health-cmd\n"
        "and --health-url within --health-timeout), and on failure its rollback. The\n"
        "rollout halts once more than --max-failures nodes failed; the nodes not reached\n"
        "are untouched. Its state is kept in --state as it goes: --resume continues an\n"
        "interrupted rollout, `nestbuild rollout status` shows it.\n\n"
        "The inventory's host variables say how each node moves: nestbuild_via = bootc\n"
        "(default), rpm-ostree, or ostree with nestbuild_sysroot=/path; nestbuild_command\n"
        "(default nestbuild) is the node's nestbuild. See docs/rollout.md.\n\n"
        "exit codes: 0 every node healthy on the image (or the plan shown, or written),\n"
        "1 a node failed, was rolled back or not reached, or the image or a node was\n"
        "refused before anything was touched, 2 unusable input or a failing tool\n\n"
        "examples:\n"
        "  nestbuild rollout docker://registry.example.com/nodes/base:v2 \\\n"
        "      --inventory fleet.ini --trust ./node-trust --dry-run\n"
        "  nestbuild rollout docker://registry.example.com/nodes/base:v2 \\\n"
        "      --inventory fleet.ini --trust ./node-trust --canary 1 --max-unavailable 10% \\\n"
        "      --soak 10m --health-cmd 'systemctl is-active kubelet'\n"
        "  nestbuild rollout status\n"
        "  nestbuild rollout docker://registry.example.com/nodes/base:v2 --resume",
        epilog="")
    p.add_argument("image", metavar="IMAGE",
                   help="[docker://]REGISTRY/REPO:TAG (or @DIGEST); `status` shows the "
                        "recorded rollout")
    p.add_argument("--inventory", "-i", type=Path, metavar="INVENTORY",
                   help="an Ansible inventory (INI or YAML)")
    p.add_argument("--limit", metavar="PATTERN", help="an Ansible host pattern")
    p.add_argument("--trust", type=Path, metavar="DIR",
                   help="the nodes' trust files (`nestbuild node trust ... --out DIR`)")
    p.add_argument("--canary", type=int, default=1, metavar="N",
                   help="nodes in the first wave (default 1; 0: none)")
    p.add_argument("--max-unavailable", default="1", metavar="N|P%",
                   help="nodes per later wave: a count or a percentage (default 1)")
    p.add_argument("--soak", type=duration, default=0.0, metavar="DURATION",
                   help="wait after each wave but the last (e.g. 10m)")
    p.add_argument("--max-failures", type=int, default=0, metavar="N",
                   help="failed nodes tolerated before the rollout halts (default 0)")
    health_flags(p, where=" on the node")
    p.add_argument("--drain", action="store_true",
                   help="cordon and drain each node's Kubernetes node first (kubectl on this "
                        "machine); always uncordoned after")
    p.add_argument("--dry-run", action="store_true", help="show the plan; touch nothing")
    p.add_argument("--no-preflight", dest="preflight", action="store_false",
                   help="plan from the inventory alone: no node is read before its wave")
    p.add_argument("--resume", action="store_true",
                   help="continue the rollout recorded in --state")
    p.add_argument("--state", type=Path, default=Path(".nestbuild/rollout.json"),
                   metavar="FILE", help="the rollout's state (default .nestbuild/rollout.json)")
    p.add_argument("--engine", choices=("ansible", "kubernetes"), default="ansible")
    p.add_argument("--emit-playbook", type=Path, metavar="DIR",
                   help="write the playbook, role and vars file to DIR instead of running")
    p.add_argument("--emit-plan", type=Path, metavar="FILE",
                   help="--engine kubernetes: write the Plans to FILE")
    p.add_argument("--kubeconfig", type=Path, metavar="FILE",
                   help="--engine kubernetes: apply the Plans with this kubeconfig")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    registry_flags(p)
    p.set_defaults(func=cmd_rollout)


def cmd_rollout(args: argparse.Namespace) -> int:
    from nestbuild import Batching, RolloutOptions, rollout, rollout_status

    if args.image == "status":
        report = rollout_status(args.state)
        show(report, args.format)
        return 0
    if args.engine == "kubernetes" and args.emit_playbook:
        raise UsageError("--emit-playbook is for --engine ansible; use --emit-plan")
    quiet = args.quiet or args.format == "json"
    # a CI job cancelled (SIGTERM) stops the rollout as Ctrl-C does: the state says
    # "interrupted", and --resume continues it
    signal.signal(signal.SIGTERM, _interrupt)
    options = RolloutOptions(
        args.image, inventory=args.inventory, limit=args.limit,
        batching=Batching(args.canary, args.max_unavailable), soak=args.soak,
        max_failures=args.max_failures,
        health=health_spec(args),
        drain=args.drain, dry_run=args.dry_run, resume=args.resume, preflight=args.preflight,
        engine=args.engine, emit_playbook=args.emit_playbook, emit_plan=args.emit_plan,
        kubeconfig=args.kubeconfig, trust=args.trust, state_file=args.state,
        access=registry_access(args))
    live = None if quiet or not sys.stderr.isatty() else _LiveView()
    try:
        report = rollout(options, progress=None if quiet else (live.say if live else _say),
                         watch=live.update if live else None)
    finally:
        if live is not None:
            live.stop()
    show(report, args.format)
    return report.exit_code


#: How each node state shows in the live view.
_STYLE = {"pending": "dim", "running": "yellow", "healthy": "green", "rolled-back": "red",
          "failed": "bold red", "unreachable": "bold red"}


class _LiveView:
    """Waves and nodes as they move, redrawn in place on a terminal (CI logs get lines)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._live = Live(console=Console(stderr=True), auto_refresh=False, transient=False)
        self._live.start()

    def say(self, message: str) -> None:
        if not message.startswith("wave "):  # the view shows the nodes
            self._live.console.print(f"nestbuild: {printable(message)}", highlight=False)

    def update(self, state: Any) -> None:
        from rich.console import Group
        from rich.text import Text

        rows = []
        for i, wave in enumerate(state.waves):
            nodes = [state.nodes[n] for n in wave]
            done = sum(n.state == "healthy" for n in nodes)
            bad = sum(n.failed for n in nodes)
            active = any(n.state == "running" for n in nodes)
            label = "canary" if i == 0 and state.options.get("canary") else f"wave {i + 1}"
            line = Text(f"{label:>8}  {done}/{len(nodes)} healthy"
                        + (f", {bad} failed" if bad else ""),
                        style="bold" if active else ("red" if bad else ""))
            rows.append(line)
            if active or bad:
                row = Text("          ")
                for name, n in list(zip(wave, nodes, strict=True))[:40]:
                    row.append(f"{name} ", style=_STYLE.get(n.state, ""))
                if len(wave) > 40:
                    row.append(f"... ({len(wave) - 40} more)")
                rows.append(row)
        self._live.update(Group(*rows), refresh=True)

    def stop(self) -> None:
        self._live.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _say(message: str) -> None:
    print(f"nestbuild: {printable(message)}", file=sys.stderr, flush=True)


