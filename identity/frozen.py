"""Frozen value classes for the cold call path, without `dataclasses`.

`@frozen` does what `@dataclass(frozen=True)` does for the classes a `hubnode call`
imports (protocol messages, addresses, config): an `__init__` taking the annotated fields
in order (class-level values are their defaults; `__post_init__` runs after it if the class
has one), `__repr__` (unless the class writes its own), `__eq__` and `__hash__` over the
fields, `__match_args__`, and attributes that cannot be set or deleted afterwards.

Why not `dataclasses`: a cold call pays for every class its imports define, and
`dataclass` compiles five methods per class with a separate `exec` each and imports
`inspect` to write signatures into docstrings; measured on the call path, about 50 such
classes and that import were a fifth of a tiny call's import time. Here one `exec` per
class compiles its `__init__`. Type checkers see the same semantics through
`dataclass_transform`. Only own annotations are fields: a frozen class does not inherit fields,
and mutable defaults are the caller's to avoid (every field here is immutable).
"""

from __future__ import annotations

from hubnet.identity.cheap_typing import TYPE_CHECKING, TypeVar, dataclass_transform

if TYPE_CHECKING:
    from typing import Any

_Class = TypeVar("_Class", bound=type)
_Instance = TypeVar("_Instance")


class FrozenFieldError(AttributeError):
    """A field of a frozen class was assigned or deleted after `__init__`."""


def _refuse_setattr(self: object, name: str, value: object) -> None:
    raise FrozenFieldError(f"{type(self).__name__} is frozen: cannot assign {name!r}")


def _refuse_delattr(self: object, name: str) -> None:
    raise FrozenFieldError(f"{type(self).__name__} is frozen: cannot delete {name!r}")


# Shared by every frozen class, over its `__match_args__` (the field names in order): compiling
# these per class, as `__init__` is, cost six times as much import time, and none of them is
# on a hot path (`__init__` is: one per message).
def _values(instance: object) -> tuple[object, ...]:
    return tuple(getattr(instance, name) for name in instance.__match_args__)  # type: ignore[attr-defined]


def _eq(self: object, other: object) -> object:  # bool, or NotImplemented for another class
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: object) -> int:
    return hash(_values(self))


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)  # type: ignore[attr-defined]
    return f"{type(self).__qualname__}({shown})"


@dataclass_transform(frozen_default=True)
def frozen(cls: _Class) -> _Class:
    """Make `cls` a frozen value class over its annotated fields (see the module doc)."""
    # Not inspect.get_annotations: importing inspect is a cost this module exists to avoid.
    annotations: dict[str, str] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    names = tuple(name for name, kind in annotations.items() if not str(kind).startswith("ClassVar"))
    defaults = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    params = []
    for name in names:
        if name in defaults:
            params.append(f"{name}=_default_{name}")
        elif params and "=" in params[-1]:
            raise TypeError(f"{cls.__name__}: field {name!r} without a default follows one with a default")
        else:
            params.append(name)
    body = [f"    _set(self, {name!r}, {name})" for name in names]
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    source = "\n".join([f"def __init__(self, {', '.join(params)}):", *(body or ["    pass"])])

    def compile_init() -> Any:
        namespace: dict[str, Any] = {"_set": object.__setattr__}
        namespace.update((f"_default_{name}", value) for name, value in defaults.items())
        exec(source, namespace)
        init = namespace["__init__"]
        init.__qualname__ = f"{cls.__qualname__}.__init__"
        return init

    # The `__init__` is compiled when the class is first made an instance of, not when it is
    # defined: a cold call defines some 45 frozen classes and makes instances of a third of
    # them, and compiling each took about 65 us. The first call puts the compiled one in place.
    def first_init(self: object, *args: Any, **kwargs: Any) -> None:
        init = compile_init()
        cls.__init__ = init  # type: ignore[misc]
        init(self, *args, **kwargs)

    cls.__init__ = first_init  # type: ignore[misc]
    cls.__eq__ = _eq  # type: ignore[method-assign,assignment]
    cls.__hash__ = _hash  # type: ignore[method-assign,assignment]
    if "__repr__" not in cls.__dict__:
        cls.__repr__ = _repr  # type: ignore[method-assign,assignment]
    cls.__setattr__ = _refuse_setattr  # type: ignore[assignment]
    cls.__delattr__ = _refuse_delattr  # type: ignore[assignment]
    setattr(cls, "__match_args__", names)  # noqa: B010 - mypy refuses the plain assignment
    return cls


def replace(instance: _Instance, /, **changes: Any) -> _Instance:
    """A copy of the frozen `instance` with `changes` to some of its fields."""
    fields: tuple[str, ...] = type(instance).__match_args__  # type: ignore[attr-defined]
    unknown = changes.keys() - set(fields)
    if unknown:
        raise TypeError(f"{type(instance).__name__} has no field {sorted(unknown)[0]!r}")
    return type(instance)(**{name: changes.get(name, getattr(instance, name)) for name in fields})


def as_dict(instance: object) -> dict[str, Any]:
    """The fields of the frozen `instance` by name (one level: fields that are frozen classes
    themselves stay as they are)."""
    return {name: getattr(instance, name) for name in type(instance).__match_args__}  # type: ignore[attr-defined]
