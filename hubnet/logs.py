"""Where `hubnode serve`'s log lines go and how they look: a terminal or file, or the journal.

One decision at start-up, by what stderr *is*, not by whether it is a terminal:

- **The journal.** systemd connects a unit's stderr to journald (the default) and sets
  `$JOURNAL_STREAM` to that stream's `DEVICE:INODE`. When stderr is that very stream, each
  line starts with its syslog priority, `<3>` error, `<4>` warning, `<6>` info, `<7>` debug
  (sd-daemon(3)), and carries no timestamp or program name: the journal records both. The
  variable alone is not enough (a program started from a unit inherits it while its stderr
  goes elsewhere), so the device and inode must match.
- **Anything else** (a terminal, `2>node.log`, a pipe): `2025-06-01 14:03:07 INFO    hubnode:
  MESSAGE`, in local time, since nothing else would date the line.

`isatty` is not the test: a file or a pipe is not a terminal either, and there a `<6>`
would be noise and a missing timestamp a loss.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TextIO

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 3 error (and worse), 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is the journal stream systemd announced in `$JOURNAL_STREAM`."""
    announced = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = announced.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):  # no file descriptor, or not DEVICE:INODE
        return False


class JournalFormatter(logging.Formatter):
    """`<N>MESSAGE`, the priority on every line (a traceback is several journal entries)."""

    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class LocalFormatter(logging.Formatter):
    """`2025-06-01 14:03:07 INFO    hubnode: MESSAGE`, in local time."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s hubnode: %(message)s", TIME_FORMAT)


def configure(
    level: int,
    *,
    always: Iterable[str] = (),
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Log records at `level` and above to `stream` (stderr), formatted for where it goes.

    The loggers named in `always` log at info even when `level` is higher (the line that
    gives the node's address is output, not chatter). Returns whether `stream` is the journal.
    """
    stream = sys.stderr if stream is None else stream
    journal = is_journal(stream, environ)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter() if journal else LocalFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in always:
        logging.getLogger(name).setLevel(min(level, logging.INFO))
    return journal
