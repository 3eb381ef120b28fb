"""The node's money path over in-memory streams: what is held, settled and released when a
job fails to start, waits and is cancelled, or is refused, and what the receipt says."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hubnet.identity.errors import Rejected
from hubnet.identity.keys import Identity
from hubnet.node.ledger import Ledger
from hubnet.node.naming import service_id_for_name
from hubnet.node.protocol import BalanceReply, Call, GetBalance, GetStatus, StatusReply
from hubnet.node.receipts import verify
from hubnet.node.server import Node
from hubnet.node.services import parse_services
from hubnet.trio_client import Client
from tests.helpers import require_program
from tests.trio.test_trio_client import MemoryDialer, _pinned

SERVICES = """
listen = "127.0.0.1:0"
max_jobs = 1

[services.missing]
command = ["/nonexistent/program"]
price = { per_call = 300 }
sandbox = false

[services.sleep]
command = ["sleep", "30"]
timeout = 60
price = { per_call = 500 }
sandbox = false
"""
CREDIT = 10_000


def _node(tmp_path: Path, caller: Identity) -> Node:
    require_program("sleep")
    ledger = Ledger.open(tmp_path)
    ledger.credit(caller.public_key, CREDIT)
    return Node(parse_services(SERVICES), Identity.generate(), start_timeout=30.0, ledger=ledger)


async def test_a_program_that_fails_to_start_costs_nothing_and_says_so_in_its_receipt(tmp_path: Path) -> None:
    caller = Identity.generate()
    node = _node(tmp_path, caller)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = Client(caller, dialer=MemoryDialer(node, nursery))
            output = await client.call(_pinned(node), Call(service_id_for_name("missing")))
            balance = await client.request(_pinned(node), GetBalance(), BalanceReply)
    result = output.result
    assert result.exit.error == "failed-to-start" and result.exit.cost == 0 and result.terms.held == 300
    assert result.receipt is not None
    receipt = verify(
        result.receipt, node=node.identity.public_key, caller=caller.public_key, job_id=result.job_id, cost=0
    )
    assert receipt.balance == CREDIT
    assert balance == BalanceReply(CREDIT, 0)
    assert node.ledger is not None
    assert [(e.kind, e.change) for e in node.ledger.history(caller.public_key)][-2:] == [
        ("hold", -300),
        ("release", 300),
    ]


async def test_a_call_cancelled_while_it_waits_for_a_slot_releases_its_hold(tmp_path: Path) -> None:
    caller = Identity.generate()
    node = _node(tmp_path, caller)
    target = _pinned(node)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = Client(caller, dialer=MemoryDialer(node, nursery))
            running, waiting = trio.CancelScope(), trio.CancelScope()

            async def call_in(scope: trio.CancelScope) -> None:
                with scope:
                    await client.call(target, Call(service_id_for_name("sleep")))

            nursery.start_soon(call_in, running)
            while (await client.request(target, GetStatus(), StatusReply)).running < 1:
                await trio.sleep(0.01)
            nursery.start_soon(call_in, waiting)
            while (await client.request(target, GetStatus(), StatusReply)).queued < 1:
                await trio.sleep(0.01)
            assert await client.request(target, GetBalance(), BalanceReply) == BalanceReply(
                CREDIT - 1000, 1000
            )
            waiting.cancel()
            while (await client.request(target, GetBalance(), BalanceReply)).held > 500:
                await trio.sleep(0.01)
            running.cancel()  # the job that ran is charged: it started
            while (await client.request(target, GetBalance(), BalanceReply)).held:
                await trio.sleep(0.01)
    assert node.ledger is not None
    kinds = [e.kind for e in node.ledger.history(caller.public_key)]
    assert sorted(kinds) == ["credit", "hold", "hold", "release", "settle"], kinds
    assert node.ledger.balance(caller.public_key).available == CREDIT - 500
    assert node.ledger.audit().consistent


async def test_a_refused_call_holds_nothing_and_a_ceiling_is_checked_first(tmp_path: Path) -> None:
    caller = Identity.generate()
    node = _node(tmp_path, caller)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            client = Client(caller, dialer=MemoryDialer(node, nursery))
            with pytest.raises(Rejected) as refused:
                await client.call(_pinned(node), Call(service_id_for_name("sleep"), ("extra",)))
            assert refused.value.code == "bad-arguments"
            with pytest.raises(Rejected) as ceiling:
                await client.call(_pinned(node), Call(service_id_for_name("sleep"), (), (), 499))
            assert ceiling.value.code == "too-expensive"
            stranger = Client(Identity.generate(), dialer=MemoryDialer(node, nursery))
            with pytest.raises(Rejected) as poor:
                await stranger.call(_pinned(node), Call(service_id_for_name("sleep")))
            assert poor.value.code == "payment-required" and "needs 500 msat" in poor.value.reason
    assert node.ledger is not None
    assert [e.kind for e in node.ledger.history()] == ["credit"]
