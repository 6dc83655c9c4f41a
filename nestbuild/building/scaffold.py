"""``nestbuild init``: a starter project a platform team can build right away."""

from __future__ import annotations

from pathlib import Path

from nestbuild.errors import UsageError

DEFAULT_BASE = "localhost/nestbuild/mini:latest"

CONTAINERFILE = """\
# Node image for {name}. Build: nestbuild build   Check: nestbuild validate {image}
# Keep node changes to /etc (configuration) and /var-by-tmpfiles.d (state); see
# docs/containerfile.md in nestbuild for what a node does with each path.
ARG BASE={base}
FROM ${{BASE}}

# Configuration goes to /etc:
COPY motd /etc/motd

# State in /var is created at boot by tmpfiles.d, never shipped in the image:
COPY tmpfiles.conf /etc/tmpfiles.d/{name}.conf
"""

# The starter copies files only: a RUN step would make buildah leave its mount points
# (/etc/hostname, /etc/resolv.conf) in the image on bases without them, and the first build
# would start with warnings about files nobody wrote.
TMPFILES = """\
# systemd-tmpfiles creates {name}'s state directory on every boot (man tmpfiles.d)
d /var/lib/{name} 0750 root root -
"""

PROJECT = """\
# nestbuild project settings: 'nestbuild build' reads them, flags override them.
image: {image}
containerfile: Containerfile
context: .
engine: buildah          # or docker
build-args:
  BASE: {base}
policy: policy.yaml
"""

POLICY = """\
# What this image may change in the OS ('nestbuild rules' lists the rule ids).
extends: strict          # strict: only /etc and /var; packages: /usr and /opt too
allow: []
deny:
  - /etc/shadow
  - /etc/gshadow
rules:
  var-content: warning
"""


def init_project(directory: Path, *, base: str | None = None,
                 force: bool = False) -> list[Path]:
    """Write the starter files (on ``base``, default the mini base); refuse to overwrite
    unless ``force``."""
    base = base or DEFAULT_BASE
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{directory}: not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create it ({exc.strerror})") from None
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in directory.resolve().name.lower())
    name = name.strip("-") or "node"
    image = f"localhost/{name}:latest"
    files = {
        "Containerfile": CONTAINERFILE.format(name=name, image=image, base=base),
        "nestbuild.yaml": PROJECT.format(image=image, base=base),
        "policy.yaml": POLICY,
        "motd": f"{name}: managed by the platform team; local edits are kept on update.\n",
        "tmpfiles.conf": TMPFILES.format(name=name),
    }
    existing = [n for n in files if (directory / n).exists()]
    if existing and not force:
        raise UsageError(f"{directory}: {', '.join(existing)} already exist(s); "
                         "use --force to overwrite")
    written = []
    for fname, text in files.items():
        (directory / fname).write_text(text)
        written.append(directory / fname)
    return written
