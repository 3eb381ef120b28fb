"""The node's log lines: their format for a terminal or the journal, and what they say.

`hubnet.logs` picks the format by whether stderr is the stream systemd named in
$JOURNAL_STREAM; `PublishState` decides when a republish is worth a line; `describe_outcome`
is the outcome part of a job's line.
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hubnet.logs import LEVELS, configure, is_journal, syslog_priority
from hubnet.node.discovery import PublishState
from hubnet.node.runner import JobOutcome
from hubnet.node.server import describe_outcome


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    always = logging.getLogger("test.always")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    always.setLevel(logging.NOTSET)


def test_priorities_follow_sd_daemon() -> None:
    assert [syslog_priority(LEVELS[name]) for name in ("error", "warning", "info", "debug")] == [3, 4, 6, 7]
    assert syslog_priority(logging.CRITICAL) == 2


def test_a_journal_is_stderr_only_when_its_device_and_inode_match(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as stream, (tmp_path / "other").open("w") as other:
        status = os.fstat(stream.fileno())
        announced = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert is_journal(stream, announced)
        assert not is_journal(other, announced)
        assert not is_journal(stream, {})
        assert not is_journal(stream, {"JOURNAL_STREAM": "garbage"})
    assert not is_journal(io.StringIO(), announced)  # no file descriptor at all


def test_the_journal_format_prefixes_every_line_and_adds_no_time(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as stream:
        status = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        assert configure(logging.DEBUG, stream=stream, environ=env)
        log = logging.getLogger("hubnet.node")
        log.debug("detail")
        log.warning("two\nlines")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[:4] == ["<7>detail", "<4>two", "<4>lines", "<3>failed"]
    assert all(line.startswith("<3>") for line in lines[3:]) and "<3>ValueError: boom" in lines


def test_the_local_format_has_time_and_level_and_honours_the_level() -> None:
    stream = io.StringIO()
    assert not configure(logging.WARNING, stream=stream, environ={}, always=["test.always"])
    logging.getLogger("hubnet.node").info("hidden")
    logging.getLogger("hubnet.node").warning("shown")
    logging.getLogger("test.always").info("the address")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING hubnode: shown", lines[0]), lines
    assert re.fullmatch(r"\S+ \S+ INFO    hubnode: the address", lines[1]), lines


def _outcome(**changes: object) -> JobOutcome:
    fields: dict[str, object] = {
        "exit_code": 0,
        "signal": None,
        "error": None,
        "wall_seconds": 0.4219,
        "cpu_seconds": 0.1,
        "stdin_bytes": 12,
        "stdout_bytes": 20 * 1024 + 100,
        "stderr_bytes": 0,
    }
    return JobOutcome(**(fields | changes))  # type: ignore[arg-type]


def test_a_job_outcome_reads_as_status_time_bytes_and_cost() -> None:
    assert describe_outcome(_outcome(), 3) == (
        "exit 0 after 0.42s, stdin 12 B, stdout 20.1 KiB, stderr 0 B, cost 3 msat"
    )
    killed = _outcome(exit_code=None, signal=9, error="timeout", stdout_bytes=11 << 20)
    assert describe_outcome(killed, 0).startswith(
        "signal 9 (timeout) after 0.42s, stdin 12 B, stdout 11.0 MiB,"
    )


def test_a_republish_is_news_only_when_its_shape_changed() -> None:
    names = ["espeak", "cat"]
    first = PublishState.of(names, [3, 5], contacts=7)
    assert first == PublishState.of(names, [4, 6], contacts=9)  # counts moved: no news
    assert first != PublishState.of(names, [0, 5], contacts=7)  # one stored nowhere
    assert first != PublishState.of(names, [1, 5], contacts=7)  # one stored at a single node
    assert first != PublishState.of(names, [1, 1], contacts=0)  # lost every contact
    assert first != PublishState.of(["cat"], [5], contacts=7)  # another set of offers
    assert first.level == logging.INFO
    nowhere = PublishState.of(names, [0, 5], contacts=7)
    assert nowhere.level == logging.WARNING
    assert nowhere.describe([0, 5], 7) == (
        "published 2 offer(s) (cat, espeak), stored at 0-5 node(s), 7 DHT contact(s); stored nowhere: espeak"
    )
    alone = PublishState.of(names, [1, 1], contacts=0)
    assert "no other DHT node known yet" in alone.describe([1, 1], 0)
    assert PublishState.of([], [], contacts=0).level == logging.DEBUG  # no services: warned at the start
