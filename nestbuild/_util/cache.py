"""nestbuild's cache directory: base indexes, downloaded tools, prepared chroots.

``NESTBUILD_CACHE`` wins; else ``$XDG_CACHE_HOME/nestbuild``; else ``~/.cache/nestbuild``.
Everything in it can be deleted at any time and is rebuilt when missing.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = os.environ.get("NESTBUILD_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg) / "nestbuild" if xdg else Path.home() / ".cache" / "nestbuild"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
