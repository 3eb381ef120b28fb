"""The node's ledger: prepaid accounts, holds for running jobs, and the node's earnings.

SQLite in the node's data folder (`ledger.sqlite`), in WAL mode, one transaction per change,
so that a node killed at any instant leaves the books as they were before or after that
change, never between. Amounts are integers in millisatoshi.

An account is keyed by a 32-byte Ed25519 key: a caller's peer id, or an organisation's id
for an organisation that pays for its members. Money moves only by these operations:

- `credit`: money paid in (an operator's credit, an ecash deposit) raises an account;
- `hold`: a job about to run takes the most it can cost from its payer's balance (refused,
  never partly, when the balance is short, so concurrent jobs of one caller cannot overdraw);
- `settle`: the job ended: its cost (at most what was held) goes to the node's earnings and
  the rest back to the account; `release` is a settle at cost 0 (a job that never started);
- `debit`: money paid back out to a caller (change returned by pay-per-call);
- `payout`: the node's earnings paid out to its operator.

The invariant, kept by every transaction and checked by `audit`:

    sum(balances) + sum(holds) + earnings == paid_in - paid_out,   every balance >= 0

where paid_in counts credits and paid_out counts debits and payouts. A hold belongs to a job
of a running node, so holds found when the ledger is opened (the node was killed while
jobs ran) are released: those jobs were never settled, and a job that was not settled is
not charged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hubnet.identity.errors import HubnetError

LEDGER_FILE = "ledger.sqlite"
ACCOUNT_KEY_LEN = 32
MAX_NOTE = 200
# How long a change waits for another process's transaction (`hubnode ledger credit` while
# the node runs) before giving up: both take milliseconds.
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account BLOB PRIMARY KEY,
    balance INTEGER NOT NULL CHECK (balance >= 0)
);
CREATE TABLE IF NOT EXISTS holds (
    job_id TEXT PRIMARY KEY,
    account BLOB NOT NULL REFERENCES accounts (account),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS totals (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL CHECK (value >= 0)
);
INSERT OR IGNORE INTO totals VALUES ('earnings', 0), ('paid_in', 0), ('paid_out', 0);
CREATE TABLE IF NOT EXISTS journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    account BLOB,
    kind TEXT NOT NULL,
    change INTEGER NOT NULL,
    charged INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    note TEXT NOT NULL DEFAULT '',
    balance INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS journal_by_account ON journal (account, id);
"""


class LedgerError(HubnetError):
    """A ledger operation was refused; the books are unchanged."""


class InsufficientFunds(LedgerError):
    """The balance (or the node's earnings) is below the amount asked for."""

    def __init__(self, message: str, needed: int, available: int) -> None:
        super().__init__(message)
        self.needed = needed
        self.available = available


class UnknownHold(LedgerError):
    """No hold for that job: never made, or already settled or released."""


@dataclass(frozen=True)
class Balance:
    """An account's money: what it may spend now, and what running jobs hold of it."""

    account: bytes
    available: int
    held: int


@dataclass(frozen=True)
class Settlement:
    """What settling a job did: who paid, what was held, what it cost, the balance after."""

    account: bytes
    held: int
    cost: int
    balance: int


@dataclass(frozen=True)
class Entry:
    """One line of the journal. `change` is what the operation did to the account's available
    balance (to the node's earnings for a payout, whose `account` is None); `charged` what
    went to the earnings; `balance` the account's (or the earnings') balance after."""

    id: int
    time: float
    account: bytes | None
    kind: str
    change: int
    charged: int
    job_id: str | None
    note: str
    balance: int


@dataclass(frozen=True)
class Audit:
    """The ledger's totals, for checking the invariant (see the module docstring)."""

    balances: int
    holds: int
    earnings: int
    paid_in: int
    paid_out: int
    lowest_balance: int

    @property
    def consistent(self) -> bool:
        return (
            self.balances + self.holds + self.earnings == self.paid_in - self.paid_out
            and self.lowest_balance >= 0
        )


def _check_amount(amount: int, what: str = "amount") -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount < 1 << 62:
        raise LedgerError(f"{what} must be a whole number of msat from 0, not {amount!r}")


def _check_account(account: bytes) -> None:
    if not isinstance(account, bytes) or len(account) != ACCOUNT_KEY_LEN:
        raise LedgerError("an account is a 32-byte peer or organisation id")


class Ledger:
    """The books of one node: open with `Ledger.open(data_dir)`, close when done.

    Every method is one SQLite transaction (`BEGIN IMMEDIATE`, so that two processes, the
    node and `hubnode ledger credit`, take turns), and raises a LedgerError with the books
    unchanged when it refuses.
    """

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, data_dir: Path, *, release_stale: bool = True) -> Ledger:
        """The ledger in `data_dir` (created if need be). With `release_stale` (a node
        starting), holds left by a node that was killed are released; an operator's command
        run beside a live node passes False so as not to release that node's running jobs."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LEDGER_FILE
        db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed; a power cut may
            # lose the last transactions, but never leaves the books half-changed.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            db.close()
            raise LedgerError(f"cannot open the ledger {path}: {exc}") from None
        ledger = cls(db, path)
        if release_stale:
            ledger.release_stale()
        return ledger

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # ---- changes ---------------------------------------------------------------------------

    def credit(self, account: bytes, amount: int, *, kind: str = "credit", note: str = "") -> int:
        """Money paid in to `account` (`kind` says how: "credit" by the operator, "deposit"
        of ecash); returns the balance after."""
        _check_account(account)
        _check_amount(amount)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO accounts VALUES (?, ?) "
                "ON CONFLICT (account) DO UPDATE SET balance = balance + excluded.balance",
                (account, amount),
            )
            self._add_total(db, "paid_in", amount)
            balance = self._available(db, account)
            self._journal(db, account, kind, amount, 0, None, note, balance)
        return balance

    def hold(self, account: bytes, job_id: str, amount: int) -> int:
        """Hold `amount` of `account`'s balance for job `job_id`; returns the balance after.
        InsufficientFunds when the balance is short (nothing is held)."""
        return self.hold_first((account,), job_id, amount)[1]

    def hold_first(self, accounts: Sequence[bytes], job_id: str, amount: int) -> tuple[bytes, int]:
        """Hold `amount` for `job_id` from the first of `accounts` whose balance covers it
        (a caller's own, then organisations that pay for it); returns (payer, balance after).
        InsufficientFunds, naming the best balance there was, when none covers it."""
        for account in accounts:
            _check_account(account)
        _check_amount(amount)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM holds WHERE job_id = ?", (job_id,)).fetchone():
                raise LedgerError(f"job {job_id} already holds money")
            best = 0
            for account in accounts:
                # A hold of 0 needs no money, but an account row to hold it against (rolled
                # back with the rest when the hold is refused).
                db.execute("INSERT OR IGNORE INTO accounts VALUES (?, 0)", (account,))
                taken = db.execute(
                    "UPDATE accounts SET balance = balance - ? WHERE account = ? AND balance >= ?",
                    (amount, account, amount),
                ).rowcount
                if taken:
                    db.execute(
                        "INSERT INTO holds VALUES (?, ?, ?, ?)", (job_id, account, amount, time.time())
                    )
                    balance = self._available(db, account)
                    self._journal(db, account, "hold", -amount, 0, job_id, "", balance)
                    return account, balance
                best = max(best, self._available(db, account))
            raise InsufficientFunds(f"{amount} msat needed, {best} msat available", amount, best)

    def settle(self, job_id: str, cost: int, *, note: str = "") -> Settlement:
        """Job `job_id` ended having cost `cost`: charge it to the node's earnings and give
        the rest of the hold back. A cost above the hold is a bug of the caller: refused."""
        _check_amount(cost, "cost")
        with self._transaction() as db:
            row = db.execute("SELECT account, amount FROM holds WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownHold(f"no hold for job {job_id}")
            account, held = row
            if cost > held:
                raise LedgerError(f"job {job_id} cost {cost} msat, more than the {held} msat held")
            db.execute("DELETE FROM holds WHERE job_id = ?", (job_id,))
            db.execute("UPDATE accounts SET balance = balance + ? WHERE account = ?", (held - cost, account))
            self._add_total(db, "earnings", cost)
            balance = self._available(db, account)
            self._journal(
                db, account, "settle" if cost else "release", held - cost, cost, job_id, note, balance
            )
        return Settlement(account, held, cost, balance)

    def release(self, job_id: str, *, note: str = "") -> Settlement:
        """Job `job_id` never ran (refused, replayed, failed to start): it costs nothing."""
        return self.settle(job_id, 0, note=note)

    def release_stale(self) -> int:
        """Release every hold (at node start no job runs); returns how many there were."""
        with self._transaction() as db:
            stale = db.execute("SELECT job_id, account, amount FROM holds").fetchall()
            for job_id, account, amount in stale:
                db.execute("DELETE FROM holds WHERE job_id = ?", (job_id,))
                db.execute("UPDATE accounts SET balance = balance + ? WHERE account = ?", (amount, account))
                balance = self._available(db, account)
                note = "the node stopped while the job ran"
                self._journal(db, account, "release", amount, 0, job_id, note, balance)
        return len(stale)

    def debit(self, account: bytes, amount: int, *, kind: str = "debit", note: str = "") -> int:
        """Money paid back out to `account`'s owner (e.g. change as ecash); returns the
        balance after. InsufficientFunds when the balance is short."""
        _check_account(account)
        _check_amount(amount)
        with self._transaction() as db:
            taken = db.execute(
                "UPDATE accounts SET balance = balance - ? WHERE account = ? AND balance >= ?",
                (amount, account, amount),
            ).rowcount
            if not taken:
                available = self._available(db, account)
                raise InsufficientFunds(
                    f"{amount} msat asked for, {available} msat available", amount, available
                )
            self._add_total(db, "paid_out", amount)
            balance = self._available(db, account)
            self._journal(db, account, kind, -amount, 0, None, note, balance)
        return balance

    def payout(self, amount: int, *, note: str = "") -> int:
        """The node's earnings paid out to its operator; returns the earnings left.
        InsufficientFunds when the earnings are below `amount`."""
        _check_amount(amount)
        with self._transaction() as db:
            earnings = self._total(db, "earnings")
            if amount > earnings:
                raise InsufficientFunds(
                    f"{amount} msat asked for, the node has earned {earnings} msat", amount, earnings
                )
            self._add_total(db, "earnings", -amount)
            self._add_total(db, "paid_out", amount)
            self._journal(db, None, "payout", -amount, 0, None, note, earnings - amount)
        return earnings - amount

    # ---- queries ---------------------------------------------------------------------------

    def balance(self, account: bytes) -> Balance:
        """`account`'s balance and holds (zero for an account never credited)."""
        _check_account(account)
        db = self._db
        held = db.execute("SELECT COALESCE(SUM(amount), 0) FROM holds WHERE account = ?", (account,))
        return Balance(account, self._available(db, account), int(held.fetchone()[0]))

    def balances(self) -> list[Balance]:
        """Every account's balance and holds, largest balance first."""
        rows = self._db.execute(
            "SELECT a.account, a.balance, COALESCE(SUM(h.amount), 0) FROM accounts a "
            "LEFT JOIN holds h ON h.account = a.account GROUP BY a.account "
            "ORDER BY a.balance DESC, a.account"
        ).fetchall()
        return [Balance(bytes(account), available, held) for account, available, held in rows]

    def earnings(self) -> int:
        """What the node has earned and not yet paid out."""
        return self._total(self._db, "earnings")

    def history(self, account: bytes | None = None, *, limit: int = 1000) -> list[Entry]:
        """The newest `limit` journal entries, oldest first: of `account`, or of everyone
        (payouts included) when None."""
        if account is not None:
            _check_account(account)
            where, args = "WHERE account = ?", (account, limit)
        else:
            where, args = "", (limit,)  # type: ignore[assignment]
        rows = self._db.execute(
            "SELECT id, time, account, kind, change, charged, job_id, note, balance FROM "
            f"(SELECT * FROM journal {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            args,
        ).fetchall()
        return [
            Entry(i, t, None if a is None else bytes(a), k, c, ch, j, n, b)
            for i, t, a, k, c, ch, j, n, b in rows
        ]

    def audit(self) -> Audit:
        """The totals the invariant is about, read in one snapshot."""
        db = self._db
        db.execute("BEGIN")
        try:
            balances, lowest = db.execute(
                "SELECT COALESCE(SUM(balance), 0), MIN(balance) FROM accounts"
            ).fetchone()
            holds = db.execute("SELECT COALESCE(SUM(amount), 0) FROM holds").fetchone()[0]
            totals = dict(db.execute("SELECT name, value FROM totals").fetchall())
        finally:
            db.execute("COMMIT")
        return Audit(
            int(balances),
            int(holds),
            totals["earnings"],
            totals["paid_in"],
            totals["paid_out"],
            0 if lowest is None else int(lowest),
        )

    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _available(db: sqlite3.Connection, account: bytes) -> int:
        row = db.execute("SELECT balance FROM accounts WHERE account = ?", (account,)).fetchone()
        return 0 if row is None else int(row[0])

    @staticmethod
    def _total(db: sqlite3.Connection, name: str) -> int:
        return int(db.execute("SELECT value FROM totals WHERE name = ?", (name,)).fetchone()[0])

    @staticmethod
    def _add_total(db: sqlite3.Connection, name: str, amount: int) -> None:
        db.execute("UPDATE totals SET value = value + ? WHERE name = ?", (amount, name))

    def _journal(
        self,
        db: sqlite3.Connection,
        account: bytes | None,
        kind: str,
        change: int,
        charged: int,
        job_id: str | None,
        note: str,
        balance: int,
    ) -> None:
        db.execute(
            "INSERT INTO journal (time, account, kind, change, charged, job_id, note, balance) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), account, kind, change, charged, job_id, note[:MAX_NOTE], balance),
        )
