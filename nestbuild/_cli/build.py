"""``nestbuild build`` and ``nestbuild init``, over the public API (the ``building`` names)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild import settings
from nestbuild._cli.common import registry_access, registry_flags
from nestbuild.errors import EXIT_FAILED, EXIT_OK, UsageError

#: The settings whose flags come from the settings table (``image`` and ``pull`` have flags of
#: their own here: several ``-t``, and buildah's pull policies).
BUILD_KEYS = ("containerfile", "context", "engine", "build-args", "labels", "secrets",
              "layers", "no-cache", "platform", "validate", "base")
PULL_POLICIES = ("missing", "always", "never")


def register(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "build", "build a bootable derived image from a Containerfile, then validate it",
        "Build the Containerfile with buildah (or the Docker engine), on a bootable base that\n"
        "is checked and pinned by digest first, then validate the result with the project's\n"
        "policy. Settings come from ./nestbuild.yaml; flags override them.\n\n"
        "exit codes: 0 built and passed, 1 the build or the validation failed (the image\n"
        "stays under its tag for inspection), 2 unusable input or a missing tool\n\n"
        "examples:\n"
        "  nestbuild build -t localhost/my-node:latest .\n"
        "  nestbuild build --build-arg BASE=localhost/nestbuild/mini:latest --format json\n"
        "  nestbuild build --engine docker --no-validate\n"
        "  nestbuild build -t localhost/node:v2 -t localhost/node:latest \\\n"
        "      --authfile auth.json --cert-dir certs.d/reg.example.com  # a base in a registry",
        epilog="",
    )
    p.add_argument("context", nargs="?", type=Path, metavar="CONTEXT",
                   help="build context directory [nestbuild.yaml: context] (default: .)")
    p.add_argument("-t", "--tag", dest="tags", action="append", metavar="IMAGE",
                   help="name (and tag) of the image to build; repeat for more names "
                        "[nestbuild.yaml: image]")
    settings.add_arguments(p, BUILD_KEYS)
    p.add_argument("--pull", nargs="?", const="always", choices=PULL_POLICIES,
                   metavar="POLICY",
                   help="when to pull the base: missing (the default: only if it is not in "
                        "local storage), always (--pull alone), never [nestbuild.yaml: pull: "
                        "true is always]")
    p.add_argument("--kargs", action="append", metavar="PROFILE",
                   help="add kernel/kargs/PROFILE.toml to /usr/lib/bootc/kargs.d (repeatable) "
                        "[nestbuild.yaml: kernel.kargs]")
    p.add_argument("--modules", action="append", metavar="PROFILE",
                   help="add kernel/modules/PROFILE.yaml load/blacklist files (repeatable) "
                        "[nestbuild.yaml: kernel.modules]")
    p.add_argument("--trust", dest="trust_repo", metavar="REG/REPO",
                   help="bake node trust files for REG/REPO into /etc [nestbuild.yaml: trust]")
    p.add_argument("--trust-key", action="append", type=Path, metavar="K.pub",
                   help="public key for --trust (repeatable, for rotation)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--digestfile", type=Path, metavar="FILE",
                   help="write the image's manifest digest to FILE")
    p.add_argument("--iidfile", type=Path, metavar="FILE",
                   help="write the image's id (sha256:...) to FILE, as buildah does")
    p.add_argument("-v", "--verbose", action="store_true", help="show the full build log")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    registry_flags(p)
    p.add_argument("--creds", metavar="USER:PASSWORD",
                   help="credentials for the base's registry (kept out of every command "
                        "line; prefer --authfile or nestbuild login)")
    p.set_defaults(func=cmd_build)

    p = command("init", "write a starter nestbuild.yaml, Containerfile and policy",
                "Write a starter project into DIR (default: the current directory).\n\n"
                "example:\n  nestbuild init --base quay.io/fedora/fedora-bootc:41 my-node",
                epilog="exit codes: 0 written, 2 unusable input (existing files without "
                       "--force)\n")
    p.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR")
    p.add_argument("--base", default=None, metavar="REF",
                   help="the bootable base image (default: the mini base)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_init)


class _Progress:
    """The current build step and elapsed time on a terminal; plain step lines otherwise."""

    def __init__(self, verbose: bool, quiet: bool) -> None:
        self.verbose, self.quiet = verbose, quiet
        self.start = time.monotonic()
        self.step = "starting"
        self.status: Any = None
        self.err: Any = None
        if quiet:
            return  # nothing to show: rich is not even loaded
        from rich.console import Console

        self.err = Console(stderr=True, highlight=False)
        if self.err.is_terminal and not verbose:
            self.status = self.err.status(self._text())
            self.status.start()

    def _text(self) -> str:
        return f"[bold]{self.step}[/bold]  [dim]{time.monotonic() - self.start:.1f}s[/dim]"

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self.verbose:
            self.err.print(text, markup=False, highlight=False)
        is_step = text.startswith("STEP ") or text.startswith("Step ")
        if is_step:
            self.step = text[:100]
            if self.status is not None:
                self.status.update(self._text())
            elif not self.verbose:
                self.err.print(f"{text[:160]}  ({time.monotonic() - self.start:.1f}s)",
                               markup=False, highlight=False)
        elif self.status is not None:
            self.status.update(self._text())

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err.print(f"[dim]nestbuild: {text}[/dim]")

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()


def cmd_build(args: argparse.Namespace) -> int:
    from nestbuild import BuildOptions, build, node_files, project, project_policy
    from nestbuild._cli.common import check_output, write_output

    check_output(args.digestfile, "--digestfile")
    check_output(args.iidfile, "--iidfile")
    proj = project.load()
    merged = settings.merge(proj, args, BUILD_KEYS)
    context = args.context or merged["context"] or Path(".")
    tags = list(args.tags or [])
    opts = BuildOptions(
        context=Path(context), containerfile=merged["containerfile"],
        image=tags.pop(0) if tags else proj.get("image"), tags=tags,
        engine=merged["engine"], build_args=merged["build-args"], labels=merged["labels"],
        secrets=merged["secrets"], layers=bool(merged["layers"]),
        no_cache=bool(merged["no-cache"]),
        pull_policy=args.pull or ("always" if proj.get("pull") else "missing"),
        access=registry_access(args), credentials=args.creds,
        platform=merged["platform"], validate=bool(merged["validate"]),
    )
    if args.trust_repo and not args.trust_key:
        raise UsageError("--trust REPO needs --trust-key K.pub")
    # kernel profiles and node trust files selected by flags or nestbuild.yaml
    opts.extra_files = node_files(
        kargs=args.kargs or [], modules=args.modules or [], trust_repo=args.trust_repo,
        trust_keys=args.trust_key or [], project_nodes=proj.nodes,
        project_source=str(proj.source))
    pol = project_policy() if opts.validate else None
    progress = _Progress(args.verbose, args.quiet or args.format == "json")
    try:
        result = build(opts, policy=pol, log=progress.line, note=progress.note)
    finally:
        progress.stop()
    if args.digestfile is not None:
        write_output(args.digestfile, result.digest, "--digestfile")
    if args.iidfile is not None:
        write_output(args.iidfile, f"sha256:{result.image_id}", "--iidfile")
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        from nestbuild._cli.common import console

        out = console()
        if args.quiet and result.report is not None:
            result.report.render_verdict(out)  # quiet: the verdict line only
            return EXIT_OK if result.passed else EXIT_FAILED
        if result.report is not None:
            result.report.render(out)
        out.print(f"[bold]{result.image}[/bold]  id {result.image_id[:12]}  {result.digest}  "
                  f"[dim]({result.seconds:.1f}s, base {result.base_name}@"
                  f"{result.base_digest[:19]})[/dim]")
    return EXIT_OK if result.passed else EXIT_FAILED


def cmd_init(args: argparse.Namespace) -> int:
    from nestbuild import init_project

    for path in init_project(args.directory, base=args.base, force=args.force):
        print(f"wrote {path}")
    return EXIT_OK
