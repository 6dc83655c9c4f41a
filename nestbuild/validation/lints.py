"""Every rule, declared once beside its check, evaluated on an image's files without running
anything inside it.

Rules are declared in catalogue order (``nestbuild rules`` lists them as they come here):
bootc's lints first, then nestbuild's. Most are lints (``@lint``): ``evaluate`` gives each a
:class:`~nestbuild.validation.declare.Context`, the merged tree and the changeset. The others
are declared with ``rule()`` and reported by the code that sees what they are about:

* the layer scan watches every entry of the derived layers as it streams by (what a node
  refuses, by nodetree's verdict; non-UTF-8 names; secrets): a secret deleted by a later
  layer is still in the earlier layer's blob. What a node refuses in the base's layers comes
  from the base index;
* the path policy judges the changeset by the policy's globs;
* the base's location (validate) reports an ``ostree.final-diffid`` that names no layer.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from nestbuild._image import paths
from nestbuild._image.tree import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    Entry,
    Item,
    Unsafe,
    Whiteout,
    is_utf8,
    link_escapes,
)
from nestbuild._util.record import Record
from nestbuild.node import nodetree
from nestbuild.node.nodetree import SymlinkGuard, dropped_by, refusal
from nestbuild.node.nodetree import keeps_toplevels as node_keeps_toplevels
from nestbuild.validation.changeset import ADDED, DELETED, Change
from nestbuild.validation.declare import Context, Hit, View, lint, rule
from nestbuild.validation.kernelconf import kargs_problem, modules_to_load
from nestbuild.validation.severity import ERROR, OFF, WARNING

if TYPE_CHECKING:
    from nestbuild.validation.policy import Policy

API_DIRS = ("dev", "proc", "sys", "run", "tmp", "var")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


# --- bootc's lints (bootc container lint: same names, fatal -> error, warn -> warning) --------

@lint("api-base-directories", ERROR,
      "the API filesystem directories /dev /proc /sys /run /tmp /var must be directories",
      fix="recreate the directory; never replace it with a file or symlink", origin="bootc")
def api_base_directories(ctx: Context) -> Iterator[Hit]:
    for d in API_DIRS:
        e = ctx.tree.get(f"/{d}")
        if e is None:
            yield Hit(f"/{d}", f"missing API filesystem base directory /{d}")
        elif e.type != DIR:
            yield Hit(f"/{d}", f"expected a directory for /{d}, found a {e.type}")


@lint("baseimage-root", ERROR,
      "a bootable base needs /sysroot and /ostree -> sysroot/ostree",
      fix="build FROM a bootable base image, or restore /sysroot and the /ostree link",
      origin="bootc")
def baseimage_root(ctx: Context) -> Iterator[Hit]:
    sysroot = ctx.tree.get("/sysroot")
    if sysroot is None or sysroot.type != DIR:
        yield Hit("/sysroot",
                  "missing /sysroot" if sysroot is None else "/sysroot is not a directory")
    ostree = ctx.tree.get("/ostree")
    if ostree is None:
        yield Hit("/ostree", "missing ostree -> sysroot/ostree link")
    elif ostree.type != SYMLINK or ostree.link != "sysroot/ostree":
        yield Hit("/ostree",
                  f"expected /ostree -> sysroot/ostree, not {ostree.type} {ostree.link!r}")


@lint("baseimage-composefs", WARNING,
      "/usr/lib/ostree/prepare-root.conf should enable composefs",
      fix="set [composefs] enabled = yes in /usr/lib/ostree/prepare-root.conf", origin="bootc")
def baseimage_composefs(ctx: Context) -> Iterator[Hit]:
    conf = nodetree.prepare_root(ctx.tree.content(paths.PREPARE_ROOT_CONF))
    if not nodetree.composefs_enabled(conf):
        yield Hit(paths.PREPARE_ROOT_CONF, "composefs is not enabled in prepare-root.conf")


@lint("bootc-kargs", ERROR,
      "files in /usr/lib/bootc/kargs.d must be valid kargs TOML",
      fix="write kargs = [\"...\"] and optionally match-architectures = [...]; nothing else",
      origin="bootc")
def bootc_kargs(ctx: Context) -> Iterator[Hit]:
    d = ctx.tree.get(paths.KARGS_DIR)
    if d is not None and d.type != DIR:
        yield Hit(paths.KARGS_DIR, "kargs.d is not a directory")
        return
    for e in _children(ctx.tree, paths.KARGS_DIR):
        if not e.path.endswith(".toml") or e.type not in (FILE, HARDLINK):
            continue
        data = ctx.tree.content(e.path)
        if data is None:
            yield Hit(e.path, "too large to be a kargs file")
            continue
        problem = kargs_problem(data)
        if problem:
            yield Hit(e.path, problem)


@lint("buildah-injected", WARNING,
      "an empty /etc/hostname or /etc/resolv.conf was injected by the build tool",
      fix="harmless on bootc nodes (dropped on import); they are buildah's RUN-step mount "
          "points (buildah bud --dns=none avoids resolv.conf)", origin="bootc")
def buildah_injected(ctx: Context) -> Iterator[Hit]:
    for name in ("/etc/hostname", "/etc/resolv.conf"):
        e = ctx.tree.get(name)
        if e is not None and e.type in (FILE, HARDLINK) and e.size == 0:
            yield Hit(name, "empty file; probably synthesized by the container build")


@lint("etc-usretc", ERROR,
      "/usr/etc is an ostree implementation detail and must not ship beside /etc",
      fix="put configuration in /etc; remove /usr/etc", origin="bootc")
def etc_usretc(ctx: Context) -> Iterator[Hit]:
    if ctx.tree.get("/etc") is not None and ctx.tree.get("/usr/etc") is not None:
        yield Hit("/usr/etc", "found /usr/etc beside /etc")


@lint("kernel", ERROR,
      "exactly one kernel (/usr/lib/modules/KVER/vmlinuz) is supported in an image",
      fix="remove the extra kernel directories under /usr/lib/modules", origin="bootc")
def kernel(ctx: Context) -> Iterator[Hit]:
    if len(ctx.kernels) > 1:
        yield Hit(paths.MODULES_DIR, f"{len(ctx.kernels)} kernels found "
                                     f"({', '.join(ctx.kernels)}); only one is supported")


@lint("nonempty-boot", WARNING,
      "/boot must exist and be empty; the node masks it at runtime",
      fix="install kernels to /usr/lib/modules/KVER; leave /boot empty", origin="bootc")
def nonempty_boot(ctx: Context) -> Iterator[Hit]:
    if ctx.tree.get("/boot") is None:
        yield Hit("/boot", "missing /boot directory")
    yield from _not_empty(ctx, "/boot")


@lint("nonempty-run-tmp", WARNING,
      "content in /run or /tmp is dropped by the node",
      fix="create runtime files at boot (tmpfiles.d, systemd units), not in the image",
      origin="bootc")
def nonempty_run_tmp(ctx: Context) -> Iterator[Hit]:
    yield from _not_empty(ctx, "/run")
    yield from _not_empty(ctx, "/tmp")


def _not_empty(ctx: Context, d: str) -> Iterator[Hit]:
    """What ``d`` holds; what the derived layers put there is reported as dropped-path."""
    for e in _children(ctx.tree, d):
        if e.path not in ctx.changed:
            yield Hit(e.path, f"{d} is not empty")


@lint("sysusers", WARNING,
      "users and groups in /etc/passwd and /etc/group should come from sysusers.d",
      fix="declare them in /usr/lib/sysusers.d/NAME.conf (u NAME UID) instead of useradd",
      origin="bootc")
def sysusers(ctx: Context) -> Iterator[Hit]:
    users, groups = _sysusers_declared(ctx.tree)
    for path, declared, what in ((paths.PASSWD, users, "user"), (paths.GROUP, groups, "group")):
        data = ctx.tree.content(path)
        for line in (data or b"").decode("utf-8", "replace").splitlines():
            name = line.split(":", 1)[0].strip()
            if name and not name.startswith("#") and name not in declared:
                yield Hit(path, f"{what} {name!r} has no sysusers.d entry")


#: Reported by the layer scan (LayerScanner), as each entry of a derived layer streams by.
UTF8 = rule("utf8", ERROR,
            "file names and symlink targets must be UTF-8 (ostree refuses others)",
            fix="rename the file", origin="bootc")


@lint("var-log", WARNING,
      "log files in /var/log are per-machine state and should not ship in an image",
      fix="remove them in the same RUN step that creates them", origin="bootc")
def var_log(ctx: Context) -> Iterator[Hit]:
    for e in ctx.tree.below("/var/log"):
        if e.is_file and e.size > 0:
            yield Hit(e.path, "non-empty log file")


@lint("var-run", ERROR,
      "/var/run must be a symlink to /run",
      fix="do not create /var/run; it is a link to ../run", origin="bootc")
def var_run(ctx: Context) -> Iterator[Hit]:
    e = ctx.tree.get("/var/run")
    if e is not None and e.type != SYMLINK:
        yield Hit("/var/run", "not a symlink: /var/run")


@lint("var-tmpfiles", WARNING,
      "content in /var without tmpfiles.d entries is applied only on first install",
      fix="declare /var directories in tmpfiles.d", origin="bootc")
def var_tmpfiles(ctx: Context) -> Iterator[Hit]:
    """For /var content the derived layers did not add (they get var-content instead, with
    the lines to write)."""
    declared = _tmpfiles_declared(ctx.tree)
    for e in ctx.tree.below("/var"):
        if e.path in ctx.changed or e.path in declared or paths.under(e.path, "/var/log"):
            continue
        if e.type in (DIR, SYMLINK):
            yield Hit(e.path, f"no tmpfiles.d entry: {_tmpfiles_line(e)}")
        else:
            yield Hit(e.path, "non-directory, non-symlink content in /var")


# --- nestbuild's ---------------------------------------------------------------------------

#: The policy's verdict on the changeset: path_policy() below, run by evaluate.
PATH_POLICY = rule("path-policy", ERROR,
                   "the image changes a path the policy does not allow",
                   fix="keep node changes in /etc and /var, or allow the path in the policy")


@lint("setuid", ERROR,
      "a setuid or setgid bit was added",
      fix="drop the bit (chmod u-s,g-s), or grant a capability to a dedicated service instead")
def setuid(ctx: Context) -> Iterator[Hit]:
    for c in ctx.changes:
        a, b = c.after, c.before
        if a is None or a.type == SYMLINK or not a.is_file:
            continue
        bits = a.mode & 0o6000
        old = (b.mode & 0o6000) if b is not None and b.is_file else 0
        if bits & ~old:
            which = " and ".join(n for bit, n in ((0o4000, "setuid"), (0o2000, "setgid"))
                                 if bits & ~old & bit)
            yield Hit(c.path, f"{which} bit added (mode {a.mode:04o})", c.layer)


@lint("file-capabilities", WARNING,
      "a file gains Linux capabilities (security.capability)",
      fix="grant capabilities to the service (AmbientCapabilities=) rather than the file")
def file_capabilities(ctx: Context) -> Iterator[Hit]:
    for c in ctx.changes:
        a, b = c.after, c.before
        if a is None or a.type == SYMLINK or not a.is_file:
            continue
        cap = a.xattrs.get("security.capability")
        if cap is not None and (b is None or b.xattrs.get("security.capability") != cap):
            yield Hit(c.path, "file capabilities added (security.capability)", c.layer)


@lint("world-writable", ERROR,
      "a world-writable file, or directory without the sticky bit",
      fix="chmod o-w (or +t for a shared directory)")
def world_writable(ctx: Context) -> Iterator[Hit]:
    for c in ctx.changes:
        a, b = c.after, c.before
        if a is None or a.type == SYMLINK:
            continue
        if a.mode & 0o002 and not (b is not None and b.mode & 0o002):
            if a.type == DIR and a.mode & 0o1000:
                continue  # sticky shared directory, like /tmp
            kind = "directory without the sticky bit" if a.type == DIR else a.type
            yield Hit(c.path, f"world-writable {kind} (mode {a.mode:04o})", c.layer)


@lint("ownership", WARNING,
      "a file under /usr is owned by a non-root user or group",
      fix="chown root:root; /usr is read-only on the node and owned by root")
def ownership(ctx: Context) -> Iterator[Hit]:
    for c in ctx.changes:
        a, b = c.after, c.before
        if a is None or a.type == SYMLINK:
            continue
        if paths.under(c.path, "/usr") and (a.uid or a.gid) and not (
            b is not None and (b.uid, b.gid) == (a.uid, a.gid)
        ):
            yield Hit(c.path, f"owned by {a.uid}:{a.gid} under /usr", c.layer)


#: Reported by the layer scan (LayerScanner), from names and content of derived layers.
SECRET = rule("secret", ERROR,
              "a private key or credential is baked into a layer (deleting it later keeps it "
              "there)",
              fix="mount secrets at build time (--secret) or provision them on the node")


@lint("kmod-kernel-mismatch", ERROR,
      "kernel modules for a kernel the image does not carry will never load",
      fix="build modules for the image's kernel (ostree.linux label / /usr/lib/modules/KVER)")
def kmod_kernel_mismatch(ctx: Context) -> Iterator[Hit]:
    """Module files for another kernel, and modules-load.d names no kernel has."""
    for c in ctx.changes:
        if c.after is None or not c.path.endswith(MODULE_SUFFIXES):
            continue
        if not paths.under(c.path, paths.MODULES_DIR):
            yield Hit(c.path, "kernel module outside /usr/lib/modules/KVER is never loaded",
                      c.layer)
            continue
        kver = c.path.split("/")[4]
        if kver not in ctx.kernels:
            have = ", ".join(ctx.kernels) or "none"
            yield Hit(c.path, f"module for kernel {kver}; the image carries {have}", c.layer)
    yield from _modules_load(ctx)


def _modules_load(ctx: Context) -> Iterator[Hit]:
    """Modules a derived modules-load.d file asks for must exist for the image's kernel."""
    available: dict[str, set[str]] = {}
    for c in ctx.changes:
        if c.after is None or not c.path.endswith(".conf") or not any(
                c.path.startswith(d + "/") for d in paths.MODULES_LOAD_DIRS):
            continue
        data = ctx.tree.content(c.path)
        if data is None:
            continue
        for name in modules_to_load(data.decode("utf-8", "replace")):
            if not ctx.kernels:
                yield Hit(c.path, f"module {name} to load, but the image carries no kernel",
                          c.layer)
                continue
            for kver in ctx.kernels:
                have = available.setdefault(kver, _kernel_modules(ctx.tree, kver))
                if name.replace("-", "_") not in have:
                    yield Hit(c.path, f"module {name} to load is not in kernel {kver}", c.layer)


@lint("dropped-path", WARNING,
      "the node drops this content on import (/run, /tmp, /boot, other top-levels)",
      fix="put content under /usr, /etc or /var (via tmpfiles.d)")
def dropped_path(ctx: Context) -> Iterator[Hit]:
    """What the node drops (nodetree's DROP verdict), once per top-most added directory."""
    keeps = node_keeps_toplevels(ctx.tree.content(paths.PREPARE_ROOT_CONF))
    live = [c for c in ctx.changes if c.after is not None and dropped_by(c.path, keeps) is not None]
    for top, group in _topmost(live, {ADDED}).items():
        yield Hit(top, f"{_describe(group)}; {dropped_by(top, keeps)}", group[0].layer)


@lint("var-content", WARNING,
      "/var content reaches only freshly installed nodes, never an update",
      fix="create it at boot with tmpfiles.d (lines given) or StateDirectory=")
def var_content(ctx: Context) -> Iterator[Hit]:
    live = [c for c in ctx.changes if c.after is not None and paths.under(c.path, "/var")
            and c.path != "/var" and not paths.under(c.path, "/var/log")]
    for top, group in _topmost(live, {ADDED}).items():
        lines = [_tmpfiles_line(c.after) for c in group if c.after is not None][:8]
        more = "" if len(group) <= 8 else f" (+{len(group) - 8} more)"
        files = any(c.after is not None and c.after.is_file for c in group)
        hint = " and ship files under /usr/share/factory" if files else ""
        yield Hit(top, f"{_describe(group)}; /var content reaches only freshly installed nodes. "
                       f"tmpfiles.d{hint}: " + "; ".join(lines) + more, group[0].layer)


# --- layers and packages (thresholds from the policy's settings) ----------------------------

@lint("layer-budget", WARNING,
      "a derived image with more layers than nodes handle well (policy setting max-layers)",
      fix="combine RUN steps; buildah bud without --layers commits one layer per build "
          "(never squash the base's layers)")
def layer_budget(ctx: Context) -> Iterator[Hit]:
    limit = ctx.settings.get("max-layers")
    if limit is None or ctx.layers <= ctx.base_layers or ctx.layers <= limit:
        return
    yield Hit(None, f"{ctx.layers} layers ({ctx.layers - ctx.base_layers} derived); the "
                    f"policy's max-layers is {limit}")


@lint("usr-growth", WARNING,
      "the derived layers add more bytes to /usr than the policy allows (setting "
      "max-usr-growth, off by default)",
      fix="remove build tools and caches in the RUN step that installs them, or raise "
          "max-usr-growth")
def usr_growth(ctx: Context) -> Iterator[Hit]:
    limit = ctx.settings.get("max-usr-growth")
    if limit is None:
        return
    grown = 0
    for c in ctx.changes:
        if paths.under(c.path, "/usr"):
            grown += (c.after.size if c.after is not None and c.after.is_file else 0) - (
                c.before.size if c.before is not None and c.before.is_file else 0)
    if grown > limit:
        yield Hit("/usr", f"the derived layers add {_size(grown)} to /usr; the policy's "
                          f"max-usr-growth is {_size(limit)}")


@lint("package-files-missing", ERROR,
      "a package the derived layers installed lacks files its database says are on disk "
      "(a broken rpm -i or dnf run, or package files deleted afterwards)",
      fix="install with the package manager and keep its files (rpm --justdb or deleting "
          "them leaves the database, rpm -V and the SBOM claiming what the image lacks)",
      packs=("packages",))
def package_files_missing(ctx: Context) -> Iterator[Hit]:
    """rpm only (dpkg's status lists no files); ghosts and excluded files are not expected."""
    from nestbuild.validation.installed import exists, locate

    if ctx.packages is None or not ctx.packages.database_changed():
        return  # the derived layers installed nothing: no database is read
    found = locate(ctx.packages.final)
    if found is None or found.format == "dpkg":
        return  # dpkg lists no files: nothing to compare, so no layer is read for it
    added = ctx.packages.added()
    db = ctx.packages.installed
    where = ctx.tree.get(db.path) if db is not None else None
    for p in added:
        missing = [f for f in p.on_disk if not exists(ctx.tree, f)]
        if missing:
            pkg = p.package
            more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
            yield Hit(missing[0], f"{pkg.name}-{pkg.evr}.{pkg.arch}: {len(missing)} of "
                                  f"{len(p.on_disk)} files missing: "
                                  + ", ".join(missing[:3]) + more,
                      where.layer if where is not None else None)


@lint("unowned-file", OFF,
      "a file the derived layers added under /usr that no package owns (information in the "
      "packages preset)",
      fix="ship it as a package (rpm -V, upgrades and the SBOM then know it), or put it "
          "under /opt or /etc", packs=("packages",))
def unowned_file(ctx: Context) -> Iterator[Hit]:
    """rpm only: dpkg's status lists no files."""
    from nestbuild.validation.installed import locate

    if ctx.packages is None:
        return
    added = [c for c in ctx.changes if c.kind == ADDED and c.type != DIR
             and paths.under(c.path, "/usr")]
    if not added:
        return
    found = locate(ctx.packages.final)
    if found is None or found.format == "dpkg":
        return  # asked of the tree: no layer is read for a database that lists no files
    db = ctx.packages.installed
    if db is None:
        return
    owned = ctx.packages.owned
    state = posixpath.dirname(db.path)  # the database's own files (-wal, .rpm.lock)
    for c in added:
        if c.path not in owned and not paths.under(c.path, state):
            yield Hit(c.path, f"owned by no package in {db.path}", c.layer)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


#: Reported where the base is located (validate), before any layer is read.
FINAL_DIFFID = rule("final-diffid", ERROR,
                    "ostree.final-diffid names a layer the image no longer has (squashed?); "
                    "the node refuses it",
                    fix="never squash a derived image; rebuild without --squash")

#: Reported by the layer scan, the overlay and the base index: nodetree's REFUSE verdict.
UNSAFE_PATH = rule("unsafe-path", ERROR,
                   "a layer entry the node refuses (always an error, whatever the policy says: "
                   "in the base's layers too) or that is dangerous to unpack",
                   fix="remove the entry ('..' paths, malformed whiteouts, device nodes, fifos, "
                       "/usr/etc, non-UTF-8 names, entries below a symlink, escaping links)")


# --- findings the lints do not make ---------------------------------------------------------

class Raw(Record):
    """A finding of a rule that is not a lint, before the policy sets its severity."""

    rule: str
    path: str | None
    message: str
    layer: int | None
    #: A node refuses the image for it: an error whatever the policy says.
    refused: bool
    #: It comes from the base's layers: the derived layers did not cause it.
    inherited: bool

    def __init__(self, rule: str, path: str | None, message: str, layer: int | None = None,
                 refused: bool = False, inherited: bool = False) -> None:
        self.rule = rule
        self.path = path
        self.message = message
        self.layer = layer
        self.refused = refused
        self.inherited = inherited


# The content patterns are compiled on first use (re's cache): a substring test rules most
# files out, so most runs never need them.
_PEM_PRIVATE = (rb"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"
                rb"(?: BLOCK)?)-----")
_AWS_KEY = rb"(?:aws_secret_access_key\s*=\s*\S{20,})|(?:\bAKIA[0-9A-Z]{16}\b)"
_AUTH_JSON = rb'(?s)"auths"\s*:\s*\{.*?"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}"'
_NETRC_PASSWORD = rb"(?m)^\s*(?:machine\s+\S+\s+)?.*\bpassword\s+\S+"
_SSH_HOST_KEY = re.compile(r"/etc/ssh/ssh_host_[a-z0-9]+_key\Z")
_USER_KEY = re.compile(r"/\.ssh/id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?\Z")


def shown(path: str) -> str:
    """A path as a report can print it (a non-UTF-8 byte as ``\\xff``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def refusal_raw(layer: int, path: str, reason: str, *, inherited: bool = False) -> Raw:
    """A node refusal (nodetree's REFUSE verdict) as an unsafe-path finding."""
    return Raw(UNSAFE_PATH.id, shown(path), f"{reason}; the node refuses the image", layer,
               refused=True, inherited=inherited)


class LayerScanner(Record):
    """Watches layer entries as they stream (see read_layer's inspector hook).

    Every item goes through the node's own verdict (nodetree): what a node refuses is an
    error here. ``guard`` has seen the base's layers already (the base index keeps where it
    stopped), so an entry reached through a base symlink is refused too.
    """

    raws: list[Raw]
    guard: SymlinkGuard

    def __init__(self, raws: list[Raw] | None = None, guard: SymlinkGuard | None = None) -> None:
        self.raws = [] if raws is None else raws
        self.guard = SymlinkGuard() if guard is None else guard
        #: (path, layer) of each secret reported, so that a file is reported once
        self._secret_paths: set[tuple[str, int]] = set()

    def item(self, item: Item) -> None:
        why = refusal(item, self.guard)
        if why is not None:
            self.raws.append(refusal_raw(item.layer, item.path, why))
        if isinstance(item, (Unsafe, Whiteout)):
            return
        e = item
        if not is_utf8(e.path):
            self.raws.append(Raw(UTF8.id, shown(e.path), "non-UTF-8 file name", e.layer))
            return
        if e.type == SYMLINK:
            if not is_utf8(e.link):
                self.raws.append(Raw(UTF8.id, e.path, "non-UTF-8 symlink target", e.layer))
            elif link_escapes(e.path, e.link):
                self.raws.append(Raw(UNSAFE_PATH.id, e.path,
                                     f"symlink to {e.link!r} climbs out of the root", e.layer))
        if e.type != FILE or not e.size:
            return
        # a substring test first (each pattern's fixed part): the regex only confirms
        if "/etc/ssh/ssh_host_" in e.path and _SSH_HOST_KEY.search(e.path):
            self._secret(e, "an SSH host private key: every node would share it")
        elif "/.ssh/id_" in e.path and _USER_KEY.search(e.path):
            self._secret(e, "an SSH private key")

    def content(self, e: Entry, data: bytes) -> None:
        # Substring tests first: they run at memory speed; the regexes only confirm.
        m = re.search(_PEM_PRIVATE, data) if b"PRIVATE KEY" in data else None
        if m:
            self._secret(e, f"contains a private key ({m.group(1).decode()})")
        elif (b"aws_secret_access_key" in data or b"AKIA" in data) and re.search(_AWS_KEY, data):
            self._secret(e, "contains an AWS access key")
        elif b'"auths"' in data and re.search(_AUTH_JSON, data):
            self._secret(e, "contains registry credentials (auths.*.auth)")
        elif e.path.endswith("/.netrc") and re.search(_NETRC_PASSWORD, data):
            self._secret(e, "a .netrc with a password")
        elif e.path == "/etc/shadow":
            for line in data.decode("utf-8", "replace").splitlines():
                user, _, rest = line.partition(":")
                if rest.startswith("$"):
                    self._secret(e, f"a password hash for {user!r}")
                    break

    def _secret(self, e: Entry, why: str) -> None:
        if (e.path, e.layer) in self._secret_paths:
            return
        if _SSH_HOST_KEY.search(e.path):
            why = "an SSH host private key: every node would share it"
        self._secret_paths.add((e.path, e.layer))
        self.raws.append(Raw(SECRET.id, e.path, f"{why} (layer {e.layer})", e.layer))


def path_policy(changes: Sequence[Change], policy: Policy) -> list[Raw]:
    """Changed paths the policy does not allow, once per top-most added or deleted directory."""
    bad = [c for c in changes if not policy.path_allowed(c.path)[0] and not (
        c.kind == ADDED and c.type == DIR and policy.leads_to_allowed(c.path))]
    out = []
    for top, group in _topmost(bad, {ADDED, DELETED}).items():
        _, deny = policy.path_allowed(top)
        why = f"denied by {deny}" if deny else f"policy {policy.name} allows only " + ", ".join(
            policy.allow[:4]) + (" ..." if len(policy.allow) > 4 else "")
        out.append(Raw(PATH_POLICY.id, top, f"{_describe(group)}; {why}", group[0].layer))
    return out


# --- what several checks read ----------------------------------------------------------------

def _topmost(changes: Sequence[Change], kinds: set[str]) -> dict[str, list[Change]]:
    """Group changes under the highest changed path that covers them (an added directory)."""
    groups: dict[str, list[Change]] = {}
    covering: list[str] = []
    for c in changes:  # sorted by path, so parents come first
        while covering and not paths.under(c.path, covering[-1]):
            covering.pop()
        if covering:
            groups[covering[-1]].append(c)
            continue
        groups[c.path] = [c]
        if c.kind in kinds and c.type == DIR:
            covering.append(c.path)
    return groups


def _describe(group: list[Change]) -> str:
    head = group[0]
    what = head.kind if not head.details else f"{head.kind} ({', '.join(head.details)})"
    more = len(group) - 1
    return f"{what}" + (f", with {more} path{'s' if more > 1 else ''} below" if more else "")


def _children(view: View, path: str) -> Iterator[Entry]:
    depth = path.count("/") + 1
    for e in view.below(path):
        if e.path.count("/") == depth:
            yield e


def _kernel_modules(view: View, kver: str) -> set[str]:
    """Module names the kernel ``kver`` has, as files or built in (``-`` and ``_`` alike)."""
    names = set()
    base = f"{paths.MODULES_DIR}/{kver}"
    for e in view.below(base):
        name = posixpath.basename(e.path)
        for suffix in MODULE_SUFFIXES:
            if name.endswith(suffix):
                names.add(name[: -len(suffix)].replace("-", "_"))
    builtin = view.content(f"{base}/modules.builtin") or b""
    for line in builtin.decode("utf-8", "replace").splitlines():
        names.add(posixpath.basename(line.strip()).split(".ko", 1)[0].replace("-", "_"))
    return names


def _sysusers_declared(view: View) -> tuple[set[str], set[str]]:
    users: set[str] = set()
    groups: set[str] = set()
    for d in paths.SYSUSERS_DIRS:
        for e in _children(view, d):
            data = view.content(e.path) if e.path.endswith(".conf") else None
            for line in (data or b"").decode("utf-8", "replace").splitlines():
                fields = line.split()
                if len(fields) < 2 or fields[0].startswith("#"):
                    continue
                kind, name = fields[0][0], fields[1]
                if kind == "u":
                    users.add(name)
                    groups.add(name)
                elif kind == "g":
                    groups.add(name)
                elif kind == "m" and len(fields) > 2:
                    groups.add(fields[2])
    return users, groups


def _tmpfiles_declared(view: View) -> set[str]:
    declared = set()
    for d in paths.TMPFILES_DIRS:
        for e in _children(view, d):
            data = view.content(e.path) if e.path.endswith(".conf") else None
            for line in (data or b"").decode("utf-8", "replace").splitlines():
                fields = line.split()
                if len(fields) >= 2 and not fields[0].startswith("#"):
                    declared.add(fields[1].rstrip("/"))
    return declared


def _tmpfiles_line(e: Entry) -> str:
    owner = f"{e.uid} {e.gid}" if (e.uid or e.gid) else "root root"
    if e.type == DIR:
        return f"d {e.path} {e.mode:04o} {owner} -"
    if e.type == SYMLINK:
        return f"L {e.path} - - - - {e.link}"
    return f"C {e.path} {e.mode:04o} {owner} - /usr/share/factory{e.path}"
