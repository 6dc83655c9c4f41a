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
