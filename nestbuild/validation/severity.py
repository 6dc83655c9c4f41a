"""Severities, ordered, shared by rules, policies and reports."""

from __future__ import annotations

from typing import Final, Literal

#: A rule's default severity, or what a policy sets it to (``off`` drops its findings).
Severity = Literal["error", "warning", "info", "off"]

ERROR: Final = "error"
WARNING: Final = "warning"
INFO: Final = "info"
OFF: Final = "off"
LEVELS: tuple[Severity, ...] = (ERROR, WARNING, INFO, OFF)
RANK = {ERROR: 0, WARNING: 1, INFO: 2, OFF: 3}
