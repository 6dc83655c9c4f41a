"""The rollout's waves: canaries first, then batches of --max-unavailable, in inventory order;
serial() is the same plan as Ansible's ``serial`` list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nestbuild.errors import UsageError
from nestbuild.fleet.inventory import Node
from nestbuild.fleet.plan import Batching, batch_size, serial, waves
from tests import property_profiles

property_profiles.load()


def nodes(n: int) -> list[Node]:
    return [Node(f"n{i:03d}", "bootc", {}, ()) for i in range(n)]


@pytest.mark.parametrize("text, total, size", [
    ("1", 10, 1), ("3", 10, 3), ("50", 10, 50), (" 2 ", 5, 2),
    ("25%", 10, 2), ("25%", 4, 1), ("10%", 5, 1), ("100%", 7, 7), ("50%", 9, 4),
    ("0.5%", 1000, 5), ("1%", 0, 1),
])
def test_batch_size(text: str, total: int, size: int) -> None:
    assert batch_size(text, total) == size
    assert Batching(max_unavailable=text).batch_size(total) == size


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "-5%", "x", "", "%", "1.5", "2 %x"])
def test_bad_batch_size(text: str) -> None:
    with pytest.raises(UsageError) as info:
        batch_size(text, 10)
    assert "--max-unavailable" in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("canary, unavailable, sizes", [
    (0, "3", [3, 3, 3, 1]),
    (1, "3", [1, 3, 3, 3]),
    (1, "4", [1, 4, 4, 1]),
    (2, "4", [2, 4, 4]),
    (10, "3", [10]),
    (12, "3", [10]),
    (1, "50%", [1, 5, 4]),
])
def test_waves(canary: int, unavailable: str, sizes: list[int]) -> None:
    planned = waves(nodes(10), Batching(canary, unavailable))
    assert [len(w) for w in planned] == sizes
    assert serial(planned) == sizes
    assert [n for w in planned for n in w] == nodes(10)


def test_no_nodes_and_bad_canary() -> None:
    assert waves([], Batching()) == []
    assert serial([]) == [1]
    with pytest.raises(UsageError, match="--canary"):
        waves(nodes(3), Batching(canary=-1))


@given(n=st.integers(0, 300), canary=st.integers(0, 20),
       unavailable=st.one_of(st.integers(1, 50).map(str),
                             st.integers(1, 100).map(lambda p: f"{p}%")))
def test_waves_cover_every_node_once_in_order(n: int, canary: int, unavailable: str) -> None:
    given_nodes = nodes(n)
    planned = waves(given_nodes, Batching(canary, unavailable))
    assert [x for w in planned for x in w] == given_nodes
    assert all(planned)  # no empty wave
    size = batch_size(unavailable, n)
    rest = planned[1:] if canary and n else planned
    if canary and n:
        assert len(planned[0]) == min(canary, n)
    assert all(len(w) == size for w in rest[:-1])
    assert not rest or 1 <= len(rest[-1]) <= size
    if n:
        assert serial(planned) == [len(w) for w in planned]
