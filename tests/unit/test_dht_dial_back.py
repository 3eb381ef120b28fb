"""dht.protocol's dial-backs (DialMe, Dialed, DialBack) and client mode, driven by hand.

Datagrams in, events out, on a fixed clock, as in test_dht_hostile_sender.py: a dial-back
goes only to the proven source of its request, at the rate limits; a node in client mode
answers nothing, says so in every datagram, and whoever had it in a table drops it.
"""

from __future__ import annotations

import os

from hubnet.dht.messages import (
    NONCE_LEN,
    Contact,
    DialBack,
    Dialed,
    DialMe,
    DialOutcome,
    FindNode,
    Message,
    Ping,
    Pong,
    decode,
    encode,
)
from hubnet.dht.protocol import (
    DIAL_BACK_WINDOW,
    DIAL_BACKS_PER_HOST,
    DhtProtocol,
    DialBackNeeded,
    DialBackReceived,
    ReplyReceived,
    Send,
)
from hubnet.dht.records import Address, ProviderRecord
from hubnet.identity.keys import Identity

NOW = 1_700_000_000
PEER = ("192.0.2.1", 7070)  # the node asked to dial back
REQUESTER = ("198.51.100.7", 4100)  # as the peer sees it: behind a NAT, its router's address
NONCE = b"n" * NONCE_LEN
ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)


def peer() -> DhtProtocol:
    return DhtProtocol(Identity.from_seed(b"p" * 32), serving=True)


def request(message: Message, *, token: bytes = b"", serving: bool = True, sender: Identity = ALICE) -> bytes:
    return encode(sender, os.urandom(8), message, serving=serving, sent_at=NOW, token=token, padding=64)


def token_from(protocol: DhtProtocol, source: Address) -> bytes:
    events = protocol.receive(request(Ping()), source, now=NOW)
    sends = [e for e in events if isinstance(e, Send)]
    return decode(sends[0].data).token


def dial_me(
    protocol: DhtProtocol, source: Address = REQUESTER, *, token: bytes | None = None, now: int = NOW
) -> list:
    if token is None:
        token = token_from(protocol, source)
    data = encode(ALICE, os.urandom(8), DialMe(NONCE, 4100), serving=True, sent_at=now, token=token)
    return protocol.receive(data, source, now=now)


def test_a_proven_requester_is_dialled_back_at_the_address_it_came_from() -> None:
    node = peer()
    events = dial_me(node)
    needed = [e for e in events if isinstance(e, DialBackNeeded)]
    assert len(needed) == 1 and not [e for e in events if isinstance(e, Send)]  # the answer waits
    dial = needed[0]
    assert (dial.requester.address, dial.requester.public_key, dial.tcp_port) == (
        REQUESTER,
        ALICE.public_key,
        4100,
    )
    probe = decode(dial.probe)
    # The UDP dial-back carries the nonce, signed by the peer, and says it serves nothing.
    assert probe.message == DialBack(NONCE) and probe.sender == node.identity.public_key and not probe.serving
    answer = decode(node.dialed(dial.txid, REQUESTER, DialOutcome.REACHED, now=NOW))
    assert answer.txid == dial.txid and answer.message == Dialed(*REQUESTER, DialOutcome.REACHED)


def test_an_unproven_requester_is_refused_but_told_where_it_came_from() -> None:
    """A DialMe without a token could carry anyone's source address: no dial, a small answer."""
    events = dial_me(peer(), token=b"")
    assert not [e for e in events if isinstance(e, DialBackNeeded)]
    (send,) = [e for e in events if isinstance(e, Send)]
    assert send.address == REQUESTER
    assert decode(send.data).message == Dialed(*REQUESTER, DialOutcome.REFUSED)


def test_dial_backs_are_rate_limited_per_requesting_host() -> None:
    node = peer()
    granted = [
        bool([e for e in dial_me(node) if isinstance(e, DialBackNeeded)])
        for _ in range(DIAL_BACKS_PER_HOST + 2)
    ]
    assert granted == [True] * DIAL_BACKS_PER_HOST + [False, False]
    # Another port of the same public host counts against the same limit...
    assert not [e for e in dial_me(node, (REQUESTER[0], 9999)) if isinstance(e, DialBackNeeded)]
    # ...another host does not, and the window passes.
    assert [e for e in dial_me(node, ("198.51.100.8", 4100)) if isinstance(e, DialBackNeeded)]
    later = NOW + DIAL_BACK_WINDOW + 1
    assert [
        e
        for e in dial_me(node, now=later, token=token_from(node, REQUESTER))
        if isinstance(e, DialBackNeeded)
    ]
    assert node.dial_backs_refused == 3


def test_a_dial_back_datagram_is_an_event_never_answered() -> None:
    node = peer()
    data = encode(BOB, os.urandom(8), DialBack(NONCE), serving=False, sent_at=NOW)
    events = node.receive(data, ("192.0.2.9", 51234), now=NOW)
    assert events == [DialBackReceived(NONCE, BOB.public_key, ("192.0.2.9", 51234))]
    assert node.receive(data, ("192.0.2.9", 51234), now=NOW) == []  # a replay is dropped


def test_client_mode_answers_nothing_and_says_so() -> None:
    node = peer()
    node.client_mode = True
    assert node.receive(request(Ping()), REQUESTER, now=NOW) == []
    assert node.receive(request(FindNode(b"t" * 20)), REQUESTER, now=NOW) == []
    assert dial_me(node, token=b"") == []
    _txid, data = node.request(Ping(), PEER, now=NOW)
    assert decode(data).serving is False
    # It still takes a dial-back, and still learns from replies (its own table).
    back = encode(BOB, os.urandom(8), DialBack(NONCE), serving=False, sent_at=NOW)
    assert [type(e) for e in node.receive(back, ("192.0.2.9", 5), now=NOW)] == [DialBackReceived]
    txid, _ = node.request(Ping(), PEER, now=NOW)
    reply = encode(BOB, txid, Pong(), serving=True, sent_at=NOW)
    assert [type(e) for e in node.receive(reply, PEER, now=NOW)] == [ReplyReceived]
    assert node.table.find(Contact(BOB.public_key, *PEER)) is not None


def test_a_node_that_goes_into_client_mode_leaves_the_tables_it_was_in() -> None:
    node = peer()
    for _ in range(2):  # a proven request adds ALICE (the second carries the token)
        node.receive(request(Ping(), token=node.token_for(REQUESTER, now=NOW)), REQUESTER, now=NOW)
    alice = Contact(ALICE.public_key, *REQUESTER)
    assert node.table.find(alice) == alice
    # A datagram from another address with ALICE's key (a one-shot client of hers) changes nothing...
    node.receive(request(Ping(), serving=False), ("198.51.100.7", 5555), now=NOW)
    assert node.table.find(alice) == alice
    # ...one from her own address that says she no longer serves drops her.
    node.receive(request(Ping(), serving=False), REQUESTER, now=NOW)
    assert node.table.find(alice) is None
    # And her requests from then on do not bring her back.
    node.receive(request(Ping(), serving=False, token=node.token_for(REQUESTER, now=NOW)), REQUESTER, now=NOW)
    assert node.table.find(alice) is None


def test_entering_client_mode_drops_every_record_held() -> None:
    node = peer()
    record = ProviderRecord.create(ALICE, b"k" * 20, b"offer", sequence=1, issued_at=NOW, ttl=600)
    node.store.add_provider(record)
    node.set_client_mode(False)
    assert len(node.store) == 1  # leaving or staying out of client mode keeps them
    node.set_client_mode(True)
    assert len(node.store) == 0 and node.client_mode
    node.store.add_provider(record)
    node.set_client_mode(True)  # already in client mode: nothing more to drop
    assert len(node.store) == 1
