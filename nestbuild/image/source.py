"""Image sources: one class per transport, one interface above them."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, BinaryIO

from nestbuild import run
from nestbuild.errors import ImageError, LayerError, ToolError
from nestbuild.image.blob import HashingReader, Window, compression_of, decompressor
from nestbuild.image.model import (
    ANNOTATION_REF_NAME,
    INDEX_TYPES,
    Descriptor,
    ImageConfig,
    Manifest,
    digest_of,
    pick_platform,
)
from nestbuild.image.reference import ImageRef, parse_reference
from nestbuild.image.tarsplit import TarSplitStream


@dataclass
class LayerStream:
    """An uncompressed tar stream of one layer.

    ``seekable`` streams let the tar reader skip file bodies; others are read through.
    ``finish()`` checks what can only be checked at the end (the digest of a streamed blob).
    """

    fileobj: IO[bytes]
    seekable: bool
    _hasher: HashingReader | None = None
    _descriptor: Descriptor | None = None
    _what: str = ""

    def finish(self) -> None:
        if self._hasher is not None and self._descriptor is not None:
            self._hasher.finish(self._descriptor.digest, self._descriptor.size, self._what)


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

    @contextlib.contextmanager
    def open_layer(self, index: int) -> Iterator[LayerStream]:
        desc = self.manifest.layers[index]
        what = f"{self.ref} layer {index} ({desc.digest[:19]})"
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
                yield LayerStream(raw, True)
                return
            hasher = HashingReader(raw)
            stream = decompressor(hasher, compression)  # type: ignore[arg-type]
            yield LayerStream(stream, False, hasher, desc, what)

    def related(self, name: str | None, digest: str | None) -> ImageSource | None:
        """Another image in the same store (the base), by digest or name, if it is there."""
        return None


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
        raw = self._read_file("index.json")
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ImageError(f"{self.ref}: index.json is not valid JSON ({exc})") from None
        return [Descriptor.parse(d, f"{self.ref} index") for d in obj.get("manifests") or []]

    def top(self) -> tuple[Descriptor, bytes]:
        """What the reference names (an image or a whole index) and its exact bytes."""
        desc = Descriptor("", self._want_digest, -1) if self._want_digest else self._select()
        raw = self._read_verified(desc.digest)
        if not desc.media_type:
            media_type = json.loads(raw).get("mediaType") or ""
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

    def related(self, name: str | None, digest: str | None) -> ImageSource | None:
        if digest and self._has_blob(digest):
            return self._sibling(digest)
        return None

    def _sibling(self, digest: str) -> ImageSource:
        return OCILayoutSource(self.ref, digest)


class OCIArchiveSource(OCILayoutSource):
    """An OCI layout inside a tar file, read in place (no unpacking)."""

    def __init__(self, ref: ImageRef, manifest_digest: str | None = None) -> None:
        path = Path(ref.name)
        if not path.is_file():
            raise ImageError(f"{ref}: no such file")
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

    def _skopeo(self, *args: str) -> bytes:
        try:
            argv = ["skopeo", "inspect", *args, f"containers-storage:{self.ref.name}"]
            return run.run(argv).stdout
        except ToolError as exc:
            if "not known" in exc.message or "does not resolve" in exc.message \
                    or "no such image" in exc.message.lower():
                raise ImageError(f"{self.ref}: no such image in local containers-storage") from None
            raise

    @cached_property
    def manifest(self) -> Manifest:
        raw = self._direct[0] if self._direct else self._skopeo("--raw")
        digest = digest_of(raw)
        if b'"manifests"' in raw:
            raise ImageError(f"{self.ref}: is a manifest list; name one platform's image")
        return Manifest.parse(raw, digest, str(self.ref))

    def raw_config(self) -> bytes:
        return self._direct[1] if self._direct else self._skopeo("--config", "--raw")

    def stored_layers(self) -> bool:
        return False

    @cached_property
    def config(self) -> ImageConfig:
        raw = self.raw_config()
        config = ImageConfig.parse(raw, f"{self.ref} config")
        if len(config.diff_ids) != len(self.manifest.layers):
            raise ImageError(f"{self.ref}: config and manifest disagree on the layer count")
        return config

    @contextlib.contextmanager
    def open_layer(self, index: int) -> Iterator[LayerStream]:
        diff_id = self.config.diff_ids[index]
        store = _store()
        layer_id = store.layer_for(diff_id)
        if layer_id is None:
            raise LayerError(f"{self.ref}: layer {diff_id[:19]} is not in local storage")
        stream = TarSplitStream(store.tar_split(layer_id), store.diff_dir(layer_id))
        with contextlib.closing(stream):
            yield LayerStream(stream, True)  # type: ignore[arg-type]

    def related(self, name: str | None, digest: str | None) -> ImageSource | None:
        """The recorded base: by digest first (the tag may have moved since), then by name."""
        if digest:
            with contextlib.suppress(OSError, ValueError, KeyError):
                image_id = _store().find_by_digest(digest)
                if image_id is not None:
                    return StorageSource(ImageRef("containers-storage", image_id))
        if name:
            src = StorageSource(ImageRef("containers-storage", name))
            try:
                src.manifest  # noqa: B018 - resolve now: a missing image is "not found"
            except ImageError:
                return None
            return src
        return None


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
        data = json.loads((self.graphroot / f"{self.driver}-images" / "images.json").read_text())
        return data if isinstance(data, list) else []

    def find_by_digest(self, digest: str) -> str | None:
        """The id of an image whose manifest has ``digest`` (tagged or not)."""
        for image in self._images():
            if digest == image.get("digest") or digest in (image.get("digests") or []):
                return str(image["id"])
        return None

    def find_image(self, name: str) -> tuple[bytes, bytes] | None:
        """(manifest, config) of the image named exactly ``name`` (tag defaults to latest)."""
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
        out = run.run(
            ["buildah", "info", "--format", "{{.store.GraphRoot}}\t{{.store.GraphDriverName}}"],
            what="locating containers-storage",
        ).stdout.decode().strip()
        graphroot, _, driver = out.partition("\t")
        _STORE = _Store(Path(graphroot), driver)
    return _STORE


def open_image(ref: str | ImageRef) -> ImageSource:
    """Open an image by reference; nothing is read until asked for."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    if ref.transport == "oci":
        return OCILayoutSource(ref)
    if ref.transport == "oci-archive":
        return OCIArchiveSource(ref)
    if ref.transport == "containers-storage":
        return StorageSource(ref)
    if ref.transport == "docker":
        from nestbuild.pull import RegistrySource

        return RegistrySource(ref)
    raise ImageError(f"{ref}: the {ref.transport} transport is not supported")
