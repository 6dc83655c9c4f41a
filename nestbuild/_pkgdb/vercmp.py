"""Version ordering as rpm and dpkg define it, so "upgraded" means what the tools mean.

``compare_rpm`` is rpm's ``rpmverCmp`` over ``rpmverParse`` (what ``rpm.vercmp`` does in
rpm's Lua): the epoch (absent = 0), then the version, then the release only when both sides
have one, each by ``rpmvercmp`` (``~`` sorts before anything, even the end; ``^`` after the
end but before anything else). ``compare_deb`` is dpkg's ``dpkg_version_compare``: the
numeric epoch, then upstream version and revision by ``verrevcmp`` (``~`` first, then the
end, then letters, then other characters). Both return -1, 0 or 1.
"""

from __future__ import annotations

from typing import Final

from nestbuild._pkgdb.errors import PackageDbError
from nestbuild._util.record import Value

#: Longest version string compared; longer is not a version.
MAX_VERSION = 4096
_INT_MAX = 2**31 - 1


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


def _isdigit(c: str) -> bool:
    return "0" <= c <= "9"


def _isalpha(c: str) -> bool:
    return "a" <= c <= "z" or "A" <= c <= "Z"


def _checked(s: str) -> str:
    if len(s) > MAX_VERSION:
        raise PackageDbError(f"version of {len(s)} characters (limit {MAX_VERSION})")
    return s


def _as_bytes(s: str) -> str:
    """The string as the C tools see it: one character per byte."""
    s = _checked(s)
    return s if s.isascii() else s.encode("utf-8", "surrogateescape").decode("latin-1")


# --- rpm -------------------------------------------------------------------------------------

class RpmEvr(Value):
    """``[epoch:]version[-release]`` split as rpm splits it; epoch is None when absent."""

    epoch: Final[str | None]
    version: Final[str]
    release: Final[str | None]

    def __init__(self, epoch: str | None, version: str, release: str | None) -> None:
        self.epoch = epoch
        self.version = version
        self.release = release

    def __str__(self) -> str:
        e = f"{self.epoch}:" if self.epoch is not None else ""
        r = f"-{self.release}" if self.release is not None else ""
        return f"{e}{self.version}{r}"


def parse_rpm_evr(evr: str) -> RpmEvr:
    """Split like ``rpmverParse``: leading digits then ``:`` are the epoch (empty = 0), the
    last ``-`` starts the release."""
    evr = _checked(evr)
    if not evr:
        raise PackageDbError("version string is empty")
    i = 0
    while i < len(evr) and _isdigit(evr[i]):
        i += 1
    epoch: str | None = None
    rest = evr
    if i < len(evr) and evr[i] == ":":  # rpm keeps an empty epoch as "0"
        epoch = evr[:i] or "0"
        rest = evr[i + 1:]
    version, dash, release = rest.rpartition("-")
    if not dash:
        return RpmEvr(epoch, rest, None)
    return RpmEvr(epoch, version, release)


def rpmvercmp(a: str, b: str) -> int:
    """rpm's segment comparison of one version or release string."""
    a, b = _as_bytes(a), _as_bytes(b)
    if a == b:
        return 0
    la, lb = len(a), len(b)
    i = j = 0
    while i < la or j < lb:
        while i < la and not (_isdigit(a[i]) or _isalpha(a[i]) or a[i] in "~^"):
            i += 1
        while j < lb and not (_isdigit(b[j]) or _isalpha(b[j]) or b[j] in "~^"):
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not (ca and cb):
            break
        si, sj = i, j
        isnum = _isdigit(ca)
        same = _isdigit if isnum else _isalpha
        while i < la and same(a[i]):
            i += 1
        while j < lb and same(b[j]):
            j += 1
        if j == sj:
            return 1 if isnum else -1
        x, y = a[si:i], b[sj:j]
        if isnum:
            x, y = x.lstrip("0"), y.lstrip("0")
            if len(x) != len(y):
                return 1 if len(x) > len(y) else -1
        if x != y:
            return 1 if x > y else -1
    if i >= la and j >= lb:
        return 0
    return 1 if i < la else -1


def compare_rpm_evr(a: RpmEvr, b: RpmEvr) -> int:
    """A missing epoch is 0; a missing release sorts before any release (``rpmverCmp``; a
    dependency's "any release" matching is another function, not this order)."""
    rc = rpmvercmp(a.epoch or "0", b.epoch or "0") or rpmvercmp(a.version, b.version)
    if rc or a.release == b.release:
        return rc
    if a.release is None or b.release is None:
        return -1 if a.release is None else 1
    return rpmvercmp(a.release, b.release)


def compare_rpm(a: str, b: str) -> int:
    """Order two rpm ``[epoch:]version[-release]`` strings: -1, 0 or 1."""
    return compare_rpm_evr(parse_rpm_evr(a), parse_rpm_evr(b))


# --- dpkg ------------------------------------------------------------------------------------

class DebVersion(Value):
    """``[epoch:]upstream[-revision]`` as dpkg splits it; epoch 0 when absent."""

    epoch: Final[int]
    upstream: Final[str]
    revision: Final[str]

    def __init__(self, epoch: int, upstream: str, revision: str) -> None:
        self.epoch = epoch
        self.upstream = upstream
        self.revision = revision

    def __str__(self) -> str:
        e = f"{self.epoch}:" if self.epoch else ""
        r = f"-{self.revision}" if self.revision else ""
        return f"{e}{self.upstream}{r}"


def parse_deb_version(text: str) -> DebVersion:
    """Split like dpkg's ``parseversion``; what it rejects as an error raises PackageDbError
    (its warnings, such as a version not starting with a digit, are accepted as dpkg does)."""
    s = _checked(text).strip()
    if not s:
        raise PackageDbError("version string is empty")
    if any(c.isspace() for c in s):
        raise PackageDbError(f"version {s!r} has embedded spaces")
    epoch = 0
    head, colon, rest = s.partition(":")
    if colon:
        if not head:
            raise PackageDbError(f"version {s!r}: epoch is empty")
        # strtol's syntax: an optional sign, then digits
        digits = head[1:] if head[0] in "+-" else head
        if not digits.isascii() or not digits.isdigit():
            raise PackageDbError(f"version {s!r}: epoch is not a number")
        if len(digits.lstrip("0")) > 10 or int(digits) > _INT_MAX:
            raise PackageDbError(f"version {s!r}: epoch is too big")
        if head[0] == "-" and int(digits):
            raise PackageDbError(f"version {s!r}: epoch is negative")
        epoch = int(digits)
        if not rest:
            raise PackageDbError(f"version {s!r}: nothing after the colon")
        s = rest
    upstream, dash, revision = s.rpartition("-")
    if not dash:
        upstream, revision = s, ""
    elif not revision:
        raise PackageDbError(f"version {text!r}: revision is empty")
    if not upstream:
        raise PackageDbError(f"version {text!r}: version number is empty")
    return DebVersion(epoch, upstream, revision)


def _order(c: str) -> int:
    if not c or _isdigit(c):
        return 0
    if _isalpha(c):
        return ord(c)
    if c == "~":
        return -1
    if ord(c) >= 0x80:
        return ord(c)  # dpkg's char is signed: (byte - 256) + 256, below the punctuation
    return ord(c) + 256


def verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of one upstream version or revision."""
    a, b = _as_bytes(a), _as_bytes(b)
    la, lb = len(a), len(b)
    i = j = 0
    while i < la or j < lb:
        first_diff = 0
        while (i < la and not _isdigit(a[i])) or (j < lb and not _isdigit(b[j])):
            ac = _order(a[i] if i < la else "")
            bc = _order(b[j] if j < lb else "")
            if ac != bc:
                return _sign(ac - bc)
            i += 1
            j += 1
        while i < la and a[i] == "0":
            i += 1
        while j < lb and b[j] == "0":
            j += 1
        while i < la and j < lb and _isdigit(a[i]) and _isdigit(b[j]):
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < la and _isdigit(a[i]):
            return 1
        if j < lb and _isdigit(b[j]):
            return -1
        if first_diff:
            return _sign(first_diff)
    return 0


def compare_deb_version(a: DebVersion, b: DebVersion) -> int:
    if a.epoch != b.epoch:
        return 1 if a.epoch > b.epoch else -1
    return verrevcmp(a.upstream, b.upstream) or verrevcmp(a.revision, b.revision)


def compare_deb(a: str, b: str) -> int:
    """Order two Debian version strings: -1, 0 or 1."""
    return compare_deb_version(parse_deb_version(a), parse_deb_version(b))
