"""Signed receipts (node.receipts), the caller's checks (hubnet.receipt_spool), its store."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from hubnet.call_machine import CallResult
from hubnet.identity.frozen import replace
from hubnet.identity.keys import Identity
from hubnet.identity.records import SignedRecord
from hubnet.node.protocol import MAX_RECEIPT, Exit, Terms, Usage
from hubnet.node.receipts import RECEIPT_DOMAIN, InvalidReceipt, JobReceipt, verify
from hubnet.receipt_spool import SPOOL_FILE, keep_receipt
from hubnet.receipt_store import ReceiptStore

NODE = Identity.from_seed(b"n" * 32)
OTHER_NODE = Identity.from_seed(b"m" * 32)
CALLER = Identity.from_seed(b"c" * 32).public_key
TERMS = Terms(100, 10, 1000, 2200)
RECEIPT = JobReceipt(
    job_id="j1",
    service_id=b"s" * 16,
    service="speech",
    caller=CALLER,
    node=NODE.public_key,
    payer=CALLER,
    usage=Usage(1200, 30, 5000, 5000, 0),
    terms=TERMS,
    cost=123,
    balance=99_877,
    time=1_800_000_000,
)


def _check(record: bytes, **changes: object) -> JobReceipt:
    expected: dict[str, object] = {"node": NODE.public_key, "caller": CALLER, "job_id": "j1", "cost": 123}
    expected |= changes
    return verify(record, **expected)  # type: ignore[arg-type]


def test_a_receipt_round_trips_and_keeps_fields_a_newer_node_adds() -> None:
    extended = replace(RECEIPT, extra={"change": "cashuBxyz"})
    record = extended.sign(NODE)
    assert len(record) <= MAX_RECEIPT
    got = _check(record)
    assert got == replace(got, extra={"change": "cashuBxyz"})
    assert dict(got.extra) == {"change": "cashuBxyz"}
    assert (got.usage, got.terms, got.balance) == (RECEIPT.usage, TERMS, 99_877)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"node": OTHER_NODE.public_key}, "not the node called"),
        ({"caller": b"x" * 32}, "not for this caller"),
        ({"job_id": "j2"}, "not 'j2'"),
        ({"cost": 124}, "the job's Exit 124 msat"),
    ],
)
def test_a_receipt_about_another_node_caller_job_or_cost_is_refused(
    changes: dict[str, object], why: str
) -> None:
    with pytest.raises(InvalidReceipt, match=why):
        _check(RECEIPT.sign(NODE), **changes)


def test_forged_tampered_and_misdomained_receipts_are_refused() -> None:
    # Another node signs a receipt that names our node.
    forged = SignedRecord.sign(OTHER_NODE, RECEIPT_DOMAIN, RECEIPT.body()).encode()
    with pytest.raises(InvalidReceipt, match="signed by another key"):
        _check(forged)
    record = msgpack.unpackb(RECEIPT.sign(NODE))
    record[1] = record[1].replace(b"speech", b"spooch")
    with pytest.raises(InvalidReceipt, match="does not verify"):
        _check(msgpack.packb(record))
    offer = SignedRecord.sign(NODE, "hubnet/offer/1", RECEIPT.body()).encode()
    with pytest.raises(InvalidReceipt, match="domain"):
        _check(offer)
    overcharged = replace(RECEIPT, cost=TERMS.held + 1)
    with pytest.raises(InvalidReceipt, match="more than the 2200 held"):
        _check(overcharged.sign(NODE), cost=TERMS.held + 1)
    junk = SignedRecord.sign(NODE, RECEIPT_DOMAIN, msgpack.packb({"job": 1})).encode()
    with pytest.raises(InvalidReceipt, match="lacks fields"):
        _check(junk)


def _result(receipt: bytes | None, terms: Terms = TERMS, cost: int = 123) -> CallResult:
    return CallResult(Exit(0, None, None, RECEIPT.usage, cost), "j1", terms, receipt, NODE.public_key)


def test_good_receipts_are_kept_and_bad_ones_said_and_counted(tmp_path: Path) -> None:
    said: list[str] = []
    assert keep_receipt(tmp_path, _result(RECEIPT.sign(NODE)), CALLER, said.append) == RECEIPT
    foreign = replace(RECEIPT, node=OTHER_NODE.public_key, job_id="j1").sign(OTHER_NODE)
    assert keep_receipt(tmp_path, _result(foreign), CALLER, said.append) is None
    assert keep_receipt(tmp_path, _result(None), CALLER, said.append) is None  # paid, no receipt
    assert keep_receipt(tmp_path, _result(None, Terms(), 0), CALLER, said.append) is None  # free: nothing
    assert len(said) == 2 and all(line.startswith("hubnode: WARNING: node ") for line in said)
    assert "not the node called" in said[0] and "sent no receipt for paid job j1" in said[1]
    with ReceiptStore(tmp_path) as store:
        assert store.receipts() == [RECEIPT]
        assert [(t.service, t.jobs, t.cost) for t in store.totals()] == [("speech", 1, 123)]
        problems = store.problems()
        assert len(problems) == 2 and all(p.reason in line for p, line in zip(problems, said, strict=True))
    assert not (tmp_path / SPOOL_FILE).exists()  # taken in
    with ReceiptStore(tmp_path) as again:  # and kept, once
        assert len(again.receipts()) == 1 and len(again.problems()) == 2


def test_a_receipt_changed_in_the_spool_is_a_problem_not_a_receipt(tmp_path: Path) -> None:
    keep_receipt(tmp_path, _result(RECEIPT.sign(NODE)), CALLER)
    spool = tmp_path / SPOOL_FILE
    spool.write_bytes(spool.read_bytes().replace(b"speech", b"spooch"))
    with ReceiptStore(tmp_path) as store:
        assert store.receipts() == []
        assert "no longer verifies" in store.problems()[0].reason
