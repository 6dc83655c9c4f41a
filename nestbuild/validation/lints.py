"""The rules, evaluated on an image's files without running anything inside it.

Three kinds of check, by what they need to see:

* layer checks watch every entry of the derived layers as it streams by (what a node refuses,
  by nodetree's verdict; secrets): a secret deleted by a later layer is still in the earlier
  layer's blob. What a node refuses in the base's layers comes from the base index;
* change checks look at the changeset (path policy, setuid, ownership, /var content, ...);
* image checks look at the final tree through targeted lookups (bootc's structural lints).
  They run on the base as well, so a finding the base already has is marked inherited.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

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
from nestbuild.node import nodetree
from nestbuild.node.nodetree import SymlinkGuard, dropped_by, refusal
from nestbuild.node.nodetree import keeps_toplevels as node_keeps_toplevels
from nestbuild.validation.changeset import ADDED, DELETED, Change
from nestbuild.validation.findings import Finding
from nestbuild.validation.policy import Policy

API_DIRS = ("dev", "proc", "sys", "run", "tmp", "var")
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class View(Protocol):
    """A read-only file tree: the base index or the merged image."""

    def get(self, path: str) -> Entry | None: ...
    def below(self, prefix: str) -> Iterator[Entry]: ...
    def content(self, path: str) -> bytes | None: ...


@dataclass
class Raw:
    """A finding before the policy sets its severity (``off`` drops it)."""

    rule: str
    path: str | None
    message: str
    layer: int | None = None
    #: A node refuses the image for it: an error whatever the policy says.
    refused: bool = False
    #: It comes from the base's layers: the derived layers did not cause it.
    inherited: bool = False


# --- layer checks -----------------------------------------------------------------------

_PEM_PRIVATE = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY"
                          rb"(?: BLOCK)?)-----")
_AWS_KEY = re.compile(rb"(?:aws_secret_access_key\s*=\s*\S{20,})|(?:\bAKIA[0-9A-Z]{16}\b)")
_AUTH_JSON = re.compile(rb'"auths"\s*:\s*\{.*?"auth"\s*:\s*"[A-Za-z0-9+/=]{8,}"', re.DOTALL)
_NETRC_PASSWORD = re.compile(rb"^\s*(?:machine\s+\S+\s+)?.*\bpassword\s+\S+", re.MULTILINE)
_SSH_HOST_KEY = re.compile(r"/etc/ssh/ssh_host_[a-z0-9]+_key\Z")
_USER_KEY = re.compile(r"/\.ssh/id_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?\Z")


def shown(path: str) -> str:
    """A path as a report can print it (a non-UTF-8 byte as ``\\xff``)."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def refusal_raw(layer: int, path: str, reason: str, *, inherited: bool = False) -> Raw:
    """A node refusal (nodetree's REFUSE verdict) as an unsafe-path finding."""
    return Raw("unsafe-path", shown(path), f"{reason}; the node refuses the image", layer,
               refused=True, inherited=inherited)


@dataclass
class LayerScanner:
    """Watches layer entries as they stream (see read_layer's inspector hook).

    Every item goes through the node's own verdict (nodetree): what a node refuses is an
    error here. ``guard`` has seen the base's layers already (the base index keeps where it
    stopped), so an entry reached through a base symlink is refused too.
    """

    raws: list[Raw] = field(default_factory=list)
    guard: SymlinkGuard = field(default_factory=SymlinkGuard)
    _secret_paths: set[tuple[str, int]] = field(default_factory=set)

    def item(self, item: Item) -> None:
        why = refusal(item, self.guard)
        if why is not None:
            self.raws.append(refusal_raw(item.layer, item.path, why))
        if isinstance(item, (Unsafe, Whiteout)):
            return
        e = item
        if not is_utf8(e.path):
            self.raws.append(Raw("utf8", shown(e.path), "non-UTF-8 file name", e.layer))
            return
        if e.type == SYMLINK:
            if not is_utf8(e.link):
                self.raws.append(Raw("utf8", e.path, "non-UTF-8 symlink target", e.layer))
            elif link_escapes(e.path, e.link):
                self.raws.append(Raw("unsafe-path", e.path,
                                     f"symlink to {e.link!r} climbs out of the root", e.layer))
        if e.type == FILE and e.size and _SSH_HOST_KEY.search(e.path):
            self._secret(e, "an SSH host private key: every node would share it")
        elif e.type == FILE and e.size and _USER_KEY.search(e.path):
            self._secret(e, "an SSH private key")

    def content(self, e: Entry, data: bytes) -> None:
        # Substring tests first: they run at memory speed; the regexes only confirm.
        m = _PEM_PRIVATE.search(data) if b"PRIVATE KEY" in data else None
        if m:
            self._secret(e, f"contains a private key ({m.group(1).decode()})")
        elif (b"aws_secret_access_key" in data or b"AKIA" in data) and _AWS_KEY.search(data):
            self._secret(e, "contains an AWS access key")
        elif b'"auths"' in data and _AUTH_JSON.search(data):
            self._secret(e, "contains registry credentials (auths.*.auth)")
        elif e.path.endswith("/.netrc") and _NETRC_PASSWORD.search(data):
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
        self.raws.append(Raw("secret", e.path, f"{why} (layer {e.layer})", e.layer))


# --- change checks ----------------------------------------------------------------------

def _topmost(changes: list[Change], kinds: set[str]) -> dict[str, list[Change]]:
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


def path_policy(changes: list[Change], policy: Policy) -> list[Raw]:
    bad = [c for c in changes if not policy.path_allowed(c.path)[0] and not (
        c.kind == ADDED and c.type == DIR and policy.leads_to_allowed(c.path))]
    out = []
    for top, group in _topmost(bad, {ADDED, DELETED}).items():
        _, deny = policy.path_allowed(top)
        why = f"denied by {deny}" if deny else f"policy {policy.name} allows only " + ", ".join(
            policy.allow[:4]) + (" ..." if len(policy.allow) > 4 else "")
        out.append(Raw("path-policy", top, f"{_describe(group)}; {why}", group[0].layer))
    return out


def permission_checks(changes: list[Change]) -> list[Raw]:
    out = []
    for c in changes:
        a, b = c.after, c.before
        if a is None or a.type == SYMLINK:
            continue
        if a.is_file:
            bits = a.mode & 0o6000
            old = (b.mode & 0o6000) if b is not None and b.is_file else 0
            if bits & ~old:
                which = " and ".join(n for bit, n in ((0o4000, "setuid"), (0o2000, "setgid"))
                                     if bits & ~old & bit)
                out.append(Raw("setuid", c.path, f"{which} bit added (mode {a.mode:04o})", c.layer))
            cap = a.xattrs.get("security.capability")
            if cap is not None and (b is None or b.xattrs.get("security.capability") != cap):
                out.append(Raw("file-capabilities", c.path,
                               "file capabilities added (security.capability)", c.layer))
        if a.mode & 0o002 and not (b is not None and b.mode & 0o002):
            if a.type == DIR and a.mode & 0o1000:
                pass  # sticky shared directory, like /tmp
            else:
                kind = "directory without the sticky bit" if a.type == DIR else a.type
                out.append(Raw("world-writable", c.path,
                               f"world-writable {kind} (mode {a.mode:04o})", c.layer))
        if paths.under(c.path, "/usr") and (a.uid or a.gid) and not (
            b is not None and (b.uid, b.gid) == (a.uid, a.gid)
        ):
            out.append(Raw("ownership", c.path, f"owned by {a.uid}:{a.gid} under /usr", c.layer))
    return out


def kernel_dirs(view: View) -> list[str]:
    """The /usr/lib/modules/KVER directories that hold a vmlinuz."""
    out = []
    for e in view.below(paths.MODULES_DIR):
        if e.path.endswith("/vmlinuz") and e.path.count("/") == 5 and e.is_file:
            out.append(posixpath.basename(posixpath.dirname(e.path)))
    return sorted(out)


def kmod_mismatch(changes: list[Change], kernels: list[str]) -> list[Raw]:
    out = []
    for c in changes:
        if c.after is None or not c.path.endswith(MODULE_SUFFIXES):
            continue
        if not paths.under(c.path, paths.MODULES_DIR):
            out.append(Raw("kmod-kernel-mismatch", c.path,
                           "kernel module outside /usr/lib/modules/KVER is never loaded", c.layer))
            continue
        kver = c.path.split("/")[4]
        if kver not in kernels:
            have = ", ".join(kernels) or "none"
            out.append(Raw("kmod-kernel-mismatch", c.path,
                           f"module for kernel {kver}; the image carries {have}", c.layer))
    return out


def composefs_enabled(view: View) -> bool:
    return nodetree.composefs_enabled(nodetree.prepare_root(view.content(paths.PREPARE_ROOT_CONF)))


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


def modules_load(changes: list[Change], merged: View, kernels: list[str]) -> list[Raw]:
    """Modules a derived modules-load.d file asks for must exist for the image's kernel."""
    from nestbuild.building.kernel import modules_to_load

    out: list[Raw] = []
    available: dict[str, set[str]] = {}
    for c in changes:
        if c.after is None or not c.path.endswith(".conf") or not any(
                c.path.startswith(d + "/") for d in paths.MODULES_LOAD_DIRS):
            continue
        data = merged.content(c.path)
        if data is None:
            continue
        for name in modules_to_load(data.decode("utf-8", "replace")):
            if not kernels:
                out.append(Raw("kmod-kernel-mismatch", c.path,
                               f"module {name} to load, but the image carries no kernel",
                               c.layer))
                continue
            for kver in kernels:
                have = available.setdefault(kver, _kernel_modules(merged, kver))
                if name.replace("-", "_") not in have:
                    out.append(Raw("kmod-kernel-mismatch", c.path,
                                   f"module {name} to load is not in kernel {kver}", c.layer))
    return out


def dropped(changes: list[Change], keeps_toplevels: bool) -> list[Raw]:
    """What the node drops (nodetree's DROP verdict), once per top-most added directory."""
    live = [c for c in changes
            if c.after is not None and dropped_by(c.path, keeps_toplevels) is not None]
    out = []
    for top, group in _topmost(live, {ADDED}).items():
        out.append(Raw("dropped-path", top,
                       f"{_describe(group)}; {dropped_by(top, keeps_toplevels)}",
                       group[0].layer))
    return out


def tmpfiles_line(e: Entry) -> str:
    owner = f"{e.uid} {e.gid}" if (e.uid or e.gid) else "root root"
    if e.type == DIR:
        return f"d {e.path} {e.mode:04o} {owner} -"
    if e.type == SYMLINK:
        return f"L {e.path} - - - - {e.link}"
    return f"C {e.path} {e.mode:04o} {owner} - /usr/share/factory{e.path}"


def var_content(changes: list[Change]) -> list[Raw]:
    live = [c for c in changes if c.after is not None and paths.under(c.path, "/var")
            and c.path != "/var" and not paths.under(c.path, "/var/log")]
    out = []
    for top, group in _topmost(live, {ADDED}).items():
        lines = [tmpfiles_line(c.after) for c in group if c.after is not None][:8]
        more = "" if len(group) <= 8 else f" (+{len(group) - 8} more)"
        files = any(c.after is not None and c.after.is_file for c in group)
        hint = " and ship files under /usr/share/factory" if files else ""
        out.append(Raw(
            "var-content", top,
            f"{_describe(group)}; /var content reaches only freshly installed nodes. "
            f"tmpfiles.d{hint}: " + "; ".join(lines) + more,
            group[0].layer,
        ))
    return out


# --- image checks (structural, bootc's lints) ---------------------------------------------

def image_checks(view: View) -> list[Raw]:
    out: list[Raw] = []

    for d in API_DIRS:
        e = view.get(f"/{d}")
        if e is None:
            out.append(Raw("api-base-directories", f"/{d}",
                           f"missing API filesystem base directory /{d}"))
        elif e.type != DIR:
            out.append(Raw("api-base-directories", f"/{d}",
                           f"expected a directory for /{d}, found a {e.type}"))

    sysroot = view.get("/sysroot")
    if sysroot is None or sysroot.type != DIR:
        out.append(Raw("baseimage-root", "/sysroot",
                       "missing /sysroot" if sysroot is None else "/sysroot is not a directory"))
    ostree = view.get("/ostree")
    if ostree is None:
        out.append(Raw("baseimage-root", "/ostree", "missing ostree -> sysroot/ostree link"))
    elif ostree.type != SYMLINK or ostree.link != "sysroot/ostree":
        out.append(Raw("baseimage-root", "/ostree",
                       f"expected /ostree -> sysroot/ostree, not {ostree.type} {ostree.link!r}"))

    if not composefs_enabled(view):
        out.append(Raw("baseimage-composefs", paths.PREPARE_ROOT_CONF,
                       "composefs is not enabled in prepare-root.conf"))

    out.extend(kargs_check(view))

    for name in ("/etc/hostname", "/etc/resolv.conf"):
        e = view.get(name)
        if e is not None and e.type in (FILE, HARDLINK) and e.size == 0:
            out.append(Raw("buildah-injected", name,
                           "empty file; probably synthesized by the container build"))

    if view.get("/etc") is not None and view.get("/usr/etc") is not None:
        out.append(Raw("etc-usretc", "/usr/etc", "found /usr/etc beside /etc"))

    kernels = kernel_dirs(view)
    if len(kernels) > 1:
        out.append(Raw("kernel", paths.MODULES_DIR,
                       f"{len(kernels)} kernels found ({', '.join(kernels)}); "
                       "only one is supported"))

    if view.get("/boot") is None:
        out.append(Raw("nonempty-boot", "/boot", "missing /boot directory"))
    for d in ("/boot", "/run", "/tmp"):
        rule = "nonempty-boot" if d == "/boot" else "nonempty-run-tmp"
        for e in _children(view, d):
            out.append(Raw(rule, e.path, f"{d} is not empty"))

    out.extend(sysusers_check(view))

    for e in view.below("/var/log"):
        if e.is_file and e.size > 0:
            out.append(Raw("var-log", e.path, "non-empty log file"))

    var_run = view.get("/var/run")
    if var_run is not None and var_run.type != SYMLINK:
        out.append(Raw("var-run", "/var/run", "not a symlink: /var/run"))
    return out


def _children(view: View, path: str) -> Iterator[Entry]:
    depth = path.count("/") + 1
    for e in view.below(path):
        if e.path.count("/") == depth:
            yield e


def kargs_check(view: View) -> list[Raw]:
    out = []
    d = view.get(paths.KARGS_DIR)
    if d is not None and d.type != DIR:
        return [Raw("bootc-kargs", paths.KARGS_DIR, "kargs.d is not a directory")]
    for e in _children(view, paths.KARGS_DIR):
        if not e.path.endswith(".toml") or e.type not in (FILE, HARDLINK):
            continue
        data = view.content(e.path)
        if data is None:
            out.append(Raw("bootc-kargs", e.path, "too large to be a kargs file"))
            continue
        problem = parse_kargs(data)
        if problem:
            out.append(Raw("bootc-kargs", e.path, problem))
    return out


def parse_kargs(data: bytes) -> str | None:
    """The problem with a kargs.d TOML file, as bootc would see it; None if it is valid."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return f"invalid TOML: {exc}"
    unknown = set(doc) - {"kargs", "match-architectures"}
    if unknown:
        return f"unknown key(s) {', '.join(sorted(unknown))}"
    kargs = doc.get("kargs")
    if not isinstance(kargs, list) or not all(isinstance(k, str) for k in kargs):
        return "kargs must be a list of strings"
    arches = doc.get("match-architectures", [])
    if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
        return "match-architectures must be a list of strings"
    return None


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


def sysusers_check(view: View) -> list[Raw]:
    users, groups = _sysusers_declared(view)
    out = []
    for path, declared, what in ((paths.PASSWD, users, "user"), (paths.GROUP, groups, "group")):
        data = view.content(path)
        for line in (data or b"").decode("utf-8", "replace").splitlines():
            name = line.split(":", 1)[0].strip()
            if name and not name.startswith("#") and name not in declared:
                out.append(Raw("sysusers", path, f"{what} {name!r} has no sysusers.d entry"))
    return out


def tmpfiles_declared(view: View) -> set[str]:
    declared = set()
    for d in paths.TMPFILES_DIRS:
        for e in _children(view, d):
            data = view.content(e.path) if e.path.endswith(".conf") else None
            for line in (data or b"").decode("utf-8", "replace").splitlines():
                fields = line.split()
                if len(fields) >= 2 and not fields[0].startswith("#"):
                    declared.add(fields[1].rstrip("/"))
    return declared


def var_tmpfiles(view: View, skip: set[str]) -> list[Raw]:
    """bootc's var-tmpfiles for /var content the derived layers did not add (they get
    var-content instead, with the lines to write)."""
    declared = tmpfiles_declared(view)
    out = []
    for e in view.below("/var"):
        if e.path in skip or e.path in declared or paths.under(e.path, "/var/log"):
            continue
        if e.type in (DIR, SYMLINK):
            out.append(Raw("var-tmpfiles", e.path, f"no tmpfiles.d entry: {tmpfiles_line(e)}"))
        else:
            out.append(Raw("var-tmpfiles", e.path, "non-directory, non-symlink content in /var"))
    return out


# --- putting it together ----------------------------------------------------------------

def evaluate(
    *,
    policy: Policy,
    changes: list[Change],
    merged: View,
    base: View | None,
    layer_raws: Iterable[Raw],
) -> list[Finding]:
    """All findings, with the policy's severities, sorted by severity then path."""
    changed = {c.path for c in changes}
    raws: list[Raw] = list(layer_raws)
    raws += path_policy(changes, policy)
    raws += permission_checks(changes)
    kernels = kernel_dirs(merged)
    raws += kmod_mismatch(changes, kernels)
    raws += modules_load(changes, merged, kernels)
    raws += dropped(changes, node_keeps_toplevels(merged.content(paths.PREPARE_ROOT_CONF)))
    raws += var_content(changes)

    image = [r for r in image_checks(merged) if not _derived_content(r, changed)]
    image += var_tmpfiles(merged, changed)
    inherited: set[tuple[str, str | None, str]] = set()
    if base is not None:
        inherited = {(r.rule, r.path, r.message) for r in image_checks(base)}
        inherited |= {(r.rule, r.path, r.message) for r in var_tmpfiles(base, set())}

    findings = []
    for r in raws:
        sev = policy.severity(r.rule, refused=r.refused)
        if sev != "off":
            findings.append(Finding(r.rule, sev, r.path, r.message, r.layer, r.inherited))
    for r in image:
        sev = policy.severity(r.rule)
        if sev != "off":
            findings.append(Finding(r.rule, sev, r.path, r.message, None,
                                    (r.rule, r.path, r.message) in inherited))
    from nestbuild.validation.severity import RANK

    findings.sort(key=lambda f: (RANK[f.severity], f.path or "", f.rule))
    return findings


def _derived_content(r: Raw, changed: set[str]) -> bool:
    """nonempty-boot/run-tmp entries the derived layers added are reported as dropped-path."""
    return r.rule in ("nonempty-boot", "nonempty-run-tmp") and r.path in changed and (
        r.message.endswith("is not empty"))
