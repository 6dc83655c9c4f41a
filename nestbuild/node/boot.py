"""Boot a sysroot's default deployment under qemu and read back a marker (``nestbuild boot``).

This proves what a file-level check cannot: the image's kernel, its initramfs (with ostree's
prepare-root) and its systemd bring the deployment up to multi-user.target. The sysroot is
the one ``nestbuild/node/deploy.py`` writes; it becomes an ext4 disk (/dev/vda), and the kernel,
initramfs and ``ostree=`` argument come from the deployment's BLS entry, as a bootloader
would use them. The image's boot report unit (the Debian base has it) prints one line on the
console when multi-user.target is reached, with /etc/nestbuild-marker's contents.
"""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nestbuild.errors import EXIT_FAILED, NestbuildError, UsageError

#: Appended to the BLS options: the disk, the serial console, the report unit's switch, and a
#: panic that ends qemu (-no-reboot) instead of hanging until the timeout.
BOOT_ARGS = "root=/dev/vda rw console=ttyS0,115200n8 nestbuild.boot-report panic=5"
REPORT = re.compile(r"nestbuild-boot: multi-user\.target reached; deployment=(\S+); "
                    r"marker=(\S+); failed=(\S+); end")
#: Consoles that mean the boot cannot succeed any more: stop early with the evidence.
FATAL = re.compile(r"Kernel panic - not syncing|You are in emergency mode|"
                   r"Entering emergency mode|Cannot open access to console")
Progress = Callable[[str], None]


class BootError(NestbuildError):
    """The deployment did not reach multi-user.target, or its marker was not the expected one."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, detail: str | None = None, console: str = "") -> None:
        super().__init__(message, detail=detail)
        #: The whole serial console, for --console-log.
        self.console = console


@dataclass(frozen=True)
class BootEntry:
    """A deployment's BLS entry, resolved to files in the sysroot."""

    osname: str
    checksum: str
    serial: int
    kernel: Path
    initrd: Path
    options: str


@dataclass(frozen=True)
class BootResult:
    entry: BootEntry
    seconds: float
    marker: bytes | None  # /etc/nestbuild-marker's bytes; None when the image has none
    failed_units: list[str]
    console: str

    def to_json(self) -> dict[str, Any]:
        return {"booted": True, "osname": self.entry.osname, "commit": self.entry.checksum,
                "seconds": round(self.seconds, 1),
                "marker": None if self.marker is None else self.marker.decode("utf-8",
                                                                              "replace"),
                "failed_units": self.failed_units}

    @property
    def shown_marker(self) -> str:
        """The marker as the command shows it: quoted, or ``none``."""
        return "none" if self.marker is None else repr(self.marker.decode("utf-8", "replace"))

    def marker_matches(self, expected: str) -> bool:
        return marker_matches(self.marker, expected)


def default_entry(sysroot: Path, osname: str | None = None) -> BootEntry:
    """The BLS entry of the default deployment (of ``osname``'s stateroot if given)."""
    from nestbuild._tools import ostree

    if not (ostree.repo_of(sysroot) / "config").is_file():
        raise UsageError(f"{sysroot}: not an ostree sysroot")
    deployments = [d for d in ostree.status(sysroot) if osname in (None, d.osname)]
    if not deployments:
        raise UsageError(f"{sysroot}: no deployment" + (f" of {osname}" if osname else ""))
    d = deployments[0]
    target = (sysroot / "ostree" / "deploy" / d.osname / "deploy" / d.dirname).resolve()
    for conf in sorted((sysroot / "boot" / "loader" / "entries").glob("*.conf")):
        fields = _bls(conf)
        m = re.search(r"(?:^|\s)ostree=(\S+)", fields.get("options", ""))
        if m is None or (sysroot / m.group(1).lstrip("/")).resolve() != target:
            continue
        if "linux" not in fields or "initrd" not in fields:
            raise UsageError(f"{conf}: no linux or initrd line")
        boot = sysroot / "boot"
        entry = BootEntry(d.osname, d.checksum, d.serial, boot / fields["linux"].lstrip("/"),
                          boot / fields["initrd"].lstrip("/"), fields["options"])
        for f in (entry.kernel, entry.initrd):
            if not f.is_file():
                raise UsageError(f"{conf}: {f} is missing")
        return entry
    raise UsageError(f"{sysroot}: no boot entry under boot/loader/entries for deployment "
                     f"{d.dirname}")


def _bls(conf: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in conf.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if key and not key.startswith("#"):
            out[key] = value.strip()
    return out


def boot(sysroot: Path, *, osname: str | None = None, timeout: float = 600,
                 memory_mib: int = 1536, progress: Progress | None = None) -> BootResult:
    """Boot the default deployment until its report line; BootError with the console tail
    when it panics, lands in emergency mode or times out."""
    from nestbuild._tools import qemu

    say = progress or (lambda _m: None)
    entry = default_entry(sysroot, osname)
    with tempfile.TemporaryDirectory(prefix="nestbuild-boot-") as tmp:
        disk = Path(tmp) / "disk.img"
        say(f"making a disk image of {sysroot}")
        qemu.make_disk(sysroot, disk)
        say(f"booting {entry.osname} {entry.checksum[:12]} under qemu "
            f"(timeout {timeout:.0f}s)")
        run = qemu.boot(entry.kernel, entry.initrd, disk, f"{entry.options} {BOOT_ARGS}",
                        until=re.compile(f"{REPORT.pattern}|{FATAL.pattern}"),
                        timeout=timeout, memory_mib=memory_mib)
    m = REPORT.search(run.console)
    if m is None:
        if run.match is not None:
            why = f"the boot failed ({run.match.group(0)})"
        elif run.exit_code is not None:
            why = f"qemu stopped (exit {run.exit_code}) before multi-user.target"
        else:
            why = f"no report of multi-user.target within {timeout:.0f}s"
        raise BootError(f"{entry.osname} {entry.checksum[:12]} did not boot: {why}",
                        detail=run.tail(40), console=run.console)
    booted = m.group(1)
    if booted != f"{entry.checksum}.{entry.serial}":
        raise BootError(f"the system came up, but not in deployment {entry.checksum[:12]}."
                        f"{entry.serial} (it reports {booted!r}; '-' means not under ostree)",
                        detail=run.tail(10), console=run.console)
    marker = None
    if m.group(2) != "-":
        try:
            marker = base64.b64decode(m.group(2), validate=True)
        except binascii.Error:
            raise BootError("the boot report's marker is garbled on the console",
                            detail=run.tail(10), console=run.console) from None
    failed = [] if m.group(3) == "-" else m.group(3).split(",")
    return BootResult(entry, run.seconds, marker, failed, run.console)


def marker_matches(found: bytes | None, expected: str) -> bool:
    """The marker file holds ``expected``; a final newline on either side does not count."""
    return found is not None and found.rstrip(b"\n") == expected.rstrip("\n").encode()
