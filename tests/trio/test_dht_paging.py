"""One provider lookup, many pages, one lost datagram: through both drivers, on 127.0.0.1 UDP.

Twelve Trio nodes (k=4) hold 40 provider records of one key, so each of the four closest
to it answers in seven pages. A node loses the first page request it receives after the
scenario is armed. The Trio node and the blocking client (in a worker thread, as in
test_dht_client.py) must each return all 40 records, and each lookup must have exactly one
failed query, the lost one: a driver that discarded replies belonging to other in-flight
queries would time those out too.

Real UDP runs on the real clock: the lost request costs one RPC timeout per driver, and
`trio.fail_after` bounds the whole test.
"""

from __future__ import annotations

import time
from contextlib import AbstractAsyncContextManager
from typing import TypeVar

import trio

from hubnet.dht.client import DhtClient
from hubnet.dht.ids import service_key
from hubnet.dht.lookup import Lookup, Seed
from hubnet.dht.messages import GetProviders, InvalidMessage, decode
from hubnet.dht.records import Address, ProviderRecord
from hubnet.dht.transport import DatagramTransport, UdpTransport
from hubnet.identity.keys import Identity
from tests.dht_sim import SimNode, udp_chain

NODES = 12
PROVIDERS = 40
K = 4
RPC_TIMEOUT = 2.0  # generous: a reply that is merely slow must not count as lost
DEADLINE = 60  # seconds; a healthy run takes a few (two RPC timeouts)
KEY = service_key(b"many providers")
L = TypeVar("L", bound=Lookup)


class PageLoss:
    """Loses the first page request (GetProviders with skip > 0) any node receives once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.lost = 0

    def arm(self) -> None:
        self.armed, self.lost = True, 0

    def loses(self, data: bytes) -> bool:
        if not self.armed:
            return False
        try:
            message = decode(data).message
        except InvalidMessage:
            return False
        if isinstance(message, GetProviders) and message.skip > 0:
            self.armed = False
            self.lost += 1
            return True
        return False


class LossyTransport:
    """A `DatagramTransport` whose incoming datagrams pass `loss` first."""

    def __init__(self, inner: DatagramTransport, loss: PageLoss) -> None:
        self._inner = inner
        self._loss = loss

    @property
    def local_address(self) -> Address:
        return self._inner.local_address

    async def send_to(self, data: bytes, address: Address) -> None:
        await self._inner.send_to(data, address)

    async def receive_from(self) -> tuple[bytes, Address]:
        while True:
            data, source = await self._inner.receive_from()
            if not self._loss.loses(data):
                return data, source

    def close(self) -> None:
        self._inner.close()


class RecordingClient(DhtClient):
    """A `DhtClient` that keeps the lookups it ran, to count their failures."""

    def __init__(self, seeds: list[Seed]) -> None:
        super().__init__(Identity.generate(), seeds, rpc_timeout=RPC_TIMEOUT)
        self.ran: list[Lookup] = []

    def _run(self, lookup: L) -> L:
        self.ran.append(lookup)
        return super()._run(lookup)


def lossy_nodes(loss: PageLoss) -> AbstractAsyncContextManager[list[SimNode]]:
    """NODES nodes with k=K on 127.0.0.1, each joined through the one before it."""

    def make(index: int, transport: UdpTransport) -> SimNode:
        identity = Identity.from_seed((2000 + index).to_bytes(32, "big"))
        return SimNode(identity, LossyTransport(transport, loss), k=K, rpc_timeout=RPC_TIMEOUT)

    return udp_chain(NODES, make)


async def test_both_drivers_page_through_every_record_despite_a_lost_datagram() -> None:
    loss = PageLoss()
    with trio.fail_after(DEADLINE):
        async with lossy_nodes(loss) as nodes:
            now = int(time.time())
            records = [
                ProviderRecord.create(
                    Identity.from_seed(bytes([9, i]) * 16), KEY, b"offer", sequence=1, issued_at=now, ttl=600
                )
                for i in range(PROVIDERS)
            ]
            for index, record in enumerate(records):
                assert await nodes[index % NODES].publish_provider(record) >= K
            holding = [n for n in nodes if n.protocol.store.providers(KEY, now=now)]
            assert all(len(n.protocol.store.providers(KEY, now=now)) == PROVIDERS for n in holding)
            assert len(holding) < NODES  # the lookups have to walk to them

            searcher = next(n for n in nodes if n not in holding)
            loss.arm()
            by_node = await searcher.find_providers(KEY)
            assert loss.lost == 1
            node_failures = searcher.started[KEY].failures

            def blocking_lookup() -> tuple[list[ProviderRecord], int]:
                with RecordingClient(
                    [Seed(nodes[0].contact.address, nodes[0].identity.public_key)]
                ) as client:
                    found = client.find_providers(KEY)
                    return found, client.ran[-1].failures

            loss.arm()
            by_client, client_failures = await trio.to_thread.run_sync(blocking_lookup)
            assert loss.lost == 1

    expected = sorted(r.raw for r in records)
    assert sorted(r.raw for r in by_node) == expected
    assert sorted(r.raw for r in by_client) == expected
    assert (node_failures, client_failures) == (1, 1)
