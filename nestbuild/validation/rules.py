"""The catalogue of rules: stable ids, default severities, what they mean, how to fix.

bootc's own lints keep bootc's names and meanings (``bootc container lint``); the rest are
nestbuild's. Ids are part of the JSON/SARIF contract: never rename one.
"""

from __future__ import annotations

from dataclasses import dataclass

from nestbuild.validation.severity import ERROR, WARNING


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str
    summary: str
    remedy: str
    #: "bootc" for bootc's lints, "nestbuild" for ours.
    origin: str = "nestbuild"


_RULES = [
    # bootc container lint, same names, same kinds (fatal -> error, warn -> warning)
    Rule("api-base-directories", ERROR,
         "the API filesystem directories /dev /proc /sys /run /tmp /var must be directories",
         "recreate the directory; never replace it with a file or symlink", "bootc"),
    Rule("baseimage-root", ERROR,
         "a bootable base needs /sysroot and /ostree -> sysroot/ostree",
         "build FROM a bootable base image, or restore /sysroot and the /ostree link", "bootc"),
    Rule("baseimage-composefs", WARNING,
         "/usr/lib/ostree/prepare-root.conf should enable composefs",
         "set [composefs] enabled = yes in /usr/lib/ostree/prepare-root.conf", "bootc"),
    Rule("bootc-kargs", ERROR,
         "files in /usr/lib/bootc/kargs.d must be valid kargs TOML",
         "write kargs = [\"...\"] and optionally match-architectures = [...]; nothing else",
         "bootc"),
    Rule("buildah-injected", WARNING,
         "an empty /etc/hostname or /etc/resolv.conf was injected by the build tool",
         "harmless on bootc nodes (dropped on import); they are buildah's RUN-step mount points "
         "(buildah bud --dns=none avoids resolv.conf)", "bootc"),
    Rule("etc-usretc", ERROR,
         "/usr/etc is an ostree implementation detail and must not ship beside /etc",
         "put configuration in /etc; remove /usr/etc", "bootc"),
    Rule("kernel", ERROR,
         "exactly one kernel (/usr/lib/modules/KVER/vmlinuz) is supported in an image",
         "remove the extra kernel directories under /usr/lib/modules", "bootc"),
    Rule("nonempty-boot", WARNING,
         "/boot must exist and be empty; the node masks it at runtime",
         "install kernels to /usr/lib/modules/KVER; leave /boot empty", "bootc"),
    Rule("nonempty-run-tmp", WARNING,
         "content in /run or /tmp is dropped by the node",
         "create runtime files at boot (tmpfiles.d, systemd units), not in the image", "bootc"),
    Rule("sysusers", WARNING,
         "users and groups in /etc/passwd and /etc/group should come from sysusers.d",
         "declare them in /usr/lib/sysusers.d/NAME.conf (u NAME UID) instead of useradd",
         "bootc"),
    Rule("utf8", ERROR,
         "file names and symlink targets must be UTF-8 (ostree refuses others)",
         "rename the file", "bootc"),
    Rule("var-log", WARNING,
         "log files in /var/log are per-machine state and should not ship in an image",
         "remove them in the same RUN step that creates them", "bootc"),
    Rule("var-run", ERROR,
         "/var/run must be a symlink to /run",
         "do not create /var/run; it is a link to ../run", "bootc"),
    Rule("var-tmpfiles", WARNING,
         "content in /var without tmpfiles.d entries is applied only on first install",
         "declare /var directories in tmpfiles.d", "bootc"),
    # nestbuild's own
    Rule("path-policy", ERROR,
         "the image changes a path the policy does not allow",
         "keep node changes in /etc and /var, or allow the path in the policy"),
    Rule("setuid", ERROR,
         "a setuid or setgid bit was added",
         "drop the bit (chmod u-s,g-s), or grant a capability to a dedicated service instead"),
    Rule("file-capabilities", WARNING,
         "a file gains Linux capabilities (security.capability)",
         "grant capabilities to the service (AmbientCapabilities=) rather than the file"),
    Rule("world-writable", ERROR,
         "a world-writable file, or directory without the sticky bit",
         "chmod o-w (or +t for a shared directory)"),
    Rule("ownership", WARNING,
         "a file under /usr is owned by a non-root user or group",
         "chown root:root; /usr is read-only on the node and owned by root"),
    Rule("secret", ERROR,
         "a private key or credential is baked into a layer (deleting it later keeps it there)",
         "mount secrets at build time (--secret) or provision them on the node"),
    Rule("kmod-kernel-mismatch", ERROR,
         "kernel modules for a kernel the image does not carry will never load",
         "build modules for the image's kernel (ostree.linux label / /usr/lib/modules/KVER)"),
    Rule("dropped-path", WARNING,
         "the node drops this content on import (/run, /tmp, /boot, other top-levels)",
         "put content under /usr, /etc or /var (via tmpfiles.d)"),
    Rule("var-content", WARNING,
         "/var content reaches only freshly installed nodes, never an update",
         "create it at boot with tmpfiles.d (lines given) or StateDirectory="),
    Rule("final-diffid", ERROR,
         "ostree.final-diffid names a layer the image no longer has (squashed?); "
         "the node refuses it",
         "never squash a derived image; rebuild without --squash"),
    Rule("unsafe-path", ERROR,
         "a layer entry the node refuses (always an error, whatever the policy says: in the "
         "base's layers too) or that is dangerous to unpack",
         "remove the entry ('..' paths, malformed whiteouts, device nodes, fifos, /usr/etc, "
         "non-UTF-8 names, entries below a symlink, escaping links)"),
]

RULES: dict[str, Rule] = {r.id: r for r in _RULES}
