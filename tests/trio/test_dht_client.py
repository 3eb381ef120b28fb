"""The blocking one-shot DHT client against real Trio nodes on 127.0.0.1 UDP.

The client runs in a worker thread (as it would in its own process) while the nodes run in
the test's Trio loop, so both drivers of the same sans-IO core meet over real sockets.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.client import DhtClient, read_tokens
from hubnet.dht.ids import service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.node import DhtNode
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.transport import UdpTransport
from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity

NODES = 6


@pytest.fixture
async def nodes(nursery: trio.Nursery) -> AsyncIterator[list[DhtNode]]:
    started: list[DhtNode] = []
    for i in range(NODES):
        transport = await UdpTransport.bind("127.0.0.1", 0)
        node = DhtNode(Identity.from_seed(bytes([i + 1]) * 32), transport, rpc_timeout=2.0)
        await nursery.start(node.serve)
        if started:
            await node.bootstrap([Seed(started[-1].contact.address, started[-1].identity.public_key)])
        started.append(node)
    yield started
    for node in started:
        node.transport.close()


def _client(seeds: list[Seed], **options: float) -> DhtClient:
    return DhtClient(Identity.generate(), seeds, **options)


def _seed(node: DhtNode, *, pinned: bool = True) -> Seed:
    return Seed(node.contact.address, node.identity.public_key if pinned else None)


async def test_client_finds_every_providers_record(nodes: list[DhtNode]) -> None:
    key = service_key(b"k" * 16)
    now = int(time.time())
    for publisher in nodes[1:4]:
        record = ProviderRecord.create(publisher.identity, key, b"offer", sequence=1, issued_at=now, ttl=300)
        assert await publisher.publish_provider(record) > 0

    def lookup() -> list[ProviderRecord]:
        with _client([_seed(nodes[0])]) as client:
            return client.find_providers(key)

    found = await trio.to_thread.run_sync(lookup)
    assert {r.publisher for r in found} == {n.identity.public_key for n in nodes[1:4]}


async def test_client_learns_an_unpinned_seeds_key_and_finds_all_nodes(nodes: list[DhtNode]) -> None:
    def lookup() -> set[bytes]:
        with _client([_seed(nodes[-1], pinned=False)]) as client:
            client.find_nodes(b"\x00" * 20)
            return {c.public_key for c in client.seen.values()}

    seen = await trio.to_thread.run_sync(lookup)
    assert seen == {n.identity.public_key for n in nodes}


async def test_client_finds_a_node_record(nodes: list[DhtNode]) -> None:
    target = nodes[2]
    record = NodeRecord.create(
        target.identity, (DirectAddress("127.0.0.1", 9999),), sequence=5, issued_at=int(time.time()), ttl=300
    )
    assert await target.publish_node_record(record) > 0

    def lookup() -> NodeRecord | None:
        with _client([_seed(nodes[0])]) as client:
            return client.find_node_record(target.identity.public_key)

    found = await trio.to_thread.run_sync(lookup)
    assert (
        found is not None and found.addresses == (DirectAddress("127.0.0.1", 9999),) and found.sequence == 5
    )


async def test_a_client_is_never_added_to_a_routing_table(nodes: list[DhtNode]) -> None:
    client_identity = Identity.generate()

    def lookup() -> None:
        with DhtClient(client_identity, [_seed(nodes[0])]) as client:
            client.find_nodes(client_identity.public_key[:20])

    await trio.to_thread.run_sync(lookup)
    for node in nodes:
        assert all(c.public_key != client_identity.public_key for c in node.protocol.table.contacts())


def test_no_answering_seed_is_a_transport_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        seed = Seed(silent.getsockname(), None)
        with _client([seed], rpc_timeout=0.2) as client, pytest.raises(TransportError, match="no DHT node"):
            client.find_providers(b"\x01" * 20)


def test_a_pinned_seed_that_never_answers_fails_the_lookup_quietly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        seed = Seed(silent.getsockname(), Identity.generate().public_key)
        with _client([seed], rpc_timeout=0.2) as client:
            assert client.find_providers(b"\x01" * 20) == []


async def test_client_publishes_a_record_that_the_nodes_then_serve(nodes: list[DhtNode]) -> None:
    key = service_key(b"p" * 16)
    publisher = Identity.generate()
    record = ProviderRecord.create(publisher, key, b"list", sequence=1, issued_at=int(time.time()), ttl=300)

    def publish() -> int:
        with _client([_seed(nodes[0])]) as client:
            return client.publish_provider(record)

    stored = await trio.to_thread.run_sync(publish)
    assert stored == NODES  # fewer than k nodes: every one keeps it
    assert [r.raw for r in await nodes[-1].find_providers(key)] == [record.raw]


async def test_a_client_that_keeps_its_tokens_is_answered_in_full_the_next_run(
    nodes: list[DhtNode], tmp_path: Path
) -> None:
    key = service_key(b"t" * 16)
    now = int(time.time())
    publishers = [Identity.generate() for _ in range(12)]
    records = [
        ProviderRecord.create(p, key, b"o" * 150, sequence=1, issued_at=now, ttl=300) for p in publishers
    ]
    for i, record in enumerate(records):  # from several sources: the stores' quotas are per source
        assert await nodes[i % NODES].publish_provider(record) > 0
    tokens = tmp_path / "dht-tokens"

    def run() -> set[bytes]:
        with DhtClient(Identity.generate(), [_seed(nodes[0])], tokens_file=tokens) as client:
            return {r.publisher for r in client.find_providers(key)}

    def cut() -> int:  # replies the nodes cut to the size of a request that proved nothing
        return sum(node.protocol.cut for node in nodes)

    assert await trio.to_thread.run_sync(run) == {p.public_key for p in publishers}
    first = read_tokens(tokens)
    assert first is not None and {address for address, _, _ in first.tokens} == {
        n.contact.address for n in nodes
    }
    before = cut()
    assert await trio.to_thread.run_sync(run) == {p.public_key for p in publishers}
    assert cut() == before  # every first request carried its node's token
    again = read_tokens(tokens)
    assert again is not None and again.port == first.port

    # The port taken meanwhile (the tokens are for it alone): another port, the records still found.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("0.0.0.0", first.port))
        assert await trio.to_thread.run_sync(run) == {p.public_key for p in publishers}
    moved = read_tokens(tokens)
    assert moved is not None and moved.port != first.port and len(moved.tokens) == NODES


async def test_a_tokens_file_of_garbage_changes_nothing_but_itself(
    nodes: list[DhtNode], tmp_path: Path
) -> None:
    key = service_key(b"g" * 16)
    record = ProviderRecord.create(
        Identity.generate(), key, b"offer", sequence=1, issued_at=int(time.time()), ttl=300
    )
    assert await nodes[1].publish_provider(record) > 0
    tokens = tmp_path / "dht-tokens"
    tokens.write_bytes(b"port 99999\n\xff\xfe\nport x\n127.0.0.1 1 nothex 5\n" + b"z" * 5000)

    def run() -> list[ProviderRecord]:
        with DhtClient(Identity.generate(), [_seed(nodes[0])], tokens_file=tokens) as client:
            return client.find_providers(key)

    assert [r.raw for r in await trio.to_thread.run_sync(run)] == [record.raw]
    kept = read_tokens(tokens)
    assert kept is not None and len(kept.tokens) == NODES
