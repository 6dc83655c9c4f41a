"""What nestbuild has learned about blobs: compressed forms of layers, and where blobs live.

Like containers/image's blob info cache: an unchanged re-push asks the registry about the
compressed digest it already knows instead of compressing the layer again, and a base layer
seen in another repository of the same registry is mounted rather than uploaded. Losing the
file only costs time (it lives in the cache directory).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from nestbuild._util.cache import cache_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS compressed (
    diff_id TEXT NOT NULL, compression TEXT NOT NULL,
    digest TEXT NOT NULL, size INTEGER NOT NULL, media_type TEXT NOT NULL,
    PRIMARY KEY (diff_id, compression));
CREATE TABLE IF NOT EXISTS location (
    digest TEXT NOT NULL, host TEXT NOT NULL, repo TEXT NOT NULL, seen REAL NOT NULL,
    PRIMARY KEY (digest, host, repo));
"""


class BlobInfo:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_dir("registry") / "blobinfo.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock, self._db:
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def compressed(self, diff_id: str, compression: str) -> tuple[str, int, str] | None:
        """(digest, size, media type) of ``diff_id`` compressed this way before, if known."""
        with self._lock:
            row = self._db.execute(
                "SELECT digest, size, media_type FROM compressed "
                "WHERE diff_id = ? AND compression = ?", (diff_id, compression)).fetchone()
        return (str(row[0]), int(row[1]), str(row[2])) if row else None

    def record_compressed(self, diff_id: str, compression: str, digest: str, size: int,
                          media_type: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO compressed VALUES (?, ?, ?, ?, ?)",
                             (diff_id, compression, digest, size, media_type))

    def locations(self, digest: str, host: str) -> list[str]:
        """Repositories on ``host`` known to hold ``digest``, most recently seen first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT repo FROM location WHERE digest = ? AND host = ? ORDER BY seen DESC",
                (digest, host)).fetchall()
        return [str(r[0]) for r in rows]

    def record_location(self, digest: str, host: str, repo: str) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO location VALUES (?, ?, ?, ?)",
                             (digest, host, repo, time.time()))

    def forget_location(self, digest: str, host: str, repo: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM location WHERE digest = ? AND host = ? AND repo = ?",
                             (digest, host, repo))
