"""Hints for error messages, shared by every layer (here, the lowest, beside the errors)."""

from __future__ import annotations

from collections.abc import Iterable


def did_you_mean(typed: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the choice closest to a mistyped `typed`, or "" if none is
    close: the tail of an "unknown key" or "no such name" message."""
    import difflib  # only on an error path: a Pi pays for every import on every call

    near = difflib.get_close_matches(typed, list(choices), 1)
    return f" (did you mean {near[0]!r}?)" if near else ""
