"""Image sources: one class per local transport, one interface above them (the registry's is
:mod:`nestbuild._image.registry_source`; :mod:`nestbuild._image.transports` picks one)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterator
from functools import cached_property, partial
from pathlib import Path
from typing import IO, Any, BinaryIO

from nestbuild._image.blob import (
    CHUNK,
    HashingReader,
    Window,
    check_whole,
    compression_of,
    decompressor,
)
from nestbuild._image.model import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    Descriptor,
    ImageConfig,
    Manifest,
    digest_of,
    index_manifests,
    load_json_object,
    pick_platform,
)
from nestbuild._image.reference import ImageRef, missing_locally
from nestbuild._image.tarsplit import TarSplitStream
from nestbuild._image.tree import read_errors
from nestbuild._util.record import Record
from nestbuild.errors import ImageError, LayerError, ToolError


class LayerStream(Record):
    """An uncompressed tar stream of one layer.

    ``seekable`` streams let the tar reader skip file bodies; others are read through.
    ``finish()`` checks what can only be checked at the end: that the blob's bytes are the
    digest the manifest names, and that the tar they hold is the diff_id the config names.
    Every caller calls it once it has read what it needs (it reads the rest itself).
    """

    fileobj: IO[bytes]
    seekable: bool
    _checks: tuple[Callable[[], None], ...]

    def __init__(self, fileobj: IO[bytes], seekable: bool,
                 _checks: tuple[Callable[[], None], ...] = ()) -> None:
        self.fileobj = fileobj
        self.seekable = seekable
        self._checks = _checks

    def finish(self) -> None:
        for check in self._checks:
            check()


class ImageSource:
    """One image: its manifest, config and layers, wherever it is stored."""

    ref: ImageRef

    @cached_property
    def manifest(self) -> Manifest:
        raise NotImplementedError

    @cached_property
    def config(self) -> ImageConfig:
        raw = self.read_blob(self.manifest.config)
        config = ImageConfig.parse(raw, f"{self.ref} config")
        if len(config.diff_ids) != len(self.manifest.layers):
            raise ImageError(
                f"{self.ref}: the config lists {len(config.diff_ids)} layers, "
                f"the manifest {len(self.manifest.layers)}"
            )
        return config

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def read_blob(self, desc: Descriptor) -> bytes:
        """A small blob (config), digest-checked."""
        with self._open_blob(desc) as f:
            data = f.read(desc.size + 1)
        if len(data) != desc.size or digest_of(data) != desc.digest:
            raise ImageError(f"{self.ref}: blob {desc.digest} is corrupt")
        return data

    def _open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def open_blob(self, desc: Descriptor) -> contextlib.AbstractContextManager[BinaryIO]:
        """A stored blob as it is (compressed layers stay compressed), for copying it."""
        return self._open_blob(desc)

    def raw_config(self) -> bytes:
        """The config's exact bytes (its digest is the manifest's config digest)."""
        return self.read_blob(self.manifest.config)

    def stored_layers(self) -> bool:
        """Whether layers exist as the manifest's blobs (False: only as uncompressed diffs,
        as in containers-storage, so a copy must compress them)."""
        return True

    #: Whether ``_open_blob`` already proved each blob's digest (a registry download does).
    _blobs_verified = False
    #: Whether the store itself computed every layer's diff_id (containers-storage), so the
    #: layers need no rehashing here.
    layers_trusted = False

    @contextlib.contextmanager
    def open_layer(self, index: int, what: str | None = None) -> Iterator[LayerStream]:
        """One layer's tar; the stream's ``finish()`` proves its blob digest and diff_id.

        ``what`` names the layer in errors (the caller's own numbering)."""
        desc = self.manifest.layers[index]
        diff_id = self.config.diff_ids[index]
        what = what or f"{self.ref} layer {index} ({desc.digest[:19]})"
        with self._open_blob(desc) as raw:
            head = raw.read(4)
            raw.seek(0)
            compression = compression_of(head, desc.media_type)
            if compression == "none":
                size = raw.seek(0, os.SEEK_END)
                raw.seek(0)
                if size != desc.size:
                    raise LayerError(
                        f"{what}: blob is {size} bytes, the manifest says {desc.size} "
                        "(truncated or corrupt)"
                    )
                if desc.digest != diff_id:
                    # an uncompressed blob is its own tar: both digests hash the same bytes
                    raise LayerError(f"{what}: uncompressed, so its diff_id must be its digest, "
                                     f"but the config says {diff_id}")
                checks: tuple[Callable[[], None], ...] = () if self._blobs_verified else (
                    partial(check_whole, raw, desc.digest, desc.size, what),)
                yield LayerStream(raw, True, checks)
                return
            blob = HashingReader(raw)
            tar = HashingReader(decompressor(blob, compression))  # type: ignore[arg-type]

            def check() -> None:
                try:
                    tar.drain()
                except read_errors() as exc:
                    raise LayerError(f"{what}: corrupt {compression} data ({exc})") from None
                blob.drain()
                blob.check(desc.digest, desc.size, what)
                tar.check_diff_id(diff_id, what)

            yield LayerStream(io.BufferedReader(tar, CHUNK), False, (check,))

    def recorded_base(self, name: str | None, digest: str | None) -> BaseLookup:
        """The base the manifest's annotations record, only if the record holds here.

        ``name`` must resolve, in this image's own store, to an image whose digest is
        ``digest``. A digest alone proves nothing: a layered build (``podman build``,
        ``buildah bud --layers``) records its last intermediate image there, which has the
        base's labels and a prefix of the image's layers, but also the earlier steps' layers.
        The name is the anchor: it is what FROM named. Returns the base, or None and why.
        """
        return None, f"{self.ref.transport}: holds no other image to compare with"


class OCILayoutSource(ImageSource):
    """``oci:DIR[:TAG]`` (and, through a subclass, ``oci-archive:FILE[:TAG]``)."""

    def __init__(self, ref: ImageRef, manifest_digest: str | None = None) -> None:
        self.ref = ref
        self._want_digest = manifest_digest
        self._root = Path(ref.name)
        self._check_layout()

    def _check_layout(self) -> None:
        if not self._root.is_dir():
            raise ImageError(f"{self.ref}: no such directory")
        if not (self._root / "index.json").is_file():
            raise ImageError(f"{self.ref}: not an OCI layout (no index.json)")

    def _read_file(self, name: str) -> bytes:
        try:
            return (self._root / name).read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.ref}: cannot read {name} ({exc.strerror})") from None

    def _blob_path(self, digest: str) -> str:
        algo, _, hexdigest = digest.partition(":")
        return f"blobs/{algo}/{hexdigest}"

    @contextlib.contextmanager
    def _open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        path = self._root / self._blob_path(desc.digest)
        try:
            f = open(path, "rb")  # noqa: SIM115
        except OSError:
            raise ImageError(f"{self.ref}: blob {desc.digest} is missing") from None
        with f:
            yield f

    def _has_blob(self, digest: str) -> bool:
        return (self._root / self._blob_path(digest)).is_file()

    def _index(self) -> list[Descriptor]:
        return index_manifests(self._read_file("index.json"), f"{self.ref} index.json")

    def top(self) -> tuple[Descriptor, bytes]:
        """What the reference names (an image or a whole index) and its exact bytes."""
        desc = Descriptor("", self._want_digest, -1) if self._want_digest else self._select()
        raw = self._read_verified(desc.digest)
        if not desc.media_type:
            media_type = str(load_json_object(raw, f"{self.ref} manifest").get("mediaType")
                             or "")
            desc = Descriptor(media_type, desc.digest, len(raw))
        return desc, raw

    def child(self, digest: str) -> OCILayoutSource:
        """Another manifest in the same layout (a platform image of an index)."""
        return self._sibling(digest)  # type: ignore[return-value]

    @cached_property
    def manifest(self) -> Manifest:
        desc = Descriptor("", self._want_digest, -1) if self._want_digest else self._select()
        raw = self._read_verified(desc.digest)
        if desc.media_type in INDEX_TYPES or b'"manifests"' in raw:
            desc = pick_platform(raw, str(self.ref))
            raw = self._read_verified(desc.digest)
        return Manifest.parse(raw, desc.digest, str(self.ref))

    def _read_verified(self, digest: str) -> bytes:
        if not self._has_blob(digest):
            raise ImageError(f"{self.ref}: manifest {digest} is missing")
        with self._open_blob(Descriptor("", digest, -1)) as f:
            raw = f.read()
        if digest_of(raw) != digest:
            raise ImageError(f"{self.ref}: manifest {digest} is corrupt")
        return raw

    def _select(self) -> Descriptor:
        entries = self._index()
        if self.ref.tag is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise ImageError(f"{self.ref}: the layout holds no image")
            tags = sorted(d.annotations.get(ANNOTATION_REF_NAME, "?") for d in entries)
            raise ImageError(f"{self.ref}: holds {len(entries)} images; name one of {tags}")
        for desc in entries:
            if desc.annotations.get(ANNOTATION_REF_NAME) == self.ref.tag:
                return desc
        raise ImageError(f"{self.ref}: no image tagged {self.ref.tag!r}")

    def recorded_base(self, name: str | None, digest: str | None) -> BaseLookup:
        """In a layout, a name resolves to the image tagged with it, or with its tag (a
        layout's ref.name is usually the tag alone)."""
        if not name or not digest:
            return None, _incomplete(name, digest)
        wanted = {name, _tag_of(name)}
        found: list[str] = []
        for desc in self._index():
            if desc.annotations.get(ANNOTATION_REF_NAME) not in wanted:
                continue
            if desc.digest == digest or (desc.media_type in INDEX_TYPES
                                         and digest in self._children(desc.digest)):
                return self._sibling(digest), ""
            found.append(desc.digest)
        where = self.ref.name
        if found:
            return None, (f"{name} is {found[0][:19]} in {where}, not the recorded "
                          f"{digest[:19]}")
        return None, f"{where} holds no image named {name}"

    def _children(self, index_digest: str) -> set[str]:
        return index_children(self._read_verified(index_digest))

    def _sibling(self, digest: str) -> ImageSource:
        return OCILayoutSource(self.ref, digest)


class OCIArchiveSource(OCILayoutSource):
    """An OCI layout inside a tar file, read in place (no unpacking)."""

    def __init__(self, ref: ImageRef, manifest_digest: str | None = None) -> None:
        path = Path(ref.name)
        if not path.is_file():
            raise ImageError(f"{ref}: no such file")
        import tarfile  # only here: reading local storage or a layout does not need it

        self._file = open(path, "rb")  # noqa: SIM115
        self._members: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(fileobj=self._file, mode="r:") as tf:
                for m in tf:
                    if m.isfile():
                        self._members[m.name.lstrip("./")] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(f"{ref}: not a readable tar archive ({exc})") from None
        super().__init__(ref, manifest_digest)

    def _check_layout(self) -> None:
        if "index.json" not in self._members:
            raise ImageError(f"{self.ref}: not an OCI archive (no index.json)")

    def _read_file(self, name: str) -> bytes:
        offset, size = self._members[name]
        self._file.seek(offset)
        return self._file.read(size)

    def _has_blob(self, digest: str) -> bool:
        return self._blob_path(digest) in self._members

    @contextlib.contextmanager
    def _open_blob(self, desc: Descriptor) -> Iterator[BinaryIO]:
        try:
            offset, size = self._members[self._blob_path(desc.digest)]
        except KeyError:
            raise ImageError(f"{self.ref}: blob {desc.digest} is missing") from None
        yield Window(self._file, offset, size)  # type: ignore[misc]

    def _sibling(self, digest: str) -> ImageSource:
        return OCIArchiveSource(self.ref, digest)


class StorageSource(ImageSource):
    """``containers-storage:REF``: buildah's and podman's local store.

    Manifest and config come from skopeo (which resolves names as podman does); layers are
    replayed from the store's own files, so nothing is copied.
    """

    def __init__(self, ref: ImageRef) -> None:
        self.ref = ref

    @cached_property
    def _direct(self) -> tuple[bytes, bytes] | None:
        """Manifest and config straight from the store's metadata, when the name is exact.

        Saves two skopeo runs (~60 ms); anything unusual (short names, IDs, digests) goes
        through skopeo, which resolves names as podman does.
        """
        try:
            return _store().find_image(self.ref.name)
        except (OSError, ValueError, KeyError):
            return None

    def _skopeo(self, *, config: bool = False) -> bytes:
        try:
            from nestbuild._tools import skopeo

            return skopeo.inspect_local(f"containers-storage:{self.ref.name}", config=config)
        except ToolError as exc:
            if "not known" in exc.message or "does not resolve" in exc.message \
                    or "no such image" in exc.message.lower():
                raise ImageError(missing_locally(self.ref)) from None
            raise

    @cached_property
    def manifest(self) -> Manifest:
        raw = self._direct[0] if self._direct else self._skopeo()
        digest = digest_of(raw)
        if b'"manifests"' in raw:
            raise ImageError(f"{self.ref}: is a manifest list; name one platform's image")
        return Manifest.parse(raw, digest, str(self.ref))

    def raw_config(self) -> bytes:
        return self._direct[1] if self._direct else self._skopeo(config=True)

    def stored_layers(self) -> bool:
        return False

    @cached_property
    def config(self) -> ImageConfig:
        raw = self.raw_config()
        config = ImageConfig.parse(raw, f"{self.ref} config")
        if len(config.diff_ids) != len(self.manifest.layers):
            raise ImageError(f"{self.ref}: config and manifest disagree on the layer count")
        return config

    #: containers-storage computed each layer's diff-digest itself when it committed or
    #: pulled the layer (c/image checks it against the config then), and a layer is looked up
    #: here by that digest: rehashing the replayed tar would read every file body of the layer
    #: for no new proof, so its stream has nothing to check at the end.
    layers_trusted = True

    @contextlib.contextmanager
    def open_layer(self, index: int, what: str | None = None) -> Iterator[LayerStream]:
        diff_id = self.config.diff_ids[index]
        store = _store()
        layer_id = store.layer_for(diff_id)
        if layer_id is None:
            raise LayerError(f"{self.ref}: layer {diff_id[:19]} is not in local storage")
        stream = TarSplitStream(store.tar_split(layer_id), store.diff_dir(layer_id))
        with contextlib.closing(stream):
            yield LayerStream(stream, True)  # type: ignore[arg-type]

    def recorded_base(self, name: str | None, digest: str | None) -> BaseLookup:
        """The image with the recorded digest, if the store says the recorded name was ever
        its name (names-history: its tag may have moved since); else the name as it resolves
        now, if that is the recorded digest. A layered build's intermediate image is never
        given the FROM name, so it is never confirmed."""
        if not name or not digest:
            return None, _incomplete(name, digest)
        record = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = _store().image_by_digest(digest)
        known = set(record.get("names") or []) | set(record.get("names-history") or []) if (
            record is not None) else set()
        if record is not None and _store_names(name) & known:
            return StorageSource(ImageRef("containers-storage", str(record["id"]))), ""
        try:
            now = StorageSource(ImageRef("containers-storage", name)).digest
        except ImageError:
            return None, f"{name} is not in local storage"
        if now == digest:
            return StorageSource(ImageRef("containers-storage", name)), ""
        why = f"{name} is {now[:19]} in local storage, not the recorded {digest[:19]}"
        if record is not None:
            why += ", an image never named so (a layered build's intermediate image?)"
        return None, why


BaseLookup = tuple[ImageSource | None, str]


def index_children(raw: bytes) -> set[str]:
    """The manifest digests an image index lists (none if it is not one)."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return set()
    manifests = obj.get("manifests") if isinstance(obj, dict) else None
    if not isinstance(manifests, list):
        return set()
    return {str(m.get("digest")) for m in manifests if isinstance(m, dict)}


def _incomplete(name: str | None, digest: str | None) -> str:
    missing = "name" if not name else "digest"
    return f"the record has no base {missing}"


def _tag_of(name: str) -> str:
    """The tag part of an image name (``latest`` when it has none)."""
    last = name.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.partition(":")[2] or "latest"


def _store_names(name: str) -> set[str]:
    """How containers-storage may list ``name`` (with the default tag when it has none)."""
    names = {name}
    if "@" not in name and ":" not in name.rsplit("/", 1)[-1]:
        names.add(name + ":latest")
    return names


class _Store:
    """Just enough of containers-storage's on-disk layout to find a layer's files."""

    def __init__(self, graphroot: Path, driver: str) -> None:
        if driver not in ("overlay", "vfs"):
            raise ImageError(
                f"containers-storage uses the {driver} driver; nestbuild reads overlay and vfs"
            )
        self.graphroot = graphroot
        self.driver = driver
        self._by_diff: dict[str, str] | None = None
        #: images.json as last parsed, and the file's identity then (it is replaced whole
        #: when storage changes it: a new inode, size or mtime means parse it again).
        self._image_list: tuple[tuple[int, int, int], list[dict[str, Any]]] | None = None

    def _load(self) -> dict[str, str]:
        if self._by_diff is None:
            self._by_diff = {}
            for name in ("layers.json", "volatile-layers.json"):
                path = self.graphroot / f"{self.driver}-layers" / name
                if not path.is_file():
                    continue
                for layer in json.loads(path.read_text()):
                    if layer.get("diff-digest"):
                        self._by_diff.setdefault(layer["diff-digest"], layer["id"])
        return self._by_diff

    def layer_for(self, diff_id: str) -> str | None:
        found = self._load().get(diff_id)
        if found is None:  # the store may have gained layers since we last looked
            self._by_diff = None
            found = self._load().get(diff_id)
        return found

    def _images(self) -> list[dict[str, Any]]:
        """The store's image records; parsed once while the file stays the same (validate
        looks up the image, its base by name and by digest: three parses of a file that
        grows with every image in storage)."""
        path = self.graphroot / f"{self.driver}-images" / "images.json"
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._image_list is not None and self._image_list[0] == key:
                return self._image_list[1]
            data = json.loads(f.read())
        images = data if isinstance(data, list) else []
        self._image_list = (key, images)
        return images

    def image_by_digest(self, digest: str) -> dict[str, Any] | None:
        """The store's record of an image whose manifest has ``digest`` (tagged or not)."""
        for image in self._images():
            if digest == image.get("digest") or digest in (image.get("digests") or []):
                return image
        return None

    def find_image(self, name: str) -> tuple[bytes, bytes] | None:
        """(manifest, config) of the image named exactly ``name`` (tag defaults to latest),
        or by its full ID (a base recorded by ID: no skopeo run to read it)."""
        if re.fullmatch(r"[0-9a-f]{64}", name):
            for image in self._images():
                if image.get("id") == name:
                    folder = self.graphroot / f"{self.driver}-images" / name
                    return _big_data(folder, "manifest"), _big_data(folder, "sha256:" + name)
            return None
        if "@" in name or "/" not in name:
            return None
        if ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        for image in self._images():
            if name in (image.get("names") or []):
                folder = self.graphroot / f"{self.driver}-images" / image["id"]
                return _big_data(folder, "manifest"), _big_data(folder, "sha256:" + image["id"])
        return None

    def tar_split(self, layer_id: str) -> Path:
        return self.graphroot / f"{self.driver}-layers" / f"{layer_id}.tar-split.gz"

    def diff_dir(self, layer_id: str) -> Path:
        if self.driver == "overlay":
            return self.graphroot / "overlay" / layer_id / "diff"
        return self.graphroot / "vfs" / "dir" / layer_id


def _big_data(folder: Path, key: str) -> bytes:
    """containers-storage names a big-data file by its key, base64-encoded if it must be."""
    plain = folder / key
    if re.fullmatch(r"[A-Za-z0-9._-]+", key) and plain.is_file():
        return plain.read_bytes()
    return (folder / ("=" + base64.b64encode(key.encode()).decode())).read_bytes()


_STORE: _Store | None = None


def _store() -> _Store:
    global _STORE
    if _STORE is None:
        from nestbuild._image.storeconf import store_location

        _STORE = _Store(*store_location())
    return _STORE
