"""Tests of hubnet.safe_text: text from the network, safe to print."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.safe_text import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, with spaces: ok", "plain text, with spaces: ok"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),  # printable beyond ASCII stays
        ("\x1b[2J\x1b[H", "\\x1b[2J\\x1b[H"),
        ("a\nhubnode: fake", "a\\nhubnode: fake"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("bell\x07 del\x7f", "bell\\x07 del\\x7f"),
        ("csi\x9b2J", "csi\\x9b2J"),  # C1: an 8-bit ESC [
        ("\u202eevil", "\\u202eevil"),  # right-to-left override
        ("line\u2028sep", "line\\u2028sep"),
        ("nbsp\u00a0", "nbsp\\xa0"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_what_is_escaped(text: str, shown: str) -> None:
    assert printable(text) == shown


@given(st.text())
def test_the_result_is_always_printable(text: str) -> None:
    shown = printable(text)
    assert shown.isprintable()
    assert printable(shown) == shown  # escaping twice changes nothing more
