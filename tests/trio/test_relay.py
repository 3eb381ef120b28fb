"""The relay's driver (node.relay) over real loopback TCP, against requests a stranger makes."""

from __future__ import annotations

import contextlib

import trio

from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node.relay import next_relay_event
from hubnet.node.relay_protocol import (
    Claim,
    Connect,
    RefusalCode,
    Refused,
    RelayConnection,
    Request,
    Reserve,
    Role,
    encode,
)
from hubnet.node.server import Node
from hubnet.node.services import parse_services


async def _ask(address: tuple[str, int], relay: bytes, request: Request) -> object:
    transport = await trio.open_tcp_stream(*address)
    stream: SecureStream = await connect_secure(transport, Identity.generate(), relay)
    async with stream:
        conn = RelayConnection(Role.REQUESTER)
        await stream.send_all(conn.send(request))
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
