"""Where local containers-storage is (its graph root and driver), for reading it in place.

Kept apart from the buildah interface so that reading a local image (validate) does not load
the subprocess machinery: storage.conf is read directly whenever it is plain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: Drivers containers-storage may find already in use in a graph root with none configured.
_DRIVERS = ("overlay", "btrfs", "zfs", "vfs", "aufs", "devicemapper")
_STORE_LOCATION: tuple[Path, str] | None = None


def store_location() -> tuple[Path, str]:
    """Local storage's graph root and driver (overlay, vfs), as buildah is configured.

    Read from storage.conf the way containers-storage reads it when that is plain (root, one
    config file, no drop-ins or environment overrides); otherwise, and whenever in doubt,
    ``buildah info`` says (~50 ms). Once per process either way."""
    global _STORE_LOCATION
    if _STORE_LOCATION is None:
        _STORE_LOCATION = _configured_store() or _buildah_store()
    return _STORE_LOCATION


def _buildah_store() -> tuple[Path, str]:
    from nestbuild._tools import run

    out = run.run(
        ["buildah", "info", "--format", "{{.store.GraphRoot}}\t{{.store.GraphDriverName}}"],
        what="locating containers-storage",
    ).stdout.decode().strip()
    graphroot, _, driver = out.partition("\t")
    return Path(graphroot), driver


def _configured_store(etc: Path = Path("/etc/containers"),
                      usr: Path = Path("/usr/share/containers")) -> tuple[Path, str] | None:
    """(graph root, driver) from root's storage.conf, or None when it cannot be told without
    buildah: rootless storage, a config named by the environment, drop-in directories,
    options this does not model, or a driver storage would have to probe for."""
    if os.geteuid() != 0 or any(os.environ.get(v) for v in (
            "CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS")):
        return None
    if any((d / "storage.conf.d").exists() for d in (etc, usr)):
        return None
    conf = next((d / "storage.conf" for d in (etc, usr) if (d / "storage.conf").exists()), None)
    storage: dict[str, Any] = {}
    if conf is not None:
        import tomllib

        try:
            with conf.open("rb") as f:
                storage = tomllib.load(f).get("storage") or {}
        except (OSError, ValueError):
            return None
        if not isinstance(storage, dict) or storage.get("imagestore"):
            return None
    graphroot, driver = storage.get("graphroot") or "/var/lib/containers/storage", \
        storage.get("driver") or ""
    if not isinstance(graphroot, str) or not isinstance(driver, str) or \
            not os.path.isabs(graphroot):
        return None
    root = Path(graphroot)
    if not driver:  # storage uses the one driver that already has data here, or probes
        found = [d for d in _DRIVERS if (root / f"{d}-layers").is_dir()]
        if len(found) != 1:
            return None
        driver = found[0]
    return root, driver
