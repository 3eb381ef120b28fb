"""dht.store: newest sequence wins, quotas per key, per publisher and in all, expiry."""

from __future__ import annotations

import pytest

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.records import NodeRecord, ProviderRecord
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
