"""The one small interface to qemu: an ext4 disk from a directory, and a direct kernel boot
watched over the serial console.

The disk is made with ``mkfs.ext4 -d`` (no loop mount, no privileges beyond reading the tree).
qemu uses software emulation (TCG) unless ``NESTBUILD_QEMU_ACCEL=kvm`` asks for KVM, so the boot
also works on CI machines without (working) nested virtualisation, only slower.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import time
from dataclasses import dataclass
from pathlib import Path

from nestbuild._tools import run
from nestbuild.errors import ToolError

run.PACKAGES.setdefault("qemu-system-x86_64", "qemu-system-x86")
run.PACKAGES.setdefault("mkfs.ext4", "e2fsprogs")

#: Room left free on the disk beyond the tree: the booted system writes /var, /etc, journal.
DISK_HEADROOM = 512 << 20


@dataclass(frozen=True)
class Boot:
    """What one boot showed: the match of the awaited pattern (None if it never came), the
    whole console (kernel, initramfs and systemd output), and how long it took."""

    match: re.Match[str] | None
    console: str
    seconds: float
    exit_code: int | None  # qemu's own exit (a panic with -no-reboot), None if we stopped it

    def tail(self, lines: int = 40) -> str:
        return run.tail(self.console, lines)


def make_disk(tree: Path, image: Path, *, label: str = "root") -> None:
    """Write an ext4 filesystem image holding ``tree`` (owners, modes, hard links kept)."""
    used = int(run.run(["du", "-sxk", tree], what=f"measuring {tree}").stdout.split()[0]) << 10
    size = (int(used * 1.25) + DISK_HEADROOM + (1 << 20) - 1) // (1 << 20) << 20
    with open(image, "wb") as f:
        f.truncate(size)  # sparse
    run.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, image],
            what=f"making an ext4 image of {tree}")


def _accel() -> list[str]:
    """Software emulation unless NESTBUILD_QEMU_ACCEL=kvm: a /dev/kvm that opens is no proof
    that KVM works (nested virtualisation here fails on MSRs or hangs without output)."""
    if os.environ.get("NESTBUILD_QEMU_ACCEL", "tcg") == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def boot(kernel: Path, initrd: Path, disk: Path, cmdline: str, *, until: re.Pattern[str],
         timeout: float, memory_mib: int = 1536, cpus: int = 2) -> Boot:
    """Boot ``kernel`` + ``initrd`` with ``disk`` as /dev/vda until the serial console shows
    ``until`` (then qemu is stopped: the disk is scratch), qemu exits, or ``timeout`` passes."""
    argv: list[str | Path] = [
        "qemu-system-x86_64", *_accel(), "-smp", str(cpus), "-m", str(memory_mib),
        "-nodefaults", "-display", "none", "-serial", "stdio", "-monitor", "none",
        "-no-reboot", "-nic", "none",
        "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
    ]
    start = time.monotonic()
    proc = run.popen(argv, stdout=run.PIPE, stderr=run.STDOUT)
    assert proc.stdout is not None
    buf = bytearray()
    match = None
    try:
        while match is None and time.monotonic() - start < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:  # qemu exited by itself (a panic with -no-reboot, a bad kernel)
                with contextlib.suppress(run.TimeoutExpired):
                    proc.wait(10)
                break
            buf += chunk
            match = until.search(_text(buf[-(1 << 20):]))
    finally:
        exited = proc.poll()
        if exited is None:
            proc.terminate()
            try:
                proc.wait(10)
            except run.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
    console = _text(buf)
    if match is None and exited and "qemu-system-x86_64:" in console:
        raise ToolError(f"qemu could not start (exit {exited})", detail=run.tail(console))
    return Boot(match, console, time.monotonic() - start, exited)


def _text(buf: bytes | bytearray) -> str:
    """Console bytes as text: carriage returns and terminal escapes removed."""
    text = bytes(buf).decode("utf-8", "replace").replace("\r", "")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
