"""The face service's SQLite store: enrolled face descriptors, private to each owner.

Every row belongs to an owner (the caller's peer id, or "local" when run by hand) and
every query is filtered by it, so one caller can neither see nor forget another's people.
Several jobs may use the store at once: WAL mode lets readers run beside a writer, the
busy timeout makes a second writer wait instead of failing, and each change is one
`BEGIN IMMEDIATE` transaction, so a count checked before an insert is still true after it.
Descriptors are opaque bytes here; the caller decides their encoding.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
BUSY_TIMEOUT_SECONDS = 15.0

_SCHEMA = (
    """CREATE TABLE faces (
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        name TEXT NOT NULL,
        descriptor BLOB NOT NULL,
        enrolled_at TEXT NOT NULL DEFAULT (datetime('now'))
    )""",
    "CREATE INDEX faces_by_owner_name ON faces (owner, name)",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


class StoreError(Exception):
    """The database cannot be opened, read or written (locked too long, not a database...)."""


class StoreFull(Exception):
    """The owner already has as many faces enrolled as the limit allows."""


class FaceStore:
    """Enrolled faces in one SQLite file; use as a context manager to close it."""

    def __init__(self, path: Path) -> None:
        """Open (creating if missing) the database at `path`; StoreError if that fails."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Faces are biometric data: create the file private to the serving user before
            # SQLite does (its -wal and -shm files copy the database file's permissions).
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open {path}: {exc}") from None
        try:
            self._prepare_when_free()
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            raise StoreError(f"cannot use {path}: {exc}") from None

    def __enter__(self) -> FaceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._db.close()

    def _prepare_when_free(self) -> None:
        """`_prepare`, retried while another process holds the lock, up to the busy timeout.

        Turning a new file into WAL needs an exclusive lock, and SQLite reports "locked" at once
        for it instead of calling its busy handler: several jobs opening a new store together
        would otherwise fail (seen with four writers on a loaded machine).
        """
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                self._prepare()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _prepare(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        if self._version() == SCHEMA_VERSION:
            return
        with self._write():
            version = self._version()  # again: another job may have created it meanwhile
            if version == 0:
                # One statement at a time: executescript() would commit the transaction first.
                for statement in _SCHEMA:
                    self._db.execute(statement)
            elif version != SCHEMA_VERSION:
                raise StoreError(f"schema version {version}, this program knows {SCHEMA_VERSION}")

    def _version(self) -> int:
        row = self._db.execute("PRAGMA user_version").fetchone()
        return int(row[0])

    @contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction, taking the write lock at once (waiting up to the busy timeout)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def faces(self, owner: str) -> list[tuple[str, bytes]]:
        """Every (name, descriptor) that `owner` enrolled, oldest first."""
        try:
            rows = self._db.execute(
                "SELECT name, descriptor FROM faces WHERE owner = ? ORDER BY id", (owner,)
            ).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from None
        return [(str(name), bytes(descriptor)) for name, descriptor in rows]

    def add(self, owner: str, name: str, descriptor: bytes, *, limit: int) -> int:
        """Enrol one more face of `name` for `owner`; returns how many `name` now has.

        Raises StoreFull if `owner` already has `limit` faces, which bounds what one caller
        can make the server store.
        """
        try:
            with self._write():
                (total,) = self._db.execute("SELECT count(*) FROM faces WHERE owner = ?", (owner,)).fetchone()
                if total >= limit:
                    raise StoreFull(f"{total} faces already enrolled (at most {limit})")
                self._db.execute(
                    "INSERT INTO faces (owner, name, descriptor) VALUES (?, ?, ?)", (owner, name, descriptor)
                )
                (count,) = self._db.execute(
                    "SELECT count(*) FROM faces WHERE owner = ? AND name = ?", (owner, name)
                ).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from None
        return int(count)

    def forget(self, owner: str, name: str) -> int:
        """Remove every face `owner` enrolled as `name`; returns how many there were."""
        try:
            with self._write():
                cursor = self._db.execute("DELETE FROM faces WHERE owner = ? AND name = ?", (owner, name))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write {self.path}: {exc}") from None
        return cursor.rowcount
