"""Sub-command groups beyond validate: each module here has ``register(sub, command)``.

``command(name, help, description, epilog="")`` makes a sub-parser with nestbuild's
formatting; ``register`` adds its parsers and sets ``func`` on each (a handler taking the
parsed ``argparse.Namespace`` and returning an exit code).
"""

COMMAND_MODULES = (
    "nestbuild._cli.signing",   # keygen, sign, verify, attest, tree, download
    "nestbuild._cli.registry",  # login, push, pull, inspect
    "nestbuild._cli.build",     # build, init
    "nestbuild._cli.node",      # node trust, status, rollback
    "nestbuild._cli.boot",      # boot a deployed sysroot under qemu
    "nestbuild._cli.changelog",  # what a reboot from one image into another changes
    "nestbuild._cli.sbom",      # an image's SBOM (SPDX)
    "nestbuild._cli.rollout",   # a fleet onto an image, in waves
)

#: Which module registers each top-level command. ``nestbuild sign ...`` then imports and
#: registers only ``nestbuild._cli.signing``: every run pays for the parsers it builds and
#: the modules it imports, and CI runs sign and push as fresh processes. A command missing here
#: still works (the whole parser is built); tests/unit/test_cli.py keeps this table complete.
COMMAND_OWNERS = {
    "keygen": "nestbuild._cli.signing",
    "sign": "nestbuild._cli.signing",
    "verify": "nestbuild._cli.signing",
    "attest": "nestbuild._cli.signing",
    "tree": "nestbuild._cli.signing",
    "download": "nestbuild._cli.signing",
    "login": "nestbuild._cli.registry",
    "logout": "nestbuild._cli.registry",
    "push": "nestbuild._cli.registry",
    "pull": "nestbuild._cli.registry",
    "inspect": "nestbuild._cli.registry",
    "build": "nestbuild._cli.build",
    "init": "nestbuild._cli.build",
    "node": "nestbuild._cli.node",
    "rebase": "nestbuild._cli.node",
    "boot": "nestbuild._cli.boot",
    "changelog": "nestbuild._cli.changelog",
    "sbom": "nestbuild._cli.sbom",
    "rollout": "nestbuild._cli.rollout",
}

#: The commands that open a private key, with the option naming it. ``nestbuild`` starts
#: decrypting that key before the command line is fully parsed (see :mod:`nestbuild.__main__`):
#: scrypt is most of a signing run. tests/unit/test_cli.py checks these against the parsers.
SIGNING_KEY_OPTIONS = {"sign": "--key", "attest": "--key", "push": "--sign-key"}
PASSPHRASE_FILE_OPTION = "--passphrase-file"


def signing_key_argument(argv: list[str]) -> tuple[str, str | None] | None:
    """(key, passphrase file or None) as ``argv`` names them, for a command of
    SIGNING_KEY_OPTIONS; None when that is not plain without argparse (help, an option given
    twice, no key).

    A guess, made before argparse runs: the command still parses its arguments and takes the
    early start only if it names the same files.
    """
    option = SIGNING_KEY_OPTIONS.get(argv[0]) if argv else None
    if option is None:
        return None
    found: dict[str, list[str]] = {option: [], PASSPHRASE_FILE_OPTION: []}
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-h", "--help"):
            return None
        if arg == "--":
            break
        name, eq, value = arg.partition("=")
        if name in found:
            found[name].append(value if eq else next(args, ""))
    keys, files = found[option], found[PASSPHRASE_FILE_OPTION]
    if len(keys) != 1 or not keys[0] or len(files) > 1 or files == [""]:
        return None
    return keys[0], files[0] if files else None
