"""What a build engine is given and gives back, shared by the engines and the build around them.

An engine (buildah, the Docker engine) only turns a Containerfile into an image in local
storage on a base that the build has already resolved and pinned; checking that it did so, and
validating the result, is :mod:`nestbuild.building.build`'s part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from nestbuild._image.model import ANNOTATION_BASE_DIGEST, ANNOTATION_BASE_NAME
from nestbuild.errors import EXIT_FAILED, NestbuildError

if TYPE_CHECKING:
    from nestbuild._registry.access import RegistryAccess

#: Called with each line of the engine's build log as it arrives.
LogSink = Callable[[str], None]


class BuildFailed(NestbuildError):
    """The user's build failed (a RUN step exited non-zero): exit 1, like a failed test."""

    exit_code = EXIT_FAILED


@dataclass
class BuildOptions:
    context: Path = Path(".")
    containerfile: Path | None = None
    image: str | None = None
    engine: str = "buildah"
    build_args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    layers: bool = False
    no_cache: bool = False
    #: Pull the base even if it is in local storage (``pull_policy="always"``).
    pull: bool = False
    #: When the base is pulled: ``"missing"`` (None's meaning unless ``pull``: as buildah and
    #: podman), ``"always"`` or ``"never"``.
    pull_policy: str | None = None
    #: How to reach the base's registry (authfile, cert-dir, TLS verification).
    access: RegistryAccess | None = None
    #: ``USER:PASSWORD`` for the base's registry (buildah's ``--creds``; never on a command
    #: line: it goes into a private auth file for the pull).
    credentials: str | None = None
    #: Further names for the built image.
    tags: list[str] = field(default_factory=list)
    platform: str | None = None
    validate: bool = True
    docker_host: str | None = None
    #: Files to add as one layer after the build (kernel profiles, node trust files).
    extra_files: dict[str, tuple[bytes, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedBase:
    """The OS base the final stage builds on, pinned by digest before the build."""

    name: str
    digest: str
    #: Its layers: the built image must start with them.
    diff_ids: tuple[str, ...] = ()

    @property
    def record(self) -> dict[str, str]:
        """The manifest annotations that name this base (as buildah writes them)."""
        return {ANNOTATION_BASE_DIGEST: self.digest, ANNOTATION_BASE_NAME: self.name}


@dataclass(frozen=True)
class EngineJob:
    """One build for an engine: the image goes into local storage as ``tag``."""

    options: BuildOptions
    containerfile: Path
    tag: str
    base: ResolvedBase
    #: Where the engine writes its whole log (kept after the build, for the user).
    logfile: Path
    log: LogSink | None
    #: One-line remarks for the user (how RUN steps are isolated).
    note: Callable[[str], None]
    #: buildah's flags to reach registries, for the build's own pulls (other stages' images).
    registry_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Built:
    image_id: str
    #: How RUN steps were isolated, where the engine has a choice.
    isolation: str | None = None
    #: The engine's own base record may name a layer-cache intermediate, not the base (the
    #: layers are then the proof that it built on the base).
    record_may_name_intermediate: bool = False


class Engine(Protocol):
    """Builds a Containerfile into local storage; raises BuildFailed when the user's steps
    fail, a ToolError or UsageError when the engine cannot do the build at all."""

    def build(self, job: EngineJob) -> Built: ...
