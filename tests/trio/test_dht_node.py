"""dht.node: the Trio driver, on real UDP sockets on 127.0.0.1 and on the in-memory network.

UDP tests run on the real clock (a MockClock would jump over the time a datagram takes to
cross the loopback and fire every timeout) and are bounded by `trio.fail_after`, which never
fires on a working machine. In-memory tests take `autojump_clock` (pytest-trio's
`MockClock(autojump_threshold=0)`): timeouts cost no real time.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import trio
import trio.testing

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import ID_LEN, node_id, service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.messages import DATAGRAM_DOMAIN, FindNode, Nodes, Ping, Pong, decode, encode
from hubnet.dht.node import VERIFY_DELAY, DhtNode
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.transport import MemoryNetwork
from hubnet.identity.keys import Identity
from hubnet.identity.records import SignedRecord
from tests.dht_sim import EPOCH, identities_with_prefixes, simulation, udp_chain

UDP_DEADLINE = 30  # seconds; a healthy run takes well under one


def seeded(index: int) -> Identity:
    return Identity.from_seed((1000 + index).to_bytes(32, "big"))


def udp_nodes(count: int, *, k: int) -> AbstractAsyncContextManager[list[DhtNode]]:
    """`count` nodes on UDP sockets on 127.0.0.1, each joined through the one before it."""
    return udp_chain(count, lambda index, transport: DhtNode(seeded(index), transport, k=k))


async def test_udp_chain_finds_every_provider_and_node_record() -> None:
    with trio.fail_after(UDP_DEADLINE):
        # k=3 of 8: each record lives on a few nodes only, so finding it takes real lookups.
        async with udp_nodes(8, k=3) as nodes:
            assert all(node.contact.address[0] == "127.0.0.1" for node in nodes)
            now = nodes[0].now()
            keys = [service_key(bytes([i]) * 16) for i in range(len(nodes))]
            for node, key in zip(nodes, keys, strict=True):
                offer = ProviderRecord.create(
                    node.identity, key, b"offer", sequence=1, issued_at=now, ttl=600
                )
                assert await node.publish_provider(offer) >= 3
                record = NodeRecord.create(
                    node.identity, (DirectAddress(*node.contact.address),), sequence=1, issued_at=now, ttl=600
                )
                assert await node.publish_node_record(record) >= 3
            for searcher in nodes:
                for publisher, key in zip(nodes, keys, strict=True):
                    found = await searcher.find_providers(key)
                    assert [(r.publisher, r.key, r.payload) for r in found] == [
                        (publisher.identity.public_key, key, b"offer")
                    ]
                    located = await searcher.find_node_record(publisher.identity.public_key)
                    assert located is not None
                    assert located.addresses == (DirectAddress(*publisher.contact.address),)
            # Records really are spread: no node holds them all.
            assert max(len(node.protocol.store) for node in nodes) < 2 * len(nodes)


async def test_udp_node_survives_garbage_and_keeps_answering() -> None:
    with trio.fail_after(UDP_DEADLINE):
        async with udp_nodes(2, k=20) as (target, other):
            stranger = Identity.from_seed(b"x" * 32)
            valid = encode(stranger, b"t" * 8, Ping(), serving=False)
            signed = SignedRecord.decode(valid, domain=DATAGRAM_DOMAIN)
            # The stranger's datagram with a signature by somebody else.
            other_signature = seeded(99).sign(DATAGRAM_DOMAIN.encode() + b"\x00" + signed.body)
            resigned = SignedRecord(signed.domain, signed.body, signed.public_key, other_signature).encode()
            rng = random.Random(5)
            garbage = [
                b"",
                b"\x00",
                os.urandom(64),
                valid[:-1],
                valid[: len(valid) // 2],
                valid + b"\x00",
                resigned,
                # Version 1's domain (a version-1 peer's datagrams are refused as garbage).
                encode(stranger, b"u" * 8, Ping(), serving=False).replace(
                    DATAGRAM_DOMAIN.encode(), b"hubnet/dht/1"
                ),
                b"\x94" + b"\xc5\xff\xff" * 10,
                bytes(9000),  # over MAX_DATAGRAM
                *(rng.randbytes(rng.randrange(1, 1500)) for _ in range(40)),
            ]
            before = target.protocol.dropped
            raw = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with raw:
                await raw.bind(("127.0.0.1", 0))
                for data in garbage:
                    await raw.sendto(data, target.contact.address)
                # A valid request from the same socket still gets its answer...
                await raw.sendto(valid, target.contact.address)
                reply = decode(await raw.recv(65536))
                assert (reply.txid, reply.message, reply.sender) == (
                    b"t" * 8,
                    Pong(),
                    target.identity.public_key,
                )
            # ...and so does a node, after all that.
            assert await other.rpc(target.contact.address, Ping(), target.identity.public_key) == Pong()
            assert target.protocol.dropped - before == len(garbage)
            # The client socket (serving=False) was never put in the table.
            assert [c.public_key for c in target.protocol.table.contacts()] == [other.identity.public_key]


async def test_udp_rpc_times_out_on_silence() -> None:
    with trio.fail_after(UDP_DEADLINE):
        async with udp_nodes(1, k=20) as (node,):
            node.rpc_timeout = 0.2
            silent = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            with silent:
                await silent.bind(("127.0.0.1", 0))
                start = trio.current_time()
                assert await node.rpc(silent.getsockname(), Ping()) is None
                assert trio.current_time() - start >= 0.2


# -- on the in-memory network -----------------------------------------------------------------


@asynccontextmanager
async def full_bucket(
    net: MemoryNetwork,
) -> AsyncIterator[tuple[DhtNode, DhtNode, DhtNode, DhtNode]]:
    """A node (k=2) whose far bucket holds `first` then `second` and may not split; and a newcomer.

    The three share exactly the bits 10000 and our id starts with 0, so by the paper's rule
    (depth % 5 == 0, our id not in range) a third contact there finds the bucket full.
    """
    identities = identities_with_prefixes(["0", "100000", "100001", "10000"])
    nodes = [
        DhtNode(
            identity, net.transport((f"10.0.0.{i + 1}", 7070)), k=2, clock=lambda: EPOCH + trio.current_time()
        )
        for i, identity in enumerate(identities)
    ]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.serve)
        owner, first, second, newcomer = nodes
        for contact in (first, second):
            assert await contact.rpc(owner.contact.address, Ping()) == Pong()
            await trio.sleep(VERIFY_DELAY + 0.1)  # the owner pings it back, to prove its address
        assert [c.public_key for c in owner.protocol.table.contacts()] == [
            first.identity.public_key,
            second.identity.public_key,
        ]
        yield owner, first, second, newcomer
        nursery.cancel_scope.cancel()


async def test_full_bucket_dead_head_is_replaced(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with full_bucket(net) as (owner, first, second, newcomer):
        net.unplug(first.contact.address)
        await newcomer.rpc(owner.contact.address, Ping())  # for a token: then it can prove its address
        start = trio.current_time()
        assert await newcomer.rpc(owner.contact.address, Ping()) == Pong()  # answered at once
        assert trio.current_time() == start
        await trio.sleep(owner.rpc_timeout + 0.1)  # the owner pings the head, which is silent
        assert {c.public_key for c in owner.protocol.table.contacts()} == {
            second.identity.public_key,
            newcomer.identity.public_key,
        }


async def test_full_bucket_live_head_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with full_bucket(net) as (owner, first, second, newcomer):
        await newcomer.rpc(owner.contact.address, Ping())
        assert await newcomer.rpc(owner.contact.address, Ping()) == Pong()
        await trio.sleep(owner.rpc_timeout + 0.1)
        # The head answered the ping: it stays, now most recently seen; the newcomer waits.
        assert [c.public_key for c in owner.protocol.table.contacts()] == [
            second.identity.public_key,
            first.identity.public_key,
        ]


async def test_rpc_times_out_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    async with simulation(2) as sim:
        caller, callee = sim.nodes
        assert await caller.rpc(callee.contact.address, Ping(), callee.identity.public_key) == Pong()
        sim.unplug_node(callee)
        start = trio.current_time()
        assert await caller.rpc(callee.contact.address, Ping(), callee.identity.public_key) is None
        assert trio.current_time() - start == pytest.approx(caller.rpc_timeout)


async def test_seed_pinned_to_the_wrong_key_is_not_trusted(autojump_clock: trio.testing.MockClock) -> None:
    async with simulation(3) as sim:
        newcomer = await sim.add_node(seeds=[])
        honest = sim.nodes[0]
        wrong = Seed(honest.contact.address, sim.nodes[1].identity.public_key)
        assert await newcomer.bootstrap([wrong]) == 0  # no seed answered
        # Nothing holds the wrong key at the seed's address. (The seed itself may be there: it
        # pinged the newcomer back, to prove the newcomer's address, and answered its ping.)
        assert all(
            c.public_key != wrong.public_key or c.address != wrong.address
            for c in newcomer.protocol.table.contacts()
        )
        assert await newcomer.bootstrap([Seed(honest.contact.address)]) == 1  # unpinned: trusted
        assert len(newcomer.protocol.table) == 3


async def test_records_expire_from_stores_and_lookups(autojump_clock: trio.testing.MockClock) -> None:
    async with simulation(12, k=4) as sim:
        key = service_key(b"expiring")
        publisher, searcher = sim.nodes[0], sim.nodes[-1]
        # At the 4 closest others, and at the publisher too when it is among the closest.
        stored = await publisher.publish_provider(sim.provider_record(publisher, key, b"soon gone", ttl=90))
        assert stored in (4, 5)
        assert sum(len(node.protocol.store) for node in sim.nodes) == stored
        assert [r.payload for r in await searcher.find_providers(key)] == [b"soon gone"]
        await trio.sleep(90)
        assert await searcher.find_providers(key) == []  # readers hide it at once
        assert sum(len(node.protocol.store) for node in sim.nodes) == stored
        await trio.sleep(60)  # the stores drop it at their next expiry pass
        assert sum(len(node.protocol.store) for node in sim.nodes) == 0


async def test_contact_silent_during_a_lookup_is_evicted(autojump_clock: trio.testing.MockClock) -> None:
    """A contact that fails to answer a lookup's query must leave the routing table.

    Kademlia (section 2.2 of the paper; the `kademlia` package's `handle_call_response`)
    removes a contact that does not answer. DhtNode._run only tells the Lookup, so a dead
    contact stays in a non-full bucket for ever: every later lookup, ours and (through
    our answers) everyone's, waits a full RPC timeout on it, and after churn lookups miss
    live nodes they would otherwise have found (see test_dht_sim).
    """
    async with simulation(30, seed=2) as sim:
        searcher = sim.nodes[-1]
        victim = searcher.protocol.table.closest(bytes(ID_LEN))[0]
        sim.unplug_node(next(n for n in sim.nodes if n.identity.public_key == victim.public_key))
        found = await searcher.lookup(victim.id)
        assert victim not in found
        assert victim not in searcher.protocol.table.contacts()


async def test_find_node_answer_from_a_node_excludes_the_asker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with simulation(25, seed=3) as sim:
        asker, answerer = sim.nodes[0], sim.nodes[1]
        reply = await asker.rpc(answerer.contact.address, FindNode(node_id(asker.identity.public_key)))
        assert isinstance(reply, Nodes)
        assert len(reply.contacts) == min(sim.k, len(answerer.protocol.table) - 1)
        assert asker.identity.public_key not in {c.public_key for c in reply.contacts}
