"""The caller's receipts: every paid job's signed receipt, kept in the home.

A call checks its receipt and appends it to a spool (`hubnet.receipt_spool`, no SQLite on
the call path); `ReceiptStore` (SQLite, `receipts.sqlite`) takes the spool in whenever it
is opened, so `hubnode receipts` always shows everything, problems included.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack

from hubnet.node.receipts import InvalidReceipt, JobReceipt
from hubnet.receipt_spool import SPOOL_FILE

if TYPE_CHECKING:
    import sqlite3

STORE_FILE = "receipts.sqlite"
_MAX_SPOOL_ENTRY = 16 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    node BLOB NOT NULL,
    job_id TEXT NOT NULL,
    service TEXT NOT NULL,
    cost INTEGER NOT NULL,
    balance INTEGER NOT NULL,
    time INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (node, job_id)
);
CREATE TABLE IF NOT EXISTS problems (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    node BLOB NOT NULL,
    job_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    record BLOB NOT NULL
);
"""


@dataclass(frozen=True)
class Problem:
    """A receipt that failed its check, or a paid job that came without one."""

    time: float
    node: bytes
    job_id: str
    reason: str


@dataclass(frozen=True)
class Total:
    """What one node's service cost this caller, over all its receipts."""

    node: bytes
    service: str
    jobs: int
    cost: int


class ReceiptStore:
    """The receipts of one home (see the module docstring); open, read, close."""

    def __init__(self, data_dir: Path) -> None:
        import sqlite3  # here only: the call path that imports this module never opens the store

        data_dir.mkdir(parents=True, exist_ok=True)
        self._data_dir = data_dir
        self._db: sqlite3.Connection = sqlite3.connect(data_dir / STORE_FILE, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._take_spool()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReceiptStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_spool(self) -> None:
        """Move the spool's entries into the store: the spool is renamed first, so calls that
        finish meanwhile start a new one and nothing is taken twice or lost."""
        spool = self._data_dir / SPOOL_FILE
        taking = spool.with_suffix(f".taking-{os.getpid()}")
        try:
            spool.rename(taking)
        except FileNotFoundError:
            return
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=_MAX_SPOOL_ENTRY * 64)
        unpacker.feed(taking.read_bytes())
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for entry in unpacker:
                self._take(entry)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            self._problem(time.time(), b"", "", f"damaged receipt spool: {exc}", b"")
        self._db.execute("COMMIT")
        taking.unlink()

    def _take(self, entry: object) -> None:
        if not (isinstance(entry, list) and len(entry) == 5):
            raise ValueError("an entry is not [time, node, job, record, problem]")
        when, node, job_id, record, problem = entry
        if problem:
            self._problem(when, node, job_id, problem, record)
            return
        try:
            receipt = JobReceipt.decode(record)
        except InvalidReceipt as exc:  # the spool was changed after the check
            self._problem(when, node, job_id, f"a kept receipt no longer verifies: {exc}", record)
            return
        self._db.execute(
            "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                receipt.node,
                receipt.job_id,
                receipt.service,
                receipt.cost,
                receipt.balance,
                receipt.time,
                record,
            ),
        )

    def _problem(self, when: float, node: bytes, job_id: str, reason: str, record: bytes) -> None:
        self._db.execute(
            "INSERT INTO problems (time, node, job_id, reason, record) VALUES (?, ?, ?, ?, ?)",
            (when, node, job_id, reason, record),
        )

    def receipts(self) -> list[JobReceipt]:
        """Every kept receipt, oldest first."""
        rows = self._db.execute("SELECT record FROM receipts ORDER BY time, rowid").fetchall()
        return [JobReceipt.decode(record) for (record,) in rows]

    def totals(self) -> list[Total]:
        """Jobs and cost per node and service."""
        rows = self._db.execute(
            "SELECT node, service, COUNT(*), SUM(cost) FROM receipts "
            "GROUP BY node, service ORDER BY node, service"
        ).fetchall()
        return [Total(bytes(node), service, jobs, cost) for node, service, jobs, cost in rows]

    def problems(self) -> list[Problem]:
        """Every receipt that failed its check, and every paid job without one."""
        rows = self._db.execute("SELECT time, node, job_id, reason FROM problems ORDER BY id").fetchall()
        return [Problem(when, bytes(node), job_id, reason) for when, node, job_id, reason in rows]
