"""The package list of an image, from its package database, for the push attestation.

Nodes are audited by what is installed on them; attaching the list to the signed image lets
anyone answer "which nodes run openssl 3.0.x" from the registry alone. Debian's dpkg database
is read directly (in an ostree-native image it lives under ``/usr/lib/sysimage/dpkg``); an
image without one (the mini base, an rpm image whose sqlite database would need rpm) gets no
package attestation, and push says so.
"""

from __future__ import annotations

from typing import Any

from nestbuild._image.source import ImageSource
from nestbuild._image.tarstream import TarStream

PREDICATE_TYPE = "https://nestbuild.dev/packages/v1"
DPKG_STATUS = ("usr/lib/sysimage/dpkg/status", "var/lib/dpkg/status")
WHITEOUT = ".wh."


def _find(src: ImageSource, paths: tuple[str, ...]) -> bytes | None:
    """The newest version of the first of ``paths`` any layer has (top layer first)."""
    wanted = set(paths)
    dirs = {p.rsplit("/", 1)[0] for p in paths}
    for i in reversed(range(len(src.manifest.layers))):
        with src.open_layer(i) as layer:
            found = _in_layer(TarStream(layer.fileobj, seekable=layer.seekable,
                                    what=f"{src.ref} layer {i}"), wanted, dirs)
            if found is not None:
                layer.finish()  # what the attestation states must come from proven bytes
                return found[0]
    return None


def _in_layer(tar: TarStream, wanted: set[str], dirs: set[str]) -> tuple[bytes | None] | None:
    """(content,) of the first wanted file in the layer, (None,) if the layer deletes it."""
    for m in tar:
        name = m.name.lstrip("./").rstrip("/")
        if name in wanted and m.type in (b"0", b"\0"):
            return (b"".join(tar.body(m)),)
        head, _, base = name.rpartition("/")
        if head in dirs and base.startswith(WHITEOUT) and \
                f"{head}/{base[len(WHITEOUT):]}" in wanted:
            return (None,)  # deleted by a later layer
    return None


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """Installed packages (name, version, architecture) from a dpkg ``status`` file."""
    out = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            out.append({"name": fields["Package"], "version": fields.get("Version", ""),
                        "architecture": fields.get("Architecture", "")})
    return sorted(out, key=lambda p: p["name"])


def package_list(src: ImageSource) -> dict[str, Any] | None:
    """The attestation predicate, or None when the image has no package database."""
    data = _find(src, DPKG_STATUS)
    if data is None:
        return None
    packages = parse_dpkg_status(data.decode("utf-8", "replace"))
    return {"format": "dpkg", "image": str(src.ref), "count": len(packages),
            "packages": packages}
