"""Files that appear whole or not at all: written beside their target, then renamed.

Layout indexes, blobs, node trust files and credential files all need it: a crash or a failed
download must never leave a half-written file under the real name, and a file that must be
private (auth.json, 0600) must never exist with a looser mode, even briefly.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def replacing(path: Path, mode: int | None = None, *, fsync: bool = False
              ) -> Iterator[IO[bytes]]:
    """A file to write that replaces ``path`` only if the block finishes.

    ``mode`` is set before the first byte is written (the temporary file starts as 0600);
    ``fsync`` makes the content durable before the rename (credentials).
    """
    import tempfile  # here: readers that import this module seldom write (validate)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "w+b") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: bytes, mode: int | None = None, *,
                 fsync: bool = False) -> None:
    with replacing(path, mode, fsync=fsync) as f:
        f.write(data)
