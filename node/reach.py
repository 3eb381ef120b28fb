"""The serving node's reachability: whether strangers can dial it, as a value others watch.

`Reach.run` asks DHT peers to dial the node back (`dht.reachability` has the protocol and
the decision), at once when peers appear and again as `ReachabilityVotes.due` says, and
puts its DHT in client mode while the answer is `private`: a node nobody can reach must
not sit in others' routing tables nor hold their records. Whoever cares (the relay
client, `hubnode status`) reads `Reach.state` or waits in `Reach.changed` for the next one.

`reachability = "public"` or `"private"` in services.toml (or `hubnode serve
--reachability`) fixes the answer without asking anyone: for an operator who knows (a
forwarded port, a firewall that lets nothing in).

`dial_back` is this node's part for others: the TCP half of a dial-back (a Noise handshake
that the requester's key must complete at its observed IP, carrying a status request as
any caller's first message does) and the UDP half (the DHT's `DialBack` datagram, sent
from a fresh socket so that no NAT mapping of our DHT socket can carry it).
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from dataclasses import dataclass

import trio

from hubnet.dht.messages import Contact
from hubnet.dht.node import DhtNode
from hubnet.dht.reachability import Reachability, ReachabilityVotes
from hubnet.dht.records import Address
from hubnet.dht.transport import UdpTransport
from hubnet.identity.errors import HubnetError
from hubnet.identity.keys import Identity
from hubnet.identity.secure import connect_secure
from hubnet.node.protocol import GetStatus, encode

log = logging.getLogger("hubnet.node")

POLL_INTERVAL = 1.0  # seconds between looks at whether a round is due


@dataclass(frozen=True)
class ReachState:
    """What the node knows of its reachability: the answer, where the internet sees it (its
    UDP address as peers observed it; None before any answer), and whether its DHT is in
    client mode."""

    reachability: Reachability
    observed: Address | None
    client_mode: bool
    fixed: bool  # set by the operator, not found by asking


class Reach:
    """The node's reachability (`state`), found out by `run` or fixed by `setting`."""

    def __init__(self, setting: str = "auto") -> None:
        self.setting = setting
        fixed = {"public": Reachability.PUBLIC, "private": Reachability.PRIVATE}.get(setting)
        self.votes = ReachabilityVotes()
        self._state = ReachState(
            fixed or Reachability.UNKNOWN, None, fixed is Reachability.PRIVATE, fixed is not None
        )
        self._changed = trio.Event()

    @property
    def state(self) -> ReachState:
        return self._state

    async def changed(self, seen: ReachState) -> ReachState:
        """The state, once it differs from `seen` (at once if it already does)."""
        while self._state == seen:
            await self._changed.wait()
        return self._state

    def _set(self, state: ReachState) -> None:
        if state != self._state:
            self._state = state
            self._changed.set()
            self._changed = trio.Event()

    async def run(self, dht: DhtNode, tcp_port: int) -> None:
        """Keep `state` current for the node whose DHT is `dht` and whose job port is `tcp_port`,
        until cancelled."""
        dht.protocol.set_client_mode(self._state.client_mode)
        if self._state.fixed:
            log.info(
                "reachability: %s (set in the configuration: no dial-backs asked)", self._state.reachability
            )
            return
        rng = random.Random()
        while True:
            peers = len(dht.protocol.table)
            if self.votes.due(dht.clock(), peers):
                answered = await dht.check_reachability(tcp_port, self.votes, rng)
                now = dht.clock()
                status = self.votes.status(now)
                entering = status is Reachability.PRIVATE and not dht.protocol.client_mode
                dht.protocol.set_client_mode(status is Reachability.PRIVATE)
                state = ReachState(status, self.votes.observed, dht.protocol.client_mode, False)
                if state != self._state:
                    log.info("%s", describe(state, answered))
                self._set(state)
                if entering:  # those that have us in their tables drop us now, not at their next ping
                    await dht.tell_contacts()
            await trio.sleep(POLL_INTERVAL)


def describe(state: ReachState, answered: int | None = None) -> str:
    """One line for the log: the answer, the observed address, the DHT's mode."""
    observed = f"{state.observed[0]}:{state.observed[1]}" if state.observed else "not yet known"
    mode = (
        "client mode (not in others' routing tables, stores nothing for them)"
        if state.client_mode
        else "serving"
    )
    asked = f"; {answered} peer(s) answered this round" if answered is not None else ""
    return f"reachability: {state.reachability} (observed address {observed}), DHT {mode}{asked}"


async def dial_back(identity: Identity, requester: Contact, tcp_port: int, probe: bytes) -> bool:
    """Dial `requester` back (`dht.node.DialBack`): send `probe` to its UDP address from a fresh
    socket, then whether its key completes a Noise handshake at its IP and `tcp_port`."""
    host = requester.ip
    with contextlib.suppress(OSError):
        fresh = await UdpTransport.bind("::" if ":" in host else "0.0.0.0", 0)
        try:
            await fresh.send_to(probe, requester.address)
        finally:
            fresh.close()
    try:
        stream = await trio.open_tcp_stream(host, tcp_port)
    except OSError:
        return False
    async with stream:
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await connect_secure(stream, identity, requester.public_key, encode(GetStatus()))
        except (HubnetError, trio.BrokenResourceError, OSError):
            return False
    return True
