"""dht.routing: k-buckets that report a full bucket's head instead of pinging it themselves."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.dht.ids import ID_BITS, ID_LEN, distance
from hubnet.dht.messages import Contact
from hubnet.dht.routing import MAX_PER_NETWORK, MAX_PER_NETWORK_PER_BUCKET, K, RoutingTable
from hubnet.dht.sources import classify

FAST = settings(max_examples=100, deadline=None, derandomize=True)


def contact_with_id(long_id: int, port: int = 7070) -> Contact:
    """A Contact whose id is forced to `long_id` (ids normally derive from the key), at a
    private address of its own (a table holds one contact per address)."""
    h = int.from_bytes(hashlib.blake2b(long_id.to_bytes(ID_LEN, "big")).digest()[:3], "big")
    contact = Contact(long_id.to_bytes(32, "big"), f"10.{h >> 16}.{h >> 8 & 255}.{h & 255}", port)
    contact.id = long_id.to_bytes(ID_LEN, "big")
    contact.long_id = long_id
    return contact


def prefixed(prefix: str, rest: int) -> Contact:
    """A contact whose id starts with the bits `prefix`, then `rest` in the remaining bits."""
    shift = ID_BITS - len(prefix)
    return contact_with_id(int(prefix, 2) << shift | rest % (1 << shift))


OWN = contact_with_id(0)  # its id starts with 0 bits


def test_contact_with_id_helper_keeps_ids_consistent() -> None:
    contact = prefixed("10000", 5)
    assert contact.long_id == int.from_bytes(contact.id, "big")
    assert contact.id[0] >> 3 == 0b10000


def test_adds_up_to_k_and_ignores_own_id() -> None:
    table = RoutingTable(OWN, k=4)
    assert table.add_contact(contact_with_id(0, port=9999)) is None  # our own id
    assert len(table) == 0
    added = [prefixed("1", i) for i in range(1, 5)]
    for contact in added:
        assert table.add_contact(contact) is None
    assert len(table) == 4
    assert set(table.contacts()) == set(added)


def test_re_adding_moves_a_contact_to_the_tail_without_duplicating() -> None:
    table = RoutingTable(OWN, k=4)
    contacts = [prefixed("10000", i << 150) for i in range(4)]
    for contact in contacts:
        table.add_contact(contact)
    table.add_contact(contacts[0])
    assert len(table) == 4
    assert table.contacts() == [*contacts[1:], contacts[0]]


def full_far_bucket(k: int = 4) -> tuple[RoutingTable, list[Contact]]:
    """A table whose far half holds one full bucket that may not split.

    The contacts share exactly 5 leading bits (10000, then 0 or 1), and the bucket does not
    hold our own id, so by the paper's rule (depth % 5 == 0) it is not split again.
    """
    table = RoutingTable(OWN, k=k)
    contacts = [prefixed("10000" + "01"[i % 2], i + 1) for i in range(k)]
    for contact in contacts:
        assert table.add_contact(contact) is None
    return table, contacts


def test_full_bucket_returns_its_head_and_keeps_the_newcomer_aside() -> None:
    table, contacts = full_far_bucket()
    newcomer = prefixed("100001", 99)
    assert table.add_contact(newcomer) is contacts[0]  # least recently seen
    assert newcomer not in table.contacts()
    assert set(table.contacts()) == set(contacts)


def test_head_that_answers_stays_and_newcomer_waits() -> None:
    table, contacts = full_far_bucket()
    newcomer = prefixed("100001", 99)
    assert table.add_contact(newcomer) is contacts[0]
    assert table.add_contact(contacts[0]) is None  # it answered the ping: seen again
    assert set(table.contacts()) == set(contacts)
    assert table.add_contact(prefixed("100000", 77)) is contacts[1]  # now the oldest


def test_evicting_the_head_promotes_the_newcomer() -> None:
    table, contacts = full_far_bucket()
    newcomer = prefixed("100001", 99)
    assert table.add_contact(newcomer) is contacts[0]
    table.evict(contacts[0])
    assert set(table.contacts()) == {*contacts[1:], newcomer}


def test_evicting_without_a_replacement_just_removes() -> None:
    table, contacts = full_far_bucket()
    table.evict(contacts[2])
    assert set(table.contacts()) == {contacts[0], contacts[1], contacts[3]}
    table.evict(prefixed("100000", 12345))  # unknown: nothing happens
    assert len(table) == 3


def test_buckets_near_our_own_id_split() -> None:
    table = RoutingTable(OWN, k=2)
    near = [prefixed("0" * depth + "1", 1) for depth in range(1, 12)]  # one per distance range
    for contact in near:
        assert table.add_contact(contact) is None
    assert set(table.contacts()) == set(near)


@FAST
@given(
    own=st.integers(0, 2**ID_BITS - 1),
    others=st.lists(st.integers(0, 2**ID_BITS - 1), max_size=120, unique=True),
    target=st.integers(0, 2**ID_BITS - 1),
    count=st.integers(1, 30),
    k=st.integers(1, 8),
)
def test_closest_is_the_true_closest_of_what_it_holds(
    own: int, others: list[int], target: int, count: int, k: int
) -> None:
    """closest() equals brute force over every contact the table accepted (and holds)."""
    table = RoutingTable(contact_with_id(own), k=k)
    accepted: dict[bytes, Contact] = {}
    for long_id in others:
        contact = contact_with_id(long_id)
        if table.add_contact(contact) is None and long_id != own:
            accepted[contact.id] = contact
    assert {c.id for c in table.contacts()} == set(accepted)
    assert own.to_bytes(ID_LEN, "big") not in accepted
    target_id = target.to_bytes(ID_LEN, "big")
    by_distance = sorted(accepted.values(), key=lambda c: distance(c.id, target_id))
    assert table.closest(target_id, count) == by_distance[:count]
    assert table.closest(target_id) == by_distance[:k]


def test_closest_defaults_to_k_and_scans_every_bucket() -> None:
    """Many random contacts: closest() from any target matches brute force over those accepted."""
    rng = random.Random(7)
    table = RoutingTable(contact_with_id(rng.getrandbits(ID_BITS)), k=K)
    held = []
    for _ in range(2000):
        contact = contact_with_id(rng.getrandbits(ID_BITS))
        if table.add_contact(contact) is None:
            held.append(contact)
    assert len(table.buckets) > 5
    assert len(held) < 2000  # some buckets were full
    for _ in range(50):
        target = rng.randbytes(ID_LEN)
        got = table.closest(target)
        assert len(got) == K
        assert got == sorted(held, key=lambda c: distance(c.id, target))[:K]


def test_stale_buckets_name_a_target_inside_each_stale_bucket_once() -> None:
    rng = random.Random(3)
    table = RoutingTable(OWN, k=2)
    for _ in range(60):
        table.add_contact(contact_with_id(rng.getrandbits(ID_BITS)))
    targets = table.stale_buckets(now=1000.0, interval=600.0)
    assert len(targets) == len(table.buckets)
    for bucket, target in zip(table.buckets, targets, strict=True):
        assert bucket.range[0] <= int.from_bytes(target, "big") <= bucket.range[1]
    assert table.stale_buckets(now=1100.0, interval=600.0) == []
    table.mark_refreshed(targets[0], now=2000.0)  # a lookup ran in the first bucket
    assert table.stale_buckets(now=2500.0, interval=600.0) == targets[1:]
    assert table.stale_buckets(now=2600.0, interval=600.0) == []  # each is named once per interval


# -- one host, one network: quotas (dht.sources) --------------------------------------------


def at(long_id: int, host: str, port: int = 7070) -> Contact:
    contact = contact_with_id(long_id, port)
    contact.ip = host
    return contact


def test_a_second_key_at_an_address_asks_for_the_first_to_be_pinged() -> None:
    table = RoutingTable(OWN, k=4)
    first, second = at(prefixed("1", 1).long_id, "203.0.113.5"), at(prefixed("1", 2).long_id, "203.0.113.5")
    assert table.add_contact(first) is None
    assert table.add_contact(second) is first  # not added: ping the one there
    assert table.contacts() == [first]
    assert not table.wants(second)
    table.evict(first)  # it did not answer
    assert table.add_contact(second) is None
    assert table.contacts() == [second]


def test_evict_drops_only_the_very_contact() -> None:
    table = RoutingTable(OWN, k=4)
    known = at(prefixed("1", 1).long_id, "203.0.113.5")
    table.add_contact(known)
    table.evict(at(known.long_id, "203.0.113.6"))  # its id, named at another address: failed there
    assert table.contacts() == [known]
    table.evict(known)
    assert table.contacts() == []


def test_a_public_network_holds_two_places_a_bucket_and_ten_a_table() -> None:
    rng = random.Random(5)
    table = RoutingTable(contact_with_id(rng.getrandbits(ID_BITS)), k=K)
    for _ in range(400):  # many buckets, of private contacts (each a network of its own)
        table.add_contact(contact_with_id(rng.getrandbits(ID_BITS)))
    hostile = [at(rng.getrandbits(ID_BITS), f"203.0.113.{i + 1}") for i in range(200)]
    for contact in hostile:
        if table.wants(contact):
            assert table.add_contact(contact) is None
        else:
            table.add_contact(contact)
    held = [c for c in table.contacts() if c.ip.startswith("203.0.113.")]
    assert 2 < len(held) <= MAX_PER_NETWORK
    for bucket in table.buckets:
        assert sum(c.ip.startswith("203.0.113.") for c in bucket.get_nodes()) <= MAX_PER_NETWORK_PER_BUCKET
    # IPv6: a /48 is the network.
    v6 = [at(rng.getrandbits(ID_BITS), f"2001:db8:1:{i:x}::1") for i in range(60)]
    for contact in v6:
        table.add_contact(contact)
    assert 2 < sum(c.ip.startswith("2001:db8:1:") for c in table.contacts()) <= MAX_PER_NETWORK


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "add", "add", "evict"]),
            st.integers(0, 2**ID_BITS - 1),
            st.sampled_from(["203.0.113.1", "203.0.113.2", "198.51.100.1", "10.0.0.1", "127.0.0.1"]),
            st.integers(1, 4),
        ),
        max_size=150,
    ),
    st.integers(1, 6),
)
def test_quotas_and_the_address_index_hold_whatever_happens(
    operations: list[tuple[str, int, str, int]], k: int
) -> None:
    table = RoutingTable(OWN, k=k)
    added: list[Contact] = []
    for action, long_id, host, port in operations:
        contact = at(long_id, host, port)
        if action == "add":
            wanted = table.wants(contact)
            result = table.add_contact(contact)
            if wanted:
                assert result is None and contact in table.contacts()
            added.append(contact)
        elif added:
            table.evict(added[long_id % len(added)])
        contacts = table.contacts()
        assert len({c.address for c in contacts}) == len(contacts)  # one per address
        assert table._at == {c.address: c for c in contacts}
        networks: dict[str, int] = {}
        for contact in contacts:
            network = classify(contact.address).network
            networks[network] = networks.get(network, 0) + 1
        assert table._per_network == networks
        for bucket in table.buckets:
            per_bucket: dict[str, int] = {}
            for contact in bucket.get_nodes():
                source = classify(contact.address)
                per_bucket[source.network] = per_bucket.get(source.network, 0) + 1
                assert source.local or per_bucket[source.network] <= MAX_PER_NETWORK_PER_BUCKET
        assert all(count <= MAX_PER_NETWORK for network, count in networks.items())
