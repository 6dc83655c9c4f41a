"""The project file, ``nestbuild.yaml``, found in the working directory (or NESTBUILD_CONFIG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PyYAML is imported only where a project file is read (settings.load)
    import yaml

    from nestbuild import settings

PROJECT_FILE = "nestbuild.yaml"


def project_file() -> Path | None:
    explicit = os.environ.get("NESTBUILD_CONFIG")
    if explicit:
        return Path(explicit)
    path = Path.cwd() / PROJECT_FILE
    return path if path.is_file() else None


def load() -> settings.ProjectSettings:
    """The project's settings; empty when there is no project file."""
    from nestbuild import settings  # here: validate without a project file needs none

    path = project_file()
    return settings.load(path) if path is not None else settings.ProjectSettings()


def policy_node() -> tuple[yaml.Node, str] | None:
    """The ``policy:`` value (a preset name, a file name or an inline policy) and its file."""
    if project_file() is None:
        return None  # no project file, no policy in it (and no settings table to load)
    project = load()
    node = project.nodes.get("policy")
    if node is None or project.source is None:
        return None
    return node, str(project.source)
