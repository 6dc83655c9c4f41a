"""``nestbuild keygen``, ``sign``, ``verify`` and ``attest``: cosign-compatible, natively.

Passphrases come from NESTBUILD_PASSWORD / COSIGN_PASSWORD, ``--passphrase-file`` or a prompt,
never from the command line, where any local user could read them in the process list.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nestbuild._cli.common import registry_access, registry_flags
from nestbuild.errors import EXIT_FAILED, EXIT_OK, UsageError

Command = Callable[..., argparse.ArgumentParser]

IMAGES = textwrap.dedent("""\
    images:
      [docker://]REG/REPO[:TAG|@DIGEST] in a registry (the name nodes pull); as in cosign,
                                        a name that starts with a registry host (a "." or
                                        a port: REG.example.com/..., 127.0.0.1:5000/...)
                                        is a registry image without docker:// as well
      oci:DIR[:TAG]                     an OCI image layout (sign needs --identity)
    local storage (containers-storage, localhost/NAME) holds no signatures: push first
    """)

PASSPHRASE = ("passphrase: NESTBUILD_PASSWORD or COSIGN_PASSWORD, else --passphrase-file, "
              "else a prompt\n")

#: What a signing command's exit codes mean (1: another writer kept replacing the attachment
#: tag, or the registry served content that does not match its digest).
WRITE_EXIT_CODES = ("exit codes: 0 done, 1 the registry did not keep the result or served "
                    "content\nthat does not match its digest, 2 unusable input\n")


def _annotations(pairs: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--annotation {pair!r}: expected KEY=VALUE")
        out[name] = value
    return out


def _short(digest: str) -> str:
    return digest[: len("sha256:") + 12]


# --- keygen --------------------------------------------------------------------------------

def cmd_keygen(args: argparse.Namespace) -> int:
    from nestbuild import generate_key_pair

    made = _make_key_directory(args.output_prefix.parent)
    try:
        pair = generate_key_pair(args.output_prefix, force=args.force,
                                 passphrase_file=args.passphrase_file)
    except BaseException:
        for d in reversed(made):  # no key written: nor the directories made for it
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    print(f"private key: {pair.private} (encrypted, mode 0600)")
    print(f"public key:  {pair.public} (give this to nodes and verifiers)")
    return EXIT_OK


def _make_key_directory(directory: Path) -> list[Path]:
    """``--output-prefix keys/release`` with no ``keys/`` yet: the directories nestbuild
    makes for a private key are its owner's alone (0700); existing ones are left as they are.
    The ones made, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    made: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
            made.append(d)
            d.chmod(0o700)  # whatever the umask
        except FileExistsError:
            pass
        except OSError as exc:
            for m in reversed(made):
                with contextlib.suppress(OSError):
                    m.rmdir()
            raise UsageError(f"--output-prefix: cannot create {d} ({exc.strerror})") from None
    if not directory.is_dir():
        raise UsageError(f"--output-prefix: {directory} is not a directory")
    return made


# --- sign ----------------------------------------------------------------------------------

def _local_target(args: argparse.Namespace, *, need_identity: bool = True) -> Any:
    """A layout target opened (and checked) before the passphrase is asked for: a typo
    should not cost a prompt. Registry targets are opened later, while the key decrypts."""
    from nestbuild import open_target, parse_reference

    if parse_reference(args.image, bare="registry").transport == "docker":
        return None

    return open_target(args.image, identity=args.identity, registry=registry_access(args),
                       require_identity=need_identity)


def cmd_sign(args: argparse.Namespace) -> int:
    annotations = _annotations(args.annotation)
    target = _local_target(args)
    # Decrypted in a thread while the registry is reached and read: scrypt is most of a run.
    # (``nestbuild`` itself started it before parsing the command line; see __main__.)
    from nestbuild import start_loading_key

    key = start_loading_key(args.key, passphrase_file=args.passphrase_file)
    from nestbuild import open_target, sign

    if target is None:
        target = open_target(args.image, identity=args.identity, registry=registry_access(args))
    results = sign(target, key, annotations=annotations)
    if args.format == "json":
        rows = [r.to_json() for r in results]
        sys.stdout.write(json.dumps({"image": args.image, "signatures": rows}, indent=2) + "\n")
        return EXIT_OK
    for r in results:
        what = _short(r.digest) + (f" ({r.platform})" if r.platform else "")
        state = "signed" if r.added else "already signed by this key"
        print(f"{state}: {what} as {r.docker_reference} -> {r.tag}")
    return EXIT_OK


# --- verify --------------------------------------------------------------------------------

def cmd_verify(args: argparse.Namespace) -> int:
    from nestbuild import load_public_keys, open_target, verify

    public_keys = load_public_keys(args.key)
    target = open_target(args.image, identity=args.identity, registry=registry_access(args))
    report = verify(target, public_keys, rule=args.signed_identity)
    if args.format == "json":
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        _print_report(report)
    if report.passed:
        return EXIT_OK
    sys.stderr.write(f"error: not verified: {report.cause()}\n")
    return EXIT_FAILED


def _print_report(report: Any) -> None:
    out = sys.stdout
    rule = report.rule + (f" for {report.identity}" if report.identity else "")
    out.write(f"{report.image}  (keys: {', '.join(report.keys)}; identity rule: {rule})\n")
    for m in report.manifests:
        what = _short(m.digest) + (f" ({m.platform})" if m.platform else "")
        out.write(f"  {what}: {'verified' if m.verified else 'NOT VERIFIED'}\n")
        if m.problem:
            out.write(f"    {m.problem}\n")
        for s in m.signatures:
            out.write(f"    {'ok ' if s.verified else 'bad'} signature {s.layer}: {s.reason}\n")
        if m.other_attachments:
            out.write(f"    ({m.other_attachments} other attachment(s) ignored)\n")
        for a in m.attestations:
            out.write(f"    {'ok ' if a.verified else 'bad'} attestation {a.layer} "
                      f"({a.predicate_type}): {a.reason}\n")
    for note in report.notes:
        out.write(f"  note: {note}\n")
    if report.passed:
        out.write("verified\n")
    else:
        failed = [m for m in report.manifests if not m.verified]
        out.write(f"not verified: {len(failed)} of {len(report.manifests)} manifest(s) have "
                  "no signature that verifies\n")


# --- attest --------------------------------------------------------------------------------

def cmd_attest(args: argparse.Namespace) -> int:
    from nestbuild import attest, open_target, predicate_type_uri, start_loading_key

    predicate_type = predicate_type_uri(args.type)
    try:
        predicate = json.loads(args.predicate.read_bytes())
    except OSError as exc:
        raise UsageError(f"cannot read predicate {args.predicate}: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{args.predicate} is not a JSON document") from None
    target = _local_target(args, need_identity=False)
    key = start_loading_key(args.key, passphrase_file=args.passphrase_file)
    if target is None:
        target = open_target(args.image, identity=args.identity, registry=registry_access(args))
    result = attest(target, key, predicate, predicate_type)
    if args.format == "json":
        sys.stdout.write(json.dumps({"image": args.image, **result.to_json()}, indent=2) + "\n")
    else:
        state = "attested" if result.added else "already attested (same statement, same key)"
        print(f"{state}: {_short(result.digest)} {predicate_type} -> {result.tag}")
    return EXIT_OK


# --- tree, download ------------------------------------------------------------------------

def cmd_tree(args: argparse.Namespace) -> int:
    from nestbuild import tree

    found = tree(args.image, registry=registry_access(args))
    if args.format == "json":
        sys.stdout.write(json.dumps(found.to_json(), indent=2) + "\n")
        return EXIT_OK
    from nestbuild._cli.common import printable

    # Plain lines (as verify prints), one per attachment and one per layer: grep finds them.
    out = [f"{printable(found.image)}  {found.digest}"]
    if not found.attachments:
        out.append("  no signatures, attestations, SBOMs or referrers")
    for a in found.attachments:
        about = _short(a.subject) + (f" ({a.platform})" if a.platform else "")
        where = printable(a.tag) if a.tag else printable(a.artifact_type or "artifact")
        out.append(f"  {a.kind} of {about}: {where} {a.digest}")
        out.extend(f"    {printable(_layer_text(layer))}" for layer in a.layers)
    out.extend(f"  note: {printable(note)}" for note in found.notes)
    sys.stdout.write("\n".join(out) + "\n")
    return EXIT_OK


def _layer_text(layer: Any) -> str:
    """One signature, attestation or SBOM: what it is and what it claims (not verified)."""
    if layer.identity:
        return f"{_short(layer.digest)} signs for {layer.identity}"
    if layer.predicate_type:
        return f"{_short(layer.digest)} {layer.predicate_type}"
    return f"{_short(layer.digest)} {layer.media_type}"


def cmd_download_attestation(args: argparse.Namespace) -> int:
    from nestbuild import download_attestations

    found = download_attestations(args.image, predicate_type=args.predicate_type,
                                  registry=registry_access(args))
    for statement in found:  # one JSON document a line, as cosign prints them
        sys.stdout.write(json.dumps(statement.statement, separators=(",", ":")) + "\n")
    if not found:
        what = f" of type {args.predicate_type}" if args.predicate_type else ""
        sys.stderr.write(f"error: {args.image}: no attestations{what}\n")
        return EXIT_FAILED
    return EXIT_OK


# --- registration --------------------------------------------------------------------------

def register(sub: Any, command: Command) -> None:
    p = command(
        "keygen", "create a cosign-compatible signing key pair",
        textwrap.dedent("""\
            Write PREFIX.key (ECDSA P-256, encrypted as cosign encrypts it, mode 0600) and
            PREFIX.pub. cosign, containers/image (bootc, rpm-ostree, podman) and nestbuild
            all read them. Existing files are never replaced without --force.

            example:
              NESTBUILD_PASSWORD=... nestbuild keygen --output-prefix keys/release"""),
        epilog="passphrase: NESTBUILD_PASSWORD or COSIGN_PASSWORD, else --passphrase-file, "
               "else a prompt\nexit codes: 0 written, 2 unusable input or existing files\n",
    )
    p.add_argument("--output-prefix", type=Path, default=Path("cosign"), metavar="PATH",
                   help="write PATH.key and PATH.pub (default: cosign)")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="read the passphrase from FILE's first line")
    p.set_defaults(func=cmd_keygen)

    p = command(
        "sign", "sign an image as cosign does, for nodes' policy.json",
        textwrap.dedent("""\
            Sign the image's manifest digest (and each platform manifest of a multi-arch
            index) and store the signature as cosign does, under the tag sha256-DIGEST.sig
            in the same repository. The signature names REG/REPO:TAG, which both the
            default containers policy (matchRepoDigestOrExact) and matchRepository accept.
            Signing again with the same key adds nothing.

            examples:
              nestbuild sign docker://registry.example.com/nodes/web:v3 --key cosign.key
              nestbuild sign oci:./out:v3 --key cosign.key \\
                  --identity registry.example.com/nodes/web:v3"""),
        epilog=IMAGES + "\n" + PASSPHRASE + WRITE_EXIT_CODES,
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--key", type=Path, required=True, metavar="FILE",
                   help="private key (cosign.key, or a PEM PKCS#8 / EC key)")
    p.add_argument("--identity", metavar="REG/REPO[:TAG]",
                   help="the name to sign for (default: the image's own; required for oci:)")
    p.add_argument("-a", "--annotation", action="append", metavar="KEY=VALUE",
                   help="add to the payload's optional section, as cosign sign -a")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    registry_flags(p)
    p.set_defaults(func=cmd_sign)

    p = command(
        "verify", "check an image's signatures as a node would",
        textwrap.dedent("""\
            Check every signature of the image as containers/image does: the signature must
            be made by one of the keys over the exact payload, the payload must parse
            strictly, name this manifest's digest, and name an identity the rule accepts.
            Each signature is reported with the reason it did or did not verify; a
            multi-arch image needs a verified signature for the index and every platform.
            Exit 1 when that is not so.

            examples:
              nestbuild verify docker://registry.example.com/nodes/web:v3 --key cosign.pub
              nestbuild verify oci:./out:v3 --key cosign.pub --format json"""),
        epilog=IMAGES + "\nexit codes: 0 verified, 1 not verified, 2 unusable input\n",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--key", type=Path, action="append", required=True, metavar="FILE",
                   help="public key (cosign.pub); repeat for several (any one may sign)")
    p.add_argument("--signed-identity", default="matchRepoDigestOrExact",
                   choices=("matchRepoDigestOrExact", "matchRepository", "matchExact"),
                   help="the policy.json signedIdentity rule to apply (default: "
                        "matchRepoDigestOrExact, containers/image's default)")
    p.add_argument("--identity", metavar="REG/REPO[:TAG]",
                   help="the name the node pulls (default: the image's own; for oci: "
                        "the identity is not checked without it)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    registry_flags(p)
    p.set_defaults(func=cmd_verify)

    p = command(
        "attest", "attach a signed in-toto attestation, as cosign attest does",
        textwrap.dedent("""\
            Wrap the predicate (a JSON file) in an in-toto statement about the image's
            manifest digest, sign it in a DSSE envelope and store it under the tag
            sha256-DIGEST.att, where cosign verify-attestation finds it.

            example:
              nestbuild attest docker://registry.example.com/nodes/web:v3 --key cosign.key \\
                  --predicate report.json --type https://nestbuild.dev/validation/v1"""),
        epilog=IMAGES + "\n" + PASSPHRASE + WRITE_EXIT_CODES,
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--key", type=Path, required=True, metavar="FILE")
    p.add_argument("--predicate", type=Path, required=True, metavar="FILE",
                   help="the predicate, a JSON document")
    p.add_argument("--type", required=True, metavar="URI",
                   help="predicate type URI (or a cosign shorthand: slsaprovenance, "
                        "slsaprovenance1, spdxjson, cyclonedx, link, openvex)")
    p.add_argument("--identity", metavar="REG/REPO[:TAG]",
                   help="the repository to name as the subject (default: the image's)")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    registry_flags(p)
    p.set_defaults(func=cmd_attest)

    p = command(
        "tree", "list an image's signatures, attestations and SBOMs, as cosign tree does",
        textwrap.dedent("""\
            List what is attached to the image and to each platform manifest of an index:
            cosign's sha256-DIGEST.sig, .att and .sbom tags (each with its manifest digest
            and layers: the identity a signature claims, an attestation's predicate type)
            and OCI referrers (the registry's referrers API, or its fallback tag). Nothing
            is verified here: 'nestbuild verify' does that.

            examples:
              nestbuild tree registry.example.com/nodes/web:v3
              nestbuild tree oci:./out:v3 --format json"""),
        epilog=IMAGES + "\nexit codes: 0 listed, 1 registry content that does not match its "
                        "digest,\n2 no such image or unusable input\n",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--format", choices=("table", "json"), default="table")
    registry_flags(p)
    p.set_defaults(func=cmd_tree)

    p = command(
        "download", "print what is attached to an image, as cosign download does",
        "Print an image's attachments. 'nestbuild download attestation IMAGE' prints its "
        "in-toto statements.",
        epilog="exit codes: 0 printed, 1 nothing of that kind, 2 unusable input\n",
    )
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    q = kinds.add_parser(
        "attestation", help="print the image's in-toto statements (one JSON a line)",
        description=textwrap.dedent("""\
            Print the in-toto statement of each attestation of the image (its .att tag),
            one JSON document a line, as cosign download attestation prints them (cosign
            prints the DSSE envelopes; these are their decoded payloads). Not verified:
            'nestbuild verify' checks the attestations' signatures.

            examples:
              nestbuild download attestation registry.example.com/nodes/web:v3 \\
                  --predicate-type https://nestbuild.dev/validation/v1 | jq .predicate"""),
        epilog=IMAGES + "\nexit codes: 0 printed, 1 no attestation (of that type), "
                        "2 unusable input\n",
        formatter_class=p.formatter_class)
    q.add_argument("image", metavar="IMAGE")
    q.add_argument("--predicate-type", metavar="URI",
                   help="only statements of this predicate type (a URI or a cosign "
                        "shorthand: slsaprovenance, spdxjson, cyclonedx, ...)")
    registry_flags(q)
    q.set_defaults(func=cmd_download_attestation)
