"""A serving node's part in the DHT: join, then keep its offers fresh in the network.

The DHT runs over UDP on the same port number as the node's TCP listener. The node joins
through its bootstrap nodes (and LAN beacons), then publishes one signed offer per service
and its node record whenever `OfferPublisher` says they are due.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import trio

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.dht.lookup import Seed
from hubnet.dht.node import DhtNode
from hubnet.dht.reachability import Reachability
from hubnet.dht.transport import DatagramTransport
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.node.naming import Target
from hubnet.node.offer_check import accept_record
from hubnet.node.offers import Load
from hubnet.node.protocol import PeerInfo, ReachStatus
from hubnet.node.publisher import OfferPublisher
from hubnet.node.reach import Reach, dial_back
from hubnet.node.relay import relay_service
from hubnet.node.services import NodeConfig, Service

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
REJOIN_INTERVAL = 30.0


def advertised_addresses(config: NodeConfig, port: int) -> tuple[Address, ...]:
    """The addresses to put in offers: `advertise`, else the listen host, else our outward IP."""
    if config.advertise:
        return config.advertise
    host = config.listen_host
    if host in ("", "0.0.0.0", "::"):
        host = _outward_ip()
    return (DirectAddress(host, port),)


def _outward_ip() -> str:
    # Connecting a UDP socket sends nothing; it only asks the kernel which source address
    # it would use for the internet, which is the address peers elsewhere could reach.
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        return str(probe.getsockname()[0])
    return "127.0.0.1"


def seeds_from(targets: Sequence[Target]) -> list[Seed]:
    return [Seed((t.direct.host, t.direct.port), t.peer) for t in targets]


class Discovery:
    """Runs the node's DHT peer, its publisher and its reachability checks (`reach`)."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        load: Callable[[], Load],
        *,
        seeds: Sequence[Seed] = (),
        lan: bool = True,
        attestations: tuple[bytes, ...] = (),
    ) -> None:
        self.identity = identity
        # A private node is dialled through its relays only: it publishes the relayed
        # addresses it holds (`use_addresses`), no direct one, and nothing while it holds none.
        self.relayed: tuple[Address, ...] = ()
        self.direct: tuple[Address, ...] = ()
        self.attestations = attestations  # this node's organisation attestations, for its offers
        self.config = config
        self.load = load
        self.seeds = list(seeds)
        self.lan = lan
        self.dht: DhtNode | None = None
        self.reach = Reach(config.reachability)
        # What each relay held charges per MiB, by its peer id: set by whoever keeps the reservations.
        self.relay_prices: Mapping[bytes, int] = {}
        # The demand multiplier on a service's prices: set by whoever runs the job server.
        self.multiplier: Callable[[Service], float] = lambda service: 1.0

    def peers(self) -> list[PeerInfo]:
        """The DHT contacts in our routing table (none before the DHT has started)."""
        if self.dht is None:
            return []
        return [PeerInfo(c.public_key, c.ip, c.port) for c in self.dht.protocol.table.contacts()]

    def reach_status(self) -> ReachStatus | None:
        """Reachability, observed address, DHT mode and contacts (none before the DHT has started)."""
        if self.dht is None:
            return None
        state = self.reach.state
        observed = str(DirectAddress(*state.observed)) if state.observed is not None else ""
        mode = "client" if state.client_mode else "server"
        held = [a for a in self.relayed if isinstance(a, RelayAddress)]
        relays = tuple(f"{encode_peer_id(a.relay_peer)}@{a.relay}" for a in held)
        prices = tuple(self.relay_prices.get(a.relay_peer, 0) for a in held)
        return ReachStatus(
            str(state.reachability), observed, mode, len(self.dht.protocol.table), relays, prices
        )

    async def run(self, transport: DatagramTransport, *, task_status: trio.TaskStatus[DhtNode]) -> None:
        """Join and publish over `transport` (bound to the job port's number) until cancelled;
        `start` returns the DHT node. Whoever bound the transport closes it."""
        # Offers stored here may name only their publisher's address (node/offer_check.py).
        dht = DhtNode(
            self.identity,
            transport,
            accept_record=accept_record,
            dial_back=functools.partial(dial_back, self.identity),
        )
        self.dht = dht
        port = transport.local_address[1]
        self.direct = advertised_addresses(self.config, port)
        publisher = OfferPublisher(
            self.identity,
            self.config,
            self.addresses,
            attestations=self.attestations,
            multiplier=self.multiplier,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(dht.serve)
            if self.lan:
                from hubnet.dht.beacon import run_beacon

                await nursery.start(run_beacon, dht)
            nursery.start_soon(self.reach.run, dht, port)
            task_status.started(dht)
            await self._keep_published(dht, publisher)

    @property
    def private(self) -> bool:
        return self.reach.state.reachability is Reachability.PRIVATE

    @property
    def addresses(self) -> tuple[Address, ...]:
        """Where callers reach this node: its relayed addresses while private, else direct."""
        return self.relayed if self.private else self.direct

    def use_addresses(self, addresses: tuple[Address, ...]) -> None:
        """The relayed addresses this node holds now (published within POLL_INTERVAL)."""
        self.relayed = addresses

    def _readdress(self, publisher: OfferPublisher) -> None:
        """Republish at once when where callers reach us, or whether we relay, has changed: a
        private node relays for nobody (nobody could reach its relay)."""
        relay = relay_service(self.config.relay) if self.config.relay and not self.private else None
        if publisher.addresses != self.addresses or publisher.relay != relay:
            publisher.relay = relay
            publisher.readdress(self.addresses)

    async def _keep_published(self, dht: DhtNode, publisher: OfferPublisher) -> None:
        last_join = float("-inf")
        seeds_answered = False
        joins = 0
        reported: PublishState | None = None
        published_with = self.reach.state
        while True:
            joined = False
            # Join through the seeds until one answers, even if LAN peers arrived first:
            # otherwise a LAN could stay a DHT of its own, cut off from the wider network.
            if self.seeds and not seeds_answered and trio.current_time() - last_join >= REJOIN_INTERVAL:
                last_join = trio.current_time()
                answered = await dht.bootstrap(self.seeds)
                seeds_answered = joined = answered > 0
                joins += 1
                if answered:
                    log.info(
                        "joined the DHT: %d of %d seed(s) answered, %d contacts",
                        answered,
                        len(self.seeds),
                        len(dht.protocol.table),
                    )
                else:  # said once; the retries every REJOIN_INTERVAL are detail
                    log.log(
                        logging.WARNING if joins == 1 else logging.DEBUG,
                        "no bootstrap node answered (%s); trying again every %.0fs",
                        ", ".join(f"{host}:{port}" for host, port in (seed.address for seed in self.seeds)),
                        REJOIN_INTERVAL,
                    )
            load = self.load()
            now = time.time()
            # A new reachability is news for the DHT: a node that went private holds its
            # records no longer (client mode) and must store them at public nodes now.
            moved = self.reach.state != published_with
            self._readdress(publisher)
            if (joined or moved or publisher.due(load, now)) and publisher.addresses:
                published_with = self.reach.state
                publication = publisher.publish(load, now)
                stored = [await dht.publish_provider(offer) for offer in publication.offers]
                await dht.publish_node_record(publication.node_record)
                names = [service.name for service in publisher.offered]
                state = PublishState.of(names, stored, len(dht.protocol.table))
                # The republish every 100 s is news only when what it found changed.
                level = logging.DEBUG if state == reported else state.level
                log.log(level, "%s", state.describe(stored, len(dht.protocol.table)))
                reported = state
            await trio.sleep(POLL_INTERVAL)


@dataclass(frozen=True)
class PublishState:
    """What a publication found, as far as an operator cares: the offers, which of them were
    stored at no node or at one only, and whether the node has any DHT contacts. The exact
    store counts and contact numbers move with every republish and are left out, so that an
    unchanged state means a republish not worth a line."""

    offered: tuple[str, ...]  # the services' names
    only_here: tuple[str, ...]  # stored by exactly one node (this one, when it has no contacts)
    nowhere: tuple[str, ...]  # stored by no node at all
    alone: bool  # no DHT contacts: only a caller given this node's address can reach it

    @classmethod
    def of(cls, names: Sequence[str], stored: Sequence[int], contacts: int) -> PublishState:
        return cls(
            tuple(sorted(names)),
            tuple(sorted(n for n, count in zip(names, stored, strict=True) if count == 1)),
            tuple(sorted(n for n, count in zip(names, stored, strict=True) if count == 0)),
            contacts == 0,
        )

    @property
    def level(self) -> int:
        if not self.offered:  # a node with no services was warned about at the start
            return logging.DEBUG
        return logging.WARNING if self.nowhere else logging.INFO

    def describe(self, stored: Sequence[int], contacts: int) -> str:
        """The line for a publication that found this state, with its counts."""
        if not self.offered:
            return f"published no offers (no services), {contacts} DHT contact(s)"
        low, high = min(stored), max(stored)
        counts = f"{low}" if low == high else f"{low}-{high}"
        text = (
            f"published {len(self.offered)} offer(s) ({', '.join(self.offered)}), stored at {counts} node(s)"
        )
        if self.alone:
            return f"{text}; no other DHT node known yet: only callers given --server can find this node"
        text += f", {contacts} DHT contact(s)"
        if self.nowhere:
            text += f"; stored nowhere: {', '.join(self.nowhere)}"
        if self.only_here:
            text += f"; stored at one node only: {', '.join(self.only_here)}"
        return text
