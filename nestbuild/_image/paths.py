"""Where a bootable image keeps the things nestbuild reasons about."""

from __future__ import annotations

import fnmatch
import re

MODULES_DIR = "/usr/lib/modules"
PREPARE_ROOT_CONF = "/usr/lib/ostree/prepare-root.conf"
KARGS_DIR = "/usr/lib/bootc/kargs.d"
TMPFILES_DIRS = ("/usr/lib/tmpfiles.d", "/etc/tmpfiles.d")
SYSUSERS_DIRS = ("/usr/lib/sysusers.d", "/etc/sysusers.d")
MODULES_LOAD_DIRS = ("/usr/lib/modules-load.d", "/etc/modules-load.d")
PASSWD = "/etc/passwd"
GROUP = "/etc/group"

#: Small configuration files whose content the structural lints read (kept in the base index).
CONTENT_GLOBS = (
    PASSWD,
    GROUP,
    PREPARE_ROOT_CONF,
    f"{KARGS_DIR}/*",
    *(f"{d}/*" for d in TMPFILES_DIRS),
    *(f"{d}/*" for d in SYSUSERS_DIRS),
    *(f"{d}/*" for d in MODULES_LOAD_DIRS),
    f"{MODULES_DIR}/*/modules.builtin",
)
CONTENT_LIMIT = 256 * 1024


_CONTENT_RE = re.compile("|".join(fnmatch.translate(p) for p in CONTENT_GLOBS))


def keeps_content(path: str) -> bool:
    return _CONTENT_RE.match(path) is not None


def top_level(path: str) -> str:
    """``/etc/motd`` -> ``/etc``; ``/`` -> ``/``."""
    parts = path.split("/", 2)
    return "/" + parts[1] if len(parts) > 1 and parts[1] else "/"


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")
