"""The DHT against one host with free keys, on the in-memory network (virtual clock).

The honest nodes are a small simulation (tests/dht_sim.py: private 10.x addresses, each
a network of its own); the attacker is a real `DhtNode` at a public address (RFC 5737's
203.0.113.0/24), which may also write any source address on its datagrams (spoofing,
`MemoryNetwork.deliver`). Issue 15 saw, before version 2 of the datagrams: 63 offers from
63 throw-away keys lock a service (an honest provider then got "key has too many
providers"); 60 pings under 60 keys put 61 contacts at one address in a routing table;
a GetProviders of 153 bytes answered with 7168; one datagram replayed five times answered
five times.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import ID_LEN, K, distance, service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.messages import AddProvider, FindNode, GetProviders, Ping, Pong, Stored, decode, encode
from hubnet.dht.node import DhtNode
from hubnet.dht.protocol import FIRST_CONTACT_SIZE, DhtProtocol
from hubnet.dht.records import Address, ProviderRecord
from hubnet.dht.store import StoreLimits
from hubnet.dht.transport import MemoryTransport
from hubnet.identity.frozen import replace
from hubnet.identity.keys import Identity
from tests.dht_sim import EPOCH, SimNode, Simulation, seed_scheduler, simulation

SERVICE = service_key(b"locked service!!")
ATTACKER = ("203.0.113.66", 7070)


def throw_away(index: int) -> Identity:
    return Identity.from_seed((90_000 + index).to_bytes(32, "big"))


@asynccontextmanager
async def attacker_at(
    sim: Simulation, address: Address, identity: Identity | None = None, *, join: bool = True
) -> AsyncIterator[DhtNode]:
    """A real DhtNode at `address`: joined through a node of `sim`, or (not `join`) a one-shot
    client there that no table takes in."""
    node = DhtNode(
        identity or Identity.from_seed(b"A" * 32),
        sim.network.transport(address),
        clock=lambda: EPOCH + trio.current_time(),
    )
    if not join:
        node.protocol = DhtProtocol(node.identity, serving=False)
    await sim.nursery.start(node.serve)
    if join:
        seed = sim.nodes[0]
        await node.bootstrap([Seed(seed.contact.address, seed.identity.public_key)])
        await sim.settle()
    try:
        yield node
    finally:
        sim.network.unplug(address)


async def store_at(node: DhtNode, holders: list[SimNode], records: list[ProviderRecord]) -> int:
    """Ask every holder to store every record (with the token a ping got); how many said yes."""
    kept = 0
    for holder in holders:
        await node.rpc(holder.contact.address, Ping(), holder.identity.public_key)
        for record in records:
            reply = await node.rpc(
                holder.contact.address, AddProvider(record.raw), holder.identity.public_key
            )
            kept += isinstance(reply, Stored) and reply.ok
    return kept


def fake(sim: Simulation, index: int) -> ProviderRecord:
    return ProviderRecord.create(
        throw_away(index), SERVICE, b"fake offer", sequence=1, issued_at=sim.now(), ttl=600
    )


async def test_63_throw_away_keys_from_one_host_no_longer_lock_a_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_scheduler(11)
    async with simulation(60, seed=11) as sim, attacker_at(sim, ATTACKER) as attacker:
        stored = [await attacker.publish_provider(fake(sim, i)) for i in range(63)]
        assert stored[0] >= K - 1 and sum(stored) > 0
        holders = sim.closest_live(SERVICE)
        for holder in holders:
            fakes = [
                r
                for r in holder.protocol.store.providers(SERVICE, now=sim.now())
                if r.payload == b"fake offer"
            ]
            assert len(fakes) <= StoreLimits().max_per_key_per_host
        honest = sim.nodes[7]
        offer = sim.offer_record(honest, bytes(16))
        record = ProviderRecord.create(
            honest.identity, SERVICE, offer.payload, sequence=1, issued_at=sim.now(), ttl=600
        )
        assert await honest.publish_provider(record) >= K
        for searcher in sim.rng.sample(sim.nodes, 10):
            found = await searcher.find_providers(SERVICE)
            assert honest.identity.public_key in {r.publisher for r in found}
            assert len(found) <= 1 + StoreLimits().max_per_key_per_host


async def test_a_full_key_gives_way_to_a_network_holding_fewer_of_its_records(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """64 fakes from four /24s (16 each, the most one network may hold under a key) fill a key;
    an honest provider from a fifth network is still stored, in place of one of them."""
    seed_scheduler(12)
    async with simulation(30, seed=12) as sim:
        holders = sim.closest_live(SERVICE)
        for index in range(32):  # four /24s of eight hosts, two fakes each
            address = (f"198.51.{100 + index // 8}.{index % 8 + 1}", 7070)
            async with attacker_at(sim, address, throw_away(1000 + index), join=False) as node:
                await store_at(node, holders, [fake(sim, 2 * index), fake(sim, 2 * index + 1)])
        full = [
            h
            for h in sim.closest_live(SERVICE)
            if len(h.protocol.store.providers(SERVICE, now=sim.now())) == 64
        ]
        assert len(full) >= K // 2
        honest = sim.nodes[3]
        record = sim.provider_record(honest, SERVICE, b"honest offer")
        assert await honest.publish_provider(record) >= K
        for holder in full:
            held = holder.protocol.store.providers(SERVICE, now=sim.now())
            assert len(held) == 64 and record in held
        found = await sim.nodes[-1].find_providers(SERVICE)
        assert record.raw in {r.raw for r in found}


async def drain(transport: MemoryTransport) -> list[bytes]:
    """Every datagram that has reached `transport` by now."""
    received = []
    while True:
        with trio.move_on_after(0.01) as waited:
            received.append((await transport.receive_from())[0])
        if waited.cancelled_caught:
            return received


async def test_spoofed_requests_reflect_no_more_than_they_carry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The attacker writes a victim's address on its requests: the victim receives at most as
    many bytes as were sent, of every kind, from any node; and stores nothing in its name."""
    seed_scheduler(13)
    async with simulation(40, seed=13) as sim:
        holder = sim.closest_live(SERVICE)[0]
        for index in range(20):  # a key worth asking for
            publisher = sim.nodes[index]
            await publisher.publish_provider(sim.provider_record(publisher, SERVICE, b"o" * 800))
        victim = ("192.0.2.77", 53)
        received = sim.network.transport(victim)
        sender = Identity.from_seed(b"S" * 32)
        sent = 0
        requests = [Ping(), FindNode(bytes(ID_LEN)), GetProviders(SERVICE)]
        for target in [*sim.nodes[:10], holder]:
            for message in requests:
                for padding in (0, FIRST_CONTACT_SIZE):
                    data = encode(
                        sender, os.urandom(8), message, serving=True, sent_at=sim.now(), padding=padding
                    )
                    sim.network.deliver(data, victim, target.contact.address)
                    sent += len(data)
        await trio.sleep(0.1)
        replies = await drain(received)
        assert all(decode(r).message is not None for r in replies)
        assert 0 < sum(map(len, replies)) <= sent
        # And the victim's address never entered a table (it did not answer the pings back).
        await sim.settle()
        assert all(victim not in {c.address for c in n.protocol.table.contacts()} for n in sim.nodes)


async def test_a_replayed_datagram_is_answered_once(autojump_clock: trio.testing.MockClock) -> None:
    seed_scheduler(14)
    async with simulation(10, seed=14) as sim:
        target = sim.nodes[3]
        listener = sim.network.transport(ATTACKER)
        data = encode(
            Identity.from_seed(b"R" * 32), os.urandom(8), Ping(), serving=False, sent_at=sim.now(), padding=16
        )
        for _ in range(5):
            sim.network.deliver(data, ATTACKER, target.contact.address)
        await trio.sleep(0.1)
        assert [decode(r).message for r in await drain(listener)] == [Pong()]
        assert target.protocol.replayed == 4


async def test_sixty_keys_from_one_socket_hold_one_routing_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_scheduler(15)
    async with simulation(10, seed=15) as sim:
        owner = sim.nodes[0]
        async with attacker_at(sim, ATTACKER) as attacker:
            for index in range(60):
                attacker.identity = attacker.protocol.identity = throw_away(index)
                assert await attacker.rpc(owner.contact.address, Ping()) == Pong()
            await sim.settle()
            at_attacker = [c for c in owner.protocol.table.contacts() if c.address == ATTACKER]
            assert len(at_attacker) <= 1  # was 60 (issue 15)


async def test_a_node_far_from_a_key_refuses_to_store_under_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_scheduler(16)
    async with simulation(80, seed=16) as sim:
        far = max(sim.nodes, key=lambda n: distance(n.protocol.table.node.id, SERVICE))
        assert not far.protocol.is_near(SERVICE)
        publisher = sim.nodes[-1]
        record = sim.provider_record(publisher, SERVICE, b"offer")
        assert await publisher.rpc(far.contact.address, Ping(), far.identity.public_key) == Pong()  # a token
        stored = await publisher.rpc(far.contact.address, AddProvider(record.raw), far.identity.public_key)
        assert stored == Stored(False, "not among the closest nodes to this key")
        assert await publisher.publish_provider(record) >= K  # where it belongs, it is kept
        assert not far.protocol.store.providers(SERVICE, now=sim.now())


async def test_with_the_nodes_offer_check_fake_offers_cannot_aim_at_a_third_party(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every node runs node.offer_check (as `hubnode serve` does): offers from the attacker's
    public address that name a victim are refused everywhere; naming itself, they are stored."""
    from hubnet.node.offer_check import accept_record
    from hubnet.node.offers import offer_from_record

    seed_scheduler(17)
    async with simulation(40, seed=17) as sim:
        for node in sim.nodes:
            node.protocol.accept_record = accept_record
        sid = bytes(range(16))
        key = service_key(sid)
        honest = sim.nodes[5]
        assert await honest.publish_provider(sim.offer_record(honest, sid)) >= K
        async with attacker_at(sim, ATTACKER, join=False) as attacker:
            holders = sim.closest_live(key)
            victim = DirectAddress("198.51.100.7", 443)
            aimed, own = [], []
            for index in range(4):
                publisher = throw_away(index)
                for address, into in ((victim, aimed), (DirectAddress(*ATTACKER), own)):
                    offer = replace(
                        offer_from_record(sim.offer_record(honest, sid)),
                        publisher=publisher.public_key,
                        addresses=(address,),
                    )
                    into.append(
                        ProviderRecord.create(
                            publisher,
                            key,
                            offer.payload(),
                            sequence=len(into) + 1,
                            issued_at=sim.now(),
                            ttl=600,
                        )
                    )
            assert await store_at(attacker, holders, aimed) == 0
            assert await store_at(attacker, holders, own) == len(holders) * len(own)
        found = await sim.nodes[-1].find_providers(key)
        named = {a for r in found for a in offer_from_record(r).addresses}
        assert victim not in named and DirectAddress(*ATTACKER) in named
