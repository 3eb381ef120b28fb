"""Whether strangers on the internet can reach this node, decided from peers' dial-backs (sans-IO).

A node cannot see its own NAT. So, as libp2p's AutoNAT does, it asks a few DHT peers to dial
it back (`DialMe`, `dht.protocol`): each dials the IP it saw the request come from, never an
address the request names (so nobody can aim a node's dials at a third party), over TCP at
the node's job port (the node's key must answer a Noise handshake there) and over UDP at
the port the request came from, with a `DialBack` datagram from a socket other than the
one that answered. A NAT lets the answer to a request through on the mapping the request
made, but not a packet from a new socket or a new connection: only a node that strangers
can reach receives both. Each answer (`Dialed`) also says where the request came from:
the node's observed address, which behind a NAT is the router's public one.

`ReachabilityVotes` keeps the latest answer of each of the last few peers and concludes:

- votes whose observed host is a private or loopback address are left out: those peers
  share a LAN or a machine with us and say nothing about the internet;
- the observed address is the one most of the remaining votes saw (ties: the newest);
  only votes for it count, so one peer that lies about it cannot tip the result;
- `public` once at least MIN_AGREEING peers reached both ports and they outnumber those
  that did not; `private` once at least MIN_AGREEING could not and they outnumber those
  that could; `unknown` otherwise (too few peers, or a split).

`due` says when to ask again: soon while the answer is unknown and more peers appear,
every RECHECK_INTERVAL once known, and at once (within MIN_GAP) when a vote sees a
different observed address, so a node that moves (a new lease, another network) knows
within one round. Nothing here reads a clock or opens a socket: the driver passes `now`.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from hubnet.dht.messages import Contact
from hubnet.dht.records import Address
from hubnet.dht.sources import classify, is_local

MIN_AGREEING = 2  # peers that must agree before a conclusion
MAX_VOTES = 5  # the latest answers of this many peers count
VOTE_LIFETIME = 3600.0  # seconds a vote counts
ASK_PER_ROUND = 4  # peers asked in one round
RETRY_INTERVAL = 60.0  # seconds between rounds while the answer is unknown
RECHECK_INTERVAL = 900.0  # seconds between rounds once it is known (libp2p: 15 minutes)
MIN_GAP = 5.0  # seconds between two rounds, whatever triggers them


class Reachability(enum.StrEnum):
    PUBLIC = "public"  # strangers reach our job port and our DHT port
    PRIVATE = "private"  # they do not: behind a NAT or a firewall
    UNKNOWN = "unknown"  # not enough answers yet, or they disagree


@dataclass(frozen=True)
class Vote:
    """One peer's dial-back: where it saw us, and whether it reached our ports."""

    peer: bytes  # its key
    observed: Address  # the address it saw our request come from
    tcp: bool  # our key answered a Noise handshake at the observed IP and our job port
    udp: bool  # its DialBack datagram reached our DHT port
    at: float  # when we got the answer

    @property
    def reached(self) -> bool:
        return self.tcp and self.udp


class ReachabilityVotes:
    """The latest dial-back votes and what they conclude (the module docstring)."""

    def __init__(self) -> None:
        self._votes: dict[bytes, Vote] = {}  # by peer, oldest first
        self._last_round: float | None = None
        self._next_round = 0.0
        self._peers_at_last_round = 0

    def add(self, vote: Vote) -> None:
        """Count `vote` (replacing that peer's earlier one); a vote that sees an observed
        address other than the current one makes the next round due at once."""
        before = self.observed
        self._votes.pop(vote.peer, None)
        self._votes[vote.peer] = vote
        while len(self._votes) > MAX_VOTES:
            del self._votes[next(iter(self._votes))]
        if before is not None and not is_local(vote.observed[0]) and vote.observed[0] != before[0]:
            self._next_round = 0.0

    def _counted(self, now: float) -> list[Vote]:
        return [
            v for v in self._votes.values() if not is_local(v.observed[0]) and now - v.at <= VOTE_LIFETIME
        ]

    @property
    def observed(self) -> Address | None:
        """The address most votes saw us at (ties: the newest), or None without votes."""
        votes = [v for v in self._votes.values() if not is_local(v.observed[0])]
        if not votes:
            return None
        counts = Counter(v.observed[0] for v in votes)
        newest = {v.observed[0]: i for i, v in enumerate(votes)}
        host = max(counts, key=lambda h: (counts[h], newest[h]))
        return next(v.observed for v in reversed(votes) if v.observed[0] == host)

    def status(self, now: float) -> Reachability:
        observed = self.observed
        votes = [v for v in self._counted(now) if observed is not None and v.observed[0] == observed[0]]
        reached = sum(v.reached for v in votes)
        unreached = len(votes) - reached
        if reached >= MIN_AGREEING and reached > unreached:
            return Reachability.PUBLIC
        if unreached >= MIN_AGREEING and unreached > reached:
            return Reachability.PRIVATE
        return Reachability.UNKNOWN

    def due(self, now: float, peers: int) -> bool:
        """Whether to run a round now, with `peers` peers we could ask."""
        if peers == 0:
            return False
        if self._last_round is None:
            return True
        if now - self._last_round < MIN_GAP:
            return False
        more_peers = peers > self._peers_at_last_round and self.status(now) is Reachability.UNKNOWN
        return now >= self._next_round or more_peers

    def round_done(self, now: float, peers: int) -> None:
        """A round that could ask `peers` peers ended: schedule the next."""
        self._last_round = now
        self._peers_at_last_round = peers
        known = self.status(now) is not Reachability.UNKNOWN
        self._next_round = now + (RECHECK_INTERVAL if known else RETRY_INTERVAL)


def peers_to_ask(
    contacts: Sequence[Contact], rng: random.Random, count: int = ASK_PER_ROUND
) -> list[Contact]:
    """Up to `count` of `contacts`, at random but one per network first and public addresses
    before private ones (a peer on our LAN cannot tell us about the internet)."""
    shuffled = list(contacts)
    rng.shuffle(shuffled)
    chosen: list[Contact] = []
    networks: set[str] = set()
    for local in (False, True):
        for contact in shuffled:
            source = classify(contact.address)
            if source.local == local and source.network not in networks:
                networks.add(source.network)
                chosen.append(contact)
    chosen += [c for c in shuffled if c not in chosen]
    return chosen[:count]
