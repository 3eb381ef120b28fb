#!/usr/bin/env python
"""How evenly clients spread over equal providers when the load they see is stale.

A simulation, no network: `clients` clients each make `rounds` calls (one arrival per
tick, the clients in a random order each round) to `providers` providers of equal price,
each with `capacity` job slots. A job occupies its provider for an exponential time, chosen
so that on average `offered_load` of all slots are busy. Providers republish their offers
(and so their load) only every `staleness` arrivals, and probes report no live load: every
client in one window sees the same picture, as clients calling at the same moment do.

The policies, fed the same arrivals and job lengths:

- greedy:       `rank(...)[0]`, cheapest then least loaded by the offer;
- p2c, top k:   `choose` after probing the first `probe_count` of the ranking;
- p2c:          `choose` after probing `probe_targets`, as `hubnode call` does;
- random:       any provider, uniformly: the baseline that ignores load altogether.

Utilisation is jobs / slots (above 1 means a queue). Reported per policy: the mean over
providers and time, the busiest provider's averaged over time ("max"), and the highest
seen ("peak").

    .venv/bin/python bench/_load_spread.py
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence

from hubnet.dht.addresses import DirectAddress
from hubnet.node.offers import Load, Offer, Price
from hubnet.select import Probe, SelectionRules, acceptable, choose, probe_targets, rank

RTT = 0.05  # every probe takes as long, so latency decides nothing here
Policy = Callable[[Sequence[Offer], SelectionRules, random.Random], Offer]


def _greedy(ranked: Sequence[Offer], rules: SelectionRules, rng: random.Random) -> Offer:
    return ranked[0]


def _p2c_top(ranked: Sequence[Offer], rules: SelectionRules, rng: random.Random) -> Offer:
    probes: dict[bytes, Probe | None] = {o.publisher: Probe(RTT) for o in ranked[: rules.probe_count]}
    return choose(ranked, probes, rules, rng)[0]


def _p2c(ranked: Sequence[Offer], rules: SelectionRules, rng: random.Random) -> Offer:
    probes: dict[bytes, Probe | None] = {o.publisher: Probe(RTT) for o in probe_targets(ranked, rules, rng)}
    return choose(ranked, probes, rules, rng)[0]


def _random(ranked: Sequence[Offer], rules: SelectionRules, rng: random.Random) -> Offer:
    return rng.choice(ranked)


POLICIES: dict[str, Policy] = {"greedy": _greedy, "p2c, top k": _p2c_top, "p2c": _p2c, "random": _random}


def _offer(index: int, jobs: int, capacity: int, now: int) -> Offer:
    return Offer(
        publisher=index.to_bytes(32, "big"),
        service_id=bytes(16),
        name="bench",
        addresses=(DirectAddress(f"10.0.{index // 256}.{index % 256}", 7070),),
        price=Price(per_call=100),
        load=Load(min(jobs, capacity), max(jobs - capacity, 0), capacity),
        sequence=now,
        issued_at=now,
        expires_at=now + 3600,
    )


def _simulate(
    policy: Policy,
    arrivals: Sequence[tuple[int, float]],
    providers: int,
    capacity: int,
    staleness: int,
    warmup: int,
    seed: int,
) -> dict[str, float]:
    """Run one policy over `arrivals` (client, job length); utilisation figures after `warmup`."""
    rules = SelectionRules()
    rngs: dict[int, random.Random] = {}
    jobs = [0] * providers
    ends: list[tuple[float, int]] = []  # (tick the job ends, provider)
    ranked: list[Offer] = []
    total = busiest = peak = 0.0
    for tick, (client, length) in enumerate(arrivals):
        while ends and ends[0][0] <= tick:
            jobs[heapq.heappop(ends)[1]] -= 1
        if tick % staleness == 0:
            offers = [_offer(p, jobs[p], capacity, tick) for p in range(providers)]
            ranked = rank(acceptable(offers, rules, now=tick), rules)
        rng = rngs.setdefault(client, random.Random(f"{seed}/{client}"))
        chosen = int.from_bytes(policy(ranked, rules, rng).publisher, "big")
        jobs[chosen] += 1
        heapq.heappush(ends, (tick + length, chosen))
        if tick >= warmup:
            total += sum(jobs) / (providers * capacity)
            busiest += max(jobs) / capacity
            peak = max(peak, max(jobs) / capacity)
    measured = max(len(arrivals) - warmup, 1)
    return {"mean": total / measured, "max": busiest / measured, "peak": peak}


def load_spread(
    clients: int = 1000,
    providers: int = 20,
    rounds: int = 5,
    staleness: int = 50,
    capacity: int = 4,
    offered_load: float = 0.7,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Utilisation (mean, max, peak) per policy; see the module docstring for the model."""
    rng = random.Random(seed)
    mean_length = offered_load * providers * capacity  # ticks: one arrival per tick
    arrivals = [
        (client, rng.expovariate(1 / mean_length))
        for _ in range(rounds)
        for client in rng.sample(range(clients), clients)
    ]
    warmup = min(clients, len(arrivals) // 2)
    return {
        name: _simulate(policy, arrivals, providers, capacity, staleness, warmup, seed)
        for name, policy in POLICIES.items()
    }


def main() -> None:
    clients, providers, staleness = 1000, 20, 50
    print(f"{clients} clients, {providers} equal providers of 4 slots, offers republished every")
    print(f"{staleness} arrivals, probes report no live load; utilisation = jobs / slots\n")
    results = load_spread(clients=clients, providers=providers, staleness=staleness)
    print(f"{'policy':<12} {'mean':>6} {'max':>6} {'peak':>6} {'max/mean':>9}")
    for name, r in results.items():
        print(f"{name:<12} {r['mean']:6.2f} {r['max']:6.2f} {r['peak']:6.2f} {r['max'] / r['mean']:9.2f}")
    ratio = results["greedy"]["max"] / results["p2c"]["max"]
    print(f"\nthe busiest provider is {ratio:.1f}x as busy under greedy as under p2c")


if __name__ == "__main__":
    main()
