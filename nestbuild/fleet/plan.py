"""The waves of a rollout: the canaries first, then batches of at most --max-unavailable.

Waves follow the inventory's host order, and the play is handed its hosts in that order, so
the plan nestbuild prints is the order Ansible runs; :func:`serial` is that same plan written
as Ansible's ``serial`` list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from nestbuild.errors import UsageError

#: A node, or its name: a rollout plans from the inventory, a resumed one from its state.
T = TypeVar("T")


@dataclass(frozen=True)
class Batching:
    #: Nodes in the first wave (0: no canary wave).
    canary: int = 1
    #: ``N`` nodes or ``P%`` of the nodes rolled out, at most, per later wave.
    max_unavailable: str = "1"

    def batch_size(self, total: int) -> int:
        return batch_size(self.max_unavailable, total)


def batch_size(max_unavailable: str, total: int) -> int:
    """``10`` or ``25%`` (of ``total``, rounded down, at least one) as a count."""
    text = str(max_unavailable).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return max(1, math.floor(total * percent / 100))
        count = int(text)
        if count < 1:
            raise ValueError
        return count
    except ValueError:
        raise UsageError(f"--max-unavailable {max_unavailable}: expected a count of at least "
                         "1 or a percentage (1% to 100%)") from None


def waves(nodes: Sequence[T], batching: Batching) -> list[list[T]]:
    """The nodes in waves: ``canary`` first, then ``max_unavailable`` at a time."""
    if batching.canary < 0:
        raise UsageError(f"--canary {batching.canary}: expected 0 or more")
    size = batching.batch_size(len(nodes))
    out: list[list[T]] = []
    rest = list(nodes)
    if batching.canary and rest:
        out.append(rest[:batching.canary])
        rest = rest[batching.canary:]
    out += [rest[i:i + size] for i in range(0, len(rest), size)]
    return out


def serial(planned: Sequence[Sequence[object]]) -> list[int]:
    """Ansible's ``serial`` list for exactly these waves."""
    return [len(w) for w in planned] or [1]

