"""dht.store: newest sequence wins, quotas per key, per publisher and in all, expiry."""

from __future__ import annotations

import pytest

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.sources import classify
from hubnet.dht.store import RecordRefused, RecordStore, StoreLimits
from hubnet.identity.keys import Identity

NOW = 1_700_000_000
PUBLISHERS = [Identity.from_seed(i.to_bytes(32, "big")) for i in range(1, 9)]
ALICE, BOB = PUBLISHERS[0], PUBLISHERS[1]


def key(index: int) -> bytes:
    return index.to_bytes(20, "big")


def provider(
    identity: Identity = ALICE, key_index: int = 1, *, sequence: int = 1, ttl: int = 600, issued_at: int = NOW
) -> ProviderRecord:
    return ProviderRecord.create(
        identity, key(key_index), f"seq {sequence}".encode(), sequence=sequence, issued_at=issued_at, ttl=ttl
    )


def node_record(identity: Identity = ALICE, *, sequence: int = 1, ttl: int = 600) -> NodeRecord:
    return NodeRecord.create(
        identity, (DirectAddress("192.0.2.1", 7070),), sequence=sequence, issued_at=NOW, ttl=ttl
    )


def test_stores_and_returns_providers_newest_issue_first() -> None:
    store = RecordStore()
    old = provider(ALICE, issued_at=NOW - 100)
    new = provider(BOB)
    store.add_provider(old)
    store.add_provider(new)
    assert store.providers(key(1), now=NOW) == [new, old]
    assert store.providers(key(2), now=NOW) == []
    assert len(store) == 2


def test_newest_sequence_wins() -> None:
    store = RecordStore()
    store.add_provider(provider(sequence=1))
    store.add_provider(provider(sequence=7))
    assert [r.sequence for r in store.providers(key(1), now=NOW)] == [7]
    assert len(store) == 1


@pytest.mark.parametrize("sequence", [7, 6, 0])
def test_replayed_older_or_equal_sequence_refused(sequence: int) -> None:
    store = RecordStore()
    newest = provider(sequence=7)
    store.add_provider(newest)
    with pytest.raises(RecordRefused, match="not newer"):
        store.add_provider(provider(sequence=sequence))
    assert store.providers(key(1), now=NOW) == [newest]


def test_older_sequence_refused_even_after_the_newer_expired_until_expire_runs() -> None:
    store = RecordStore()
    store.add_provider(provider(sequence=7, ttl=60))
    assert store.providers(key(1), now=NOW + 60) == []
    with pytest.raises(RecordRefused):
        store.add_provider(provider(sequence=6, issued_at=NOW + 60))
    assert store.expire(now=NOW + 60) == 1
    store.add_provider(provider(sequence=6, issued_at=NOW + 60))


def test_sequences_are_per_key_and_per_publisher() -> None:
    store = RecordStore()
    store.add_provider(provider(ALICE, 1, sequence=7))
    store.add_provider(provider(ALICE, 2, sequence=1))  # another key
    store.add_provider(provider(BOB, 1, sequence=1))  # another publisher
    assert len(store) == 3


def test_node_records_newest_sequence_wins() -> None:
    store = RecordStore()
    store.put_node(node_record(sequence=3))
    with pytest.raises(RecordRefused, match="not newer"):
        store.put_node(node_record(sequence=3))
    with pytest.raises(RecordRefused, match="not newer"):
        store.put_node(node_record(sequence=2))
    store.put_node(node_record(sequence=4))
    found = store.node(ALICE.public_key, now=NOW)
    assert found is not None and found.sequence == 4
    assert store.node(BOB.public_key, now=NOW) is None
    assert len(store) == 1


def test_per_key_quota() -> None:
    store = RecordStore(StoreLimits(max_per_key=3))
    for identity in PUBLISHERS[:3]:
        store.add_provider(provider(identity))
    with pytest.raises(RecordRefused, match="key has too many"):
        store.add_provider(provider(PUBLISHERS[3]))
    store.add_provider(provider(PUBLISHERS[3], key_index=2))  # another key has room
    store.add_provider(provider(PUBLISHERS[0], sequence=2))  # replacing takes no room
    assert len(store.providers(key(1), now=NOW)) == 3


def test_per_publisher_quota_counts_provider_and_node_records() -> None:
    store = RecordStore(StoreLimits(max_per_publisher=3))
    store.add_provider(provider(ALICE, 1))
    store.add_provider(provider(ALICE, 2))
    store.put_node(node_record(ALICE))
    with pytest.raises(RecordRefused, match="publisher has too many"):
        store.add_provider(provider(ALICE, 3))
    store.add_provider(provider(ALICE, 1, sequence=2))  # replacing takes no room
    store.put_node(node_record(ALICE, sequence=2))
    store.add_provider(provider(BOB, 3))  # others are not affected
    assert len(store) == 4


def test_node_record_refused_when_publisher_quota_is_full() -> None:
    store = RecordStore(StoreLimits(max_per_publisher=1))
    store.add_provider(provider(ALICE, 1))
    with pytest.raises(RecordRefused, match="publisher has too many"):
        store.put_node(node_record(ALICE))


def test_total_quota() -> None:
    store = RecordStore(StoreLimits(max_records=4))
    for index, identity in enumerate(PUBLISHERS[:3]):
        store.add_provider(provider(identity, index))
    store.put_node(node_record(PUBLISHERS[3]))
    with pytest.raises(RecordRefused, match="full"):
        store.add_provider(provider(PUBLISHERS[4], 9))
    with pytest.raises(RecordRefused, match="full"):
        store.put_node(node_record(PUBLISHERS[4]))
    store.add_provider(provider(PUBLISHERS[0], 0, sequence=2))  # replacing takes no room
    assert len(store) == 4


def test_refused_record_leaves_no_trace() -> None:
    store = RecordStore(StoreLimits(max_per_publisher=1))
    store.add_provider(provider(ALICE, 1))
    with pytest.raises(RecordRefused):
        store.add_provider(provider(ALICE, 2))
    assert store.providers(key(2), now=NOW) == []
    assert len(store) == 1
    assert store.expire(now=NOW + 600) == 1
    assert len(store) == 0
    store.add_provider(provider(ALICE, 2, issued_at=NOW + 600))


def test_expiry() -> None:
    store = RecordStore(StoreLimits(max_per_publisher=2, max_records=3))
    short = provider(ALICE, 1, ttl=60)
    long = provider(ALICE, 2, ttl=600)
    store.add_provider(short)
    store.add_provider(long)
    store.put_node(node_record(BOB, ttl=60))
    # Reads hide what has expired at once...
    assert store.providers(key(1), now=NOW + 59) == [short]
    assert store.providers(key(1), now=NOW + 60) == []
    assert store.node(BOB.public_key, now=NOW + 60) is None
    # ...but it keeps its room until expire() drops it.
    with pytest.raises(RecordRefused):
        store.add_provider(provider(ALICE, 3, issued_at=NOW + 60))
    assert store.expire(now=NOW + 59) == 0
    assert store.expire(now=NOW + 60) == 2
    assert len(store) == 1
    assert store.providers(key(2), now=NOW + 60) == [long]
    store.add_provider(provider(ALICE, 3, issued_at=NOW + 60))
    store.put_node(node_record(BOB, sequence=1))  # its old sequence is forgotten with it
    assert store.expire(now=NOW + 10_000) == 3
    assert len(store) == 0


# -- quotas by source (dht.sources: public IPv4 host and /24; loopback and private ip:port) ----

PUBLIC = ("203.0.113.5", 7070)


def many(count: int, *, key_index: int = 1, start: int = 100, ttl: int = 600) -> list[ProviderRecord]:
    """Records of `count` new publishers; the i-th lives `ttl` + i seconds."""
    return [
        provider(Identity.from_seed((start + i).to_bytes(32, "big")), key_index, ttl=ttl + i)
        for i in range(count)
    ]


def test_one_host_holds_few_records_under_a_key() -> None:
    store = RecordStore()
    limit = store.limits.max_per_key_per_host
    for record in many(limit):
        store.add_provider(record, source=PUBLIC)
    with pytest.raises(RecordRefused, match="your address has too many providers under this key"):
        store.add_provider(many(1, start=500)[0], source=("203.0.113.5", 9999))  # any port of the host
    store.add_provider(many(1, start=500)[0], source=("203.0.113.6", 7070))  # another host of its /24
    store.add_provider(many(1, start=501, key_index=2)[0], source=PUBLIC)  # another key
    # A publisher that moves its record to another source takes its count along.
    store.add_provider(
        provider(Identity.from_seed((100).to_bytes(32, "big")), sequence=2), source=("192.0.2.1", 1)
    )
    store.add_provider(many(1, start=502)[0], source=PUBLIC)
    assert store.held_from(PUBLIC) == (limit + 1, limit + 2)


def test_one_network_holds_few_records_under_a_key() -> None:
    store = RecordStore(StoreLimits(max_per_key_per_host=2, max_per_key_per_network=5))
    for index, record in enumerate(many(5)):
        store.add_provider(record, source=(f"203.0.113.{index // 2 + 1}", 7070))
    with pytest.raises(RecordRefused, match="your network has too many providers under this key"):
        store.add_provider(many(1, start=500)[0], source=("203.0.113.99", 7070))
    store.add_provider(many(1, start=500)[0], source=("203.0.114.1", 7070))


def test_loopback_and_private_sources_count_per_socket() -> None:
    store = RecordStore(StoreLimits(max_per_key_per_host=2))
    records = iter(many(20))
    for port in range(10):  # a dozen nodes on one machine, or one LAN, all fit
        store.add_provider(next(records), source=("127.0.0.1", 7000 + port))
        store.add_provider(next(records), source=(f"192.168.1.{port + 1}", 7070))
    assert len(store) == 20
    store.add_provider(many(1, start=900)[0], source=("127.0.0.1", 7000))
    with pytest.raises(RecordRefused, match="your address"):
        store.add_provider(many(1, start=901)[0], source=("127.0.0.1", 7000))


def test_a_full_key_gives_way_to_a_network_holding_fewer_of_its_records() -> None:
    store = RecordStore(StoreLimits(max_per_key=6, max_per_key_per_host=6, max_per_key_per_network=6))
    fakes = many(6)
    for record in fakes[:4]:  # fakes[0] expires first
        store.add_provider(record, source=("203.0.113.1", 7070))
    for record in fakes[4:]:
        store.add_provider(record, source=("198.51.100.1", 7070))
    honest = many(3, start=700)
    # The first newcomer from elsewhere takes the place of the record expiring first in the
    # network holding most (4 >= 0 + 2).
    store.add_provider(honest[0], source=("192.0.2.1", 7070))
    kept = {r.publisher for r in store.providers(key(1), now=NOW)}
    assert fakes[0].publisher not in kept and honest[0].publisher in kept and len(kept) == 6
    # 3 and 2 and 1: the next from a fourth network still gets in (3 >= 0 + 2)...
    store.add_provider(honest[1], source=("192.0.2.200", 7070))
    # ...then 2, 2, 1, 1: a third from 192.0.2.0/24 (holding 2) does not (2 < 2 + 2).
    with pytest.raises(RecordRefused, match="key has too many providers"):
        store.add_provider(honest[2], source=("192.0.2.2", 7070))
    assert len(store) == 6 and store.held_from(("203.0.113.1", 1)) == (2, 2)


def test_own_records_are_never_evicted_and_take_room_as_a_network() -> None:
    store = RecordStore(StoreLimits(max_per_key=3, max_per_key_per_host=3, max_per_key_per_network=3))
    own, *fakes = many(4)
    store.add_provider(own)
    for record in fakes[:2]:
        store.add_provider(record, source=PUBLIC)
    mine = many(1, start=800)[0]
    with pytest.raises(RecordRefused, match="key has too many providers"):
        store.add_provider(mine)  # 2 < 1 + 2: the fakes' network does not give way
    store = RecordStore(StoreLimits(max_per_key=3, max_per_key_per_host=3, max_per_key_per_network=3))
    for record in fakes:
        store.add_provider(record, source=PUBLIC)
    store.add_provider(mine)  # 3 >= 0 + 2
    assert mine in store.providers(key(1), now=NOW)


def test_one_host_and_one_network_hold_few_records_in_all() -> None:
    store = RecordStore(StoreLimits(max_per_host=3, max_per_network=5))
    for index in range(3):
        store.add_provider(many(1, key_index=index, start=100 + index)[0], source=PUBLIC)
    with pytest.raises(RecordRefused, match="your address has too many records here"):
        store.put_node(node_record(BOB), source=PUBLIC)
    store.put_node(node_record(BOB), source=("203.0.113.6", 1))
    store.add_provider(many(1, key_index=9, start=200)[0], source=("203.0.113.7", 1))
    with pytest.raises(RecordRefused, match="your network has too many records here"):
        store.add_provider(many(1, key_index=9, start=201)[0], source=("203.0.113.8", 1))
    assert store.expire(now=NOW + 601) == 5
    assert store.held_from(PUBLIC) == (0, 0) and len(store) == 0
    store.add_provider(many(1, key_index=9, start=201)[0], source=("203.0.113.8", 1))


def test_counts_stay_true_whatever_comes_and_goes() -> None:
    """len() and the per-source counts are kept as records come and go (never recounted),
    and always equal a recount."""
    import random

    rng = random.Random(3)
    store = RecordStore(
        StoreLimits(max_per_key=5, max_per_key_per_host=3, max_per_key_per_network=4, max_records=40)
    )
    publishers = [Identity.from_seed((300 + i).to_bytes(32, "big")) for i in range(12)]
    sources = [("203.0.113.1", 1), ("203.0.113.2", 1), ("198.51.100.1", 1), ("127.0.0.1", 5), None]
    sequence = 1
    for step in range(400):
        sequence += 1
        publisher = rng.choice(publishers)
        source = rng.choice(sources)
        try:
            if rng.random() < 0.2:
                store.put_node(
                    node_record(publisher, sequence=sequence, ttl=rng.choice([60, 600])), source=source
                )
            else:
                record = provider(publisher, rng.randrange(4), sequence=sequence, ttl=rng.choice([60, 600]))
                store.add_provider(record, source=source)
        except RecordRefused:
            pass
        if step % 50 == 49:
            store.expire(now=NOW + rng.choice([0, 61, 601]))
        held = [h for by in store._providers.values() for h in by.values()]
        assert len(store) == len(held) + len(store._nodes)
        for address in sources[:-1]:
            source_keys = classify(address)
            hosts = sum(1 for h in held if h.source and h.source.host == source_keys.host)
            hosts += sum(1 for _, s in store._nodes.values() if s and s.host == source_keys.host)
            networks = sum(1 for h in held if h.source and h.source.network == source_keys.network)
            networks += sum(1 for _, s in store._nodes.values() if s and s.network == source_keys.network)
            assert store.held_from(address) == (hosts, networks)
        for by in store._providers.values():
            assert len(by) <= 5


def test_a_page_of_raw_records_in_read_order() -> None:
    store = RecordStore()
    records = [provider(p, issued_at=NOW - i) for i, p in enumerate(PUBLISHERS)]
    for record in records:
        store.add_provider(record)
    raws, total = store.provider_page(key(1), now=NOW, skip=2, count=3)
    assert total == len(PUBLISHERS)
    assert raws == [r.raw for r in store.providers(key(1), now=NOW)][2:5]
    assert store.providers(key(1), now=NOW) == records  # parsed again, equal to what came in
