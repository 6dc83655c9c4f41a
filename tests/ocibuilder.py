"""Build small OCI images in Python for fast, exact tests of the reading and diff logic."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from nestbuild._image.layout import LayoutWriter
from nestbuild._image.model import OCI_INDEX, OCI_MANIFEST, Descriptor

LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
BOOTABLE = {"containers.bootc": "1", "ostree.bootable": "true", "ostree.linux": "6.1.0-test"}
KVER = "6.1.0-test"


@dataclass
class Layer:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def _info(self, path: str, type: bytes, mode: int, uid: int = 0, gid: int = 0,
              mtime: int = 1_700_000_000) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type, mode, uid, gid, mtime
        return ti

    def dir(self, path: str, mode: int = 0o755, **kw: int) -> Layer:
        self.members.append((self._info(path, tarfile.DIRTYPE, mode, **kw), None))
        return self

    def file(self, path: str, data: bytes = b"", mode: int = 0o644,
             xattrs: dict[str, bytes] | None = None, **kw: int) -> Layer:
        ti = self._info(path, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        if xattrs:
            ti.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                              for k, v in xattrs.items()}
        self.members.append((ti, data))
        return self

    def symlink(self, path: str, target: str) -> Layer:
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.members.append((ti, None))
        return self

    def hardlink(self, path: str, target: str) -> Layer:
        ti = self._info(path, tarfile.LNKTYPE, 0o644)
        ti.linkname = target.lstrip("/")
        self.members.append((ti, None))
        return self

    def device(self, path: str, major: int, minor: int) -> Layer:
        ti = self._info(path, tarfile.CHRTYPE, 0o600)
        ti.devmajor, ti.devminor = major, minor
        self.members.append((ti, None))
        return self

    def whiteout(self, path: str) -> Layer:
        head, _, name = path.rpartition("/")
        return self.file(f"{head}/.wh.{name}")

    def opaque(self, directory: str) -> Layer:
        return self.file(f"{directory.rstrip('/')}/.wh..wh..opq")

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                          encoding="utf-8", errors="surrogateescape") as tf:
            for ti, data in self.members:
                tf.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def bootable_base(extra: Layer | None = None, *, composefs: bool = True) -> Layer:
    """A layer with everything bootc's lints expect of a base."""
    layer = Layer()
    for d in ("/dev", "/proc", "/sys", "/run", "/var", "/sysroot", "/boot", "/etc", "/usr",
              "/usr/bin", "/usr/lib", "/usr/lib/modules", f"/usr/lib/modules/{KVER}",
              "/usr/lib/ostree", "/usr/lib/tmpfiles.d", "/usr/lib/sysusers.d"):
        layer.dir(d)
    layer.dir("/tmp", 0o1777)
    layer.symlink("/ostree", "sysroot/ostree").symlink("/var/run", "../run")
    layer.symlink("/bin", "usr/bin")
    layer.file(f"/usr/lib/modules/{KVER}/vmlinuz", b"kernel")
    layer.file(f"/usr/lib/modules/{KVER}/initramfs.img", b"initramfs")
    layer.file("/usr/lib/ostree/prepare-root.conf",
               b"[composefs]\nenabled = yes\n" if composefs else b"[composefs]\nenabled = no\n")
    layer.file("/usr/lib/tmpfiles.d/base.conf", b"L /var/run - - - - ../run\n")
    layer.file("/usr/lib/sysusers.d/basic.conf", b"u root 0 \"root\" /root\n")
    layer.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    layer.file("/etc/group", b"root:x:0:\n")
    layer.file("/etc/motd", b"base motd\n")
    layer.file("/usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    if extra is not None:
        layer.members.extend(extra.members)
    return layer


def compress(data: bytes, how: str) -> tuple[bytes, str]:
    if how == "gzip":
        return gzip.compress(data, mtime=0), LAYER_TAR + "+gzip"
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data), LAYER_TAR + "+zstd"
    return data, LAYER_TAR


def write_image(root: Path, layers: list[Layer | bytes], *, tag: str = "latest",
                labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
                compression: str = "none") -> Descriptor:
    """Write an image to the OCI layout at ``root``; returns its manifest descriptor."""
    w = LayoutWriter(root)
    descs, diff_ids = [], []
    for layer in layers:
        raw = layer.tar() if isinstance(layer, Layer) else layer
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        blob, media_type = compress(raw, compression)
        descs.append(w.add_bytes(blob, media_type))
    return w.add_image(descs, diff_ids, labels=BOOTABLE if labels is None else labels,
                       annotations=annotations, tag=tag)


def write_platform_index(root: Path, tag: str = "multi",
                         archs: tuple[str, ...] = ("amd64", "arm64")) -> tuple[str, list[str]]:
    """A multi-platform OCI index (one one-layer image per architecture) tagged ``tag`` in
    the layout at ``root``; returns (index digest, platform manifest digests)."""
    w = LayoutWriter(root)
    children = []
    for arch in archs:
        content = f"layer {arch}".encode()
        layer = w.add_bytes(content, LAYER_TAR)
        children.append(w.add_image([layer], ["sha256:" + hashlib.sha256(content).hexdigest()],
                                    architecture=arch))
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": c.digest, "size": c.size,
         "platform": {"os": "linux", "architecture": arch}}
        for c, arch in zip(children, archs, strict=True)]}
    desc = w.add_bytes(json.dumps(index).encode(), OCI_INDEX)
    w.tag(desc, tag)
    return desc.digest, [c.digest for c in children]


def derived(root: Path, base_layers: list[Layer], derived_layers: list[Layer], *,
            base_tag: str = "base", tag: str = "derived", compression: str = "none",
            annotate: bool = True) -> tuple[str, str]:
    """A base and a derived image in one layout, the derived one annotated as buildah does."""
    base = write_image(root, list(base_layers), tag=base_tag)
    ann = None
    if annotate:
        ann = {"org.opencontainers.image.base.digest": base.digest,
               "org.opencontainers.image.base.name": f"example.com/base:{base_tag}"}
    write_image(root, [*base_layers, *derived_layers], tag=tag, annotations=ann,
                compression=compression)
    return f"oci:{root}:{base_tag}", f"oci:{root}:{tag}"
