"""LAN discovery: nodes on one link find each other with signed multicast beacons.

A beacon is one UDP datagram to `BEACON_GROUP`:`BEACON_PORT` (IPv4 multicast, TTL 1, so
it never leaves the link): `BEACON_MAGIC`, a version byte, then the sender's signed
`NodeRecord` naming its DHT address. A node that hears a beacon it has not acted on
lately pings the announced DHT address, expecting the record's key; the DHT adds every
serving peer that answers a ping (and that sends one) to its routing table, so one beacon
joins two nodes without any bootstrap configuration.

The address pinged is always the beacon's source IP, with a port from the record: the
source IP is the one address the datagram proves is reachable on this link, while a
record's host may be a wildcard (a node listening on 0.0.0.0), or someone else's address
that a forger on the LAN wants our pings sent to. A record address counts only if its
host is that source IP or unspecified; the record's signature proves the key, and the
ping is sent expecting that key, so a replayed or forged beacon earns one unanswered ping.

`BeaconState` is the sans-IO logic (bytes and times in, decisions out: no socket, no
clock). `run_beacon` is the Trio driver that owns the sockets and the timers.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

import trio

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.messages import Ping
from hubnet.dht.node import DhtNode
from hubnet.dht.records import MAX_NODE_RECORD_LEN, Address, NodeRecord
from hubnet.identity.errors import RemoteProtocolError
from hubnet.identity.keys import Identity, fingerprint
from hubnet.identity.records import InvalidRecord

__all__ = [
    "BEACON_GROUP",
    "BEACON_INTERVAL",
    "BEACON_PORT",
    "BeaconState",
    "InvalidBeacon",
    "PingPeer",
    "decode_beacon",
    "encode_beacon",
    "reachable_address",
    "run_beacon",
]

log = logging.getLogger(__name__)

BEACON_GROUP = "239.255.70.70"  # administratively scoped (RFC 2365): never routed off-site
BEACON_PORT = 7071
BEACON_INTERVAL = 30.0  # seconds between our beacons, and between pings of one publisher
BEACON_JITTER = 0.2  # each wait is interval x [0.8, 1.2], so nodes started together drift apart
BEACON_RECORD_TTL = 300  # seconds a beacon's record stays valid: long enough for skew, short for replays
BEACON_MAGIC = b"hubnet-beacon\x00"
BEACON_VERSION = 1
MAX_BEACON_LEN = len(BEACON_MAGIC) + 1 + MAX_NODE_RECORD_LEN
MAX_PINGS_PER_INTERVAL = 64  # bounds the pings a LAN full of (possibly forged) keys can make us send


class InvalidBeacon(RemoteProtocolError):
    """A datagram on the beacon port is not a valid, current, signed hubnet beacon."""


@dataclass(frozen=True)
class PingPeer:
    """Ping `address` expecting `public_key`: the peer it belongs to announced itself."""

    public_key: bytes
    address: Address


def encode_beacon(record: NodeRecord) -> bytes:
    """The beacon datagram announcing `record`."""
    return BEACON_MAGIC + bytes([BEACON_VERSION]) + record.raw


def decode_beacon(data: bytes, *, now: int) -> NodeRecord:
    """The record a beacon announces; raise InvalidBeacon (and nothing else) unless it is valid at `now`."""
    if len(data) > MAX_BEACON_LEN:
        raise InvalidBeacon(f"beacon of {len(data)} bytes exceeds {MAX_BEACON_LEN}")
    header = len(BEACON_MAGIC) + 1
    if len(data) <= header or not data.startswith(BEACON_MAGIC):
        raise InvalidBeacon("not a hubnet beacon")
    if data[header - 1] != BEACON_VERSION:
        # A later version may change the layout: ignore it rather than guess.
        raise InvalidBeacon(f"unsupported beacon version {data[header - 1]}")
    try:
        return NodeRecord.parse(data[header:], now=now)
    except InvalidRecord as exc:
        raise InvalidBeacon(f"beacon record: {exc}") from exc


def reachable_address(record: NodeRecord, source_ip: str) -> Address | None:
    """The address to ping for `record` heard from `source_ip`, or None if it names none there.

    The first record address whose host is `source_ip` or unspecified (0.0.0.0, ::) gives
    its port; the host pinged is always `source_ip` (see the module docstring for why).
    """
    try:
        source = ipaddress.ip_address(source_ip)
    except ValueError:
        return None
    for address in record.addresses:
        if not isinstance(address, DirectAddress):
            continue  # via a relay: no DHT port there to ping
        try:
            announced = ipaddress.ip_address(address.host)
        except ValueError:
            continue  # a host name: nothing a beacon can vouch for
        if announced == source or announced.is_unspecified:
            return (source_ip, address.port)
    return None


class BeaconState:
    """One node's beacon logic: what to announce, and which announcements to act on.

    `now` is unix seconds from the caller. A publisher is pinged at most once per
    `repeat_after` seconds, and at most `max_peers` publishers per such window, so neither
    a chatty peer nor a flood of fresh keys can make us send more than that.
    """

    def __init__(
        self,
        identity: Identity,
        address: Address,
        *,
        repeat_after: float = BEACON_INTERVAL,
        max_peers: int = MAX_PINGS_PER_INTERVAL,
    ) -> None:
        self.identity = identity
        self.address = address
        self.repeat_after = repeat_after
        self.max_peers = max_peers
        self.dropped = 0  # datagrams ignored as invalid, unreachable or over the limit
        # Publisher -> when we last decided to ping it; insertion order is time order.
        self._pinged: dict[bytes, float] = {}

    def beacon(self, *, now: float) -> bytes:
        """A fresh beacon announcing our DHT address, signed at `now`."""
        issued = int(now)
        address = DirectAddress(*self.address)
        record = NodeRecord.create(
            self.identity, (address,), sequence=issued, issued_at=issued, ttl=BEACON_RECORD_TTL
        )
        return encode_beacon(record)

    def receive(self, data: bytes, source_ip: str, *, now: float) -> PingPeer | None:
        """What to do about a datagram from `source_ip`: a peer to ping, or None. Never raises."""
        try:
            record = decode_beacon(data, now=int(now))
        except InvalidBeacon:
            self.dropped += 1
            return None
        if record.publisher == self.identity.public_key:
            return None  # our own beacon, looped back on purpose for other nodes on this host
        address = reachable_address(record, source_ip)
        if address is None:
            self.dropped += 1
            return None
        self._forget_old(now)
        if record.publisher in self._pinged:
            return None
        if len(self._pinged) >= self.max_peers:
            self.dropped += 1
            return None
        self._pinged[record.publisher] = now
        return PingPeer(record.publisher, address)

    def _forget_old(self, now: float) -> None:
        # Oldest first; an entry dated after `now` (the clock went back) is dropped too,
        # so a clock step can delay a ping by at most one window, never block it for good.
        while self._pinged:
            publisher, when = next(iter(self._pinged.items()))
            if now - self.repeat_after < when <= now:
                return
            del self._pinged[publisher]


# --- the Trio driver -------------------------------------------------------------------------------------


async def run_beacon(
    node: DhtNode,
    *,
    group: str = BEACON_GROUP,
    port: int = BEACON_PORT,
    interval: float = BEACON_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce `node` on the LAN and ping every node heard there, until cancelled.

    Start it with `await nursery.start(run_beacon, node)` once `node.serve` is running
    (pings need its receive loop). It beacons at once and then every `interval` seconds
    (with jitter), on the interface of the node's IPv4 address, or, for a node on
    0.0.0.0, the one the kernel's multicast (or default) route picks. If multicast is
    unavailable (IPv6 node, no route, port taken without SO_REUSEADDR) it logs a warning
    and returns right after `started()`: LAN discovery is a convenience, never a reason
    for a node to fail.
    """
    host, _ = node.transport.local_address
    try:
        receiver, sender = await _open_sockets(group, port, _interface(host))
    except OSError as exc:
        log.warning("LAN discovery off: cannot use multicast %s:%d for %s: %s", group, port, host, exc)
        task_status.started()
        return
    state = BeaconState(node.identity, node.transport.local_address, repeat_after=interval)
    with receiver, sender:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_announce, node, state, sender, (group, port), interval)
            task_status.started()
            while True:
                # One byte over the limit, so an oversized datagram is seen as such, not truncated.
                data, source = await receiver.recvfrom(MAX_BEACON_LEN + 1)
                peer = state.receive(data, str(source[0]), now=node.clock())
                if peer is not None:
                    nursery.start_soon(_ping, node, peer)


def _interface(host: str) -> str:
    """The IPv4 address naming the interface to beacon on; OSError for an IPv6 node."""
    if ":" in host:
        # An IPv4 beacon's source address could not be pinged from an IPv6 DHT socket.
        raise OSError(f"LAN beacons are IPv4-only and the DHT listens on {host}")
    return host or "0.0.0.0"


async def _open_sockets(
    group: str, port: int, interface: str
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    """A receiver joined to `group` on `interface`, and a sender that multicasts from it."""
    receiver = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Several nodes on one host share the port; each gets its own copy of every beacon.
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # needed on the BSDs and macOS, harmless on Linux
            receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Bound to the group, not 0.0.0.0: no unicast and no other group's traffic gets in.
        await receiver.bind((group, port))
        membership = socket.inet_aton(group) + socket.inet_aton(interface)
        receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)  # other nodes on this host
        sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface))
        # From the node's own address, so receivers see the source IP its DHT socket is bound to.
        await sender.bind((interface, 0))
    except BaseException:
        receiver.close()
        sender.close()
        raise
    return receiver, sender


async def _announce(
    node: DhtNode, state: BeaconState, sender: trio.socket.SocketType, group: Address, interval: float
) -> None:
    failing = False
    while True:
        try:
            await sender.sendto(state.beacon(now=node.clock()), group)
        except OSError as exc:
            # An interface may go down and come back: keep trying, but warn only once per outage.
            if not failing:
                log.warning("cannot send LAN beacon to %s:%d: %s", *group, exc)
            failing = True
        else:
            failing = False
        await trio.sleep(interval * random.uniform(1 - BEACON_JITTER, 1 + BEACON_JITTER))


async def _ping(node: DhtNode, peer: PingPeer) -> None:
    known = any(c.public_key == peer.public_key for c in node.protocol.table.contacts())
    answered = await node.rpc(peer.address, Ping(), peer.public_key) is not None
    if answered and not known:
        log.info("found LAN peer %s at %s:%d", fingerprint(peer.public_key), *peer.address)
    elif not answered:
        log.debug("LAN peer %s at %s:%d did not answer", fingerprint(peer.public_key), *peer.address)
