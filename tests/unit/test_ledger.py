"""The node's ledger: its operations, its refusals, and its invariant under random
sequences with crashes (hypothesis), and under a real process killed mid-transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from hubnet.node.ledger import InsufficientFunds, Ledger, LedgerError, UnknownHold

ALICE = b"a" * 32
BOB = b"b" * 32
ORG = b"o" * 32


def test_credit_hold_settle_moves_exact_amounts(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        assert ledger.credit(ALICE, 1000, note="from the operator") == 1000
        assert ledger.hold(ALICE, "job1", 300) == 700
        assert ledger.balance(ALICE) == ledger.balance(ALICE).__class__(ALICE, 700, 300)
        settled = ledger.settle("job1", 120)
        assert (settled.account, settled.held, settled.cost, settled.balance) == (ALICE, 300, 120, 880)
        assert ledger.earnings() == 120
        assert ledger.balance(ALICE).held == 0
        kinds = [(e.kind, e.change, e.charged, e.balance) for e in ledger.history(ALICE)]
        assert kinds == [("credit", 1000, 0, 1000), ("hold", -300, 0, 700), ("settle", 180, 120, 880)]
        assert ledger.history(ALICE)[0].note == "from the operator"
        assert ledger.audit().consistent


def test_a_hold_beyond_the_balance_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(ALICE, 500)
        ledger.hold(ALICE, "job1", 400)
        with pytest.raises(InsufficientFunds) as refused:
            ledger.hold(ALICE, "job2", 400)
        assert (refused.value.needed, refused.value.available) == (400, 100)
        with pytest.raises(InsufficientFunds):
            ledger.hold(BOB, "job3", 1)  # never credited
        assert ledger.balance(ALICE).available == 100
        assert [e.kind for e in ledger.history(ALICE)] == ["credit", "hold"]


def test_settle_refuses_a_cost_above_the_hold_and_an_unknown_job(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(ALICE, 500)
        ledger.hold(ALICE, "job1", 100)
        with pytest.raises(LedgerError, match="more than the 100 msat held"):
            ledger.settle("job1", 101)
        with pytest.raises(UnknownHold):
            ledger.settle("nope", 0)
        assert ledger.release("job1").balance == 500
        with pytest.raises(UnknownHold):
            ledger.release("job1")  # settled once only
        with pytest.raises(LedgerError, match="already holds"):
            ledger.hold(ALICE, "job2", 1)
            ledger.hold(ALICE, "job2", 1)


def test_hold_first_falls_back_to_an_organisation_that_pays(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(ALICE, 10)
        ledger.credit(ORG, 1000)
        assert ledger.hold_first((ALICE, ORG), "job1", 5) == (ALICE, 5)
        assert ledger.hold_first((ALICE, ORG), "job2", 50) == (ORG, 950)
        with pytest.raises(InsufficientFunds) as refused:
            ledger.hold_first((ALICE, ORG), "job3", 5000)
        assert refused.value.available == 950


def test_debit_and_payout_refuse_more_than_there_is(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(ALICE, 100)
        with pytest.raises(InsufficientFunds):
            ledger.debit(ALICE, 101)
        assert ledger.debit(ALICE, 40, note="change") == 60
        ledger.hold(ALICE, "j", 60)
        ledger.settle("j", 60)
        with pytest.raises(InsufficientFunds):
            ledger.payout(61)
        assert ledger.payout(25) == 35
        audit = ledger.audit()
        assert (audit.paid_in, audit.paid_out, audit.earnings) == (100, 65, 35)
        assert audit.consistent
        assert ledger.history()[-1].account is None


def test_stale_holds_are_released_on_open_but_not_by_an_operator(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(ALICE, 100)
        ledger.hold(ALICE, "job1", 70)
    with Ledger.open(tmp_path, release_stale=False) as operator:
        assert operator.balance(ALICE).held == 70
    with Ledger.open(tmp_path) as restarted:
        assert restarted.balance(ALICE) == restarted.balance(ALICE).__class__(ALICE, 100, 0)
        assert restarted.history(ALICE)[-1].kind == "release"


def test_bad_amounts_and_accounts_are_refused(tmp_path: Path) -> None:
    with Ledger.open(tmp_path) as ledger:
        for amount in (-1, 1 << 62, 1.5, True):
            with pytest.raises(LedgerError):
                ledger.credit(ALICE, amount)  # type: ignore[arg-type]
        with pytest.raises(LedgerError):
            ledger.credit(b"short", 1)
        assert ledger.audit().paid_in == 0


class LedgerMachine(RuleBasedStateMachine):
    """Random credits, holds, settles, releases, debits, payouts and crashes: the books
    always balance and no balance goes below zero."""

    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.TemporaryDirectory()
        self.ledger = Ledger.open(Path(self.folder.name))
        self.paid_in = 0
        self.paid_out = 0
        self.job_count = 0
        self.open_holds: dict[str, int] = {}

    def teardown(self) -> None:
        self.ledger.close()
        self.folder.cleanup()

    @rule(account=st.sampled_from([ALICE, BOB]), amount=st.integers(0, 10_000))
    def credit(self, account: bytes, amount: int) -> None:
        self.ledger.credit(account, amount)
        self.paid_in += amount

    @rule(target=holds, account=st.sampled_from([ALICE, BOB]), amount=st.integers(0, 5_000))
    def hold(self, account: bytes, amount: int) -> str:
        self.job_count += 1
        job_id = f"job{self.job_count}"
        before = self.ledger.balance(account).available
        try:
            assert self.ledger.hold(account, job_id, amount) == before - amount
            self.open_holds[job_id] = amount
        except InsufficientFunds:
            assert before < amount
        return job_id

    @rule(job_id=consumes(holds), fraction=st.floats(0, 1))
    def settle(self, job_id: str, fraction: float) -> None:
        held = self.open_holds.pop(job_id, None)
        if held is None:
            with pytest.raises(UnknownHold):
                self.ledger.settle(job_id, 0)
            return
        cost = int(held * fraction)
        assert self.ledger.settle(job_id, cost).cost == cost

    @rule(job_id=consumes(holds))
    def release(self, job_id: str) -> None:
        if self.open_holds.pop(job_id, None) is not None:
            self.ledger.release(job_id)

    @rule(account=st.sampled_from([ALICE, BOB]), amount=st.integers(0, 3_000))
    def debit(self, account: bytes, amount: int) -> None:
        try:
            self.ledger.debit(account, amount)
            self.paid_out += amount
        except InsufficientFunds:
            pass

    @rule(amount=st.integers(0, 3_000))
    def payout(self, amount: int) -> None:
        try:
            self.ledger.payout(amount)
            self.paid_out += amount
        except InsufficientFunds:
            assert self.ledger.earnings() < amount

    @rule(account=st.sampled_from([ALICE, BOB]), amount=st.integers(1, 1_000))
    def crash_mid_transaction(self, account: bytes, amount: int) -> None:
        """The process dies inside a transaction: its change is lost whole, and the restart
        releases every hold."""
        db = self.ledger._db
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE accounts SET balance = balance + ? WHERE account = ?", (amount, account))
        db.execute("UPDATE totals SET value = value + ? WHERE name = 'earnings'", (amount,))
        db.close()  # no COMMIT: as if killed
        self.ledger = Ledger.open(Path(self.folder.name))
        self.open_holds.clear()
        assert self.ledger.audit().holds == 0

    @invariant()
    def books_balance(self) -> None:
        audit = self.ledger.audit()
        assert audit.balances + audit.holds + audit.earnings == self.paid_in - self.paid_out
        assert (audit.paid_in, audit.paid_out) == (self.paid_in, self.paid_out)
        assert audit.lowest_balance >= 0
        assert audit.holds == sum(self.open_holds.values())


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


_HAMMER = """
import sys, itertools
from pathlib import Path
from hubnet.node.ledger import Ledger, InsufficientFunds
ledger = Ledger.open(Path(sys.argv[1]))
account = b"a" * 32
print("ready", flush=True)
for n in itertools.count():
    ledger.credit(account, 7)
    try:
        ledger.hold(account, f"job{n}", 5)
    except InsufficientFunds:
        continue
    ledger.settle(f"job{n}", n % 6)
    if n % 10 == 0 and ledger.earnings() >= 3:
        ledger.payout(3)
"""


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_a_process_killed_mid_transaction_leaves_consistent_books(tmp_path: Path, delay: float) -> None:
    """A real process doing ledger changes as fast as it can is SIGKILLed; the reopened books
    balance, and its last hold (if any) is released."""
    with subprocess.Popen(
        [sys.executable, "-c", _HAMMER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(delay)  # how far it got does not matter; only that it was killed mid-run
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    with Ledger.open(tmp_path) as ledger:
        audit = ledger.audit()
        assert audit.consistent, audit
        assert audit.holds == 0
        assert audit.paid_in > 0
