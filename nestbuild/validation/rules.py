"""The catalogue of rules, complete: stable ids, default severities, what they mean, the fix.

Every rule is declared once, beside its check, in :mod:`nestbuild.validation.lints`; importing
this module guarantees all of them are declared before anyone looks one up.
"""

from __future__ import annotations

from collections.abc import Mapping

import nestbuild.validation.lints  # noqa: F401  (declares every rule)
from nestbuild.validation.declare import Lint, Rule, declared_lints, declared_rules

#: Rule id -> rule, in catalogue order.
RULES: Mapping[str, Rule] = declared_rules()
#: The lints ``evaluate`` runs, in catalogue order.
LINTS: tuple[Lint, ...] = declared_lints()


def rule_catalogue() -> Mapping[str, Rule]:
    """Every validation rule by id, in catalogue order (what ``nestbuild rules`` lists)."""
    return RULES
