"""Severities, ordered, shared by rules, policies and reports."""

from __future__ import annotations

ERROR, WARNING, INFO, OFF = "error", "warning", "info", "off"
LEVELS = (ERROR, WARNING, INFO, OFF)
RANK = {ERROR: 0, WARNING: 1, INFO: 2, OFF: 3}
