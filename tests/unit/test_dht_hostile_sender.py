"""dht.protocol against a hostile sender: tokens, reflection, replays, stores, the table.

Every test drives `DhtProtocol`s by hand (datagrams in, events out) on a fixed clock, from
the public documentation addresses of RFC 5737 (public as far as the quotas go) unless it
says otherwise.
"""

from __future__ import annotations

import os

import pytest

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import ID_LEN, distance, node_id, service_key
from hubnet.dht.messages import (
    AddProvider,
    Contact,
    FindNode,
    GetNode,
    GetProviders,
    Message,
    NodeFound,
    Nodes,
    Ping,
    Providers,
    PutNode,
    Request,
    Stored,
    decode,
    encode,
)
from hubnet.dht.protocol import (
    FIRST_CONTACT_SIZE,
    NOT_VERIFIED,
    REPLAY_WINDOW,
    TOKEN_REUSE,
    TOKEN_ROTATION,
    DhtProtocol,
    ReplyReceived,
    Send,
    VerifyNeeded,
)
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.routing import MAX_PER_NETWORK, MAX_PER_NETWORK_PER_BUCKET
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord
from tests.dht_sim import reflection_server

NOW = 1_700_000_000
SERVER = ("192.0.2.1", 7070)
ATTACKER = ("203.0.113.66", 4000)
VICTIM = ("198.51.100.7", 53)
MALLORY = Identity.from_seed(b"m" * 32)
KEY = service_key(b"s" * 16)


def identity(index: int) -> Identity:
    return Identity.from_seed((50_000 + index).to_bytes(32, "big"))


def server() -> DhtProtocol:
    return DhtProtocol(Identity.from_seed(b"s" * 32), serving=True)


def answer(protocol: DhtProtocol, data: bytes, source: Address, now: int = NOW) -> bytes | None:
    """The one reply `protocol` sends to `source` for `data`, or None."""
    sends = [e for e in protocol.receive(data, source, now=now) if isinstance(e, Send)]
    assert all(s.address == source for s in sends) and len(sends) <= 1
    return sends[0].data if sends else None


def request(message: Message, *, token: bytes = b"", padding: int = 0, sent_at: int = NOW) -> bytes:
    """A request as a hostile sender writes it: no padding unless asked."""
    return encode(
        MALLORY, os.urandom(8), message, serving=True, sent_at=sent_at, token=token, padding=padding
    )


def token_for(protocol: DhtProtocol, source: Address) -> bytes:
    reply = answer(protocol, request(Ping(), padding=16), source)
    assert reply is not None
    return decode(reply).token


def record(publisher: Identity, key: bytes = KEY, *, payload: bytes = b"offer") -> ProviderRecord:
    return ProviderRecord.create(publisher, key, payload, sequence=1, issued_at=NOW, ttl=600)


# -- reflection ------------------------------------------------------------------------------

REQUESTS: dict[str, Request] = {
    "Ping": Ping(),
    "FindNode": FindNode(bytes(ID_LEN)),
    "GetProviders": GetProviders(service_key(bytes(16))),
    "GetNode": GetNode(Identity.from_seed(b"n" * 32).public_key),
    "AddProvider": AddProvider(record(identity(0), service_key(bytes(16)), payload=b"x" * 300).raw),
    "PutNode": PutNode(
        NodeRecord.create(identity(0), (DirectAddress(*VICTIM),), sequence=1, issued_at=NOW, ttl=600).raw
    ),
}


@pytest.mark.parametrize("kind", sorted(REQUESTS))
@pytest.mark.parametrize("padding", [0, 16, FIRST_CONTACT_SIZE])
def test_an_unproven_source_never_gets_more_bytes_than_it_sent(kind: str, padding: int) -> None:
    """A node with a full table, 64 records of 1 KiB under the key asked for and the node record
    asked for: whatever a spoofed request (no token) asks, the victim gets at most its size."""
    target = reflection_server(now=NOW)
    data = request(REQUESTS[kind], padding=padding)
    reply = answer(target, data, VICTIM)
    assert reply is not None and len(reply) <= len(data), (kind, len(data), len(reply or b""))
    # The reply carries a token, except to an unpadded Ping: a Pong with one is 8 bytes longer.
    assert bool(decode(reply).token) == (padding > 0 or kind != "Ping")


def test_a_proven_source_gets_the_full_reply() -> None:
    target = reflection_server(now=NOW)
    token = token_for(target, ATTACKER)
    for kind in ("FindNode", "GetProviders", "GetNode"):
        data = request(REQUESTS[kind], token=token)
        reply = answer(target, data, ATTACKER)
        assert reply is not None and len(reply) > 4 * len(data), kind
    providers = decode(
        answer(target, request(REQUESTS["GetProviders"], token=token), ATTACKER) or b""
    ).message
    assert isinstance(providers, Providers) and (len(providers.records), providers.total) == (6, 64)


def test_a_cut_reply_keeps_records_the_closest_contacts_and_the_true_total() -> None:
    target = reflection_server(now=NOW)
    get = REQUESTS["GetProviders"]
    assert isinstance(get, GetProviders)
    cut = decode(answer(target, request(get, padding=FIRST_CONTACT_SIZE), VICTIM) or b"").message
    assert isinstance(cut, Providers)
    assert cut.total == 64 and 1 <= len(cut.records) < 6  # records first: what the asker is after
    full = target.table.closest(get.key, 21)
    assert list(cut.contacts) == [c for c in full if c.public_key != MALLORY.public_key][: len(cut.contacts)]
    # A lookup's padded first FindNode gets all k contacts: no extra round trip.
    nodes = decode(
        answer(target, request(FindNode(bytes(ID_LEN)), padding=FIRST_CONTACT_SIZE), VICTIM) or b""
    )
    assert isinstance(nodes.message, Nodes) and len(nodes.message.contacts) == target.k
    assert target.cut >= 1


def test_requests_pad_themselves_until_they_have_a_token() -> None:
    asker = DhtProtocol(identity(1), serving=False)
    target = server()
    _, data = asker.request(FindNode(bytes(ID_LEN)), SERVER, now=NOW)
    assert len(data) >= FIRST_CONTACT_SIZE and not decode(data).token
    reply = answer(target, data, ATTACKER)
    assert reply is not None
    assert [type(e) for e in asker.receive(reply, SERVER, now=NOW)] == [ReplyReceived]
    _, data = asker.request(FindNode(bytes(ID_LEN)), SERVER, now=NOW + 1)
    assert len(data) < 300 and decode(data).token == decode(reply).token
    # A token is sent back for TOKEN_REUSE seconds only (it lives at least TOKEN_ROTATION).
    _, data = asker.request(Ping(), SERVER, now=NOW + TOKEN_ROTATION)
    assert not decode(data).token


def test_tokens_carried_into_a_next_run_are_sent_padded_until_their_node_answers() -> None:
    target = reflection_server(now=NOW)  # 64 records of 1 KiB under the key
    get = REQUESTS["GetProviders"]
    first = DhtProtocol(identity(1), serving=False)
    _, data = first.request(get, ATTACKER, now=NOW)
    reply = answer(target, data, ATTACKER) or b""
    assert [type(e) for e in first.receive(reply, ATTACKER, now=NOW)] == [ReplyReceived]
    kept = first.fresh_tokens(now=NOW + 10)
    assert kept == [(ATTACKER, decode(reply).token, NOW)]
    assert first.fresh_tokens(now=NOW + TOKEN_REUSE) == []  # no longer sent back: not kept

    following = DhtProtocol(identity(1), serving=False)
    following.inherit_tokens(kept, now=NOW + 10)
    _, data = following.request(get, ATTACKER, now=NOW + 10)
    assert len(data) >= FIRST_CONTACT_SIZE and decode(data).token == decode(reply).token
    cut_before = target.cut
    full_reply = answer(target, data, ATTACKER, now=NOW + 10) or b""
    full = decode(full_reply)
    assert target.cut == cut_before  # the token proved the address: a whole page
    assert isinstance(full.message, Providers) and len(full.message.records) == 6
    following.receive(full_reply, ATTACKER, now=NOW + 10)
    _, data = following.request(get, ATTACKER, now=NOW + 11)  # answered in this run: no padding
    assert len(data) < 300 and decode(data).token == full.token


def test_a_carried_token_the_node_refuses_costs_the_request_nothing() -> None:
    target = reflection_server(now=NOW)
    asker = DhtProtocol(identity(1), serving=False)
    stale = [(ATTACKER, b"\x01" * 8, NOW - 5)]  # the node has drawn a new secret since
    asker.inherit_tokens([*stale, (VICTIM, b"short", NOW), (SERVER, b"\x02" * 8, NOW - TOKEN_REUSE)], now=NOW)
    assert asker.fresh_tokens(now=NOW) == stale  # a token of the wrong length or too old is not taken
    _, data = asker.request(FindNode(bytes(ID_LEN)), ATTACKER, now=NOW)
    nodes = decode(answer(target, data, ATTACKER) or b"").message
    assert isinstance(nodes, Nodes) and len(nodes.contacts) == target.k  # padded: the full answer


# -- tokens ------------------------------------------------------------------------------------


def test_a_token_proves_one_address_for_two_windows() -> None:
    target = server()
    token = token_for(target, ATTACKER)
    assert target.token_valid(token, ATTACKER, now=NOW)
    assert target.token_valid(token, ATTACKER, now=NOW + TOKEN_ROTATION)
    assert not target.token_valid(token, ATTACKER, now=NOW + 2 * TOKEN_ROTATION + TOKEN_ROTATION)
    assert not target.token_valid(token, (ATTACKER[0], ATTACKER[1] + 1), now=NOW)  # another port
    assert not target.token_valid(token, VICTIM, now=NOW)
    assert not server().token_valid(token, ATTACKER, now=NOW)  # another node's secret


def test_stores_need_a_token() -> None:
    target = server()
    add = AddProvider(record(identity(1)).raw)
    refused = decode(answer(target, request(add, padding=16), ATTACKER) or b"").message
    assert refused == Stored(False, NOT_VERIFIED)
    # Nor does a token given to another address help.
    stolen = token_for(target, VICTIM)
    refused = decode(answer(target, request(add, token=stolen), ATTACKER) or b"").message
    assert refused == Stored(False, NOT_VERIFIED)
    assert len(target.store) == 0
    token = token_for(target, ATTACKER)
    assert decode(answer(target, request(add, token=token), ATTACKER) or b"").message == Stored(True)
    assert target.store.held_from(ATTACKER) == (1, 1)


# -- replays -----------------------------------------------------------------------------------


def test_a_replayed_request_is_dropped() -> None:
    target = server()
    data = request(Ping(), padding=16)
    assert answer(target, data, ATTACKER) is not None
    for source in (ATTACKER, VICTIM):  # from anywhere
        assert answer(target, data, source) is None
    assert answer(target, data, ATTACKER, now=NOW + REPLAY_WINDOW) is None
    assert target.replayed == 3
    # A new request (a new txid) is answered.
    assert answer(target, request(Ping(), padding=16), ATTACKER) is not None


@pytest.mark.parametrize("skew", [-REPLAY_WINDOW - 1, REPLAY_WINDOW + 1, -10 * REPLAY_WINDOW])
def test_a_request_from_another_time_is_dropped(skew: int) -> None:
    target = server()
    assert answer(target, request(Ping(), padding=16, sent_at=NOW + skew), ATTACKER) is None
    assert target.replayed == 1
    within = max(-REPLAY_WINDOW, min(REPLAY_WINDOW, skew))  # at the edge of the window: taken
    assert answer(target, request(Ping(), padding=16, sent_at=NOW + within), ATTACKER) is not None


def test_remembered_txids_are_bounded_per_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import hubnet.dht.protocol as protocol

    monkeypatch.setattr(protocol, "MAX_SEEN_PER_NETWORK", 5)
    target = server()
    for _ in range(5):
        assert answer(target, request(Ping(), padding=16), ("203.0.113.1", 1)) is not None
    # The sixth from that /24 is dropped (not remembered, not answered); others are not.
    assert answer(target, request(Ping(), padding=16), ("203.0.113.2", 2)) is None
    assert answer(target, request(Ping(), padding=16), VICTIM) is not None
    # A minute of sent_at later, that network has room again (the old txids are still known).
    assert answer(target, request(Ping(), padding=16, sent_at=NOW + 60), ("203.0.113.2", 2)) is not None


# -- what a node stores ----------------------------------------------------------------------


def test_a_node_stores_only_for_keys_it_is_among_the_closest_to() -> None:
    target = server()
    own = node_id(target.identity.public_key)
    # 40 contacts, all closer than us to a key next to theirs: we are not among the 30 closest.
    peers = [identity(i) for i in range(200)]
    far_key = bytes(b ^ 0xFF for b in own)  # as far from us as can be
    closer = sorted(peers, key=lambda p: distance(node_id(p.public_key), far_key))[:40]
    for index, peer in enumerate(closer):
        target.table.add_contact(Contact(peer.public_key, "10.1.0.1", 1000 + index))
    assert not target.is_near(far_key) and target.is_near(own)
    token = token_for(target, ATTACKER)
    far = decode(
        answer(target, request(AddProvider(record(identity(1), far_key).raw), token=token), ATTACKER) or b""
    )
    assert far.message == Stored(False, "not among the closest nodes to this key")
    near = decode(
        answer(target, request(AddProvider(record(identity(1), own).raw), token=token), ATTACKER) or b""
    )
    assert near.message == Stored(True)


def test_accept_record_sees_the_record_and_its_source() -> None:
    seen: list[tuple[bytes, Address]] = []

    def accept(record: ProviderRecord | NodeRecord, source: Address) -> bool:
        seen.append((record.publisher, source))
        if isinstance(record, NodeRecord):
            raise InvalidRecord("node records: not today")
        return source == ATTACKER

    target = DhtProtocol(Identity.from_seed(b"s" * 32), serving=True, accept_record=accept)
    for source, expected in (
        (ATTACKER, Stored(True)),
        (VICTIM, Stored(False, "refused by this node's policy")),
    ):
        token = token_for(target, source)
        add = AddProvider(record(identity(2)).raw if source == ATTACKER else record(identity(3)).raw)
        assert decode(answer(target, request(add, token=token), source) or b"").message == expected
    token = token_for(target, ATTACKER)
    node = NodeRecord.create(identity(4), (DirectAddress(*ATTACKER),), sequence=1, issued_at=NOW, ttl=60)
    stored = decode(answer(target, request(PutNode(node.raw), token=token), ATTACKER) or b"").message
    assert stored == Stored(False, "node records: not today")
    assert seen == [
        (identity(2).public_key, ATTACKER),
        (identity(3).public_key, VICTIM),
        (identity(4).public_key, ATTACKER),
    ]
    assert len(target.store) == 1


def test_63_throw_away_keys_from_one_host_cannot_lock_a_key() -> None:
    target = server()
    token = token_for(target, ATTACKER)
    kept = 0
    for index in range(63):
        reply = decode(
            answer(target, request(AddProvider(record(identity(index)).raw), token=token), ATTACKER) or b""
        )
        assert isinstance(reply.message, Stored)
        kept += reply.message.ok
    assert kept == 8  # max_per_key_per_host
    # Other ports of the same host count as that host.
    other = (ATTACKER[0], 4001)
    refused = decode(
        answer(target, request(AddProvider(record(identity(70)).raw), token=token_for(target, other)), other)
        or b""
    )
    assert refused.message == Stored(False, "your address has too many providers under this key")
    honest = ("192.0.2.99", 7070)
    stored = decode(
        answer(
            target, request(AddProvider(record(identity(99)).raw), token=token_for(target, honest)), honest
        )
        or b""
    )
    assert stored.message == Stored(True)
    assert len(target.store.providers(KEY, now=NOW)) == 9


# -- the routing table -----------------------------------------------------------------------


def test_an_unproven_requester_is_pinged_back_before_it_enters_the_table() -> None:
    target = server()
    peer = DhtProtocol(identity(5), serving=True)
    _, data = peer.request(Ping(), SERVER, now=NOW)
    events = target.receive(data, ATTACKER, now=NOW)
    assert [type(e) for e in events] == [Send, VerifyNeeded]
    assert len(target.table) == 0
    # The ping back, answered: the peer is in.
    verify = events[1]
    assert isinstance(verify, VerifyNeeded)
    _txid, ping = target.request(Ping(), verify.contact.address, verify.contact.public_key, now=NOW)
    pong = answer(peer, ping, SERVER)
    assert pong is not None
    assert [type(e) for e in target.receive(pong, ATTACKER, now=NOW)] == [ReplyReceived]
    assert [c.address for c in target.table.contacts()] == [ATTACKER]


def test_sixty_keys_at_one_address_hold_one_routing_entry() -> None:
    target = server()
    for index in range(60):
        token = token_for(target, ATTACKER)
        data = encode(identity(index), os.urandom(8), Ping(), serving=True, sent_at=NOW, token=token)
        answer(target, data, ATTACKER)
    assert [c.address for c in target.table.contacts()] == [ATTACKER]


def _ping_with_token(target: DhtProtocol, sender: Identity, source: Address) -> None:
    token = token_for(target, source)
    answer(target, encode(sender, os.urandom(8), Ping(), serving=True, sent_at=NOW, token=token), source)


def test_one_network_holds_few_routing_entries() -> None:
    target = server()
    # A table with many buckets: 150 contacts at private addresses (each a network of its own).
    for index in range(150):
        _ping_with_token(target, identity(1000 + index), (f"10.9.{index}.1", 7070))
    before = len(target.table)
    # Then 60 keys from 60 addresses of one public /24.
    for index in range(60):
        _ping_with_token(target, identity(index), (f"203.0.113.{index + 1}", 7070))
    public = [c for c in target.table.contacts() if c.ip.startswith("203.0.113.")]
    assert 2 < len(public) <= MAX_PER_NETWORK
    assert len(target.table) == before + len(public)
    for bucket in target.table.buckets:
        assert sum(c.ip.startswith("203.0.113.") for c in bucket.get_nodes()) <= MAX_PER_NETWORK_PER_BUCKET


@pytest.mark.parametrize("host", ["127.0.0.1", "192.168.1.{}", "10.0.0.{}", "fd00::{}"])
def test_a_dozen_nodes_on_one_machine_or_lan_all_fit(host: str) -> None:
    target = server()
    for index in range(12):
        _ping_with_token(target, identity(index), (host.format(index + 1), 7000 + index))
    assert len(target.table) == 12
    # Where the same dozen from one public /24 would hold two places.
    target = server()
    for index in range(12):
        _ping_with_token(target, identity(index), (f"203.0.113.{index + 1}", 7000 + index))
    assert len(target.table) == MAX_PER_NETWORK_PER_BUCKET


def test_an_unpadded_ping_gets_a_pong_without_a_token() -> None:
    """A peer that does not pad (not hubnet's own code) still gets answered, within its size."""
    target = server()
    data = request(Ping())
    reply = answer(target, data, ATTACKER)
    assert reply is not None and len(reply) <= len(data) and decode(reply).token == b""
    found = answer(target, request(GetNode(identity(1).public_key)), ATTACKER)
    assert found is not None and isinstance(decode(found).message, NodeFound)
