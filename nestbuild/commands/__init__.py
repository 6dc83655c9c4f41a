"""Sub-command groups beyond validate: each module here has ``register(sub, command)``.

``command(name, help, description, epilog="")`` makes a sub-parser with nestbuild's
formatting; ``register`` adds its parsers and sets ``func`` on each (a handler taking the
parsed ``argparse.Namespace`` and returning an exit code).
"""

COMMAND_MODULES = (
    "nestbuild.commands.signing",   # keygen, sign, verify, attest
    "nestbuild.commands.registry",  # login, push, pull, inspect
    "nestbuild.commands.build",     # build, init
    "nestbuild.commands.node",      # node trust, status, rollback
    "nestbuild.commands.boot",      # boot a deployed sysroot under qemu
)

#: Which module registers each top-level command. ``nestbuild sign ...`` then imports and
#: registers only ``nestbuild.commands.signing``: every run pays for the parsers it builds and
#: the modules it imports, and CI runs sign and push as fresh processes. A command missing here
#: still works (the whole parser is built); tests/test_cli.py keeps this table complete.
COMMAND_OWNERS = {
    "keygen": "nestbuild.commands.signing",
    "sign": "nestbuild.commands.signing",
    "verify": "nestbuild.commands.signing",
    "attest": "nestbuild.commands.signing",
    "login": "nestbuild.commands.registry",
    "logout": "nestbuild.commands.registry",
    "push": "nestbuild.commands.registry",
    "pull": "nestbuild.commands.registry",
    "inspect": "nestbuild.commands.registry",
    "build": "nestbuild.commands.build",
    "init": "nestbuild.commands.build",
    "node": "nestbuild.commands.node",
    "rebase": "nestbuild.commands.node",
    "boot": "nestbuild.commands.boot",
}
