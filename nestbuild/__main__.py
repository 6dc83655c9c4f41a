"""The ``nestbuild`` executable (and ``python -m nestbuild``): :func:`nestbuild._cli.main.main` with
what a short-lived process does differently from a library call.

- A signing key starts decrypting before anything else is imported: its scrypt derivation
  (~100 ms) is most of ``nestbuild sign``, and runs in a thread while argparse, the registry
  client and the registry round trips take their time.
- The garbage collector runs rarely (as mypy sets it): imports make tens of thousands of
  objects and almost no cycles, so the default thresholds spend ~8 ms collecting nothing.
- The process ends with ``os._exit`` once output is flushed and exit handlers have run
  (as mypy does): tearing down every module object by object takes ~4 ms and frees nothing
  that the exit does not free anyway.

Nothing here is done by :func:`nestbuild._cli.main.main`, which tests and scripts call in-process.
"""

from __future__ import annotations

import gc
import sys


def entry() -> None:
    gc.set_threshold(50_000, 20, 100)
    argv = sys.argv[1:]
    _start_signing_key(argv)
    from nestbuild._cli.main import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: --help, --version, a usage error
        if not isinstance(exc.code, int | None):
            raise
        code = exc.code or 0
    _exit(code)


def _start_signing_key(argv: list[str]) -> None:
    from nestbuild._cli import signing_key_argument

    named = signing_key_argument(argv)
    if named is not None:
        from nestbuild.signing import keyload

        keyload.start_early(*named)


def _exit(code: int) -> None:
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # closed by the caller (nestbuild ... >&-)
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            pass  # a reader that went away (nestbuild ... | head) is not an error
        except OSError as exc:  # a full disk: the output is incomplete
            code = code or 1
            if stream is sys.stdout and sys.stderr is not None:
                sys.stderr.write(f"error: cannot write the output: {exc.strerror}\n")
    os._exit(code)


if __name__ == "__main__":
    entry()
