"""A DHT simulation harness: many real `DhtNode`s on an in-memory network, on a virtual clock.

Used by tests/trio/test_dht_sim.py and bench/dht_sim.py. Every node is the real driver
(`DhtNode`, hence the real `DhtProtocol`, `Lookup`, store and signatures); only the network
is simulated (`SimNetwork`: a `MemoryNetwork` with an optional one-way latency) and time is
virtual (run under `trio.testing.MockClock(autojump_threshold=0)`, see `run`).

Node `i` has the identity seeded by `i` and joins through a random earlier live node, so a
simulation is reproducible from its seed (`run` also seeds Trio's scheduler shuffling).

What a lookup costs is measured two ways:

- queries: how many contacts the lookup asked (`Lookup.queries`);
- rounds:  its duration in round trips, when the network has a latency (`SimNetwork.latency`):
           every datagram takes exactly `latency`, so a lookup that takes 3 round trips on
           its critical path (alpha queries overlap) lasts 3 x 2 x latency of virtual time.

Keep a simulation's virtual time under `dht.node.REFRESH_INTERVAL` (600 s): past it every
node refreshes its buckets at once, which costs more than the whole join.
"""

from __future__ import annotations

import functools
import math
import random
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import trio
import trio.testing

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import ID_LEN, distance, node_id, service_key
from hubnet.dht.lookup import ALPHA, RPC_TIMEOUT, Lookup, Seed
from hubnet.dht.messages import Contact, Ping
from hubnet.dht.node import VERIFY_DELAY, DhtNode

if TYPE_CHECKING:
    from hubnet.dht.protocol import DhtProtocol
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.routing import K
from hubnet.dht.transport import MemoryNetwork, UdpTransport
from hubnet.identity.keys import Identity
from hubnet.node.offers import Load, Offer, Price

EPOCH = 1_700_000_000  # unix time at virtual time 0
SETTLE_EVERY = 16  # joins between two settles (see Simulation.settle): 3 s of virtual time each
PORT = 7070
T = TypeVar("T")
L = TypeVar("L", bound=Lookup)


def node_identity(index: int) -> Identity:
    return Identity.from_seed(index.to_bytes(32, "big"))


def node_address(index: int) -> Address:
    return (f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}", PORT)


class SimNetwork(MemoryNetwork):
    """A `MemoryNetwork` where, once `start`ed and with `latency` > 0, every datagram takes that long."""

    def __init__(self, *, latency: float = 0.0, loss: float = 0.0, seed: int = 0) -> None:
        super().__init__(loss=loss, seed=seed)
        self.latency = latency
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def deliver(self, data: bytes, source: Address, destination: Address) -> None:
        if self.latency > 0 and self._nursery is not None:
            self._nursery.start_soon(self._deliver_later, data, source, destination)
        else:
            super().deliver(data, source, destination)

    async def _deliver_later(self, data: bytes, source: Address, destination: Address) -> None:
        await trio.sleep(self.latency)
        super().deliver(data, source, destination)


class SimNode(DhtNode):
    """A `DhtNode` that keeps the latest `Lookup` it ran for each target (for its query count)."""

    index: int

    def __init__(self, identity: Identity, *args: Any, **kwargs: Any) -> None:
        super().__init__(identity, *args, **kwargs)
        self.started: dict[bytes, Lookup] = {}

    async def _run(self, lookup: L) -> L:
        self.started[lookup.target] = lookup
        return await super()._run(lookup)


@dataclass(frozen=True)
class LookupResult:
    found: list[Contact]
    expected: list[SimNode]  # the true k closest live nodes (brute force, querier excluded)
    queries: int
    rounds: float | None  # None when the network has no latency

    @property
    def exact(self) -> bool:
        return {c.public_key for c in self.found} == {n.identity.public_key for n in self.expected}

    @property
    def overlap(self) -> int:
        return len({c.public_key for c in self.found} & {n.identity.public_key for n in self.expected})


@dataclass
class Summary:
    """Figures over many lookups."""

    results: list[LookupResult] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.results)

    @property
    def exact(self) -> int:
        return sum(r.exact for r in self.results)

    @property
    def exact_rate(self) -> float:
        return self.exact / max(self.count, 1)

    @property
    def queries(self) -> list[int]:
        return [r.queries for r in self.results]

    @property
    def rounds(self) -> list[float]:
        return [r.rounds for r in self.results if r.rounds is not None]

    def describe(self) -> str:
        text = f"{self.exact}/{self.count} exact, queries {describe(self.queries)}"
        return text + (f", rounds {describe(self.rounds)}" if self.rounds else "")


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest value with `fraction` of them at or below it."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(fraction * len(ordered)))) - 1]


def describe(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"mean {statistics.fmean(values):.2f} p99 {percentile(values, 0.99):g} max {max(values):g}"


class Simulation:
    """Nodes on one `SimNetwork`; create with `simulation(...)`."""

    def __init__(
        self,
        network: SimNetwork,
        nursery: trio.Nursery,
        *,
        k: int,
        alpha: int,
        seed: int,
        address: Callable[[int], Address] = node_address,
    ) -> None:
        self.network = network
        self.address = address  # node i's address
        self.nursery = nursery
        self.k = k
        self.alpha = alpha
        self.rng = random.Random(seed)
        self.nodes: list[SimNode] = []
        self.unplugged: set[int] = set()  # node indexes
        self._live: list[SimNode] = []

    # -- building -----------------------------------------------------------------------

    @property
    def live(self) -> list[SimNode]:
        """The nodes not unplugged, in the order they joined."""
        return list(self._live)

    def now(self) -> int:
        return int(EPOCH + trio.current_time())

    async def add_node(
        self, *, seeds: Sequence[SimNode] | None = None, join: str = "bootstrap", **options: object
    ) -> SimNode:
        """Start the next node and join it through `seeds` (default: one random live node).

        `join` is "bootstrap" (`DhtNode.bootstrap`: ping the seeds, look up our own id, then
        refresh every bucket: about k x log2(N/k) queries) or "self-lookup" (the first two
        steps only: about k queries, for simulations too large to join the full way).
        """
        index = len(self.nodes)
        node = SimNode(
            node_identity(index),
            self.network.transport(self.address(index)),
            k=self.k,
            alpha=self.alpha,
            clock=lambda: EPOCH + trio.current_time(),
            **options,
        )
        node.index = index
        await self.nursery.start(node.serve)
        if seeds is None:
            seeds = [self.rng.choice(self._live)] if self._live else []
        self.nodes.append(node)
        self._live.append(node)
        if seeds and join == "bootstrap":
            await node.bootstrap(Seed(s.contact.address, s.identity.public_key) for s in seeds)
        elif seeds and join == "self-lookup":
            for seed in seeds:
                await node.rpc(seed.contact.address, Ping(), seed.identity.public_key)
            await node.lookup(node.protocol.table.node.id)
        elif seeds:
            raise ValueError(f"unknown join {join!r}")
        return node

    async def grow(
        self, count: int, progress: Callable[[int], None] | None = None, *, join: str = "bootstrap"
    ) -> None:
        """Add `count` nodes one by one, and `settle` every SETTLE_EVERY of them and at the end."""
        for added in range(1, count + 1):
            await self.add_node(join=join)
            if progress is not None:
                progress(len(self.nodes))
            if added % SETTLE_EVERY == 0 or added == count:
                await self.settle()

    async def settle(self) -> None:
        """Let the nodes prove the addresses of newcomers that asked them something only once.

        A node pings such a newcomer back `VERIFY_DELAY` seconds later (dht.node) before it
        enters the routing table; joins take no virtual time, so without this wait the
        lookups right after them would find tables short of the latest newcomers, and a node
        asked by many newcomers at one instant would prove only MAX_VERIFYING of them.
        """
        await trio.sleep(VERIFY_DELAY + 2 * RPC_TIMEOUT)

    def unplug(self, fraction: float, *, keep: Iterable[SimNode] = ()) -> list[SimNode]:
        """Unplug random live nodes, never those in `keep`, until `fraction` of all are; return them."""
        kept = {n.index for n in keep}
        candidates = [n for n in self.live if n.index not in kept]
        count = max(0, round(fraction * len(self.nodes)) - len(self.unplugged))
        victims = self.rng.sample(candidates, count)
        for node in victims:
            self.unplug_node(node)
        return victims

    def unplug_node(self, node: SimNode) -> None:
        """`node` vanishes from the network (its serve loop ends: its queue is closed)."""
        if node.index in self.unplugged:
            return
        self.unplugged.add(node.index)
        self._live.remove(node)
        self.network.unplug(node.contact.address)

    # -- ground truth -------------------------------------------------------------------

    def random_target(self) -> bytes:
        return self.rng.randbytes(ID_LEN)

    def closest_live(self, target: bytes, *, exclude: SimNode | None = None) -> list[SimNode]:
        """Brute force: the k live nodes closest to `target`."""
        others = [n for n in self.live if n is not exclude]
        return sorted(others, key=lambda n: distance(n.protocol.table.node.id, target))[: self.k]

    # -- operations ---------------------------------------------------------------------

    async def lookup(self, node: SimNode, target: bytes) -> LookupResult:
        start = trio.current_time()
        found = await node.lookup(target)
        queries = node.started.pop(target).queries
        rounds = None
        if self.network.latency > 0:
            rounds = (trio.current_time() - start) / (2 * self.network.latency)
        return LookupResult(found, self.closest_live(target, exclude=node), queries, rounds)

    async def lookups(self, queries: Sequence[tuple[SimNode, bytes]], *, concurrency: int = 16) -> Summary:
        """Run lookups, `concurrency` at a time (fewer seconds of virtual time), in order of `queries`."""
        results: list[LookupResult | None] = [None] * len(queries)

        async def one(position: int) -> None:
            node, target = queries[position]
            results[position] = await self.lookup(node, target)

        await gather([functools.partial(one, p) for p in range(len(queries))], concurrency=concurrency)
        return Summary([r for r in results if r is not None])

    def provider_record(
        self, node: SimNode, key: bytes, payload: bytes, *, sequence: int = 1, ttl: int = 1800
    ) -> ProviderRecord:
        return ProviderRecord.create(
            node.identity, key, payload, sequence=sequence, issued_at=self.now(), ttl=ttl
        )

    def offer_record(
        self,
        node: SimNode,
        service_id: bytes,
        *,
        name: str = "sim-service",
        load: tuple[int, int, int] = (0, 0, 4),
        sequence: int = 1,
        ttl: int = 1800,
    ) -> ProviderRecord:
        """A hubnet offer for `service_id` by `node` (its DHT address as the job address)."""
        now = self.now()
        offer = Offer(
            publisher=node.identity.public_key,
            service_id=service_id,
            name=name,
            addresses=(DirectAddress(*node.contact.address),),
            price=Price(per_call=100),
            load=Load(*load),
            sequence=sequence,
            issued_at=now,
            expires_at=now + ttl,
        )
        return self.provider_record(
            node, service_key(service_id), offer.payload(), sequence=sequence, ttl=ttl
        )

    def node_record(self, node: SimNode, *, sequence: int = 1, ttl: int = 1800) -> NodeRecord:
        return NodeRecord.create(
            node.identity,
            (DirectAddress(*node.contact.address),),
            sequence=sequence,
            issued_at=self.now(),
            ttl=ttl,
        )


def reflection_server(*, now: int, contacts: int = 400, providers: int = 64) -> DhtProtocol:
    """A node as a reflector would want one: a full routing table (`contacts` at public
    addresses, one per /24), `providers` records of about 1 KiB under
    service_key(bytes(16)) and the node record of Identity.from_seed(b"n" * 32), all valid
    at `now` (unix seconds). For measuring what a request from an unproven address gets."""
    from hubnet.dht.protocol import DhtProtocol

    server = DhtProtocol(Identity.from_seed(b"r" * 32), serving=True)
    for index in range(contacts):
        identity = Identity.from_seed((70_000 + index).to_bytes(32, "big"))
        server.table.add_contact(
            Contact(identity.public_key, f"198.{18 + index // 256}.{index % 256}.1", PORT)
        )
    key = service_key(bytes(16))
    for index in range(providers):
        publisher = Identity.from_seed((80_000 + index).to_bytes(32, "big"))
        record = ProviderRecord.create(publisher, key, b"o" * 860, sequence=1, issued_at=now, ttl=600)
        server.store.add_provider(record)  # as its own: no source quota
    listed = Identity.from_seed(b"n" * 32)
    server.store.put_node(
        NodeRecord.create(listed, (DirectAddress("192.0.2.9", PORT),), sequence=1, issued_at=now, ttl=600)
    )
    return server


def reflection_ratios(*, now: int, padding: int = 0) -> dict[str, tuple[int, int]]:
    """(request bytes, reply bytes) for each request kind sent to `reflection_server` from an
    address that holds no token (a spoofed victim's), with `padding` bytes of padding."""
    from hubnet.dht.messages import (
        AddProvider,
        FindNode,
        GetNode,
        GetProviders,
        PutNode,
        Request,
        encode,
    )

    server = reflection_server(now=now)
    sender = Identity.from_seed(b"x" * 32)
    victim = ("198.51.100.7", 53)
    requests: dict[str, Request] = {
        "Ping": Ping(),
        "FindNode": FindNode(bytes(ID_LEN)),
        "GetProviders": GetProviders(service_key(bytes(16))),
        "GetNode": GetNode(Identity.from_seed(b"n" * 32).public_key),
        "AddProvider": AddProvider(
            ProviderRecord.create(
                sender, service_key(bytes(16)), b"x" * 300, sequence=1, issued_at=now, ttl=600
            ).raw
        ),
        "PutNode": PutNode(
            NodeRecord.create(sender, (DirectAddress(*victim),), sequence=1, issued_at=now, ttl=600).raw
        ),
    }
    sizes = {}
    for kind, message in requests.items():
        data = encode(sender, random.randbytes(8), message, serving=False, sent_at=now, padding=padding)
        replies = [e.data for e in server.receive(data, victim, now=now) if hasattr(e, "data")]
        sizes[kind] = (len(data), sum(len(r) for r in replies))
    return sizes


async def gather(calls: Sequence[Callable[[], Awaitable[object]]], *, concurrency: int) -> None:
    """Await every call, at most `concurrency` at once."""
    limit = trio.CapacityLimiter(concurrency)

    async def limited(call: Callable[[], Awaitable[object]]) -> None:
        async with limit:
            await call()

    async with trio.open_nursery() as nursery:
        for call in calls:
            nursery.start_soon(limited, call)


@asynccontextmanager
async def simulation(
    count: int = 0,
    *,
    k: int = K,
    alpha: int = ALPHA,
    seed: int = 0,
    latency: float = 0.0,
    progress: Callable[[int], None] | None = None,
    network: SimNetwork | None = None,
    address: Callable[[int], Address] = node_address,
) -> AsyncIterator[Simulation]:
    """`count` nodes joined one by one, each through a random earlier node; stopped on exit.

    The network has no latency while nodes join (so joining takes no virtual time); set
    `sim.network.latency` afterwards to measure rounds. `network`: another kind of network
    (one with NATs); `address(i)`: node i's address (default `node_address`, in 10/8).
    """
    network = network if network is not None else SimNetwork(seed=seed)
    async with trio.open_nursery() as nursery:
        network.start(nursery)
        sim = Simulation(network, nursery, k=k, alpha=alpha, seed=seed, address=address)
        await sim.grow(count, progress)
        network.latency = latency
        yield sim
        nursery.cancel_scope.cancel()


def seed_scheduler(seed: int) -> None:
    """Seed the private `random.Random` with which Trio shuffles its run queue, if it has one.

    Private, so guarded: without it a run is merely not repeatable, and the tests'
    thresholds are set with margin for that.
    """
    shuffler = getattr(getattr(trio._core, "_run", None), "_r", None)
    if shuffler is not None:
        shuffler.seed(seed)


def run(main: Callable[[], Awaitable[T]], *, seed: int = 0) -> T:
    """Run `main` under an autojumping MockClock, with Trio's scheduler shuffling seeded.

    Trio shuffles its run queue with a private `random.Random`; seeding it makes a whole
    simulation repeatable (the txids come from os.urandom but decide nothing).
    """
    seed_scheduler(seed)
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def identities_with_prefixes(prefixes: list[str]) -> list[Identity]:
    """One identity per bit prefix, found by trying seeds in order."""
    found: list[Identity] = []
    seed = 0
    for prefix in prefixes:
        while True:
            seed += 1
            identity = Identity.from_seed(seed.to_bytes(32, "big"))
            bits = bin(int.from_bytes(node_id(identity.public_key), "big"))[2:].zfill(ID_LEN * 8)
            if bits.startswith(prefix):
                found.append(identity)
                break
    return found


NodeT = TypeVar("NodeT", bound=DhtNode)


@asynccontextmanager
async def udp_chain(count: int, make: Callable[[int, UdpTransport], NodeT]) -> AsyncIterator[list[NodeT]]:
    """`count` nodes from `make(index, transport)` on UDP sockets on 127.0.0.1, each joined
    through the one before it; stopped and closed on the way out."""
    nodes: list[NodeT] = []
    async with trio.open_nursery() as nursery:
        for index in range(count):
            node = make(index, await UdpTransport.bind("127.0.0.1", 0))
            await nursery.start(node.serve)
            if nodes:
                await node.bootstrap([Seed(nodes[-1].contact.address, nodes[-1].identity.public_key)])
            nodes.append(node)
        try:
            yield nodes
        finally:
            nursery.cancel_scope.cancel()
            for node in nodes:
                node.transport.close()
