#!/usr/bin/env python
"""The DHT at 1,000 and 10,000 simulated nodes: hops, success with churn, memory, time.

Every node is a real `DhtNode` (real protocol, lookups, stores and Ed25519 signatures) on
the in-memory network of tests/dht_sim.py, in one process, on a virtual clock (Trio's
MockClock): timeouts cost no real time, signatures and Python do. For each size:

  join      N nodes join one by one, each through a random earlier node. "bootstrap" is
            `DhtNode.bootstrap` (ping the seed, look up our own id, refresh every bucket:
            about k x log2(N/k) queries a join); "self-lookup" stops after the own-id lookup
            (about k queries), which is what makes 10,000 nodes fit in minutes.
  memory    tracemalloc's traced total after the join / N: one node's share of everything
            (routing table, store, protocol state, its Trio tasks and channels, harness).
  lookups   random targets from random nodes: queries per lookup (mean, p99), and success
            = the k contacts returned are exactly the k closest live nodes (brute force).
  rounds    some of those again with a 10 ms latency on every datagram: a lookup's duration
            / RTT, the round trips on its critical path (alpha queries overlap).
  providers a few nodes publish a provider record under one key; searches from other nodes
            succeed when they find every provider's current record.
  churn     25% of the nodes unplugged at once (nothing repaired: no refresh runs), the
            live providers republish (newer sequence), and lookups and searches again.
            With dead contacts a lookup also waits RPC timeouts: its virtual duration.

Then the load-spread figures of bench/_load_spread.py.

    .venv/bin/python bench/dht_sim.py [--sizes 1000 10000] [--seed 1]
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hubnet.dht.ids import K, service_key  # noqa: E402
from hubnet.dht.node import REFRESH_INTERVAL  # noqa: E402
from hubnet.dht.records import ProviderRecord  # noqa: E402
from tests.dht_sim import SimNode, Simulation, Summary, describe, gather, run, simulation  # noqa: E402

CHURN = 0.25
CONCURRENCY = 16  # lookups at once: keeps the virtual time of a phase short
LATENCY = 0.01
PROVIDERS = 5
KEY = service_key(b"bench service")


@dataclass(frozen=True)
class Plan:
    """What to measure at one size."""

    nodes: int
    join: str
    lookups: int
    timed: int  # lookups repeated with latency, for rounds
    searches: int


PLANS = {
    1000: Plan(1000, "bootstrap", lookups=300, timed=50, searches=100),
    10000: Plan(10000, "self-lookup", lookups=100, timed=30, searches=40),
}


def plan_for(nodes: int) -> Plan:
    if nodes in PLANS:
        return PLANS[nodes]
    join = "bootstrap" if nodes <= 2000 else "self-lookup"
    return Plan(nodes, join, lookups=100, timed=30, searches=40)


def recall(summary: Summary) -> float:
    total = sum(len(r.expected) for r in summary.results)
    return sum(r.overlap for r in summary.results) / max(total, 1)


def say(text: str) -> None:
    print(text, flush=True)


class Clock:
    """Real seconds per phase."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed

    def total(self) -> float:
        return time.perf_counter() - self.start


async def publish(
    sim: Simulation, providers: Sequence[SimNode], version: int
) -> tuple[list[int], set[bytes]]:
    """Every provider publishes version `version`; how many nodes kept each, and the raws."""
    stored, raws = [], set()
    for provider in providers:
        payload = b"v%d " % version + provider.identity.public_key[:4]
        record = sim.provider_record(provider, KEY, payload, sequence=version)
        stored.append(await provider.publish_provider(record))
        raws.add(record.raw)
    return stored, raws


async def search(
    sim: Simulation, searchers: Sequence[SimNode], expected: set[bytes]
) -> tuple[int, list[int]]:
    """Searches (CONCURRENCY at a time) that found every record in `expected`; their query counts."""
    found: list[bool] = []
    queries: list[int] = []

    async def one(searcher: SimNode) -> None:
        records: list[ProviderRecord] = await searcher.find_providers(KEY)
        queries.append(searcher.started.pop(KEY).queries)
        found.append(expected <= {r.raw for r in records})

    await gather([functools.partial(one, s) for s in searchers], concurrency=CONCURRENCY)
    return sum(found), queries


async def timed_lookups(sim: Simulation, nodes: Sequence[SimNode]) -> list[float]:
    """Virtual seconds each of `nodes` takes to look up a random target (CONCURRENCY at a time)."""
    durations: list[float] = []

    async def one(node: SimNode) -> None:
        begin = trio.current_time()
        await node.lookup(sim.random_target())
        durations.append(trio.current_time() - begin)

    await gather([functools.partial(one, n) for n in nodes], concurrency=CONCURRENCY)
    return durations


async def bench(plan: Plan, seed: int) -> None:
    say(f"\n== {plan.nodes} nodes (k={K}, join: {plan.join}) ==")
    gc.collect()
    tracemalloc.start()
    clock = Clock()
    async with simulation(0, seed=seed) as sim:
        step = max(plan.nodes // 10, 1)

        def progress(count: int) -> None:
            if count % step == 0:
                say(
                    f"  joined {count:>6}  {clock.total():7.1f} s  "
                    f"{sim.network.delivered / count:6.1f} datagrams/join"
                )

        await sim.grow(plan.nodes, progress, join=plan.join)
        traced, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        join_time = clock.lap()
        tables = [len(n.protocol.table) for n in sim.nodes]
        say(
            f"join: {join_time:.1f} s ({join_time / plan.nodes * 1000:.1f} ms a node, "
            f"{sim.network.delivered / plan.nodes:.0f} datagrams a node, "
            f"{join_time / max(sim.network.delivered, 1) * 1e6:.0f} us a datagram)"
        )
        say(
            f"memory: {traced / plan.nodes / 1024:.1f} KiB a node "
            f"(tracemalloc, {traced / 2**20:.0f} MiB in all)"
        )
        say(f"routing tables: mean {statistics.fmean(tables):.0f} contacts, max {max(tables)}")

        rng = sim.rng
        queries = [(rng.choice(sim.nodes), sim.random_target()) for _ in range(plan.lookups)]
        summary = await sim.lookups(queries, concurrency=CONCURRENCY)
        say(
            f"lookups, no churn ({summary.count} sampled): {summary.exact_rate:.1%} exact, "
            f"recall {recall(summary):.3f}"
        )
        say(f"  queries a lookup: {describe(summary.queries)}   [{clock.lap():.1f} s]")
        sim.network.latency = LATENCY
        timed = await sim.lookups(queries[: plan.timed], concurrency=CONCURRENCY)
        sim.network.latency = 0.0
        say(
            f"  rounds a lookup ({timed.count} sampled, {timed.exact_rate:.0%} exact): "
            f"{describe(timed.rounds)}"
        )

        providers = rng.sample(sim.nodes, PROVIDERS)
        stored, raws = await publish(sim, providers, 1)
        others = [n for n in sim.nodes if n not in providers]
        ok, search_queries = await search(sim, rng.sample(others, plan.searches), raws)
        say(
            f"providers: {PROVIDERS} published at {min(stored)}-{max(stored)} nodes; "
            f"{ok}/{plan.searches} searches found all, queries {describe(search_queries)}"
            f"   [{clock.lap():.1f} s]"
        )

        survivors = providers[1:]
        sim.unplug_node(providers[0])
        sim.unplug(CHURN, keep=survivors)
        start = trio.current_time()
        stored, raws = await publish(sim, survivors, 2)
        say(
            f"churn: {len(sim.unplugged)} of {plan.nodes} unplugged (one provider among them); "
            f"{len(survivors)} republished at {min(stored)}-{max(stored)} nodes"
        )
        queries = [(rng.choice(sim.live), sim.random_target()) for _ in range(plan.lookups)]
        churned = await sim.lookups(queries, concurrency=CONCURRENCY)
        say(
            f"lookups, 25% churn ({churned.count} sampled): {churned.exact_rate:.1%} exact, "
            f"recall {recall(churned):.3f}"
        )
        say(f"  queries a lookup: {describe(churned.queries)}")
        live_others = [n for n in sim.live if n not in providers]
        durations = await timed_lookups(sim, rng.sample(live_others, plan.timed))
        say(f"  virtual seconds a lookup ({len(durations)} sampled, 1 s RPC timeout): {describe(durations)}")
        ok, search_queries = await search(sim, rng.sample(live_others, plan.searches), raws)
        say(f"  {ok}/{plan.searches} searches found every live provider, queries {describe(search_queries)}")
        elapsed = trio.current_time()
        say(
            f"  [{clock.lap():.1f} s; virtual time {elapsed - start:.0f} s since the churn, "
            f"{elapsed:.0f} s in all]"
        )
        if elapsed >= REFRESH_INTERVAL:
            say(f"  (past REFRESH_INTERVAL: nodes refreshed their buckets during the run: {elapsed:.0f} s)")
    say(f"total: {clock.total():.1f} s for {plan.nodes} nodes")


def print_load_spread() -> None:
    """The figures of bench/_load_spread.py (clients spreading over equal providers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _load_spread  # at the point of use; if it is missing, this fails loudly

    say("\n== load spread (bench/_load_spread.py) ==")
    _load_spread.main()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-load-spread", action="store_true", help="skip bench/_load_spread.py")
    args = parser.parse_args()
    for size in args.sizes:
        plan = plan_for(size)
        run(functools.partial(bench, plan, args.seed), seed=args.seed)
    if not args.no_load_spread:
        print_load_spread()


if __name__ == "__main__":
    main()
