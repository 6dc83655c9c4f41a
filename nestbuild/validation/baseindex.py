"""The base image's file index, built once per base and kept in the cache.

Validating a derived image compares each derived path with the base; the base can be large
(gigabytes, tens of thousands of files) and rarely changes, so its merged tree (with content
hashes) lives in an SQLite file keyed by the base layers' chain. Lookups touch only the paths
the derived layers name, so validate's cost does not grow with the base.

The index also keeps what a node would refuse in the base layers (a node applies them all) and
the symlinks a node's unpacker has met by the end of the base, so a cached base is reported,
and guarded against, exactly as a freshly read one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import IO, Final

from nestbuild._image import paths
from nestbuild._image.source import ImageSource
from nestbuild._image.tree import FILE, HARDLINK, Entry, Unsafe, Whiteout, read_layer
from nestbuild._util.atomic import write_atomic
from nestbuild._util.cache import cache_dir
from nestbuild._util.record import Value
from nestbuild.errors import LayerError
from nestbuild.node import nodetree

FORMAT = 3
_COLUMNS = "path, type, mode, uid, gid, size, digest, link, xattrs, devmajor, devminor, layer"


def chain_key(diff_ids: Sequence[str]) -> str:
    """Identifies a stack of layers whatever the transport or manifest it came from."""
    return hashlib.sha256(("\n".join(diff_ids) + f"\n{FORMAT}").encode()).hexdigest()


def _p(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _unp(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _range(prefix: str) -> tuple[bytes, bytes]:
    """Bounds of the paths strictly below ``prefix``."""
    p = _p(prefix.rstrip("/"))
    return p + b"/", p + b"0"  # '0' sorts right after '/'


def _xattrs_dump(x: dict[str, bytes]) -> str | None:
    return json.dumps({k: v.hex() for k, v in sorted(x.items())}) if x else None


def _row_entry(row: tuple[object, ...]) -> Entry:
    (path, typ, mode, uid, gid, size, digest, link, xattrs, major, minor, layer) = row
    return Entry(
        _unp(path),  # type: ignore[arg-type]
        str(typ), int(mode), int(uid), int(gid), int(size),  # type: ignore[call-overload]
        digest,  # type: ignore[arg-type]
        _unp(link) if link else "",  # type: ignore[arg-type]
        {k: bytes.fromhex(v) for k, v in json.loads(xattrs).items()} if xattrs else {},  # type: ignore[arg-type]
        int(major), int(minor), int(layer),  # type: ignore[call-overload]
    )


class Refusal(Value):
    """An entry of a base layer that makes a node refuse the image."""

    layer: Final[int]
    path: Final[str]
    reason: Final[str]

    def __init__(self, layer: int, path: str, reason: str) -> None:
        self.layer = layer
        self.path = path
        self.reason = reason


class BaseIndex:
    """Read access to an indexed base tree."""

    def __init__(self, db: sqlite3.Connection, key: str, layers: int) -> None:
        self._db = db
        self.key = key
        self.layers = layers
        #: Paths known not to be in the base: nothing below them is either. Derived layers
        #: add whole new trees, so this saves most lookups.
        self._absent: set[str] = set()
        #: What a node refuses in the base layers, in layer order.
        self.refusals = [Refusal(int(layer), _unp(path), str(reason)) for layer, path, reason
                         in db.execute("SELECT layer, path, reason FROM refusals ORDER BY rowid")]
        #: The symlinks a node's unpacker has met by the end of the base (SymlinkGuard's).
        self.links = frozenset(_unp(row[0]) for row in db.execute("SELECT path FROM links"))

    @classmethod
    def empty(cls) -> BaseIndex:
        db = sqlite3.connect(":memory:")
        _create(db)
        return cls(db, "empty", 0)

    def get(self, path: str) -> Entry | None:
        if path.rpartition("/")[0] in self._absent:
            self._absent.add(path)
            return None
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE path = ?", (_p(path),)
        ).fetchone()
        if row is None:
            self._absent.add(path)
            return None
        return _row_entry(row)

    def below(self, prefix: str) -> Iterator[Entry]:
        lo, hi = _range(prefix)
        if prefix == "/":
            lo, hi = b"/", b"0"
        for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE path > ? AND path < ? ORDER BY path", (lo, hi)
        ):
            yield _row_entry(row)

    def below_ending(self, prefix: str, suffix: str) -> Iterator[Entry]:
        """The entries below ``prefix`` whose path ends with ``suffix``, filtered by SQLite:
        finding the kernels reads their rows, not every module's."""
        lo, hi = _range(prefix)
        if prefix == "/":
            lo, hi = b"/", b"0"
        end = _p(suffix)
        for row in self._db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE path > ? AND path < ? "
            "AND substr(path, ?) = ? ORDER BY path", (lo, hi, -len(end), end)
        ):
            yield _row_entry(row)

    def content(self, path: str) -> bytes | None:
        row = self._db.execute(
            "SELECT c.data FROM content c JOIN entries e ON e.path = c.path WHERE c.path = ?",
            (_p(path),),
        ).fetchone()
        return bytes(row[0]) if row else None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def close(self) -> None:
        self._db.close()


def _create(db: sqlite3.Connection) -> None:
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS entries (
            path BLOB PRIMARY KEY, type TEXT, mode INT, uid INT, gid INT, size INT,
            digest TEXT, link BLOB, xattrs TEXT, devmajor INT, devminor INT, layer INT
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS content (path BLOB PRIMARY KEY, data BLOB) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
        CREATE TABLE IF NOT EXISTS refusals (layer INT, path BLOB, reason TEXT);
        CREATE TABLE IF NOT EXISTS links (path BLOB PRIMARY KEY) WITHOUT ROWID;
        """
    )


Progress = Callable[[str], None]


def load_or_build(
    source: ImageSource, layers: int, progress: Progress | None = None
) -> BaseIndex:
    """The index of the first ``layers`` layers of ``source``, from the cache when possible.

    A cached index describes the layers by their diff_ids; ``source``'s own blobs for them
    are proven to hold those diff_ids before it is used (see :func:`_prove_layers`).
    """
    if layers == 0:
        return BaseIndex.empty()
    key = chain_key(source.config.diff_ids[:layers])
    path = cache_dir("base-index") / f"{key}.sqlite"
    if path.is_file():
        db = None
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            ok = db.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
            if ok and ok[0] == "1":
                cached = BaseIndex(db, key, layers)
                db = None
                try:
                    _prove_layers(source, layers, progress)
                except BaseException:
                    cached.close()
                    raise
                return cached
        except sqlite3.Error:
            pass
        finally:
            if db is not None:
                db.close()
    if progress:
        progress(f"indexing the base ({layers} layers); this is done once per base")
    import tempfile  # only when the index is built, not each time it is loaded

    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".sqlite", dir=path.parent)
    os.close(fd)
    try:
        with closing(sqlite3.connect(tmp)) as db:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            _create(db)
            guard = nodetree.SymlinkGuard()
            for index in range(layers):
                with source.open_layer(index) as stream:
                    _apply_layer(db, source, index, stream.fileobj, stream.seekable, guard)
                    stream.finish()
                _remember(source, index)
            db.executemany("INSERT OR IGNORE INTO links VALUES (?)",
                           [(_p(link),) for link in sorted(guard.links)])
            db.execute("INSERT INTO meta VALUES ('complete', '1')")
            db.commit()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    return BaseIndex(db, key, layers)


def _proof_path(blob_digest: str) -> Path:
    return cache_dir("layer-proofs") / blob_digest.removeprefix("sha256:")


def _remember(source: ImageSource, index: int) -> None:
    """Record that this blob digest holds this diff_id (it was just read and proven)."""
    desc = source.manifest.layers[index]
    write_atomic(_proof_path(desc.digest), source.config.diff_ids[index].encode())


def _prove_layers(source: ImageSource, layers: int, progress: Progress | None) -> None:
    """Refuse a source whose base blobs do not hold the diff_ids its config claims.

    The cached index was built from blobs proven to hold these diff_ids; ``source`` may name
    other blobs for them (recompressed, or lying). A blob digest seen proven before holds the
    same bytes, so only a new one is read (once, then remembered). containers-storage
    computed its diff_ids itself (ImageSource.layers_trusted).
    """
    if source.layers_trusted:
        return
    for index in range(layers):
        desc = source.manifest.layers[index]
        diff_id = source.config.diff_ids[index]
        try:
            proven = _proof_path(desc.digest).read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            proven = None
        if proven == diff_id:
            continue
        if progress:
            progress(f"checking base layer {index + 1}/{layers} against its diff_id")
        with source.open_layer(index) as stream:
            stream.finish()
        _remember(source, index)


def _apply_layer(
    db: sqlite3.Connection, source: ImageSource, index: int, fileobj: IO[bytes], seekable: bool,
    guard: nodetree.SymlinkGuard,
) -> None:
    what = f"{source.ref} layer {index}"
    insert = f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    contents: list[tuple[Entry, bytes]] = []

    def keep(entry: Entry, data: bytes) -> None:
        if paths.keeps_content(entry.path):
            contents.append((entry, data))

    batch: list[tuple[object, ...]] = []
    for item in read_layer(
        fileobj, index, seekable=seekable, want_digest=lambda e: True, inspect=keep, what=what
    ):
        why = nodetree.refusal(item, guard)
        if why is not None:  # the base vendor's to fix, but every node refuses the image
            db.execute("INSERT INTO refusals VALUES (?, ?, ?)", (index, _p(item.path), why))
        if isinstance(item, Unsafe):
            continue  # it cannot be applied
        if isinstance(item, Whiteout):
            _flush(db, insert, batch)
            lo, hi = _range(item.path)
            if item.opaque:
                db.execute(
                    "DELETE FROM entries WHERE path > ? AND path < ? AND layer < ?",
                    (lo, hi, index),
                )
            else:
                db.execute(
                    "DELETE FROM entries WHERE path = ? OR (path > ? AND path < ?)",
                    (_p(item.path), lo, hi),
                )
            continue
        e = item
        if e.type == HARDLINK:
            _flush(db, insert, batch)
            row = db.execute("SELECT size, digest FROM entries WHERE path = ?", (_p(e.link),))
            target = row.fetchone()
            if target is None:
                raise LayerError(f"{what}: hard link {e.path} to missing {e.link}")
            e.size, e.digest = int(target[0]), target[1]
        batch.append(
            (_p(e.path), e.type, e.mode, e.uid, e.gid, e.size, e.digest,
             _p(e.link) if e.link else None, _xattrs_dump(e.xattrs), e.devmajor, e.devminor, index)
        )
        if len(batch) >= 5000:
            _flush(db, insert, batch)
    _flush(db, insert, batch)
    for entry, data in contents:
        db.execute("INSERT OR REPLACE INTO content VALUES (?, ?)", (_p(entry.path), data))


def _flush(db: sqlite3.Connection, insert: str, batch: list[tuple[object, ...]]) -> None:
    if batch:
        db.executemany(insert, batch)
        batch.clear()


def comparable_type(t: str) -> str:
    return FILE if t == HARDLINK else t


def cache_path_for(diff_ids: Sequence[str]) -> Path:
    return cache_dir("base-index") / f"{chain_key(diff_ids)}.sqlite"
