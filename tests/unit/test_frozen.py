"""hubnet.identity.frozen: the value classes of the cold call path behave as frozen dataclasses."""

from __future__ import annotations

import pytest

from hubnet.identity.frozen import FrozenFieldError, as_dict, frozen, replace


@frozen
class Point:
    """Two coordinates and a label."""

    x: int
    y: int = 0
    label: tuple[str, ...] = ()


@frozen
class Other:
    x: int
    y: int = 0
    label: tuple[str, ...] = ()


@frozen
class Empty:
    pass


@frozen
class Checked:
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


@frozen
class Secret:
    key: bytes

    def __repr__(self) -> str:
        return "Secret(...)"


def test_fields_take_defaults_and_compare_by_value_and_class() -> None:
    assert Point(1) == Point(1, 0, ()) == Point(x=1)
    assert Point(1, 2) != Point(2, 1)
    assert Point(1) != Other(1)  # same fields, another class: not equal
    assert hash(Point(1, 2, ("a",))) == hash(Point(1, 2, ("a",)))
    assert len({Point(1), Point(1), Point(2)}) == 2
    assert Empty() == Empty()
    assert Empty() != Point(0)
    assert Point(1, 2, ("a",)).label == ("a",)


def test_repr_names_the_fields_unless_the_class_writes_its_own() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, label=())"
    assert repr(Empty()) == "Empty()"
    assert repr(Secret(b"k")) == "Secret(...)"


def test_fields_cannot_be_assigned_or_deleted() -> None:
    point = Point(1)
    with pytest.raises(FrozenFieldError, match="Point is frozen: cannot assign 'x'"):
        point.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="cannot delete 'y'"):
        del point.y  # type: ignore[misc]
    assert point == Point(1)


def test_post_init_runs_and_wrong_arguments_are_refused() -> None:
    assert Checked(1).value == 1
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, 2, (), 4)  # type: ignore[call-arg]


def test_a_field_without_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' without a default"):

        @frozen
        class Bad:
            a: int = 0
            b: int


def test_class_patterns_match_positionally() -> None:
    match Point(3, 4):
        case Point(x, y):
            assert (x, y) == (3, 4)
        case _:
            pytest.fail("no match")


def test_replace_copies_with_changes_and_refuses_unknown_fields() -> None:
    point = Point(1, 2, ("a",))
    assert replace(point, y=5) == Point(1, 5, ("a",))
    assert point == Point(1, 2, ("a",))
    with pytest.raises(ValueError, match="negative"):
        replace(Checked(1), value=-1)
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(point, z=1)


def test_as_dict_names_the_fields() -> None:
    assert as_dict(Point(1, 2, ("a",))) == {"x": 1, "y": 2, "label": ("a",)}
    assert as_dict(Secret(b"k")) == {"key": b"k"}


def test_the_init_is_compiled_at_the_first_instance_and_refuses_alike_from_the_first() -> None:
    """Defining a class compiles nothing (a cold call defines many it never uses); its first
    instance puts the compiled `__init__` in place, whose arguments are the fields."""

    @frozen
    class Fresh:
        a: int
        b: str = "b"

    placeholder = Fresh.__init__
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'a'"):
        Fresh()  # type: ignore[call-arg]
    assert Fresh.__init__ is not placeholder
    assert Fresh.__init__.__code__.co_varnames[:3] == ("self", "a", "b")
    assert Fresh.__init__.__qualname__.endswith("Fresh.__init__")
    assert Fresh(1) == Fresh(a=1, b="b") != Fresh(1, "c")
