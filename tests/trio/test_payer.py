"""The Trio side of pay-per-call (hubnet.trio_api.Payer) over a real wallet in a temporary home.

The node is played by the attempt functions: what matters here is what happens to the
wallet's tokens, which `hubnet.pay` decides and the Payer carries out on worker threads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hubnet.call_machine import CallResult
from hubnet.client import PaymentRequired
from hubnet.commands import Context
from hubnet.dht.addresses import DirectAddress
from hubnet.identity.errors import Rejected, TransportError
from hubnet.identity.keys import Identity
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call, Exit, RejectCode, Terms
from hubnet.trio_api import Payer
from hubnet.trio_client import CallOutput
from hubnet.trust import PinnedKeys
from hubnet.wallet import Wallet
from tests.mint import v4_token

NODE = Target(DirectAddress("127.0.0.1", 7070), Identity.generate().public_key)
REQUEST = Call(service_id_for_name("priced"))
ASKED = PaymentRequired("no account here", 3000, NODE)
POLLS = 500  # of 10 ms: a bound on waiting for a task to park, never an assertion on time


def _home(tmp_path: Path, *amounts: int) -> tuple[Context, list[str]]:
    ctx = Context(str(tmp_path))
    tokens = [v4_token([amount]) for amount in amounts]
    with Wallet.open(ctx.home.data_dir) as wallet:
        for token in tokens:
            wallet.add(token)
    return ctx, tokens


def _left(ctx: Context) -> list[str]:
    with Wallet.open(ctx.home.data_dir) as wallet:
        return [t.token for t in wallet.tokens()]


async def _ran(target: Target, call: Call) -> CallOutput:
    return CallOutput(CallResult(Exit(0, None), "job", Terms()), b"ok", b"")


async def test_a_run_with_one_token_pays_its_second_job_once_the_first_gives_it_back(
    tmp_path: Path,
) -> None:
    ctx, [token] = _home(tmp_path, 8)
    payer = Payer(ctx, "'priced'", auto=True)
    carried: list[str | None] = []
    holding, release = trio.Event(), trio.Event()

    async def busy(target: Target, call: Call) -> CallOutput:
        carried.append(call.token)
        holding.set()
        await release.wait()
        raise Rejected(RejectCode.BUSY, "too many calls are waiting")  # refused before redeeming

    async def first() -> None:
        with pytest.raises(Rejected, match="busy"):
            await payer.pay(ASKED, REQUEST, busy, lambda: False)

    async def second() -> None:
        assert (await payer.pay(ASKED, REQUEST, _ran, lambda: True)).stdout == b"ok"
        carried.append("second ran")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await holding.wait()
        nursery.start_soon(second)
        for _ in range(POLLS):  # until the second waits for the first's token to come back
            if payer._back.statistics().tasks_waiting:
                break
            await trio.sleep(0.01)
        assert payer._back.statistics().tasks_waiting == 1 and carried == [token]
        release.set()
    assert carried == [token, "second ran"]
    assert _left(ctx) == []  # the second job took it (its node returned no change)


async def test_two_jobs_asking_at_once_for_the_one_token_take_turns(tmp_path: Path) -> None:
    """Both look in the wallet at once: the one that finds it empty must see the other's
    token out and wait for it, not fail (what the lock over the wallet and the count is for)."""
    ctx, [token] = _home(tmp_path, 8)
    payer = Payer(ctx, "'priced'", auto=True)
    release = trio.Event()
    ended: list[str] = []

    async def first_busy_then_runs(target: Target, call: Call) -> CallOutput:
        assert call.token == token
        if not ended:
            ended.append("busy")
            await release.wait()
            raise Rejected(RejectCode.BUSY, "too many calls are waiting")  # the token comes back
        ended.append("ran")
        return await _ran(target, call)

    async def job() -> None:
        try:
            await payer.pay(ASKED, REQUEST, first_busy_then_runs, lambda: False)
        except Rejected as exc:
            assert exc.code == RejectCode.BUSY, exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(job)
        nursery.start_soon(job)
        for _ in range(POLLS):
            if payer._back.statistics().tasks_waiting:
                break
            await trio.sleep(0.01)
        assert payer._back.statistics().tasks_waiting == 1 and ended == ["busy"]
        release.set()
    assert ended == ["busy", "ran"] and _left(ctx) == []


async def test_no_token_and_none_out_is_refused_at_once_naming_the_amount(tmp_path: Path) -> None:
    ctx, [small] = _home(tmp_path, 2)
    payer = Payer(ctx, "'priced'", auto=True)
    with pytest.raises(Rejected) as refused:
        await payer.pay(ASKED, REQUEST, _ran, lambda: True)
    assert refused.value.code == RejectCode.PAYMENT_REQUIRED and "needs 3000 msat" in str(refused.value)
    assert _left(ctx) == [small]  # too small to pay, and untouched


async def test_a_cancelled_or_failed_call_before_its_accept_puts_the_token_back(tmp_path: Path) -> None:
    ctx, [token] = _home(tmp_path, 8)
    payer = Payer(ctx, "'priced'", auto=True)

    carried: list[str | None] = []

    with trio.CancelScope() as scope:

        async def cancelled(target: Target, call: Call) -> CallOutput:
            carried.append(call.token)
            scope.cancel()  # the caller gives up while the node has not answered
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        await payer.pay(ASKED, REQUEST, cancelled, lambda: False)
    assert carried == [token] and _left(ctx) == [token]

    async def resets(target: Target, call: Call) -> CallOutput:
        raise TransportError("connection reset")

    with pytest.raises(TransportError):
        await payer.pay(ASKED, REQUEST, resets, lambda: False)
    assert _left(ctx) == [token]
    with pytest.raises(TransportError):
        await payer.pay(ASKED, REQUEST, resets, lambda: True)  # after an Accept it was redeemed
    assert _left(ctx) == []


async def test_without_auto_a_refusal_for_money_is_raised_and_the_wallet_untouched(tmp_path: Path) -> None:
    ctx, [token] = _home(tmp_path, 8)

    async def asks(target: Target, call: Call) -> CallOutput:
        assert call.token is None
        raise Rejected(RejectCode.PAYMENT_REQUIRED, "no account here", 3000)

    never = Payer(ctx, "'priced'", auto=False)
    with pytest.raises(Rejected, match="payment-required"):
        await never.call(NODE, REQUEST, PinnedKeys(), asks, lambda: False)
    assert _left(ctx) == [token]
