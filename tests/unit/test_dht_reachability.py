"""dht.reachability: what a node concludes from its peers' dial-backs, and when it asks again."""

from __future__ import annotations

import random

import pytest

from hubnet.dht.messages import Contact
from hubnet.dht.reachability import (
    ASK_PER_ROUND,
    MAX_VOTES,
    MIN_GAP,
    RECHECK_INTERVAL,
    RETRY_INTERVAL,
    VOTE_LIFETIME,
    Reachability,
    ReachabilityVotes,
    Vote,
    peers_to_ask,
)
from hubnet.identity.keys import Identity

T = 1_000.0
OBSERVED = ("198.51.100.7", 4100)
PUBLIC, PRIVATE, UNKNOWN = Reachability.PUBLIC, Reachability.PRIVATE, Reachability.UNKNOWN


def vote(
    peer: int, *, tcp: bool = True, udp: bool = True, observed: tuple[str, int] = OBSERVED, at: float = T
) -> Vote:
    return Vote(bytes([peer]) * 32, observed, tcp, udp, at)


def votes(*cast: Vote) -> ReachabilityVotes:
    tally = ReachabilityVotes()
    for v in cast:
        tally.add(v)
    return tally


@pytest.mark.parametrize(
    ("cast", "expected"),
    [
        ([], UNKNOWN),
        ([(True, True)], UNKNOWN),  # one peer is no conclusion
        ([(True, True)] * 2, PUBLIC),
        ([(False, False)] * 2, PRIVATE),
        ([(True, True)] * 2 + [(False, False)], PUBLIC),
        ([(True, True)] * 2 + [(False, False)] * 2, UNKNOWN),  # a split
        ([(True, False)] * 2, PRIVATE),  # the job port answered, the DHT port did not
        ([(False, True)] * 2, PRIVATE),  # the DHT port did, the job port did not (a firewall)
        ([(False, False)] * 3 + [(True, True)] * 2, PRIVATE),
    ],
)
def test_the_verdict_needs_agreeing_peers(cast: list[tuple[bool, bool]], expected: Reachability) -> None:
    tally = votes(*(vote(i, tcp=tcp, udp=udp) for i, (tcp, udp) in enumerate(cast)))
    assert tally.status(T) is expected


def test_a_peer_counts_once_with_its_latest_answer() -> None:
    tally = votes(vote(1), vote(1), vote(1))
    assert tally.status(T) is UNKNOWN
    tally = votes(vote(1), vote(2), vote(1, tcp=False), vote(3, tcp=False))
    assert tally.status(T) is PRIVATE  # peer 1 changed its mind: 2 unreached to 1 reached


def test_peers_on_our_own_lan_or_machine_say_nothing_about_the_internet() -> None:
    lan = [vote(i, observed=("192.168.1.10", 4100)) for i in range(4)]
    loopback = [vote(10 + i, observed=("127.0.0.1", 4100)) for i in range(4)]
    tally = votes(*lan, *loopback)
    assert tally.status(T) is UNKNOWN and tally.observed is None


def test_the_observed_address_is_the_majoritys_and_a_liar_cannot_tip_the_verdict() -> None:
    liar = vote(9, tcp=True, observed=("203.0.113.99", 1))
    tally = votes(vote(1, tcp=False), vote(2, tcp=False), liar)
    assert tally.observed == OBSERVED
    assert tally.status(T) is PRIVATE


def test_old_votes_are_forgotten() -> None:
    tally = votes(*(vote(i, tcp=False) for i in range(MAX_VOTES)), vote(50), vote(51), vote(52))
    assert tally.status(T) is PUBLIC  # 3 reached against the 2 newest of the unreached
    assert votes(vote(1, at=T), vote(2, at=T)).status(T + VOTE_LIFETIME + 1) is UNKNOWN


def test_when_a_round_is_due() -> None:
    tally = ReachabilityVotes()
    assert not tally.due(T, peers=0)  # nobody to ask
    assert tally.due(T, peers=1)
    tally.add(vote(1))
    tally.round_done(T, peers=1)
    assert not tally.due(T + MIN_GAP - 1, peers=3)  # never two rounds within MIN_GAP
    assert tally.due(T + MIN_GAP, peers=3)  # unknown, and more peers to ask
    assert not tally.due(T + MIN_GAP, peers=1)
    assert tally.due(T + RETRY_INTERVAL, peers=1)
    tally.add(vote(2))
    tally.round_done(T + RETRY_INTERVAL, peers=2)
    assert tally.status(T + RETRY_INTERVAL) is PUBLIC
    later = T + RETRY_INTERVAL
    assert not tally.due(later + MIN_GAP, peers=10)  # known: more peers are no reason
    assert not tally.due(later + RECHECK_INTERVAL - 1, peers=2)
    assert tally.due(later + RECHECK_INTERVAL, peers=2)


def test_a_new_observed_address_makes_a_round_due_at_once() -> None:
    tally = votes(vote(1), vote(2))
    tally.round_done(T, peers=2)
    assert not tally.due(T + MIN_GAP, peers=2)
    tally.add(vote(3, observed=("198.51.100.8", 4100), at=T + 1))  # a new lease, another network
    assert tally.due(T + MIN_GAP, peers=2)


def test_peers_to_ask_spread_over_networks_and_prefer_public_addresses() -> None:
    def contact(i: int, host: str) -> Contact:
        return Contact(Identity.from_seed(bytes([i]) * 32).public_key, host, 4100)

    same_network = [contact(i, f"198.51.100.{i}") for i in range(1, 6)]
    others = [contact(10, "192.0.2.1"), contact(11, "203.0.113.1")]
    lan = [contact(20, "192.168.1.2")]
    for seed in range(20):
        chosen = peers_to_ask([*lan, *same_network, *others], random.Random(seed))
        assert len(chosen) == ASK_PER_ROUND
        assert set(others) <= set(chosen) and len(set(chosen) & set(same_network)) == 1
        assert chosen[3] in lan  # the LAN's only after one of each public network
    assert peers_to_ask(lan, random.Random(0)) == lan
