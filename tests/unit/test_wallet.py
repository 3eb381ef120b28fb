"""The caller's side of ecash without a mint: token envelopes, the wallet store, deposit receipts."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.cashu_token import BadToken, TokenInfo, read_token
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord
from hubnet.node.deposit_receipts import DepositReceipt, InvalidDepositReceipt, token_hash
from hubnet.wallet import Wallet
from tests.mint import FAKE_MINT as MINT
from tests.mint import v3_token, v4_token


def test_both_envelopes_say_mint_unit_and_amount() -> None:
    assert read_token(v3_token([1, 2, 8])) == TokenInfo(MINT, "sat", 11)
    assert read_token(v3_token([4], unit=None)) == TokenInfo(MINT, "sat", 4)  # V3 without a unit: sat
    assert read_token(v4_token([16, 4], unit="usd")) == TokenInfo(MINT, "usd", 20)
    assert read_token("  " + v4_token([1]) + "\n") == TokenInfo(MINT, "sat", 1)


@pytest.mark.parametrize(
    "text",
    ["", "cashu", "cashuC" + v4_token([1])[6:], "cashuB!!!", v3_token([]), v3_token([0]), v4_token([-1])],
)
def test_what_is_not_a_token_is_said_so(text: str) -> None:
    with pytest.raises(BadToken):
        read_token(text)


@given(st.binary(max_size=200), st.sampled_from(["cashuA", "cashuB"]))
def test_garbage_in_an_envelope_is_only_ever_a_bad_token(body: bytes, prefix: str) -> None:
    with contextlib.suppress(BadToken):
        read_token(prefix + base64.urlsafe_b64encode(body).decode())


def test_the_wallet_keeps_tokens_and_hands_out_the_smallest_that_covers(tmp_path: Path) -> None:
    small, large, other = v4_token([2]), v4_token([32, 8]), v4_token([64], unit="usd")
    with Wallet.open(tmp_path) as wallet:
        for token in (large, small, other, small):  # the same token twice is kept once
            wallet.add(token)
        assert [(t.amount, t.unit) for t in wallet.tokens()] == [(40, "sat"), (2, "sat"), (64, "usd")]
        assert wallet.take(41) is None
        taken = wallet.take(3)
        assert taken is not None and taken.token == large
        assert [t.amount for t in wallet.tokens()] == [2, 64]
        wallet.put_back(taken)
    with Wallet.open(tmp_path) as wallet:  # it is all on disk
        assert sorted(t.amount for t in wallet.tokens()) == [2, 40, 64]
    assert (tmp_path / "wallet.sqlite").stat().st_mode & 0o077 == 0
    with Wallet.open(tmp_path) as wallet, pytest.raises(BadToken):
        wallet.add("cashuBnonsense")


def test_a_deposit_receipt_verifies_only_for_its_node_caller_and_token() -> None:
    node, caller, stranger = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    token = v4_token([5])
    receipt = DepositReceipt(
        node.public_key, caller.public_key, 5000, 7000, MINT, token_hash(token), 1_800_000_000
    )
    record = receipt.sign(node)
    assert (
        DepositReceipt.verify(record, node=node.public_key, caller=caller.public_key, token=token) == receipt
    )
    with pytest.raises(InvalidDepositReceipt, match="signed by"):
        DepositReceipt.verify(record, node=stranger.public_key, caller=caller.public_key, token=token)
    with pytest.raises(InvalidDepositReceipt, match="for"):
        DepositReceipt.verify(record, node=node.public_key, caller=stranger.public_key, token=token)
    with pytest.raises(InvalidDepositReceipt, match="another token"):
        DepositReceipt.verify(record, node=node.public_key, caller=caller.public_key, token=v4_token([6]))
    forged = DepositReceipt(node.public_key, caller.public_key, 9000, 9000, MINT, token_hash(token), 1).sign(
        stranger
    )
    with pytest.raises(InvalidRecord):
        DepositReceipt.verify(forged, node=node.public_key, caller=caller.public_key, token=token)
