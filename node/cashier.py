"""The node's cashier: ecash into callers' accounts, and out again as the node's earnings.

A deposit redeems a Cashu token, credits the ledger and signs a receipt; a payout sends a
token of the node's earnings from its wallet and records it in the ledger; pay-per-call
(`EcashFunding`) is a deposit carried in a Call, with the change sent back in the receipt.

Redeeming (a swap at the mint, in the helper process of `node.ecash`) and crediting (a
ledger transaction) cannot be one transaction, so a deposit is written down first, in
`pending` (SQLite, `ecash/deposits.sqlite` in the node's data folder), and crossed off once
the ledger has it. The ledger's journal names each deposit by its token's hash, so a node
killed between the swap and the cross-off credits it exactly once: at the next start (and
every RECONCILE_INTERVAL while it runs, for a swap whose answer never came) `reconcile`
asks the mint about every deposit still written down and not being redeemed now, credits
those whose proofs the mint has spent and the journal does not yet hold, and forgets those
the mint has not seen spent (the swap never happened: the token is still its owner's).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import weakref
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from hubnet.identity.keys import Identity, fingerprint
from hubnet.node.deposit_receipts import DepositReceipt, token_hash
from hubnet.node.ecash import MSAT_PER_SAT, EcashWallet, sat_to_msat
from hubnet.node.ecash_wire import EcashError, EcashErrorCode
from hubnet.node.ledger import InsufficientFunds, Ledger, LedgerError, Settlement
from hubnet.node.protocol import MAX_RECEIPT, Call, Reject, RejectCode

log = logging.getLogger("hubnet.node.ecash")

PENDING_FILE = "deposits.sqlite"
# A receipt is at most MAX_RECEIPT bytes; its other fields take a few hundred.
MAX_CHANGE_TOKEN = MAX_RECEIPT - 1024
RECONCILE_INTERVAL = 300.0  # seconds; nothing is asked of anyone while nothing is pending


def journal_note(token: str, mint: str) -> str:
    """The ledger note of a deposit: `reconcile` finds a credited token by it."""
    return f"ecash {token_hash(token).hex()} from {mint}"


class PendingDeposits:
    """Tokens being redeemed: written down before the swap, crossed off once credited."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(folder / PENDING_FILE, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS pending (hash BLOB PRIMARY KEY, token TEXT NOT NULL, "
            "account BLOB NOT NULL, time REAL NOT NULL)"
        )

    def add(self, token: str, account: bytes) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
            (token_hash(token), token, account, time.time()),
        )

    def remove(self, token: str) -> None:
        self._db.execute("DELETE FROM pending WHERE hash = ?", (token_hash(token),))

    def all(self) -> list[tuple[str, bytes]]:
        return [
            (t, bytes(a)) for t, a in self._db.execute("SELECT token, account FROM pending ORDER BY time")
        ]

    def close(self) -> None:
        self._db.close()


# How each refusal of the helper reaches the caller.
_REJECT_CODES = {
    EcashErrorCode.UNTRUSTED_MINT: RejectCode.UNTRUSTED_MINT,
    EcashErrorCode.WRONG_UNIT: RejectCode.BAD_TOKEN,
    EcashErrorCode.BAD_TOKEN: RejectCode.BAD_TOKEN,
    EcashErrorCode.SPENT: RejectCode.TOKEN_SPENT,
    EcashErrorCode.MINT_UNAVAILABLE: RejectCode.MINT_UNAVAILABLE,
}
# Refusals after which the token is certainly unspent, or spent by someone else: not pending.
_SETTLED = {*_REJECT_CODES}


def refusal(error: EcashError) -> Reject:
    """The Reject that tells a caller what became of its token."""
    code = _REJECT_CODES.get(error.code, RejectCode.DEPOSIT_FAILED)
    if code == RejectCode.MINT_UNAVAILABLE:
        return Reject(code, f"{error}; nothing was credited and the token is still yours")
    if code == RejectCode.TOKEN_SPENT:
        return Reject(code, "the mint says this token was already spent; nothing was credited")
    if code == RejectCode.DEPOSIT_FAILED:
        return Reject(
            code,
            f"{error}; nothing was credited yet: the node will credit the token if the mint "
            "took it (see `hubnode balance`), or leave it yours",
        )
    return Reject(code, f"{error}; nothing was redeemed")


class Cashier:
    """The node's ecash desk: `deposit` a token into an account, `reconcile`, `payout`."""

    def __init__(self, wallet: EcashWallet, ledger: Ledger, identity: Identity) -> None:
        self.wallet = wallet
        self.ledger = ledger
        self.identity = identity
        self.pending = PendingDeposits(wallet.folder)
        self._redeeming: Counter[bytes] = Counter()  # token hashes being deposited now

    async def credit(self, token: str, account: bytes) -> tuple[int, int, str]:
        """Redeem `token` and credit it to `account`: (msat credited, balance after, mint).
        EcashError when it was refused (see `refusal`)."""
        name = token_hash(token)
        self._redeeming[name] += 1
        try:
            self.pending.add(token, account)
            try:
                redeemed = await self.wallet.redeem(token)
            except EcashError as exc:
                if exc.code in _SETTLED:
                    self.pending.remove(token)
                raise
            amount = sat_to_msat(redeemed.amount)
            note = journal_note(token, redeemed.mint)
            balance = self.ledger.credit(account, amount, kind="deposit", note=note)
            self.pending.remove(token)
        finally:
            self._redeeming[name] -= 1
        log.info("deposit of %d msat from %s for %s", amount, redeemed.mint, fingerprint(account))
        return amount, balance, redeemed.mint

    async def deposit(self, token: str, account: bytes) -> bytes | Reject:
        """A `Deposit` request: the signed receipt, or the Reject saying what became of the token."""
        try:
            amount, balance, mint = await self.credit(token, account)
        except EcashError as exc:
            log.info("refused a deposit from %s: %s", fingerprint(account), exc)
            return refusal(exc)
        receipt = DepositReceipt(
            self.identity.public_key, account, amount, balance, mint, token_hash(token), int(time.time())
        )
        return receipt.sign(self.identity)

    async def reconcile(self) -> None:
        """Settle the deposits left between swap and credit (module docstring)."""
        for token, account in self.pending.all():
            if self._redeeming[token_hash(token)]:
                continue
            try:
                state = await self.wallet.check(token)
            except EcashError as exc:
                log.warning("cannot settle an interrupted deposit yet: %s", exc)
                continue
            if self._redeeming[token_hash(token)]:
                continue  # deposited again while we asked: that deposit settles it
            note = journal_note(token, state.mint)
            credited = any(e.kind == "deposit" and e.note == note for e in self.ledger.history(account))
            if state.spent and not credited:
                self.ledger.credit(account, sat_to_msat(state.amount), kind="deposit", note=note)
                log.info("credited an interrupted deposit to %s", fingerprint(account))
            self.pending.remove(token)

    async def keep_reconciling(self, interval: float = RECONCILE_INTERVAL) -> None:
        """`reconcile` now (what a killed node left) and every `interval` seconds."""
        while True:
            await self.reconcile()
            await trio.sleep(interval)

    async def payout(self, amount: int | None = None) -> tuple[str, int]:
        """The node's earnings out as a token: (token, msat paid out). `amount` (msat, whole
        sats) defaults to all the earnings, rounded down to a sat. LedgerError if the earnings
        are short; EcashError if the wallet is (the earnings were paid out otherwise)."""
        earnings = self.ledger.earnings()
        if amount is None:
            amount = earnings - earnings % MSAT_PER_SAT
        if amount <= 0 or amount % MSAT_PER_SAT:
            raise LedgerError(
                f"a payout is whole sats, above 0, in msat: not {amount} (earnings: {earnings} msat)"
            )
        if amount > earnings:
            raise InsufficientFunds(
                f"{amount} msat asked for, the node has earned {earnings} msat", amount, earnings
            )
        token = await self.wallet.send(amount // MSAT_PER_SAT)
        try:
            self.ledger.payout(amount, note=f"ecash {token_hash(token.token).hex()} from {token.mint}")
        except LedgerError as exc:
            # Another payout took the earnings since we looked: this token is out of the wallet
            # all the same, so it goes to the operator, never lost.
            raise LedgerError(f"{exc}; the token already made (not recorded): {token.token}") from None
        log.info("paid out %d msat of earnings as ecash from %s", amount, token.mint)
        return token.token, amount


class EcashFunding:
    """Pay-per-call (`node.funding.CallFunding`): a Call's token is deposited into the caller's
    account before the hold, and what it brought beyond the job's cost goes back to the caller
    as a fresh token (whole sats; the msat below a sat stay in the account) in the receipt."""

    def __init__(self, cashier: Cashier) -> None:
        self.cashier = cashier
        # What each call's token brought, until its job is settled: by the Call object, so that
        # a call refused after its deposit (its balance then stays in the account) leaves nothing.
        self._brought: weakref.WeakKeyDictionary[Call, tuple[int, str]] = weakref.WeakKeyDictionary()

    async def fund(self, ledger: Ledger, call: Call, payer: bytes, needed: int) -> Reject | None:
        if call.token is None:
            return None
        try:
            # Shielded as a deposit is (Node._deposit): a swap cut off half way is in limbo till restart.
            with trio.CancelScope(shield=True):
                amount, _, mint = await self.cashier.credit(call.token, payer)
        except EcashError as exc:
            log.info("refused the token of a call from %s: %s", fingerprint(payer), exc)
            return refusal(exc)
        self._brought[call] = (amount, mint)
        return None

    async def after_settle(
        self, ledger: Ledger, call: Call, payer: bytes, settlement: Settlement
    ) -> Mapping[str, Any]:
        amount, mint = self._brought.pop(call, (0, ""))
        change = min(amount - settlement.cost, settlement.balance)
        change -= change % MSAT_PER_SAT
        if change <= 0:
            return {}
        try:
            ledger.debit(payer, change, kind="change", note="pay-per-call change")
        except InsufficientFunds:  # another job of this caller's took it meanwhile
            return {}
        try:
            with trio.CancelScope(shield=True):
                token = await self.cashier.wallet.send(change // MSAT_PER_SAT, prefer=mint)
                if len(token.token) > MAX_CHANGE_TOKEN:
                    # Too many proofs to fit a receipt: swapped back into the node's wallet.
                    await self.cashier.wallet.redeem(token.token)
                    raise EcashError(
                        EcashErrorCode.FAILED, f"a change token of {len(token.token)} characters"
                    )
        except EcashError as exc:
            ledger.credit(payer, change, kind="credit", note=f"change not paid out ({exc}): kept here")
            log.warning("kept the change of a call from %s in its account: %s", fingerprint(payer), exc)
            return {}
        return {"change": token.token, "change_msat": change}
