"""``docker://HOST/REPO[:TAG|@DIGEST]``: where an image lives in a registry."""

from __future__ import annotations

from dataclasses import dataclass

from nestbuild.errors import UsageError
from nestbuild.signing import payload


@dataclass(frozen=True)
class RegistryRef:
    host: str
    repo: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``HOST/REPO``: what signatures and policy.json call the repository."""
        return f"{self.host}/{self.repo}"

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest if pinned, else the tag (``latest``)."""
        return self.digest or self.tag or "latest"

    def with_tag(self, tag: str) -> RegistryRef:
        return RegistryRef(self.host, self.repo, tag, None)

    def with_digest(self, digest: str) -> RegistryRef:
        return RegistryRef(self.host, self.repo, None, digest)

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    @property
    def transport(self) -> str:
        return f"docker://{self}"


def parse(text: str) -> RegistryRef:
    """Parse with or without ``docker://``; names are normalised as podman does."""
    bare = text.removeprefix("docker://")
    try:
        ref = payload.parse_reference(bare)
    except ValueError as exc:
        raise UsageError(f"{text}: not a valid image reference ({exc})") from None
    if ref.tag is not None and ref.digest is not None:
        raise UsageError(f"{text}: name a tag or a digest, not both")
    host, _, repo = ref.name.partition("/")
    return RegistryRef(host, repo, ref.tag, ref.digest)
