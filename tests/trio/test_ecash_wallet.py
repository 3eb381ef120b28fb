"""The node's ecash helper process against a real nutshell mint (tests/mint.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

from hubnet.identity.keys import Identity
from hubnet.node.cashier import Cashier
from hubnet.node.ecash import EcashWallet
from hubnet.node.ecash_wire import EcashError, EcashErrorCode, TokenState
from hubnet.node.ledger import Ledger, LedgerError
from tests.mint import TestMint, mint_tokens, receive_token


async def test_redeem_once_send_and_refuse_what_is_not_ours(
    tmp_path: Path, cashu_mint: TestMint, untrusted_mint: TestMint
) -> None:
    v4_token, other_token = mint_tokens(cashu_mint, tmp_path / "payer", 40, 9)
    (v3_token,) = mint_tokens(cashu_mint, tmp_path / "payer", 3, v3=True)
    (foreign,) = mint_tokens(untrusted_mint, tmp_path / "stranger", 50)
    assert v4_token.startswith("cashuB") and v3_token.startswith("cashuA")
    wallet = EcashWallet(tmp_path / "node", (cashu_mint.url + "/",))  # a trailing slash is the same mint
    try:
        redeemed = await wallet.redeem(v4_token)
        assert (redeemed.amount, redeemed.mint) == (40, cashu_mint.url)
        assert (await wallet.redeem(v3_token)).amount == 3
        with pytest.raises(EcashError) as spent:
            await wallet.redeem(v4_token)
        assert spent.value.code is EcashErrorCode.SPENT
        with pytest.raises(EcashError) as untrusted:
            await wallet.redeem(foreign)
        assert untrusted.value.code is EcashErrorCode.UNTRUSTED_MINT
        assert untrusted_mint.url in str(untrusted.value)
        with pytest.raises(EcashError) as garbage:
            await wallet.redeem("cashuBnot-a-token")
        assert garbage.value.code is EcashErrorCode.BAD_TOKEN
        assert (await wallet.balance()).total == 43
        assert await wallet.check(other_token) == TokenState(False, 9, cashu_mint.url)
        assert (await wallet.check(v4_token)).spent

        sent = await wallet.send(5)
        assert (sent.amount, sent.mint) == (5, cashu_mint.url)
        assert (await wallet.balance()).total == 38
        with pytest.raises(EcashError) as short:
            await wallet.send(39)
        assert short.value.code is EcashErrorCode.INSUFFICIENT
    finally:
        await wallet.aclose()
    # What the node sent is real money to any wallet; what it refused was never swapped.
    assert receive_token(tmp_path / "payee", sent.token) == 5
    assert receive_token(tmp_path / "stranger2", foreign) == 50


async def test_a_mint_that_is_down_leaves_the_token_unspent(tmp_path: Path, own_mint: TestMint) -> None:
    (token,) = mint_tokens(own_mint, tmp_path / "payer", 8)
    wallet = EcashWallet(tmp_path / "node", (own_mint.url,))
    try:
        own_mint.stop()
        with pytest.raises(EcashError) as down:
            await wallet.redeem(token)
        assert down.value.code is EcashErrorCode.MINT_UNAVAILABLE
        assert own_mint.url in str(down.value)
    finally:
        await wallet.aclose()


async def test_a_helper_that_dies_is_replaced(tmp_path: Path, cashu_mint: TestMint) -> None:
    first, second = mint_tokens(cashu_mint, tmp_path / "payer", 2, 4)
    wallet = EcashWallet(tmp_path / "node", (cashu_mint.url,))
    try:
        assert (await wallet.redeem(first)).amount == 2
        process = wallet._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        with trio.fail_after(30):
            await process.wait()
        assert (await wallet.redeem(second)).amount == 4
        assert wallet._process is not process
        assert (await wallet.balance()).total == 6  # the wallet database outlives its helper
    finally:
        await wallet.aclose()


async def test_a_deposit_cut_off_between_swap_and_credit_is_credited_once_at_restart(
    tmp_path: Path, cashu_mint: TestMint
) -> None:
    swapped, credited, untouched = mint_tokens(cashu_mint, tmp_path / "payer", 5, 6, 7)
    caller = Identity.from_seed(bytes(32))
    data = tmp_path / "node"
    with Ledger.open(data) as books:
        wallet = EcashWallet(data, (cashu_mint.url,))
        try:
            desk = Cashier(wallet, books, caller)
            # Killed after the swap, before the credit:
            desk.pending.add(swapped, caller.public_key)
            await wallet.redeem(swapped)
            # Killed after the credit, before the token was crossed off:
            desk.pending.add(credited, caller.public_key)
            await desk.credit(credited, caller.public_key)
            desk.pending.add(credited, caller.public_key)
            # Killed before the swap:
            desk.pending.add(untouched, caller.public_key)
            assert books.balance(caller.public_key).available == 6000

            await Cashier(wallet, books, caller).reconcile()  # the next start
        finally:
            await wallet.aclose()
        assert books.balance(caller.public_key).available == 11_000  # 5 once, 6 not twice, 7 not at all
        assert books.audit().consistent
        assert desk.pending.all() == []
    assert receive_token(tmp_path / "owner", untouched) == 7  # still its owner's


async def test_the_earnings_are_paid_out_as_a_token_in_whole_sats(
    tmp_path: Path, cashu_mint: TestMint
) -> None:
    (token,) = mint_tokens(cashu_mint, tmp_path / "payer", 20)
    caller = Identity.from_seed(bytes(32))
    with Ledger.open(tmp_path / "node") as books:
        wallet = EcashWallet(tmp_path / "node", (cashu_mint.url,))
        try:
            cashier = Cashier(wallet, books, caller)
            await cashier.credit(token, caller.public_key)
            books.hold(caller.public_key, "job", 20_000)
            books.settle("job", 12_500)
            for bad in (1500, 13_000, 0):
                with pytest.raises(LedgerError):
                    await cashier.payout(bad)
            paid, amount = await cashier.payout()
            assert amount == 12_000
            assert books.earnings() == 500
            assert (await wallet.balance()).total == 8
            with pytest.raises(LedgerError):
                await cashier.payout()  # 500 msat is no whole sat
        finally:
            await wallet.aclose()
        assert books.audit().consistent
        assert [e.kind for e in books.history()][-1] == "payout"
    assert receive_token(tmp_path / "operator", paid) == 12
