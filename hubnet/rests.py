"""Things that failed lately, and until when to leave them alone, kept in a small file.

One rest per key, from `first` seconds after a first failure, doubling with each failure in
a row, at most `most`; `cleared` (a success) ends it. The file, in the client's home, is
read once and rewritten only when something changed; lines of concurrent clients are
merged, and a lost line only costs a retry. `hubnet.discover` rests providers that failed
(`Backoff`), `hubnet.dialer` targets that a hole punch failed for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hubnet.files import replace_whole
from hubnet.identity.frozen import frozen

FORGET = 86400.0  # a rest that ended this long ago is forgotten, and its count with it
MAX_ENTRIES = 1024


@frozen
class _Resting:
    until: float  # Unix time
    failures: int  # in a row


class Rests:
    """The rests of a file at `path` (None: in memory only); see the module docstring.
    `header` is the file's first line, a comment saying what its lines are."""

    def __init__(
        self,
        path: Path | None,
        *,
        first: float,
        most: float,
        header: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.first = first
        self.most = most
        self.header = header
        self.clock = clock
        self._entries = self._read()
        self._changed: dict[str, _Resting | None] = {}

    def _read(self) -> dict[str, _Resting]:
        entries: dict[str, _Resting] = {}
        if self.path is None:
            return entries
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return entries
        for line in text.splitlines()[: MAX_ENTRIES + 8]:
            fields = line.split()
            if len(fields) != 3 or line.startswith("#"):
                continue
            try:
                entries[fields[0]] = _Resting(float(fields[1]), max(1, int(fields[2])))
            except ValueError:
                continue
        return entries

    @property
    def empty(self) -> bool:
        """Nothing rests or did lately (no key need be made to ask about it, or to clear it)."""
        return not self._entries

    def until(self, key: str) -> float | None:
        """Until when (Unix time) `key` rests, or None if it does not."""
        entry = self._entries.get(key)
        return entry.until if entry is not None and entry.until > self.clock() else None

    def failed(self, key: str) -> None:
        prior = self._entries.get(key)
        failures = prior.failures + 1 if prior is not None else 1
        rest = min(self.first * 2 ** min(failures - 1, 30), self.most)
        self._entries[key] = self._changed[key] = _Resting(self.clock() + rest, failures)

    def cleared(self, key: str) -> None:
        if key in self._entries:
            del self._entries[key]
            self._changed[key] = None

    def save(self) -> None:
        """Merge the changes into the file, if anything changed (errors ignored: the file
        only saves retries)."""
        if self.path is None or not self._changed:
            return
        entries = self._read()
        for key, entry in self._changed.items():
            if entry is None:
                entries.pop(key, None)
            else:
                entries[key] = entry
        now = self.clock()
        kept = sorted(
            ((k, e) for k, e in entries.items() if e.until + FORGET > now),
            key=lambda item: -item[1].until,
        )[:MAX_ENTRIES]
        text = self.header + "".join(f"{k} {e.until:.0f} {e.failures}\n" for k, e in kept)
        self._changed.clear()
        replace_whole(self.path, text.encode("utf-8"))
