"""dht.lookup and dht.protocol: the sans-IO lookup machine and protocol, driven by hand.

The lookups run on a fake network of pure functions: every node answers with the closest
contacts in its own k-bucket routing table (the real `RoutingTable`, offered its nearest
neighbours and a random sample of the others), so the lookup has to walk towards the
target as it would on the wire.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import ID_LEN, distance, node_id
from hubnet.dht.lookup import Lookup, ProviderLookup, Query
from hubnet.dht.messages import (
    MAX_RECORDS_PER_REPLY,
    AddProvider,
    Contact,
    FindNode,
    GetNode,
    GetProviders,
    NodeFound,
    Nodes,
    Ping,
    Pong,
    Providers,
    PutNode,
    Reply,
    Stored,
    decode,
    encode,
)
from hubnet.dht.protocol import DhtProtocol, PingNeeded, ReplyReceived, Send, VerifyNeeded
from hubnet.dht.records import NodeRecord, ProviderRecord, ProviderResults
from hubnet.dht.routing import RoutingTable
from hubnet.dht.store import RecordStore, StoreLimits
from hubnet.identity.keys import Identity
from tests.dht_sim import identities_with_prefixes
from tests.helpers import tampered

NOW = 1_700_000_000
K = 8
NETWORK_SIZE = 300


# -- a fake network of pure functions -------------------------------------------------------


def contact(index: int) -> Contact:
    public_key = Identity.from_seed(index.to_bytes(32, "big")).public_key
    return Contact(public_key, f"10.0.{index >> 8}.{index & 255}", 7070)


@functools.cache
def fake_network(size: int = NETWORK_SIZE, k: int = K) -> tuple[list[Contact], dict[bytes, RoutingTable]]:
    """`size` contacts, each with a routing table offered its 2k nearest and 40 random others.

    Knowing one's own neighbourhood is what Kademlia maintains (a node looks itself up on
    joining); the random sample stands for everything else it happened to meet.
    """
    rng = random.Random(size)
    contacts = [contact(i) for i in range(size)]
    tables = {}
    for own in contacts:
        table = RoutingTable(own, k=k)
        for other in true_closest(contacts, own.id, 2 * k + 1) + rng.sample(contacts, 40):
            table.add_contact(other)
        tables[own.id] = table
    return contacts, tables


def true_closest(contacts: Iterable[Contact], target: bytes, k: int = K) -> list[Contact]:
    return sorted(contacts, key=lambda c: distance(c.id, target))[:k]


Answer = Callable[[Contact, bytes], list[Contact] | None]


def run_queries(lookup: Lookup, answer: Callable[[Query], Reply | None], rng: random.Random) -> list[Query]:
    """Run `lookup` to the end, completing its in-flight queries in a random order.

    `answer(query)` is the reply, or None if there is none. Returns every query sent, in order.
    """
    sent: list[Query] = []
    in_flight: list[Query] = []
    while True:
        queries = lookup.next_queries()
        sent += queries
        in_flight += queries
        assert len(in_flight) <= lookup.alpha
        if lookup.finished:
            assert not in_flight
            return sent
        assert in_flight, "a lookup that is not finished must be waiting for something"
        query = in_flight.pop(rng.randrange(len(in_flight)))
        reply = answer(query)
        if reply is None:
            lookup.failed(query)
        else:
            lookup.replied(query, reply)


def drive(
    lookup: Lookup, answer: Answer, rng: random.Random, named: dict[bytes, Contact] | None = None
) -> Counter[bytes]:
    """Run a node lookup to the end, completing its in-flight queries in a random order.

    `answer(contact, target)` is the contacts it names, or None if it does not answer;
    `named` collects every contact named. Returns how many times each contact was asked.
    """

    def reply(query: Query) -> Nodes | None:
        assert query.request == FindNode(lookup.target)
        closer = answer(query.contact, lookup.target)
        if closer is None:
            return None
        if named is not None:
            named.update((c.id, c) for c in closer)
        return Nodes(tuple(closer))

    return Counter(query.contact.id for query in run_queries(lookup, reply, rng))


def table_answer(
    tables: dict[bytes, RoutingTable], querier: Contact, dead: frozenset[bytes] = frozenset()
) -> Answer:
    """Each node answers from its table, leaving the querier out (as DhtProtocol does)."""

    def answer(asked: Contact, target: bytes) -> list[Contact] | None:
        if asked.id in dead:
            return None
        closest = tables[asked.id].closest(target, K + 1)
        return [c for c in closest if c.id != querier.id][:K]

    return answer


def test_fake_network_is_not_all_knowing() -> None:
    """The lookup tests below mean something only if no node knows everyone."""
    contacts, tables = fake_network()
    assert max(len(t) for t in tables.values()) < len(contacts) // 4


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    querier_index=st.integers(0, NETWORK_SIZE - 1),
    target=st.binary(min_size=ID_LEN, max_size=ID_LEN),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_lookup_converges_to_the_true_k_closest(querier_index: int, target: bytes, order_seed: int) -> None:
    contacts, tables = fake_network()
    querier = contacts[querier_index]
    lookup = Lookup(target, tables[querier.id].closest(target), k=K, alpha=3)
    asked = drive(lookup, table_answer(tables, querier), random.Random(order_seed))
    others = [c for c in contacts if c.id != querier.id]
    assert lookup.closest() == true_closest(others, target)
    assert max(asked.values()) == 1  # nobody is asked twice
    assert lookup.queries == len(asked)
    assert lookup.queries < len(contacts) // 4  # it walked there; it did not ask everyone


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    querier_index=st.integers(0, NETWORK_SIZE - 1),
    target=st.binary(min_size=ID_LEN, max_size=ID_LEN),
    dead_seed=st.integers(0, 2**32 - 1),
)
def test_failed_contacts_are_not_asked_again_nor_returned(
    querier_index: int, target: bytes, dead_seed: int
) -> None:
    contacts, tables = fake_network()
    querier = contacts[querier_index]
    others = [c for c in contacts if c.id != querier.id]
    # A quarter of the nodes are dead, among them half of the true closest (so they are met).
    rng = random.Random(dead_seed)
    near = true_closest(others, target, 2 * K)
    dead = frozenset(c.id for c in rng.sample(near, K) + rng.sample(others, len(others) // 4))
    seeds = tables[querier.id].closest(target)
    lookup = Lookup(target, seeds, k=K, alpha=3)
    named = {c.id: c for c in seeds}
    asked = drive(lookup, table_answer(tables, querier, dead), rng, named)
    assert max(asked.values()) == 1
    assert any(i in dead for i in asked)  # the dead were met...
    found = lookup.closest()
    assert not {c.id for c in found} & dead  # ...and never returned
    # It returns the k closest live nodes it heard of. (Not necessarily the true k closest
    # live ones: answers name at most k contacts, dead ones among them, and so may never
    # name the live nodes just beyond; the simulation measures how often that happens.)
    assert found == true_closest([c for c in named.values() if c.id not in dead], target)
    assert found


def test_lookup_without_seeds_finishes_empty() -> None:
    lookup = Lookup(bytes(ID_LEN), [], k=K)
    assert lookup.finished
    assert lookup.next_queries() == []
    assert lookup.closest() == []


def test_lookup_keeps_at_most_alpha_in_flight_and_waits() -> None:
    seeds = [contact(i) for i in range(10)]
    lookup = Lookup(bytes(ID_LEN), seeds, k=K, alpha=3)
    first = lookup.next_queries()
    assert len(first) == 3
    assert lookup.next_queries() == []  # all three still in flight
    assert not lookup.finished
    lookup.replied(first[0], Nodes(()))
    assert len(lookup.next_queries()) == 1
    assert lookup.queries == 4


def test_contacts_named_after_failing_are_ignored() -> None:
    a, b, c = contact(1), contact(2), contact(3)
    lookup = Lookup(bytes(ID_LEN), [a, b], k=K, alpha=1)
    [first] = lookup.next_queries()
    lookup.failed(first)
    [second] = lookup.next_queries()
    assert second.contact != first.contact
    lookup.replied(second, Nodes((first.contact, c)))  # names the one that failed: not asked again
    [third] = lookup.next_queries()
    assert third == Query(c, FindNode(bytes(ID_LEN)))
    lookup.replied(third, Nodes((first.contact, second.contact)))
    assert lookup.finished
    assert set(lookup.closest()) == {second.contact, c}
    assert lookup.failures == 1


def test_a_liar_naming_ever_closer_fakes_cannot_keep_a_lookup_going() -> None:
    target = bytes(ID_LEN)
    # Farthest first: every answer names contacts closer than all named before.
    fakes = sorted((contact(i) for i in range(1, 400)), key=lambda c: -distance(c.id, target))
    lookup = Lookup(target, fakes[:1], k=4, alpha=1, max_queries=30)
    named = 1
    while not lookup.finished:
        [asked] = lookup.next_queries()
        lookup.replied(asked, Nodes(tuple(fakes[named : named + 4])))
        named += 4
        assert lookup.queries <= 30
    assert lookup.queries == 30 and named < len(fakes)  # stopped by the budget, not by running dry


def test_lookup_returns_only_those_that_replied() -> None:
    contacts = [contact(i) for i in range(12)]
    target = bytes(ID_LEN)
    lookup = Lookup(target, contacts, k=4, alpha=4)
    silent: set[bytes] = set()
    while not lookup.finished:
        for query in lookup.next_queries():
            if len(silent) < 2:
                silent.add(query.contact.id)
                lookup.failed(query)
            else:
                lookup.replied(query, Nodes(()))
    found = lookup.closest()
    assert len(found) == 4
    assert not {c.id for c in found} & silent
    assert found == true_closest([c for c in contacts if c.id not in silent], target, 4)


# -- ProviderResults ----------------------------------------------------------------------

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
KEY = bytes(range(20))


def record(
    identity: Identity = ALICE, *, key: bytes = KEY, sequence: int = 1, issued_at: int = NOW, ttl: int = 600
) -> ProviderRecord:
    payload = f"{identity.public_key.hex()[:8]} #{sequence}".encode()
    return ProviderRecord.create(identity, key, payload, sequence=sequence, issued_at=issued_at, ttl=ttl)


def test_provider_results_keep_the_newest_valid_record_per_publisher() -> None:
    results = ProviderResults(KEY, now=NOW)
    a1, a3, b2 = record(ALICE, sequence=1), record(ALICE, sequence=3), record(BOB, sequence=2)
    results.add([a1.raw, b2.raw])
    results.add([a3.raw, a1.raw, b2.raw])
    assert results.records() == sorted([a3, b2], key=lambda r: r.publisher)
    assert results.refused == 0


def test_provider_results_refuse_invalid_records() -> None:
    results = ProviderResults(KEY, now=NOW)
    genuine = record(ALICE)
    tampered = genuine.raw.replace(genuine.payload, genuine.payload.upper())
    assert tampered != genuine.raw
    other_key = record(ALICE, key=bytes(20), sequence=9)
    expired = record(BOB, issued_at=NOW - 700)
    future = record(BOB, issued_at=NOW + 3600, sequence=5)
    node = NodeRecord.create(MALLORY, (DirectAddress("192.0.2.1", 1),), sequence=1, issued_at=NOW, ttl=60)
    results.add([tampered, other_key.raw, expired.raw, future.raw, node.raw, b"garbage", genuine.raw])
    assert results.records() == [genuine]
    assert results.refused == 6


def test_provider_results_check_each_distinct_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every node near a popular key returns the same signed records: one signature check each.
    checked: list[bytes] = []
    parse = ProviderRecord.parse

    def counting_parse(raw: bytes, *, now: int) -> ProviderRecord:
        checked.append(raw)
        return parse(raw, now=now)

    monkeypatch.setattr(ProviderRecord, "parse", counting_parse)
    results = ProviderResults(KEY, now=NOW)
    good, forged = record(ALICE), tampered(record(BOB).raw)
    for _ in range(5):
        results.add([good.raw, forged])
    assert sorted(checked) == sorted([good.raw, forged])
    assert results.records() == [good]
    assert results.refused == 5  # each copy of a bad record is still a refusal


# -- ProviderLookup: paging ----------------------------------------------------------------


@functools.cache
def provider_records(count: int = 40) -> tuple[ProviderRecord, ...]:
    """`count` records under KEY, each from a publisher of its own."""
    return tuple(record(Identity.from_seed(bytes([7, i]) * 16)) for i in range(count))


def page(records: Sequence[ProviderRecord], query: Query) -> Providers:
    """What an honest node holding `records` answers to `query` (a GetProviders)."""
    assert isinstance(query.request, GetProviders)
    skip = query.request.skip
    shown = records[skip : skip + MAX_RECORDS_PER_REPLY]
    return Providers(tuple(r.raw for r in shown), len(records), ())


def publishers(records: Iterable[ProviderRecord]) -> set[bytes]:
    return {r.publisher for r in records}


def provider_lookup(seeds: Iterable[Contact], **options: int) -> ProviderLookup:
    return ProviderLookup(KEY, seeds, now=NOW, k=K, **options)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    holdings=st.lists(st.sets(st.integers(0, 39)), min_size=1, max_size=6),
    alpha=st.integers(1, 4),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_provider_lookup_reads_every_page_of_every_node_once(
    holdings: list[set[int]], alpha: int, order_seed: int
) -> None:
    records = provider_records()
    held = {contact(i).id: [records[r] for r in sorted(h)] for i, h in enumerate(holdings)}
    lookup = provider_lookup([contact(i) for i in range(len(holdings))], alpha=alpha)
    sent = run_queries(lookup, lambda q: page(held[q.contact.id], q), random.Random(order_seed))
    assert publishers(lookup.results.records()) == publishers(r for h in held.values() for r in h)
    assert len(set(sent)) == len(sent)  # no page asked twice
    pages = Counter(q.contact.id for q in sent)
    assert pages == {i: max(1, math.ceil(len(h) / MAX_RECORDS_PER_REPLY)) for i, h in held.items()}
    assert (lookup.queries, lookup.follow_ups, lookup.failures) == (len(held), len(sent) - len(held), 0)


def test_a_node_with_more_records_is_asked_for_the_next_page() -> None:
    records = provider_records(14)
    seed = contact(1)
    lookup = provider_lookup([seed])
    for skip in (0, 6, 12):
        assert not lookup.finished
        [query] = lookup.next_queries()
        assert query == Query(seed, GetProviders(KEY, skip))
        lookup.replied(query, page(records, query))
    assert lookup.finished
    assert publishers(lookup.results.records()) == publishers(records)
    assert lookup.closest() == [seed]


def test_paging_stops_at_max_pages_and_at_an_empty_page() -> None:
    records = provider_records()
    liar, quitter = contact(1), contact(2)
    lookup = provider_lookup([liar, quitter], max_pages=3)
    # The liar claims ever more records and shows one new one a page; the quitter claims
    # 40 but shows 6, then an empty page.
    shown = iter(records)
    sent = []
    while not lookup.finished:
        for query in lookup.next_queries():
            sent.append(query)
            if query.contact == liar:
                lookup.replied(query, Providers((next(shown).raw,), 2**31, ()))
            elif query.request == GetProviders(KEY):
                lookup.replied(query, Providers(tuple(r.raw for r in records[30:36]), 40, ()))
            else:
                lookup.replied(query, Providers((), 40, ()))
    assert [q.request for q in sent if q.contact == liar] == [GetProviders(KEY, skip) for skip in (0, 1, 2)]
    assert [q.request for q in sent if q.contact == quitter] == [GetProviders(KEY), GetProviders(KEY, 6)]
    assert len(lookup.results.records()) == 3 + 6
    assert lookup.failures == 0


def test_an_empty_first_page_is_asked_again_once() -> None:
    """A node that had no token from us cut its first reply to our request's size: records
    left out, the total true. We ask again (token in hand) from the start; an empty second
    page ends it, as any empty page after the first does."""
    records = provider_records(8)
    cutter, liar = contact(1), contact(2)
    lookup = provider_lookup([cutter, liar])
    sent = []
    while not lookup.finished:
        for query in lookup.next_queries():
            sent.append(query)
            assert isinstance(query.request, GetProviders)
            if query.contact == liar:
                lookup.replied(query, Providers((), 40, ()))  # claims 40, never shows one
            elif query.request.skip == 0 and sent.count(query) == 1:
                lookup.replied(query, Providers((), len(records), ()))  # the cut first reply
            else:
                lookup.replied(query, page(records, query))
    assert [q.request for q in sent if q.contact == liar] == [GetProviders(KEY), GetProviders(KEY)]
    assert [q.request for q in sent if q.contact == cutter] == [
        GetProviders(KEY),
        GetProviders(KEY),
        GetProviders(KEY, 6),
    ]
    assert publishers(lookup.results.records()) == publishers(records)


def test_a_lost_page_ends_that_nodes_pages_but_not_its_answer() -> None:
    records = provider_records(20)
    seed = contact(1)
    lookup = provider_lookup([seed])
    [first] = lookup.next_queries()
    lookup.replied(first, page(records, first))
    [second] = lookup.next_queries()
    lookup.failed(second)  # not asked again: another node holding the key has its copy
    assert lookup.next_queries() == []
    assert lookup.finished
    assert lookup.closest() == [seed]
    assert (lookup.follow_ups, lookup.failures) == (1, 1)
    assert publishers(lookup.results.records()) == publishers(records[:MAX_RECORDS_PER_REPLY])


def test_a_page_answered_with_the_wrong_kind_of_reply_is_a_failure() -> None:
    records = provider_records(8)
    seed, other = contact(1), contact(2)
    lookup = provider_lookup([seed])
    [first] = lookup.next_queries()
    lookup.replied(first, Providers(page(records, first).records, 8, (other,)))
    [second, walk] = sorted(lookup.next_queries(), key=lambda q: q.contact != seed)
    assert (second.contact, walk.contact) == (seed, other)
    lookup.replied(second, Nodes(()))
    lookup.replied(walk, Nodes(()))  # a node lookup's answer, no use to this one
    assert lookup.finished
    assert lookup.closest() == [seed]
    assert lookup.failures == 2


def test_pages_share_the_alpha_slots_and_the_walk_goes_first() -> None:
    records = provider_records(12)
    a, b, c = contact(1), contact(2), contact(3)
    lookup = provider_lookup([a, b, c], alpha=2)
    walk = {q.contact: q for q in lookup.next_queries()}
    assert len(walk) == 2
    holder, other = walk.values()
    lookup.replied(holder, page(records, holder))  # a page is owed, but the walk has a contact left
    [third] = lookup.next_queries()
    assert third.request == GetProviders(KEY) and third.contact not in walk
    lookup.replied(other, Providers((), 0, ()))
    [more] = lookup.next_queries()
    assert more == Query(holder.contact, GetProviders(KEY, 6))
    assert lookup.next_queries() == []  # both slots taken
    lookup.replied(third, Providers((), 0, ()))
    lookup.replied(more, page(records, more))
    assert lookup.finished
    assert publishers(lookup.results.records()) == publishers(records)


def test_pages_are_not_charged_to_the_walk_budget() -> None:
    records = provider_records(18)
    lookup = provider_lookup([contact(1), contact(2)], max_queries=1)
    sent = run_queries(lookup, lambda q: page(records, q), random.Random(0))
    assert len(sent) == 3 and {q.contact for q in sent} == {sent[0].contact}
    assert (lookup.queries, lookup.follow_ups) == (1, 2)
    assert publishers(lookup.results.records()) == publishers(records)


# -- DhtProtocol ----------------------------------------------------------------------------

S_ADDRESS, P_ADDRESS, C_ADDRESS = ("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", 3)
X_ADDRESS = ("10.0.0.9", 9)


def protocols() -> tuple[DhtProtocol, DhtProtocol, DhtProtocol]:
    server = DhtProtocol(Identity.from_seed(b"s" * 32), serving=True)
    peer = DhtProtocol(Identity.from_seed(b"p" * 32), serving=True)
    client = DhtProtocol(Identity.from_seed(b"c" * 32), serving=False)
    return server, peer, client


def exchange(
    asker: DhtProtocol,
    asker_address: tuple[str, int],
    answerer: DhtProtocol,
    message: object,
    answerer_address: tuple[str, int] = S_ADDRESS,
    expected_key: bytes | None = None,
) -> tuple[bytes, bytes]:
    """`asker` sends `message`; `answerer` answers it. Returns (txid, reply datagram)."""
    txid, data = asker.request(message, answerer_address, expected_key, now=NOW)  # type: ignore[arg-type]
    events = answerer.receive(data, asker_address, now=NOW)
    sends = [e for e in events if isinstance(e, Send)]
    assert len(sends) == 1 and sends[0].address == asker_address
    return txid, sends[0].data


def introduce(
    asker: DhtProtocol,
    asker_address: tuple[str, int],
    answerer: DhtProtocol,
    answerer_address: tuple[str, int] = S_ADDRESS,
) -> None:
    """`asker` pings `answerer` and reads the reply: it holds a token for `answerer_address`,
    and a serving asker's next request proves its address (and puts it in the table)."""
    _, reply = exchange(asker, asker_address, answerer, Ping(), answerer_address)
    assert [type(e) for e in asker.receive(reply, answerer_address, now=NOW)] == [ReplyReceived]


def in_table(protocol: DhtProtocol, other: DhtProtocol) -> bool:
    return any(c.public_key == other.identity.public_key for c in protocol.table.contacts())


def test_request_and_reply_update_both_tables() -> None:
    server, peer, _ = protocols()
    txid, data = peer.request(Ping(), S_ADDRESS, now=NOW)
    events = server.receive(data, P_ADDRESS, now=NOW)
    # A first request proves no address: answered, and the server asks to ping the peer back.
    assert [type(e) for e in events] == [Send, VerifyNeeded]
    assert events[1] == VerifyNeeded(Contact(peer.identity.public_key, *P_ADDRESS))
    assert not in_table(server, peer)
    reply = events[0]
    assert isinstance(reply, Send)
    events = peer.receive(reply.data, S_ADDRESS, now=NOW)
    assert events == [ReplyReceived(txid, Contact(server.identity.public_key, *S_ADDRESS), Pong())]
    assert in_table(peer, server)  # it answered where it was asked: proven
    assert peer.receive(reply.data, S_ADDRESS, now=NOW) == []  # a duplicate: the txid is done
    assert peer.dropped == 1
    # The peer's next request carries the server's token, which proves its address.
    _, data = peer.request(Ping(), S_ADDRESS, now=NOW)
    assert [type(e) for e in server.receive(data, P_ADDRESS, now=NOW)] == [Send]
    assert in_table(server, peer)
    assert server.table.contacts()[0].address == P_ADDRESS


def test_reply_from_the_wrong_address_dropped() -> None:
    server, peer, _ = protocols()
    _, reply = exchange(peer, P_ADDRESS, server, Ping())
    assert peer.receive(reply, X_ADDRESS, now=NOW) == []
    assert peer.dropped == 1
    assert not in_table(peer, server)
    # The request is still pending: the genuine reply from the right address is taken.
    assert [type(e) for e in peer.receive(reply, S_ADDRESS, now=NOW)] == [ReplyReceived]


def test_reply_signed_by_the_wrong_key_dropped() -> None:
    server, peer, _ = protocols()
    impostor = DhtProtocol(Identity.from_seed(b"i" * 32), serving=True)
    # The peer expects the server's key at S_ADDRESS; an impostor answers from that address.
    _, data = peer.request(Ping(), S_ADDRESS, server.identity.public_key, now=NOW)
    sends = [e for e in impostor.receive(data, P_ADDRESS, now=NOW) if isinstance(e, Send)]
    assert peer.receive(sends[0].data, S_ADDRESS, now=NOW) == []
    assert peer.dropped == 1
    assert not in_table(peer, impostor)
    genuine = next(e for e in server.receive(data, P_ADDRESS, now=NOW) if isinstance(e, Send))
    assert [type(e) for e in peer.receive(genuine.data, S_ADDRESS, now=NOW)] == [ReplyReceived]


def test_reply_with_an_unknown_txid_dropped() -> None:
    server, peer, _ = protocols()
    unsolicited = encode(server.identity, b"x" * 8, Pong(), serving=True, sent_at=NOW)
    assert peer.receive(unsolicited, S_ADDRESS, now=NOW) == []
    assert peer.dropped == 1
    assert not in_table(peer, server)
    txid, reply = exchange(peer, P_ADDRESS, server, Ping())
    peer.forget(txid)  # timed out
    assert peer.receive(reply, S_ADDRESS, now=NOW) == []
    assert peer.dropped == 2


def test_garbage_is_dropped_not_raised() -> None:
    server, _, _ = protocols()
    for data in (b"", b"\x00" * 100, b"\x94" * 9000):
        assert server.receive(data, P_ADDRESS, now=NOW) == []
    assert server.dropped == 3
    assert len(server.table) == 0


def test_client_never_answers_and_is_never_added() -> None:
    server, peer, client = protocols()
    _, reply = exchange(client, C_ADDRESS, server, FindNode(bytes(ID_LEN)))
    assert isinstance(decode(reply).message, Nodes)  # it was answered...
    assert not in_table(server, client)  # ...but the client is not a contact
    events = client.receive(reply, S_ADDRESS, now=NOW)
    assert [type(e) for e in events] == [ReplyReceived]
    assert len(getattr(client, "table", ())) == 0  # a client keeps no table
    # Nor when it has a token.
    _, again = exchange(client, C_ADDRESS, server, FindNode(bytes(ID_LEN)))
    assert decode(again).message == decode(reply).message and not in_table(server, client)
    # A request to the client is not answered.
    _, request = peer.request(Ping(), C_ADDRESS, now=NOW)
    assert client.receive(request, P_ADDRESS, now=NOW) == []
    assert client.dropped == 1
    # Its own datagrams say it is not serving.
    assert decode(client.request(Ping(), S_ADDRESS, now=NOW)[1]).serving is False


def test_find_node_answer_leaves_the_requester_out() -> None:
    server = DhtProtocol(Identity.from_seed(b"s" * 32), serving=True, k=4)
    peers = [DhtProtocol(Identity.from_seed(bytes([i]) * 32), serving=True) for i in range(6)]
    for index, peer in enumerate(peers):
        introduce(peer, ("10.0.1.1", 100 + index), server)
        exchange(peer, ("10.0.1.1", 100 + index), server, Ping())
    asker = peers[0]
    target = node_id(asker.identity.public_key)  # the asker is the closest to its own id
    _, reply = exchange(asker, ("10.0.1.1", 100), server, FindNode(target))
    message = decode(reply).message
    assert isinstance(message, Nodes)
    expected = true_closest([c for c in server.table.contacts() if c.id != target], target, 4)
    assert list(message.contacts) == expected


def test_store_and_fetch_provider_records_in_pages() -> None:
    _, peer, _ = protocols()
    # One sender stores them all: more than a host may hold under one key by default.
    store = RecordStore(StoreLimits(max_per_key_per_host=64, max_per_key_per_network=64))
    server = DhtProtocol(Identity.from_seed(b"s" * 32), serving=True, store=store)
    introduce(peer, P_ADDRESS, server)
    publishers = [Identity.from_seed(bytes([i + 1]) * 32) for i in range(MAX_RECORDS_PER_REPLY + 3)]
    for publisher in publishers:
        _, reply = exchange(peer, P_ADDRESS, server, AddProvider(record(publisher).raw))
        assert decode(reply).message == Stored(True)
    _, reply = exchange(peer, P_ADDRESS, server, GetProviders(KEY))
    first = decode(reply).message
    assert isinstance(first, Providers)
    assert (len(first.records), first.total) == (MAX_RECORDS_PER_REPLY, len(publishers))
    _, reply = exchange(peer, P_ADDRESS, server, GetProviders(KEY, MAX_RECORDS_PER_REPLY))
    second = decode(reply).message
    assert isinstance(second, Providers)
    assert len(second.records) == 3
    results = ProviderResults(KEY, now=NOW)
    results.add(first.records + second.records)
    assert {r.publisher for r in results.records()} == {p.public_key for p in publishers}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (record(ALICE, issued_at=NOW - 600).raw, "expired"),
        (record(ALICE).raw[:-1], "not msgpack"),
        (
            NodeRecord.create(ALICE, (DirectAddress("192.0.2.1", 1),), sequence=1, issued_at=NOW, ttl=60).raw,
            "domain",
        ),
    ],
)
def test_invalid_provider_record_not_stored(raw: bytes, reason: str) -> None:
    server, peer, _ = protocols()
    introduce(peer, P_ADDRESS, server)
    _, reply = exchange(peer, P_ADDRESS, server, AddProvider(raw))
    stored = decode(reply).message
    assert isinstance(stored, Stored) and not stored.ok and reason in stored.reason
    assert len(server.store) == 0


def test_older_sequence_not_stored() -> None:
    server, peer, _ = protocols()
    introduce(peer, P_ADDRESS, server)
    exchange(peer, P_ADDRESS, server, AddProvider(record(ALICE, sequence=2).raw))
    _, reply = exchange(peer, P_ADDRESS, server, AddProvider(record(ALICE, sequence=1).raw))
    assert decode(reply).message == Stored(False, "sequence 1 is not newer than the stored 2")
    assert [r.sequence for r in server.store.providers(KEY, now=NOW)] == [2]


def test_quota_refusal_is_reported() -> None:
    store = RecordStore(StoreLimits(max_per_key=1))
    server = DhtProtocol(Identity.from_seed(b"s" * 32), serving=True, store=store)
    _, peer, _ = protocols()
    introduce(peer, P_ADDRESS, server)
    exchange(peer, P_ADDRESS, server, AddProvider(record(ALICE).raw))
    _, reply = exchange(peer, P_ADDRESS, server, AddProvider(record(BOB).raw))
    assert decode(reply).message == Stored(False, "key has too many providers")


def test_put_and_get_node_record() -> None:
    server, peer, _ = protocols()
    introduce(peer, P_ADDRESS, server)
    mine = NodeRecord.create(ALICE, (DirectAddress("192.0.2.1", 7070),), sequence=1, issued_at=NOW, ttl=600)
    _, reply = exchange(peer, P_ADDRESS, server, PutNode(mine.raw))
    assert decode(reply).message == Stored(True)
    _, reply = exchange(peer, P_ADDRESS, server, GetNode(ALICE.public_key))
    found = decode(reply).message
    assert isinstance(found, NodeFound) and found.record == mine.raw
    _, reply = exchange(peer, P_ADDRESS, server, GetNode(BOB.public_key))
    missing = decode(reply).message
    assert isinstance(missing, NodeFound) and missing.record is None


def test_full_bucket_asks_for_a_ping_of_its_head() -> None:
    # Our id starts with 0; the others share exactly the five bits 10000, so with k=2 their
    # bucket is full and may not be split (the paper's depth rule).
    own, first, second, newcomer = identities_with_prefixes(["0", "100000", "100001", "10000"])
    server = DhtProtocol(own, serving=True, k=2)
    asked = [DhtProtocol(identity, serving=True) for identity in (first, second, newcomer)]
    addresses = [("10.0.2.1", 1), ("10.0.2.2", 2), ("10.0.2.3", 3)]
    for protocol, address in zip(asked, addresses, strict=True):
        introduce(protocol, address, server)
    for protocol, address in zip(asked[:2], addresses[:2], strict=True):
        _, data = protocol.request(Ping(), S_ADDRESS, now=NOW)
        assert [type(e) for e in server.receive(data, address, now=NOW)] == [Send]
    _, data = asked[2].request(Ping(), S_ADDRESS, now=NOW)
    events = server.receive(data, addresses[2], now=NOW)
    assert [type(e) for e in events] == [Send, PingNeeded]  # still answered
    head = events[1]
    assert isinstance(head, PingNeeded)
    assert head.contact == Contact(first.public_key, *addresses[0])
    server.evict(head.contact)
    assert {c.public_key for c in server.table.contacts()} == {second.public_key, newcomer.public_key}
