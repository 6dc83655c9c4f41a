"""``[docker://]HOST/REPO[:TAG][@DIGEST]``: the one type for an image in a registry.

Every name of a registry image (what a user typed, a signature's identity, a node's
``policy.json`` scope, a recorded base) is parsed once, at the edge, into a
:class:`RegistryRef`, and handed on as that object. The grammar and the normalisation are
containers/image's (``docker/reference``: ``ParseNormalizedNamed``; go-digest's ``Parse``),
re-stated here, so a name nestbuild accepts is one a node accepts.
"""

from __future__ import annotations

import re
from typing import Final

from nestbuild._util.record import Value, replace
from nestbuild.errors import UsageError


class RegistryRef(Value):
    """A normalised registry reference: ``host`` is ``docker.io`` and ``repo``
    ``library/x`` for a bare ``x``."""

    host: Final[str]
    repo: Final[str]
    tag: Final[str | None]
    digest: Final[str | None]

    def __init__(self, host: str, repo: str, tag: str | None = None,
                 digest: str | None = None) -> None:
        self.host = host
        self.repo = repo
        self.tag = tag
        self.digest = digest

    @property
    def name(self) -> str:
        """``HOST/REPO``: what signatures and policy.json call the repository."""
        return f"{self.host}/{self.repo}"

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    @property
    def name_only(self) -> bool:
        return self.tag is None and self.digest is None

    @property
    def exact(self) -> str:
        """``NAME[:TAG][@DIGEST]`` as written (containers/image's ``String()``)."""
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    def with_tag(self, tag: str) -> RegistryRef:
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> RegistryRef:
        return replace(self, tag=None, digest=digest)

    def __str__(self) -> str:
        """What a pull of it fetches: ``NAME@DIGEST``, else ``NAME:TAG`` (``latest``)."""
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    @property
    def transport(self) -> str:
        return f"docker://{self}"


def parse(text: str) -> RegistryRef:
    """A registry image as a user names it, with or without ``docker://``: a tag or a
    digest, not both (UsageError, one line)."""
    bare = text.removeprefix("docker://")
    try:
        ref = parse_normalized(bare)
    except ValueError as exc:
        raise UsageError(f"{text}: not a valid image reference ({exc})") from None
    if ref.tag is not None and ref.digest is not None:
        raise UsageError(f"{text}: name a tag or a digest, not both")
    return ref


_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_ALGO = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*")


def check_digest(value: str) -> str | None:
    """Why ``value`` is not a digest go-digest's ``Parse`` accepts, or None if it is."""
    algo, sep, encoded = value.partition(":")
    if not sep or not algo or not encoded:
        return "is not of the form ALGORITHM:HEX"
    if algo not in _DIGEST_HEX_LEN:
        if _DIGEST_ALGO.fullmatch(algo):
            return f"uses unsupported algorithm {algo!r}"
        return "is not of the form ALGORITHM:HEX"
    if len(encoded) != _DIGEST_HEX_LEN[algo] or not re.fullmatch(r"[a-f0-9]+", encoded):
        return f"is not {_DIGEST_HEX_LEN[algo]} lowercase hex digits after {algo}:"
    return None


_ALNUM = r"[a-z0-9]+"
# ``[-]+``, not docker/distribution's older ``[-]*``: the same names, but an empty separator
# let Python's backtracking matcher split a run of letters every way (exponential in its
# length) before refusing a name; Go's matcher does not backtrack, Python's does.
_SEPARATOR = r"(?:[._]|__|[-]+)"
_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST_PAT = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_REFERENCE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST_PAT}))?", re.ASCII)
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_NAME_MAX = 255


def parse_normalized(text: str) -> RegistryRef:
    """Parse like containers/image ``reference.ParseNormalizedNamed`` (a tag and a digest may
    both be given, as a signature's identity may); ValueError if invalid."""
    if _IDENTIFIER.fullmatch(text):
        raise ValueError("a 64-hex-digit identifier is not a repository name")
    slash = text.find("/")
    if slash == -1 or (not any(c in text[:slash] for c in ".:") and text[:slash] != "localhost"):
        domain, rest = "docker.io", text
    else:
        domain, rest = text[:slash], text[slash + 1 :]
    if domain == "index.docker.io":
        domain = "docker.io"
    if domain == "docker.io" and "/" not in rest:
        rest = "library/" + rest
    remote = rest.split(":", 1)[0]
    if remote.lower() != remote:
        raise ValueError("repository name must be lowercase")
    m = _REFERENCE.fullmatch(domain + "/" + rest)
    if m is None:
        raise ValueError("invalid reference format")
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > _NAME_MAX:
        raise ValueError(f"repository name must not be more than {_NAME_MAX} characters")
    if digest is not None:
        problem = check_digest(digest)
        if problem is not None:
            raise ValueError(f"digest {problem}")
    host, _, repo = name.partition("/")
    return RegistryRef(host, repo, tag, digest)
