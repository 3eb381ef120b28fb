"""What the cold call path needs of `typing` at run time, without importing it.

`import typing` costs a cold `hubnode call` about 2.5 ms, a twentieth of a tiny call, and
the call path needs nothing of it at run time: its annotations stay strings (`from
__future__ import annotations`), and what is left (the bases `Generic` and `Protocol`,
`TypeVar`, `dataclass_transform`) speaks only to type checkers. They read the
`TYPE_CHECKING` branch below, and so see typing's own names; at run time the stand-ins do
nothing. The modules a call imports take these four names from here, and what they use
only in annotations (`Any`, `ClassVar`, `NoReturn`) from typing under `if TYPE_CHECKING:`.
Nothing here checks anything at run time: no protocol is `runtime_checkable`.
"""

from __future__ import annotations

# Type checkers take any constant of this name as true (mypy and pyright both), as they take
# typing.TYPE_CHECKING; importing that one would import typing.
TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Generic as Generic
    from typing import Protocol as Protocol
    from typing import TypeVar as TypeVar
    from typing import dataclass_transform as dataclass_transform
else:

    class Generic:
        """A base class that `Base[T, ...]` leaves as it is (PEP 560's hook), as must
        every class derived from it."""

        def __class_getitem__(cls, _parameters):
            return cls

    Protocol = Generic

    def TypeVar(name, *_constraints, **_options):
        return name

    def dataclass_transform(**_options):
        return lambda decorator: decorator
