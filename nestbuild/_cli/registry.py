"""``nestbuild login``, ``logout``, ``push``, ``pull`` and ``inspect``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from nestbuild._cli.common import (
    check_output,
    console,
    printable,
    registry_access,
    registry_flags,
    write_output,
)
from nestbuild.errors import EXIT_FAILED, EXIT_OK, UsageError

PASSWORD_ENV = "NESTBUILD_REGISTRY_PASSWORD"


def _password(args: argparse.Namespace) -> str:
    """From stdin (--password-stdin), the environment, or a prompt; never from argv."""
    if args.password_stdin:
        text = sys.stdin.readline().rstrip("\r\n")
    elif os.environ.get(PASSWORD_ENV):
        text = os.environ[PASSWORD_ENV]
    elif sys.stdin.isatty():
        text = getpass.getpass(f"Password for {args.username}@{args.registry}: ")
    else:
        raise UsageError(f"no password: use --password-stdin or set {PASSWORD_ENV}")
    if not text:
        raise UsageError("empty password")
    return text


def cmd_login(args: argparse.Namespace) -> int:
    from nestbuild import RegistryAccess, login

    access = RegistryAccess(authfile=args.authfile, cert_dir=args.cert_dir,
                            tls_verify=args.tls_verify)
    stored = login(args.registry, args.username, lambda: _password(args), access=access)
    print(f"Login Succeeded: {stored.host} (credentials in {stored.authfile})")
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    from nestbuild import logout

    removed = logout(args.registry, authfile=args.authfile)
    if removed.authfile is None:
        print(f"not logged in to {removed.host}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Removed login credentials for {removed.host} from {removed.authfile}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from nestbuild import PushOptions, PushRefused, push

    check_output(args.digestfile, "--digestfile")
    options = PushOptions(
        image=args.image, destination=args.dest, tags=args.tag or (), sign_key=args.sign_key,
        passphrase_file=args.passphrase_file, validate=args.validate, policy_file=args.policy,
        preset=args.preset, compression=args.compression, jobs=args.jobs,
        access=registry_access(args), quiet=args.quiet or args.format == "json")
    try:
        result = push(options)
    except PushRefused as refused:
        report = refused.report
        if args.format == "json":
            sys.stdout.write(report.dumps())
        else:
            report.render(_console())
        print(f"{args.image}: failed validation ({report.errors} errors); nothing pushed "
              "(--no-validate pushes anyway)", file=sys.stderr)
        return EXIT_FAILED
    if args.digestfile:
        write_output(args.digestfile, result.digest + "\n", "--digestfile")
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        print(result.reference)
        _print_attached(result.signatures, result.attestations)
    return EXIT_OK


def _print_attached(signatures: list[Any], attestations: list[Any]) -> None:
    """What push signed and attested, one line each, after the reference (the first line)."""
    for s in signatures:
        state = "signed" if s.added else "already signed"
        what = s.digest[:19] + (f" ({s.platform})" if s.platform else "")
        print(f"  {state}: {what} as {printable(s.docker_reference)} with key "
              f"{(s.key_id or '?')[:19]} -> {s.tag} ({(s.manifest_digest or '?')[:19]})")
    for a in attestations:
        state = "attested" if a.added else "already attested"
        print(f"  {state}: {a.digest[:19]} {printable(a.predicate_type)} with key "
              f"{(a.key_id or '?')[:19]} -> {a.tag} ({(a.manifest_digest or '?')[:19]})")


def cmd_pull(args: argparse.Namespace) -> int:
    from nestbuild import pull

    result = pull(args.image, args.dest, access=registry_access(args), jobs=args.jobs,
                  quiet=args.quiet or args.format == "json")
    if args.format == "json":
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
    else:
        print(f"{result.destination} {result.digest}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from nestbuild import inspect

    doc = inspect(args.image, access=registry_access(args))
    if args.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return EXIT_OK
    from rich.table import Table
    from rich.text import Text

    def text(value: object, style: str = "") -> Text:
        """What the image or the registry says, shown as it is (see nestbuild._util.terminal)."""
        return Text(printable(str(value)), style=style)

    console = _console()
    console.print(Text.assemble(text(doc["name"], "bold"), "  ", doc["digest"]))
    console.print(text(f"{doc['os']}/{doc['architecture']}  created {doc['created']}  "
                       f"bootable: {'yes' if doc['bootable'] else 'NO'}"))
    table = Table("layer", "size", "media type")
    for layer in doc["layers"]:
        table.add_row(text(layer["digest"][:19]), text(layer["size"]), text(layer["mediaType"]))
    console.print(table)
    for k, v in sorted(doc["labels"].items()):
        console.print(text(f"  label {k}={v}"))
    for kind in ("signatures", "attestations", "sboms", "referrers"):
        for a in doc.get(kind, []):
            about = str(a["subject"])[:19] + (f" ({a['platform']})" if a["platform"] else "")
            content = [str(layer.get("identity") or layer.get("predicate_type")
                           or layer.get("media_type")) for layer in a["layers"]]
            console.print(text(f"  {a['kind']} of {about}: {a['tag'] or ''} "
                               f"{str(a['digest'])[:19]} {a['artifact_type'] or ''} "
                               f"{', '.join(content)}".rstrip()))
    return EXIT_OK


def _console() -> Any:
    return console()


def register(sub: Any, command: Any) -> None:
    p = command("login", "store credentials for a registry (containers auth.json, 0600)",
                textwrap.dedent("""\
                    Check USER's password against REGISTRY, then store it where skopeo, podman
                    and nestbuild look (--authfile, REGISTRY_AUTH_FILE, or
                    $XDG_RUNTIME_DIR/containers/auth.json), written 0600. The password is read
                    from stdin (--password-stdin), NESTBUILD_REGISTRY_PASSWORD or a prompt;
                    there is no flag for it, so it never shows in ps or shell history.

                    example:
                      printf %s "$TOKEN" | nestbuild login registry.example.com -u ci \\
                          --password-stdin"""),
                "exit codes: 0 stored, 2 refused credentials or unusable input\n")
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("-u", "--username", metavar="USER")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of stdin")
    registry_flags(p)
    p.set_defaults(func=cmd_login)

    p = command("logout", "remove stored credentials for a registry",
                "Remove REGISTRY's entry from the auth file login writes.",
                "exit codes: 0 removed, 1 not logged in, 2 unusable input\n")
    p.add_argument("registry", metavar="REGISTRY")
    p.add_argument("--authfile", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_logout)

    p = command("push", "push an image to a registry as OCI, then sign and attest it",
                textwrap.dedent("""\
                    Validate IMAGE (refused if it fails the policy), push it to DEST as OCI
                    (blobs in parallel, those the registry has are skipped or mounted; a broken
                    upload resumes), tag it, and with --sign-key sign every tag and attach the
                    validation report as an in-toto attestation (cosign's .sig and .att). Prints
                    HOST/REPO@sha256:..., the reference to deploy.

                    IMAGE: containers-storage (default), oci:DIR[:TAG], oci-archive:FILE[:TAG]
                    (an OCI layout index is pushed whole, its bytes unchanged). A bare name is
                    looked up in local storage; HOST/REPO:TAG that is not there fails with
                    "did you mean docker://HOST/REPO:TAG?".
                    exit codes: 0 pushed, 1 validation failed (nothing pushed),
                    2 unusable input, registry or credentials problem

                    examples:
                      nestbuild push localhost/my-node:v1 registry.example.com/fleet/node:v1
                      NESTBUILD_PASSWORD=... nestbuild push my-node:v1 reg/fleet/node:v1 \\
                          --sign-key cosign.key --digestfile digest.txt --format json"""),
                "")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("dest", nargs="?", metavar="DEST",
                   help="[docker://]HOST/REPO[:TAG] (default: IMAGE's name, if it has a host)")
    p.add_argument("--tag", action="append", metavar="TAG", help="also tag as TAG (repeatable)")
    p.add_argument("--sign-key", type=Path, metavar="K.key",
                   help="sign (and attest the validation report) with this cosign key")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="key passphrase file (else NESTBUILD_PASSWORD/COSIGN_PASSWORD or a "
                        "prompt)")
    p.add_argument("--compression", choices=("gzip", "zstd", "none"), default="gzip",
                   help="for layers from local storage (default gzip: every node reads it)")
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="parallel blob uploads")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="push without validating first")
    p.add_argument("--policy", type=Path, metavar="FILE", help="policy file for validation")
    p.add_argument("--preset", metavar="NAME", help="policy preset (default strict)")
    p.add_argument("--digestfile", type=Path, metavar="FILE",
                   help="write the pushed manifest digest to FILE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    registry_flags(p)
    p.set_defaults(func=cmd_push)

    p = command("pull", "fetch an image from a registry (digest-verified)",
                textwrap.dedent("""\
                    Fetch IMAGE (this machine's platform from a multi-arch index) into DEST:
                    containers-storage (default, under IMAGE's name) or oci:DIR[:TAG]. Every
                    blob is checked against its digest; a corrupt one fails the pull.

                    example:
                      nestbuild pull docker://registry.example.com/fleet/node:v1 oci:./node:v1"""),
                "exit codes: 0 pulled, 1 a blob or manifest failed its digest, 2 unusable input "
                "or registry problem\n")
    p.add_argument("image", metavar="IMAGE", help="[docker://]HOST/REPO[:TAG|@DIGEST]")
    p.add_argument("dest", nargs="?", metavar="DEST")
    p.add_argument("--jobs", type=int, default=4, metavar="N")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("-q", "--quiet", action="store_true")
    registry_flags(p)
    p.set_defaults(func=cmd_pull)

    p = command("inspect", "show an image's manifest, config and bootability",
                textwrap.dedent("""\
                    Show what skopeo inspect shows (digest, platform, labels, layers) plus
                    whether the image is bootable and, in a registry or an OCI layout, its
                    signatures, attestations, SBOMs and referrers (as 'nestbuild tree').

                    IMAGE: containers-storage (default), docker://HOST/REPO[:TAG|@DIGEST],
                    oci:DIR[:TAG], oci-archive:FILE[:TAG]. A bare name is looked up in local
                    storage first, as podman does; HOST/REPO:TAG that is not there fails with
                    "did you mean docker://HOST/REPO:TAG?" (nestbuild tree, sign and verify,
                    which cannot read local storage, take HOST/REPO:TAG as a registry image).

                    example:
                      nestbuild inspect docker://registry.example.com/fleet/node:v1 --format json
                    """),
                "exit codes: 0 shown, 1 registry content that does not match its digest,\n"
                "2 no such image or registry problem\n")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    registry_flags(p)
    p.set_defaults(func=cmd_inspect)
