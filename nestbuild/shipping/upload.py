"""The upload under ``nestbuild push``: an image from local storage or an OCI layout into a
registry, as OCI (:mod:`nestbuild.shipping.push` validates, signs and attests around it).

Order matters for the "nothing half-done" promise: blobs first (in parallel), then the
manifest by digest, then whatever must precede the tags (signatures and attestations), then
tags. An upload that breaks leaves the tags where they were; running it again uploads only
the blobs the registry lacks.

Layers from containers-storage exist only uncompressed, so they are compressed here, with
every core, while they are uploaded: the compressed bytes go to a spool file (which keeps the
upload resumable) and each chunk is sent as soon as it exists; both digests are computed on the
way, and the blob is committed only once the layer matched its diff ID. Where push validates,
a compressor follows validation's read of each new layer (:class:`Precompressor`): each byte
comes from storage once, and the upload starts as soon as validation has passed. What a layer
compresses to is remembered (:mod:`nestbuild._registry.blobinfo`), so an unchanged re-push
compresses nothing. Layers from an OCI layout or archive are sent as stored,
and the manifest's exact bytes with them: its digest (and any signature made of it) survive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO

from nestbuild._image import open_image
from nestbuild._image.model import (
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    digest_of,
    index_manifests,
)
from nestbuild._image.source import ImageSource, LayerStream, OCILayoutSource
from nestbuild._image.tarsplit import TarSplitStream, file_chunks
from nestbuild._registry import reference
from nestbuild._registry.access import RegistryAccess
from nestbuild._registry.blobinfo import BlobInfo
from nestbuild._registry.client import RegistryClient
from nestbuild._registry.reference import RegistryRef
from nestbuild._util.cache import cache_dir
from nestbuild._util.progress import Blob, Transfer
from nestbuild.errors import LayerError, UsageError

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
COMPRESSIONS = {"gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd", "none": OCI_LAYER}
#: gzip level 1: for OS trees it is within a few percent of level 6 and several times faster.
GZIP_LEVEL = 1
ZSTD_LEVEL = 3
READ = 1 << 20
#: The compressor's block (one per thread at a time: memory stays a few MiB a layer).
BLOCK = 1 << 20
#: Bytes per PATCH while a layer is compressed: each goes up as soon as it exists, so the
#: upload trails the compressor by at most this much.
STREAM_CHUNK = 16 << 20


@dataclass(frozen=True)
class BlobOutcome:
    digest: str
    size: int
    #: "uploaded", "exists" (the registry had it) or "mounted" (from another repository).
    status: str


@dataclass(frozen=True)
class Uploaded:
    """An image stored in a registry: by digest, and under ``tags`` in ``target``'s repository."""

    #: Where it went (``target.tag`` is the destination's tag, "latest" if it named none).
    target: RegistryRef
    digest: str
    media_type: str
    tags: list[str]
    blobs: list[BlobOutcome]
    bytes_uploaded: int

    @property
    def repository(self) -> str:
        """``HOST/REPO``."""
        return self.target.name

    @property
    def reference(self) -> str:
        """``HOST/REPO@sha256:...``: the reference to deploy."""
        return f"{self.repository}@{self.digest}"

    @property
    def image(self) -> RegistryRef:
        """The pushed image, by digest."""
        return self.target.with_digest(self.digest)


# -- compression --------------------------------------------------------------------------------


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _NoCompression:
    """``--compression none``: the tar as is, through the same writer interface."""

    def __init__(self, sink: _Spool) -> None:
        self._sink = sink

    def write(self, data: bytes | memoryview) -> int:
        return self._sink.write(data)

    def close(self) -> None:
        pass


def _compressor(compression: str, sink: _Spool) -> Any:
    """A writer that compresses into ``sink`` with every core.

    gzip: ISA-L's threaded writer (pigz's scheme: 1 MiB blocks deflated in parallel, each
    primed with the previous block's last 32 KiB, one gzip member with the combined CRC, so
    every gzip reader takes it; header without name or mtime: reproducible, and the same bytes
    whatever the thread count). Measured on this project's 2-core machines (median of 3
    alternating runs, a 280 MB tar of binaries, load ~3): ISA-L level 1 1.0 s with 2 threads,
    130.7 MB; zlib-ng's threaded gzip at level 1 2.4 s, 147.6 MB; zlib level 1 in one thread
    (the former path) 7.0 s. ISA-L is faster and smaller, and already inflates every layer
    nestbuild reads (:mod:`nestbuild._image.blob`): no new dependency.
    """
    if compression == "gzip":
        from isal import igzip_threaded

        return _Blocks(igzip_threaded.open(  # type: ignore[no-untyped-call]
            sink, "wb", compresslevel=GZIP_LEVEL, threads=_threads(), block_size=BLOCK))
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).stream_writer(
            sink, closefd=False)  # type: ignore[arg-type]
    return _NoCompression(sink)


class _Blocks:
    """Hands the threaded gzip writer exactly :data:`BLOCK` bytes at a time. It deflates each
    write as a block of its own, so the compressed bytes (and the blob's digest) would depend
    on how the tar was read, and a layer of small files would be many tiny blocks: larger and
    slower. Whichever path compresses a layer, the same layer makes the same blob."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._buf = bytearray()

    def write(self, data: bytes | memoryview) -> int:
        buf = self._buf
        buf += data
        while len(buf) >= BLOCK:
            self._writer.write(bytes(buf[:BLOCK]))
            del buf[:BLOCK]
        return len(data)

    def close(self) -> None:
        if self._buf:
            self._writer.write(bytes(self._buf))
            self._buf.clear()
        self._writer.close()


class _Spool:
    """A layer's compressed bytes while they are made: the compressor appends them to a
    temporary file and hashes them; the upload reads each chunk from there once it exists.

    The file (page cache, not memory) keeps every byte until the upload ends, so a chunk
    that breaks is sent again from where the registry stands, as from a finished file.
    """

    def __init__(self, spool_dir: str) -> None:
        self.file = tempfile.TemporaryFile(dir=spool_dir, buffering=0)  # noqa: SIM115
        self._fd = self.file.fileno()
        self._cond = threading.Condition()
        self._hash = hashlib.sha256()
        self._size = 0
        self._written = 0
        self._done = False
        self._error: BaseException | None = None
        self._abandoned = False

    # the compressor's side (a writable raw file)
    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:
        if self._abandoned:
            raise LayerError("the upload was abandoned")
        view = memoryview(data).cast("B")
        n = len(view)
        off = 0
        while off < n:
            off += os.pwrite(self._fd, view[off:], self._written + off)
        self._hash.update(view)
        self._written += n
        with self._cond:
            self._size = self._written
            self._cond.notify_all()
        return n

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    @property
    def error(self) -> BaseException | None:
        """Why the compressor failed, if it did."""
        with self._cond:
            return self._error

    def abandon(self) -> None:
        """The upload gave up: the compressor stops at its next write."""
        self._abandoned = True

    # the upload's side (a BlobSource)
    def wait(self, end: int) -> int:
        with self._cond:
            while self._size < end and not self._done and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def result(self) -> tuple[str, int]:
        with self._cond:
            while not self._done and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
        return "sha256:" + self._hash.hexdigest(), self._size

    def close(self) -> None:
        self.file.close()


def _compress_into(spool: _Spool, chunks: Iterable[bytes], compression: str, diff_id: str,
                   what: str, advance: Callable[[int], None]) -> None:
    """Compress a layer's tar, as ``chunks`` of it, into ``spool``; the producer's thread.

    The uncompressed bytes are hashed on the way: a store whose layer no longer matches its
    diff ID is refused (the upload is never committed) rather than pushed.
    """
    try:
        raw_hash = hashlib.sha256()
        writer = _compressor(compression, spool)
        try:
            for chunk in chunks:
                raw_hash.update(chunk)
                writer.write(chunk)
                advance(len(chunk))
        finally:
            writer.close()
        _check_diff_id(raw_hash, diff_id, what)
        spool.finish()
    except BaseException as exc:
        spool.fail(exc)


def _check_diff_id(raw_hash: Any, diff_id: str, what: str) -> None:
    if "sha256:" + raw_hash.hexdigest() != diff_id:
        raise LayerError(f"{what}: the stored layer does not match its diff ID "
                         f"{diff_id[:19]} (local storage is corrupt)")


#: What a follower holds of the bytes its reader has passed it and it has not yet compressed.
#: File bodies beyond it are handed over by name (the follower reads them); tar-split's own
#: bytes wait for room.
FOLLOW_LIMIT = 64 << 20


class _Follower:
    """Compresses a containers-storage layer from the segments its reader passes: the bytes
    the reader read, and the file bodies it skipped, read here. Validation reads the layer;
    this compresses it behind, so each byte comes from storage once and validation is not
    slowed down to the compressor's pace. The spool then uploads as it grows.
    """

    def __init__(self, compression: str, diff_id: str, what: str) -> None:
        self.spool = _Spool(str(cache_dir("spool")))
        self.done_raw = 0
        self.advance: Callable[[int], None] = lambda _n: None
        self._compression, self._diff_id, self._what = compression, diff_id, what
        self._cond = threading.Condition()
        self._items: list[tuple[bytes | None, bytes | None, int] | None] = []
        self._held = 0
        # who waits on the other: only then is it woken (a wake-up per segment would cost
        # more than compressing a small file)
        self._taker_waits = self._reader_waits = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="nestbuild-compress",
                                        daemon=True)
        self._thread.start()

    # the reader's side (a TarSplitStream's follower)
    def take(self, data: bytes | None, path: bytes | None, size: int) -> None:
        with self._cond:
            if path is not None and data is not None and self._held + size > FOLLOW_LIMIT:
                data = None  # read again by the follower rather than held
            while path is None and self._held > FOLLOW_LIMIT and self.spool.error is None:
                self._reader_waits = True
                self._cond.wait()
                self._reader_waits = False
            if (error := self.spool.error) is not None:
                raise error
            self._items.append((data, path, size))
            self._held += len(data) if data is not None else 0
            if self._taker_waits and (self._held >= READ or (path is not None and data is None)):
                self._cond.notify_all()

    def end(self) -> None:
        """The reader has passed every segment: the compressor finishes behind it."""
        with self._cond:
            self._items.append(None)
            self._cond.notify_all()

    def close(self) -> None:
        """Drop the spool, once sent, or stop compressing (validation failed, or the push
        broke)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self.spool.abandon()
        self._thread.join()
        self.spool.close()

    # the compressor's thread
    def _batch(self) -> list[tuple[bytes | None, bytes | None, int] | None]:
        """Every segment told so far (waits for some)."""
        with self._cond:
            while not self._items and not self._stopped:
                self._taker_waits = True
                self._cond.wait(0.05)  # the reader wakes it only for a worthwhile batch
                self._taker_waits = False
            if self._stopped:
                raise LayerError(f"{self._what}: compression abandoned")
            batch, self._items = self._items, []
            return batch

    def _done_with(self, held: int) -> None:
        with self._cond:
            self._held -= held
            if self._reader_waits:
                self._cond.notify_all()

    def _chunks(self) -> Iterator[bytes]:
        """The layer's tar, segment by segment, as the reader tells them."""
        while True:
            held = 0
            for item in self._batch():
                if item is None:
                    return
                data, path, size = item
                if data is not None:
                    yield data
                    held += len(data)
                else:
                    assert path is not None
                    yield from file_chunks(path, size, READ)
            self._done_with(held)

    def _advance(self, n: int) -> None:
        self.done_raw += n
        self.advance(n)

    def _run(self) -> None:
        _compress_into(self.spool, self._chunks(), self._compression, self._diff_id,
                       self._what, self._advance)
        with self._cond:  # a reader waiting for room learns of the failure
            self._cond.notify_all()


class Precompressor:
    """Layers compressed from the bytes validation reads: a validating push reads each layer
    from storage once.

    It stands in for ``ImageSource.open_layer`` while validation reads the derived layers
    (:func:`nestbuild.validation.validate.analyze`): a compressor follows the reader,
    compressing what it reads and reading what it skips. The compressed bytes wait in spool
    files on this machine; the upload sends them only once validation has passed (while the
    compressor may still be catching up), so a refused image still sends nothing. Layers
    already stored as blobs (OCI layouts: sent as they are), and those whose compressed form
    is already known (a re-push, which compresses nothing), are read as usual.
    """

    def __init__(self, compression: str = "gzip") -> None:
        if compression not in COMPRESSIONS:
            raise UsageError(f"--compression {compression}: use one of "
                             f"{', '.join(COMPRESSIONS)}")
        self.compression = compression
        self._ready: dict[str, _Follower] = {}

    @contextlib.contextmanager
    def open_layer(self, src: ImageSource, index: int) -> Iterator[LayerStream]:
        diff_id = src.config.diff_ids[index]
        if src.stored_layers() or diff_id in self._ready or self._known(diff_id):
            with src.open_layer(index) as plain:
                yield plain
            return
        with src.open_layer(index) as layer:
            stream = layer.fileobj
            if not isinstance(stream, TarSplitStream):
                yield layer
                return
            follower = _Follower(self.compression, diff_id, f"{src.ref} layer {index}")
            stream.follow(follower.take)
            kept = False

            def finish() -> None:
                nonlocal kept
                layer.finish()
                stream.finish_following()
                follower.end()
                self._ready[diff_id] = follower
                kept = True

            try:
                yield LayerStream(stream, layer.seekable, (finish,))
            finally:
                if not kept:
                    follower.close()

    def _known(self, diff_id: str) -> bool:
        info = BlobInfo()
        try:
            return info.compressed(diff_id, self.compression) is not None
        finally:
            info.close()

    def take(self, diff_id: str) -> _Follower | None:
        """The layer's compressor (the caller closes it), or None if none ran."""
        return self._ready.pop(diff_id, None)

    def close(self) -> None:
        for follower in self._ready.values():
            follower.close()
        self._ready.clear()

    def __enter__(self) -> Precompressor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# -- the push -----------------------------------------------------------------------------------


class _Pusher:
    def __init__(self, client: RegistryClient, repo: str, *, compression: str, jobs: int,
                 progress: Transfer, info: BlobInfo,
                 precompressed: Precompressor | None = None) -> None:
        self.client, self.repo, self.compression, self.jobs = client, repo, compression, jobs
        self.progress, self.info, self.precompressed = progress, info, precompressed
        self.outcomes: list[BlobOutcome] = []

    def _reuse(self, digest: str) -> str | None:
        """'exists' or 'mounted' if the registry can have the blob without an upload."""
        if self.client.has_blob(self.repo, digest):
            return "exists"
        for other in self.info.locations(digest, self.client.host):
            if other != self.repo and self.client.mount_blob(self.repo, digest, other):
                return "mounted"
        return None

    def _done(self, desc: Descriptor, status: str) -> Descriptor:
        self.info.record_location(desc.digest, self.client.host, self.repo)
        self.outcomes.append(BlobOutcome(desc.digest, desc.size, status))
        return desc

    def _upload(self, desc: Descriptor, f: BinaryIO) -> Descriptor:
        bar = self.progress.blob(desc.digest[7:19], desc.size, "uploading")
        self.client.put_blob(self.repo, f, desc.digest, desc.size, bar.advance)
        bar.finish("uploaded")
        return self._done(desc, "uploaded")

    def stored_blob(self, src: ImageSource, desc: Descriptor) -> Descriptor:
        """A blob that exists as bytes in the source: copy it unless the registry has it."""
        status = self._reuse(desc.digest)
        if status:
            self.progress.blob(desc.digest[7:19], desc.size).finish(status)
            return self._done(desc, status)
        with src.open_blob(desc) as f:
            return self._upload(desc, f)

    def storage_layer(self, src: ImageSource, index: int) -> Descriptor:
        """A layer that exists only uncompressed: reuse a known compressed form, send the one
        made while validation read it, or make it while it is uploaded (the compressor and
        the upload run side by side)."""
        diff_id = src.config.diff_ids[index]
        follower = self.precompressed.take(diff_id) if self.precompressed else None
        known = None if follower else self.info.compressed(diff_id, self.compression)
        if known is not None:
            desc = Descriptor(known[2], known[0], known[1])
            status = self._reuse(desc.digest)
            if status:
                self.progress.blob(desc.digest[7:19], desc.size).finish(status)
                return self._done(desc, status)
        bar = self.progress.blob(f"layer {index + 1} ({diff_id[7:19]})",
                                 src.manifest.layers[index].size, "compressing, uploading")
        if follower is not None:  # compressed behind validation's read, perhaps still going
            follower.advance = bar.advance
            bar.advance(follower.done_raw)  # a race can count a chunk twice: progress only
            with contextlib.closing(follower):
                return self._send_stream(follower.spool, bar, diff_id)
        what = f"{src.ref} layer {index}"
        spool = _Spool(str(cache_dir("spool")))
        try:
            with src.open_layer(index) as layer:
                producer = threading.Thread(
                    target=_compress_into, name="nestbuild-compress",
                    args=(spool, iter(partial(layer.fileobj.read, READ), b""),
                          self.compression, diff_id, what, bar.advance))
                producer.start()
                try:
                    return self._send_stream(spool, bar, diff_id)
                finally:
                    spool.abandon()
                    producer.join()
        finally:
            spool.close()

    def _send_stream(self, spool: _Spool, bar: Blob, diff_id: str) -> Descriptor:
        """Upload a layer's spool as its compressor fills it; remember what it compressed to."""
        digest, size = self.client.put_source(
            self.repo, spool, bar.sent, chunk_size=min(self.client.chunk_size, STREAM_CHUNK),
            name=f"layer {diff_id[:19]}")
        media_type = COMPRESSIONS[self.compression]
        self.info.record_compressed(diff_id, self.compression, digest, size, media_type)
        bar.finish("uploaded", name=digest[7:19], size=size)
        return self._done(Descriptor(media_type, digest, size), "uploaded")

    def blob_bytes(self, data: bytes, media_type: str) -> Descriptor:
        desc = Descriptor(media_type, digest_of(data), len(data))
        status = "exists"
        if not self.client.has_blob(self.repo, desc.digest):
            self.client.put_blob(self.repo, data, desc.digest, desc.size)
            status = "uploaded"
        self.outcomes.append(BlobOutcome(desc.digest, desc.size, status))
        return desc

    def image(self, src: ImageSource) -> tuple[bytes, str]:
        """Push one image's blobs; the manifest bytes to store (not yet stored)."""
        manifest = src.manifest
        if src.stored_layers():
            work = [partial(self.stored_blob, src, d)
                    for d in [manifest.config, *manifest.layers]]
            self._parallel(work)
            return manifest.raw, manifest.media_type
        config = src.raw_config()
        layers = self._parallel([partial(self.storage_layer, src, i)
                                 for i in range(len(manifest.layers))])
        cdesc = self.blob_bytes(config, OCI_CONFIG)
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cdesc.digest, "size": cdesc.size},
            "layers": [
                {"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                 **({"annotations": orig.annotations} if orig.annotations else {})}
                for d, orig in zip(layers, manifest.layers, strict=True)],
        }
        if manifest.annotations:
            doc["annotations"] = manifest.annotations
        return json.dumps(doc, indent=2).encode(), OCI_MANIFEST

    def _parallel(self, work: Sequence[Callable[[], Descriptor]]) -> list[Descriptor]:
        if self.jobs <= 1 or len(work) <= 1:
            return [w() for w in work]
        with ThreadPoolExecutor(max_workers=min(self.jobs, len(work)),
                                thread_name_prefix="nestbuild-push") as pool:
            futures = [pool.submit(w) for w in work]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def upload(
    source: str,
    dest: str | RegistryRef,
    *,
    tags: Sequence[str] = (),
    compression: str = "gzip",
    jobs: int = 4,
    access: RegistryAccess | None = None,
    quiet: bool = False,
    client: RegistryClient | None = None,
    before_tags: Callable[[str, list[str]], None] | None = None,
    precompressed: Precompressor | None = None,
) -> Uploaded:
    """Store ``source`` (any local transport) in ``dest`` (``[docker://]HOST/REPO[:TAG]``).

    The image (or, from an OCI layout, a whole multi-platform index) is stored by digest first
    and then under ``dest``'s tag and every ``tags`` entry. ``before_tags(digest, tags)`` runs
    in between (signing): if it fails, no tag has moved. Nothing is validated or signed here:
    that is :func:`nestbuild.shipping.push.push`. Layers ``precompressed`` holds (compressed
    as validation read them) are sent from there.
    """
    if compression not in COMPRESSIONS:
        raise UsageError(f"--compression {compression}: use one of {', '.join(COMPRESSIONS)}")
    target = reference.parse(dest) if isinstance(dest, str) else dest
    if target.digest:
        raise UsageError(f"{dest}: push to a tag (HOST/REPO:TAG), not a digest")
    all_tags = list(dict.fromkeys([target.tag or "latest", *tags]))
    src = open_image(source)
    own = client is None
    client = client or (access or RegistryAccess()).client(target.host)
    info = BlobInfo()
    try:
        with Transfer(f"pushing {source} to {target.name}", quiet=quiet) as progress:
            pusher = _Pusher(client, target.repo, compression=compression, jobs=jobs,
                             progress=progress, info=info, precompressed=precompressed)
            data, media_type = _push_top(pusher, src)
            digest = client.put_manifest(target.repo, digest_of(data), data, media_type)
            if before_tags is not None:
                before_tags(digest, all_tags)
            for tag in all_tags:
                client.put_manifest(target.repo, tag, data, media_type)
            progress.note(f"{target.name}@{digest} tagged {', '.join(all_tags)}")
        return Uploaded(target.with_tag(all_tags[0]), digest, media_type, all_tags,
                        pusher.outcomes, client.bytes_uploaded)
    finally:
        info.close()
        if own:
            client.close()


def _push_top(pusher: _Pusher, src: ImageSource) -> tuple[bytes, str]:
    """A layout tag naming an index pushes every platform image, then the index as is."""
    if isinstance(src, OCILayoutSource):
        desc, raw = src.top()
        if desc.media_type in INDEX_TYPES or b'"manifests"' in raw:
            for entry in index_manifests(raw, f"{src.ref} index"):
                child = src.child(entry.digest)
                data, media_type = pusher.image(child)
                pusher.client.put_manifest(pusher.repo, digest_of(data), data, media_type)
            return raw, desc.media_type or "application/vnd.oci.image.index.v1+json"
    return pusher.image(src)
