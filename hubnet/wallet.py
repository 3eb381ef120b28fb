"""The caller's ecash: Cashu tokens kept whole, and the nodes' signed deposit receipts.

SQLite in the home's data folder (`wallet.sqlite`). A token is an opaque string here: the
client never swaps it (it has no Cashu library); it reads the envelope only to show its
mint and amount and to choose one that covers a call (`hubnet.cashu_token`). A token leaves
the wallet when it is handed to a node (`take`); a node's change comes back in (`add`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubnet.cashu_token import read_token

WALLET_FILE = "wallet.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    mint TEXT NOT NULL,
    unit TEXT NOT NULL,
    amount INTEGER NOT NULL,
    added REAL NOT NULL,
    note TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS deposits (
    node BLOB NOT NULL,
    token_hash BLOB NOT NULL,
    amount INTEGER NOT NULL,
    balance INTEGER NOT NULL,
    mint TEXT NOT NULL,
    time INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (node, token_hash)
);
"""


@dataclass(frozen=True)
class StoredToken:
    id: int
    token: str
    mint: str
    unit: str
    amount: int
    added: float
    note: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "mint": self.mint,
            "unit": self.unit,
            "amount": self.amount,
            "added": self.added,
            "note": self.note,
            "token": self.token,
        }


@dataclass(frozen=True)
class KeptDeposit:
    """A node's signed word that it credited a deposit (checked when it came)."""

    node: bytes
    token_hash: bytes
    amount: int  # msat
    balance: int  # msat, at that node, after it
    mint: str
    time: int

    def as_json(self) -> dict[str, object]:
        from hubnet.identity.keys import encode_peer_id

        return {
            "node": encode_peer_id(self.node),
            "token": self.token_hash.hex(),
            "amount_msat": self.amount,
            "balance_msat": self.balance,
            "mint": self.mint,
            "time": self.time,
        }


class Wallet:
    """The tokens in one home's wallet; open with `Wallet.open(data_dir)`."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    @classmethod
    def open(cls, data_dir: Path) -> Wallet:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / WALLET_FILE
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        path.chmod(0o600)  # tokens are bearer money
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add(self, token: str, *, note: str = "") -> StoredToken:
        """Keep `token` (BadToken if it is not one); adding one already kept changes nothing."""
        token = token.strip()
        info = read_token(token)
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO tokens (token, mint, unit, amount, added, note) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token, info.mint, info.unit, info.amount, time.time(), note),
            )
            row = db.execute("SELECT * FROM tokens WHERE token = ?", (token,)).fetchone()
        return StoredToken(*row)

    def tokens(self) -> list[StoredToken]:
        return [StoredToken(*row) for row in self._db.execute("SELECT * FROM tokens ORDER BY id")]

    def take(self, at_least: int, *, unit: str = "sat") -> StoredToken | None:
        """Remove and return the smallest token of at least `at_least` `unit`, or None: the
        caller hands it over, so a crash after this loses nothing it had not given away."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM tokens WHERE unit = ? AND amount >= ? ORDER BY amount, id LIMIT 1",
                (unit, at_least),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM tokens WHERE id = ?", (row[0],))
        return StoredToken(*row)

    def put_back(self, token: StoredToken) -> None:
        """A token taken but never spent (the node refused it before redeeming)."""
        self.add(token.token, note=token.note)

    def keep_deposit(
        self, node: bytes, token_hash: bytes, amount: int, balance: int, mint: str, at: int, record: bytes
    ) -> None:
        """A node's signed deposit receipt (already checked)."""
        self._db.execute(
            "INSERT OR REPLACE INTO deposits VALUES (?, ?, ?, ?, ?, ?, ?)",
            (node, token_hash, amount, balance, mint, at, record),
        )

    def deposits(self) -> list[KeptDeposit]:
        """The deposit receipts kept, oldest first."""
        rows = self._db.execute(
            "SELECT node, token_hash, amount, balance, mint, time FROM deposits ORDER BY time, rowid"
        )
        return [KeptDeposit(bytes(n), bytes(h), a, b, m, t) for n, h, a, b, m, t in rows]
