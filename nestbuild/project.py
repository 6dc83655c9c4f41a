"""The project file, ``nestbuild.yaml``, found in the working directory.

This module only hands out the raw ``policy:`` node for now; the full settings table
(image, containerfile, build args, signing, registry) grows here with ``nestbuild build``.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from nestbuild.errors import UsageError

PROJECT_FILE = "nestbuild.yaml"


def project_file() -> Path | None:
    explicit = os.environ.get("NESTBUILD_CONFIG")
    if explicit:
        return Path(explicit)
    path = Path.cwd() / PROJECT_FILE
    return path if path.is_file() else None


def policy_node() -> tuple[yaml.Node, str] | None:
    """The ``policy:`` value (a preset name, a file name or an inline policy) and its file."""
    path = project_file()
    if path is None:
        return None
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        raise UsageError(f"{path}:{line}: invalid YAML: {exc.problem}") from None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if key.value == "policy":
            return value, str(path)
    return None
