"""The relay's driver (node.relay) over real loopback TCP, against requests a stranger makes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import trio

from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node.ledger import Ledger
from hubnet.node.relay import next_relay_event
from hubnet.node.relay_charges import MIB
from hubnet.node.relay_protocol import (
    Claim,
    Connect,
    Incoming,
    RefusalCode,
    Refused,
    RelayConnection,
    Request,
    Reserve,
    Reserved,
    Role,
    encode,
)
from hubnet.node.server import Node
from hubnet.node.services import parse_services


async def _open(
    address: tuple[str, int], relay: bytes, request: Request, identity: Identity | None = None
) -> tuple[SecureStream, RelayConnection]:
    transport = await trio.open_tcp_stream(*address)
    stream: SecureStream = await connect_secure(transport, identity or Identity.generate(), relay)
    conn = RelayConnection(Role.REQUESTER)
    await stream.send_all(conn.send(request))
    return stream, conn


async def _ask(
    address: tuple[str, int], relay: bytes, request: Request, identity: Identity | None = None
) -> object:
    stream, conn = await _open(address, relay, request, identity)
    async with stream:
        return await next_relay_event(stream, conn)


async def test_a_stranger_is_refused_clearly_and_a_replayable_request_is_not_taken() -> None:
    relay = Node(parse_services('listen = "127.0.0.1:0"\n[relay]\n'), Identity.generate())
    plain = Node(parse_services('listen = "127.0.0.1:0"\n'), Identity.generate())
    key = relay.identity.public_key
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            address, *_ = await nursery.start(relay.serve)
            plain_address, *_ = await nursery.start(plain.serve)
            claimed = await _ask(address, key, Claim(bytes(16)))
            assert isinstance(claimed, Refused) and claimed.code == RefusalCode.NO_SUCH_CIRCUIT
            connected = await _ask(address, key, Connect(Identity.generate().public_key))
            assert isinstance(connected, Refused) and connected.code == RefusalCode.NO_RESERVATION
            not_a_relay = await _ask(plain_address, plain.identity.public_key, Reserve())
            assert isinstance(not_a_relay, Refused) and not_a_relay.code == RefusalCode.NOT_A_RELAY
            # A Reserve in the handshake's first message, which anyone could replay: the node
            # takes it for a job request, which it is not, and closes.
            transport = await trio.open_tcp_stream(*address)
            stream = await connect_secure(transport, Identity.generate(), key, first_data=encode(Reserve()))
            answer = b""
            with contextlib.suppress(TransportError):
                while chunk := await stream.receive_some():
                    answer += chunk
            await stream.aclose()
            assert answer == b""  # no Reserved: the relay never took it
            assert relay.relay.book is not None and not relay.relay.book.reservations
            nursery.cancel_scope.cancel()


async def test_a_priced_relay_holds_per_circuit_refuses_what_cannot_be_held_and_charges_nothing_unused(
    tmp_path: Path,
) -> None:
    toml = 'listen = "127.0.0.1:0"\n[relay]\nprice_per_mib = 3\nmax_circuit_bytes = 2097152\n'
    hold = 3 * 2  # the price of a circuit's 2 MiB
    holder = Identity.generate()
    with Ledger.open(tmp_path) as ledger:
        ledger.credit(holder.public_key, hold)  # one circuit's worth
        relay = Node(parse_services(toml), Identity.generate(), ledger=ledger)
        relay.relay.claim_timeout = 0.5  # the holder below never claims
        key = relay.identity.public_key
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                address, *_ = await nursery.start(relay.serve)
                unpaid = await _ask(address, key, Reserve())
                assert isinstance(unpaid, Refused) and unpaid.code == RefusalCode.PAYMENT_REQUIRED
                assert unpaid.needed == hold and "no balance" in unpaid.reason

                stream, conn = await _open(address, key, Reserve(), holder)
                async with stream:
                    reserved = await next_relay_event(stream, conn)
                    assert isinstance(reserved, Reserved) and reserved.price_per_mib == 3
                    assert reserved.limits.max_bytes == 2 * MIB
                    first: list[object] = []

                    async def connect() -> None:
                        first.append(await _ask(address, key, Connect(holder.public_key)))

                    nursery.start_soon(connect)
                    assert isinstance(await next_relay_event(stream, conn), Incoming)
                    # The first circuit holds the whole balance: a second cannot be paid for.
                    assert ledger.balance(holder.public_key).held == hold
                    second = await _ask(address, key, Connect(holder.public_key))
                    assert isinstance(second, Refused) and second.code == RefusalCode.PAYMENT_REQUIRED
                    assert second.needed == hold
                    while not first:
                        await trio.sleep(0.05)
                    assert isinstance(first[0], Refused) and first[0].code == RefusalCode.TARGET_UNAVAILABLE
                nursery.cancel_scope.cancel()
        # The unclaimed circuit carried nothing: its hold came back whole.
        balance = ledger.balance(holder.public_key)
        assert (balance.available, balance.held) == (hold, 0)
        assert [e.kind for e in ledger.history(holder.public_key)] == ["credit", "hold", "release"]
        assert ledger.audit().consistent and ledger.earnings() == 0
