"""Where local storage is, read from storage.conf as containers-storage reads it; whatever
is not plain there is left to ``buildah info`` (None here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nestbuild._image.storeconf import _configured_store

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="rootless storage is left to buildah")


def _dirs(tmp_path: Path, conf: str | None) -> tuple[Path, Path]:
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    etc.mkdir()
    usr.mkdir()
    if conf is not None:
        (etc / "storage.conf").write_text(conf)
    return etc, usr


def test_configured_driver_and_graph_root(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS"):
        monkeypatch.delenv(var, raising=False)
    etc, usr = _dirs(tmp_path, '[storage]\ndriver = "vfs"\ngraphroot = "/srv/store"\n')
    assert _configured_store(etc, usr) == (Path("/srv/store"), "vfs")
    (usr / "storage.conf").write_text('[storage]\ndriver = "overlay"\n')  # /etc wins
    assert _configured_store(etc, usr) == (Path("/srv/store"), "vfs")


def test_driver_in_use_when_none_is_configured(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path / "store"
    etc, usr = _dirs(tmp_path, f'[storage]\ngraphroot = "{root}"\n')
    assert _configured_store(etc, usr) is None  # nothing in use: storage would probe
    (root / "overlay-layers").mkdir(parents=True)
    assert _configured_store(etc, usr) == (root, "overlay")
    (root / "vfs-layers").mkdir()
    assert _configured_store(etc, usr) is None  # several: storage refuses, buildah says why


@pytest.mark.parametrize("case", ["env", "drop-in", "imagestore", "relative", "corrupt"])
def test_anything_unusual_is_left_to_buildah(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             case: str) -> None:
    for var in ("CONTAINERS_STORAGE_CONF", "STORAGE_DRIVER", "STORAGE_OPTS"):
        monkeypatch.delenv(var, raising=False)
    conf = {"imagestore": '[storage]\ndriver = "vfs"\nimagestore = "/srv/images"\n',
            "relative": '[storage]\ndriver = "vfs"\ngraphroot = "store"\n',
            "corrupt": "[storage\n"}.get(case, '[storage]\ndriver = "vfs"\n')
    etc, usr = _dirs(tmp_path, conf)
    if case == "env":
        monkeypatch.setenv("STORAGE_DRIVER", "overlay")
    if case == "drop-in":
        (usr / "storage.conf.d").mkdir()
    assert _configured_store(etc, usr) is None
