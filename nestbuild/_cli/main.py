"""The ``nestbuild`` command: a thin argparse layer over the Python API.

Exit codes (stable): 0 success / passed, 1 the image failed policy or verification,
2 unusable input (missing image, malformed file, missing tool), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nestbuild import __version__
from nestbuild._cli import COMMAND_MODULES, COMMAND_OWNERS
from nestbuild._cli.common import (
    HelpFormatter,
    check_output,
    console,
    registry_access,
    registry_flags,
    write_output,
)
from nestbuild.errors import EXIT_FAILED, EXIT_OK, NestbuildError

FORMATS = ("table", "json")


def _console(stderr: bool = False) -> Any:
    out = console(stderr=stderr)
    stream = sys.stderr if stderr else sys.stdout

    def gone() -> None:
        out.quiet = True
        _reader_gone(stream)

    out.on_broken_pipe = gone  # instead of rich's exit 1: see _reader_gone
    return out


def _reader_gone(stream: Any) -> None:
    """The reader of ``stream`` went away (``nestbuild validate IMG | head -1``): the rest of
    the output goes nowhere and the exit code stays the command's own, validate's verdict
    (rich would exit 1 here, and a CI job under ``set -o pipefail`` would reject a good
    image)."""
    import os

    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, stream.fileno())
        os.close(fd)
    except (OSError, ValueError):  # not a file (an in-process caller's capture)
        pass


def _progress(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda _msg: None
    from rich.text import Text

    from nestbuild._util.terminal import printable

    err = _console(stderr=True)
    return lambda msg: err.print(Text("nestbuild: " + printable(msg), style="dim"))


def _write(text: str, output: Path | None) -> None:
    if output is None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            _reader_gone(sys.stdout)
    else:
        write_output(output, text, "--output")


# --- validate / diff -----------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from nestbuild import load_policy, validate

    check_output(args.output, "--output")
    pol = load_policy(args.policy, args.preset)
    report = validate(args.image, base_ref=args.base, policy=pol, as_base=args.as_base,
                      progress=_progress(args.quiet or args.format != "table"),
                      access=registry_access(args))
    if args.format == "json":
        _write(report.dumps(), args.output)
    elif args.format == "sarif":
        _write(json.dumps(report.to_sarif(), indent=2) + "\n", args.output)
    elif not _discarded(sys.stdout):
        report.render(_console())
    return EXIT_OK if report.passed else EXIT_FAILED


def _discarded(stream: Any) -> bool:
    """Whether ``stream`` is /dev/null: a table nobody reads is not rendered (rich's import
    and layout are most of a small validate); the exit code still says the verdict."""
    import os

    try:
        st, null = os.fstat(stream.fileno()), os.stat(os.devnull)
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (null.st_dev, null.st_ino)


def cmd_diff(args: argparse.Namespace) -> int:
    from nestbuild import diff

    check_output(args.output, "--output")
    report = diff(args.base, args.image, progress=_progress(args.quiet or args.format != "table"),
                  access=registry_access(args))
    if args.format == "json":
        _write(json.dumps(report.diff_to_json(), indent=2, ensure_ascii=False) + "\n",
               args.output)
    else:
        report.render(_console(), changes_limit=10_000, show_findings=False)
    return EXIT_OK


# --- rules ---------------------------------------------------------------------------------

def cmd_rules(args: argparse.Namespace) -> int:
    from nestbuild import rule_catalogue

    rules = rule_catalogue().values()
    if args.format == "json":
        sys.stdout.write(json.dumps([r.to_json() for r in rules], indent=2) + "\n")
        return EXIT_OK
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for col in ("rule", "default", "from", "what it checks"):
        table.add_column(col, overflow="fold")
    for r in rules:
        table.add_row(r.id, r.severity, r.origin, r.summary)
    _console().print(table)
    return EXIT_OK


# --- base ----------------------------------------------------------------------------------

def cmd_base_build(args: argparse.Namespace) -> int:
    from nestbuild import build_base

    built = build_base(args.name, tag=args.tag)
    if args.format == "json":
        sys.stdout.write(json.dumps({"name": built.name, "tag": built.tag,
                                     "image_id": built.image_id,
                                     "kernel": built.kernel}, indent=2) + "\n")
    else:
        print(f"built {built.tag} ({built.image_id[:12]}), kernel {built.kernel}")
    return EXIT_OK


def cmd_base_list(args: argparse.Namespace) -> int:
    from nestbuild import UPSTREAM_BASES, list_recipes

    recipes = list_recipes()
    upstream = UPSTREAM_BASES
    if args.format == "json":
        sys.stdout.write(json.dumps(
            [{"name": r.name, "kind": "recipe", "description": r.description,
              "path": str(r.path)} for r in recipes]
            + [{"name": u.name, "kind": "upstream", "reference": u.reference,
                "checks": u.checks} for u in upstream], indent=2) + "\n")
    else:
        print("local recipes (nestbuild base build NAME):")
        for r in recipes:
            print(f"  {r.name:14} {r.description}")
        print("known upstream bases (FROM them; what nestbuild checks):")
        for u in upstream:
            print(f"  {u.name:14} {u.reference}\n  {'':14} {u.checks}")
    return EXIT_OK


# --- completion ----------------------------------------------------------------------------

def cmd_completion(args: argparse.Namespace) -> int:
    """The completion script, made from the whole parser so it cannot drift from it."""
    import shtab

    parser = build_parser()
    sys.stdout.write(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


COMPLETION_HELP = textwrap.dedent("""\
    Print a completion script for SHELL, made from nestbuild's own parser: every command,
    action and option. Install it once:

      bash: nestbuild completion bash > ~/.local/share/bash-completion/completions/nestbuild
      zsh:  nestbuild completion zsh > ~/.zfunc/_nestbuild   (~/.zfunc in $fpath)
      fish: nestbuild completion fish > ~/.config/fish/completions/nestbuild.fish""")


# --- the parser ----------------------------------------------------------------------------

IMAGE_NAMES = textwrap.dedent("""\
    images are named as skopeo and podman name them:
      containers-storage:REF            buildah's/podman's local store (the default)
      docker://REG/REPO[:TAG|@DIGEST]   in a registry
      oci:DIR[:TAG]                     an OCI image layout directory
      oci-archive:FILE[:TAG]            an OCI layout in a tar file
    a bare name is looked up in local storage first, as podman does; a HOST/REPO:TAG that
    is not there fails with "did you mean docker://HOST/REPO:TAG?" (sign, verify, attest
    and tree, which need a registry or a layout, read HOST/REPO:TAG as cosign does)
    """)

EPILOG = IMAGE_NAMES + textwrap.dedent("""
    exit codes: 0 success (validate: passed), 1 the image failed a check (policy,
    signature, digest), 2 unusable input (missing image, malformed file, missing tool),
    130 interrupted; each command's --help says what its codes mean
    """)

VALIDATE_EPILOG = IMAGE_NAMES + textwrap.dedent("""
    exit codes: 0 passed (warnings allowed), 1 policy errors (or registry content that does
    not match its digest), 2 unusable input
    """)

DIFF_EPILOG = IMAGE_NAMES + textwrap.dedent("""
    exit codes: 0 shown, 1 registry content that does not match its digest, 2 unusable input
    """)


class CommandParser(argparse.ArgumentParser):
    """A command's parser (and its actions' parsers): it refuses the arguments it does not
    know itself. argparse leaves them to the top-level parser, whose usage line says nothing
    about the command's own options."""

    def parse_known_args(self, args: Iterable[str] | None = None, namespace: Any = None
                         ) -> tuple[Any, list[str]]:
        parsed, extra = super().parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed, extra


#: The commands this module registers itself: ``nestbuild validate ...`` builds only these
#: parsers (the other modules' parsers and imports would cost it ~0.1 s).
OWN_COMMANDS = frozenset({"validate", "diff", "rules", "base"})


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a command of a module in COMMAND_OWNERS, or of
    OWN_COMMANDS), just that module's commands, which parse and show ``nestbuild ONLY --help``
    identically."""
    owner = COMMAND_OWNERS.get(only) if only is not None else None
    parser = argparse.ArgumentParser(
        prog="nestbuild",
        description="Build, validate, sign and ship custom images of image-based "
                    "container-host operating systems (bootc, Fedora CoreOS, NestOS).",
        formatter_class=HelpFormatter,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"nestbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=CommandParser)

    def command(name: str, help: str, description: str, epilog: str = ""
                ) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, epilog=epilog,
                              formatter_class=HelpFormatter)

    if owner is not None:
        module = _command_module(owner)
        if module is not None:
            module.register(sub, command)
            return parser

    p = command(
        "validate", "check what a derived image changes against the policy",
        textwrap.dedent("""\
            Diff the image's derived layers against its base and apply the policy:
            by default (preset strict) only /etc and /var may change, plus lints for what
            breaks or endangers nodes (bootc's lints and nestbuild's; see 'nestbuild rules').

            The base is --base, else the image's org.opencontainers.image.base.* annotations
            (buildah writes them), else its ostree.final-diffid label. The base's file index is
            cached, so validating again reads only the derived layers.

            examples:
              nestbuild validate localhost/my-node:latest
              nestbuild validate oci:./out:v2 --base oci:./base --format json
              nestbuild validate my-node --preset packages --format sarif -o nestbuild.sarif"""),
        epilog=VALIDATE_EPILOG,
    )
    p.add_argument("image", metavar="IMAGE", help="the derived image")
    p.add_argument("--base", metavar="REF", help="the base image (default: found from the image)")
    p.add_argument("--as-base", action="store_true",
                   help="check IMAGE as a base image: bootc's structural lints on the whole "
                        "tree, no path policy")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", type=Path, metavar="FILE",
                   help="policy YAML (default: policy: in ./nestbuild.yaml, else strict)")
    g.add_argument("--preset", choices=("strict", "packages", "permissive"),
                   help="a built-in policy")
    p.add_argument("--format", choices=(*FORMATS, "sarif"), default="table")
    p.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="write json/sarif output to FILE")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    registry_flags(p)
    p.set_defaults(func=cmd_validate)

    p = command(
        "diff", "show what an image changes against a base",
        "Print the changeset alone: every path added, modified, deleted or changed in\n"
        "metadata only, with the layer that changed it. No policy is applied.\n\n"
        "example:\n  nestbuild diff localhost/nestbuild/mini:latest localhost/my-node:latest",
        epilog=DIFF_EPILOG,
    )
    p.add_argument("base", metavar="BASE", help="the base image")
    p.add_argument("image", metavar="IMAGE", help="the derived image")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("-o", "--output", type=Path, metavar="FILE")
    p.add_argument("-q", "--quiet", action="store_true")
    registry_flags(p)
    p.set_defaults(func=cmd_diff)

    p = command("rules", "list the validation rules", "List every rule id with its default "
                "severity; policies set severities by these ids.",
                epilog="exit codes: 0 listed, 2 unusable arguments\n")
    p.add_argument("--format", choices=FORMATS, default="table")
    p.set_defaults(func=cmd_rules)

    p = command("base", "build and list base images",
                "Base images: build one from a recipe (base-images/), or list the recipes and\n"
                "the known upstream bases.",
                epilog="exit codes: 0 done, 2 unusable input or a failing tool\n")
    base_sub = p.add_subparsers(dest="base_command", metavar="ACTION", required=True)
    b = base_sub.add_parser("build", help="build a base image from a recipe",
                            description="Build a base from its recipe into local storage, "
                                        "offline.\n\nexample:\n  nestbuild base build mini",
                            epilog="exit codes: 0 built, 2 unusable input or a failing tool\n",
                            formatter_class=HelpFormatter)
    b.add_argument("name", nargs="?", default="mini", help="recipe name (default: mini)")
    b.add_argument("-t", "--tag", help="image name (default: localhost/nestbuild/NAME:latest)")
    b.add_argument("--format", choices=FORMATS, default="table")
    b.set_defaults(func=cmd_base_build)
    b = base_sub.add_parser("list", help="list base image recipes",
                            description="List the local recipes (nestbuild base build NAME) "
                                        "and the known\nupstream bases, with what nestbuild "
                                        "checks of each.",
                            epilog="exit codes: 0 listed, 2 unusable arguments\n",
                            formatter_class=HelpFormatter)
    b.add_argument("--format", choices=FORMATS, default="table")
    b.set_defaults(func=cmd_base_list)

    for name in () if only in OWN_COMMANDS else COMMAND_MODULES:
        module = _command_module(name)
        if module is not None:
            module.register(sub, command)

    p = command("completion", "print a shell completion script (bash, zsh, fish)",
                COMPLETION_HELP, epilog="exit codes: 0 printed, 2 unusable arguments\n")
    p.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL",
                   help="bash, zsh or fish")
    p.set_defaults(func=cmd_completion)
    return parser


def _command_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None  # a command group not written yet


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except NestbuildError as exc:
        from rich.text import Text

        from nestbuild._util.terminal import printable

        # The message often quotes what an image, a registry or a file said: plain text on
        # one line, so none of it can style, break or rewrite what the terminal shows.
        err = _console(stderr=True)
        err.print(Text.assemble(("error:", "bold red"), " ", printable(exc.message)),
                  highlight=False, soft_wrap=True)
        if exc.detail:
            err.print(Text("\n".join(map(printable, exc.detail.splitlines())), style="dim"),
                      highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except BrokenPipeError:  # a command's own output cut short: not its failure
        _reader_gone(sys.stdout)
        return EXIT_OK
