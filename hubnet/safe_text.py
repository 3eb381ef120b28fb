"""Text from the network, made safe to show on a terminal: the one function for it.

A node's error text, a Reject's reason, service names and descriptions, DHT hosts and
organisation labels are written by whoever runs the other end. Printed raw, an ESC
sequence in them can clear the caller's screen, retitle the window or move the cursor,
and a newline can fake a `hubnode:` line of our own. `printable` escapes every character
that is not plainly printable; `hubnet.main` passes every error line through it, and the
commands pass every field from the network they print (a job's stdout and stderr are the
remote program's output and pass through untouched, as with ssh).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """`text` with each character that is not printable (C0 and C1 controls, DEL, format
    characters such as bidirectional overrides, line and paragraph separators, unassigned
    code points; see `str.isprintable`) shown as an escape: `\\n`, `\\x1b`, `\\u202e`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
