"""Record classes behave as the dataclasses they replace: equality, hash, repr, replace."""

from __future__ import annotations

from typing import ClassVar, Final

import pytest

from nestbuild._util.record import Record, Value, asdict, replace


class Point(Value):
    x: Final[int]
    y: Final[int]
    label: Final[str]
    unit: ClassVar[str] = "px"

    def __init__(self, x: int, y: int, label: str = "") -> None:
        self.x = x
        self.y = y
        self.label = label


class Secret(Value):
    _hidden = ("password",)
    user: Final[str]
    password: Final[str]

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self.password = password


class Cursor(Record):
    __slots__ = ("pos", "seen")
    pos: int
    seen: list[str]

    def __init__(self, pos: int, seen: list[str]) -> None:
        self.pos = pos
        self.seen = seen


class Cursor3(Cursor):
    __slots__ = ("depth",)
    depth: int

    def __init__(self, pos: int, seen: list[str], depth: int) -> None:
        super().__init__(pos, seen)
        self.depth = depth


def test_fields_are_the_annotations_in_order_without_classvars() -> None:
    assert Point._fields == ("x", "y", "label")
    assert Cursor3._fields == ("pos", "seen", "depth")


def test_values_compare_and_hash_by_their_fields() -> None:
    assert Point(1, 2) == Point(1, 2, "")
    assert Point(1, 2) != Point(1, 3)
    assert len({Point(1, 2), Point(1, 2), Point(2, 1)}) == 2
    assert Point(1, 2) != (1, 2, "")  # not a tuple, and not equal to one


def test_records_of_another_class_are_not_equal() -> None:
    assert Cursor(1, []) != Cursor3(1, [], 0)
    assert Cursor(1, ["a"]) == Cursor(1, ["a"])


def test_mutable_records_are_not_hashable() -> None:
    with pytest.raises(TypeError, match="unhashable"):
        hash(Cursor(1, []))


def test_repr_names_the_fields_and_hides_secrets() -> None:
    assert repr(Point(1, 2, "a")) == "Point(x=1, y=2, label='a')"
    assert "hunter2" not in repr(Secret("me", "hunter2"))
    assert repr(Secret("me", "hunter2")) == "Secret(user='me')"


def test_replace_makes_a_new_record_through_init() -> None:
    p = Point(1, 2, "a")
    q = replace(p, y=5)
    assert (q, p) == (Point(1, 5, "a"), Point(1, 2, "a"))
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)


def test_asdict_in_field_order() -> None:
    assert list(asdict(Point(1, 2, "a")).items()) == [("x", 1), ("y", 2), ("label", "a")]


def test_slotted_records_take_no_other_attributes() -> None:
    c = Cursor3(1, [], 2)
    with pytest.raises(AttributeError):
        c.other = 1  # type: ignore[attr-defined]
