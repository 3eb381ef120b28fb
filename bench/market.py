#!/usr/bin/env python
"""A market of providers and callers through a demand shock, with and without surge pricing.

A simulation on a virtual clock, no network: 20 providers of one service (4 job slots and
4 queue places each, listed prices 1000..1950 msat a call) and 1000 callers, each with a
budget (a ceiling per call, 1200..4000 msat, as `max_cost`). Calls arrive at random (a
Poisson process); a job takes an exponential time (mean 8 s). Demand is 15 % of all slots
for the first 200 s, five times that from 200 s to 400 s (the shock), then 15 % again.

Everything that decides is the real code: each provider's multiplier is
`node.pricing.multiplier` over its own load (with `surge = {start = 0.5, max = 3, idle =
0.5}`, or none at all in the run without surge); it republishes its offer (load and price)
when either changed and `node.publisher.MIN_GAP` seconds have passed, or every
`REPUBLISH_INTERVAL`; a caller ranks the published offers with `hubnet.select` (`acceptable`
with its price cap, `rank`, `probe_targets`, then `choose` with live probes of load) and
tries providers in that order. A provider quotes its price at that moment, as Accept does:
above the caller's ceiling it is refused (too-expensive), and a full queue refuses (busy);
the caller then tries the next. A call no provider takes is lost.

Reported for each run and each phase (before, during, after the shock): each provider's
utilisation ((running + queued) / (slots + queue), as node.pricing counts it) averaged over
the phase, then the mean over providers and the busiest provider's ("max"), their ratio (1
is a perfectly even spread),
calls served, refused as busy (each a wasted attempt), lost, the mean time a served call
waited in a queue, and the mean multiplier and price paid. A PNG plot of
the mean multiplier, and of mean and max utilisation over time in both runs, goes to
`--plot` (matplotlib, in the `photos` extra).

    .venv/bin/python bench/market.py [--seed 1] [--plot market.png]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from hubnet.dht.addresses import DirectAddress
from hubnet.node.offers import Load, Offer, Price
from hubnet.node.pricing import Surge, multiplier, scaled, utilisation
from hubnet.node.publisher import MIN_GAP, REPUBLISH_INTERVAL
from hubnet.select import PriceCap, Probe, SelectionRules, acceptable, choose, probe_targets, rank

PROVIDERS = 20
SLOTS = 4
QUEUE = 4
CALLERS = 1000
MEAN_JOB = 8.0  # seconds
BASE_DEMAND = 0.15  # of all slots, before and after the shock
SHOCK = 5.0
SHOCK_START, SHOCK_END, DURATION = 200.0, 400.0, 600.0
SURGE = Surge(start=0.5, max=3.0, idle=0.5)
SID = b"m" * 16
RTT = 0.01
PHASES = {
    "before": (60.0, SHOCK_START),
    "shock": (SHOCK_START, SHOCK_END),
    "after": (SHOCK_END + 60.0, DURATION),
}


@dataclass
class Provider:
    key: bytes
    price: Price
    surge: Surge | None
    running: int = 0
    queue: list[tuple[float, float, str]] = field(default_factory=list)  # waiting: (length, since, phase)
    last_busy: float = 0.0
    offer: Offer | None = None
    published_at: float = -math.inf
    sequence: int = 0

    @property
    def load(self) -> Load:
        return Load(self.running, len(self.queue), SLOTS)

    def multiplier(self, now: float) -> float:
        busy = self.running + len(self.queue)
        return multiplier(self.surge, self.load, QUEUE, 0.0 if busy else now - self.last_busy)

    def publish_if_due(self, now: float) -> None:
        """As node.publisher: on a change of load or price after MIN_GAP, or on the timer."""
        due = self.offer is None or now - self.published_at >= REPUBLISH_INTERVAL
        if self.offer is not None and now - self.published_at >= MIN_GAP:
            due = (
                due
                or self.offer.load != self.load
                or self.offer.price != scaled(self.price, self.multiplier(now))
            )
        if due:
            self.sequence += 1
            self.offer = Offer(
                self.key,
                SID,
                "work",
                (DirectAddress("127.0.0.1", 7070),),
                scaled(self.price, self.multiplier(now)),
                self.load,
                self.sequence,
                int(now),
                int(now) + 300,
            )
            self.published_at = now


@dataclass
class Tally:
    served: int = 0
    busy: int = 0
    lost: int = 0
    paid: list[int] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)  # seconds each served call queued


@dataclass
class Run:
    times: list[float] = field(default_factory=list)
    mean_use: list[float] = field(default_factory=list)
    max_use: list[float] = field(default_factory=list)
    uses: list[list[float]] = field(default_factory=list)  # each sample: every provider's
    mean_multiplier: list[float] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=lambda: {name: Tally() for name in PHASES})


def _phase(now: float) -> str | None:
    return next((name for name, (start, end) in PHASES.items() if start <= now < end), None)


def simulate(surge: Surge | None, seed: int) -> Run:
    rng = random.Random(seed)
    providers = [Provider(bytes([i]) * 32, Price(per_call=1000 + 50 * i), surge) for i in range(PROVIDERS)]
    ceilings = [rng.randint(1200, 4000) for _ in range(CALLERS)]
    rules = [
        SelectionRules(max_price=PriceCap(per_call=ceiling), expected_seconds=0, expected_mib=0)
        for ceiling in ceilings
    ]
    by_key = {p.key: p for p in providers}
    finishing: list[tuple[float, int, bytes]] = []  # (when, tie-break, provider)
    run = Run()
    now, next_sample, tie = 0.0, 0.0, 0
    base_rate = BASE_DEMAND * PROVIDERS * SLOTS / MEAN_JOB

    def start(provider: Provider, length: float, since: float, phase: str) -> None:
        nonlocal tie
        if phase in run.tallies:
            run.tallies[phase].waited.append(now - since)
        provider.running += 1
        tie += 1
        heapq.heappush(finishing, (now + length, tie, provider.key))

    while now < DURATION:
        rate = base_rate * (SHOCK if SHOCK_START <= now < SHOCK_END else 1.0)
        arrival = now + rng.expovariate(rate)
        while finishing and finishing[0][0] <= arrival:
            now, _, key = heapq.heappop(finishing)
            provider = by_key[key]
            provider.running -= 1
            if provider.queue:
                start(provider, *provider.queue.pop(0))
            provider.last_busy = now
        now = arrival
        while next_sample <= now:
            uses = [utilisation(p.load, QUEUE) for p in providers]
            run.times.append(next_sample)
            run.mean_use.append(statistics.fmean(uses))
            run.max_use.append(max(uses))
            run.uses.append(uses)
            run.mean_multiplier.append(statistics.fmean(p.multiplier(next_sample) for p in providers))
            next_sample += 1.0
        for provider in providers:
            provider.publish_if_due(now)
        caller = rng.randrange(CALLERS)
        offers = acceptable([p.offer for p in providers if p.offer], rules[caller], now=int(now))
        ranked = rank(offers, rules[caller])
        probed = probe_targets(ranked, rules[caller], rng)
        live = {o.publisher: Probe(RTT, by_key[o.publisher].load) for o in probed}
        phase = _phase(now) or ""
        tally = run.tallies.get(phase, Tally())
        length = rng.expovariate(1 / MEAN_JOB)
        for offer in choose(ranked, live, rules[caller], rng):
            provider = by_key[offer.publisher]
            quote = scaled(provider.price, provider.multiplier(now)).per_call  # Accept's terms now
            if quote > ceilings[caller]:
                continue  # too-expensive: the next
            if provider.running < SLOTS:
                start(provider, length, now, phase)
            elif len(provider.queue) < QUEUE:
                provider.queue.append((length, now, phase))
            else:
                tally.busy += 1
                continue
            tally.served += 1
            tally.paid.append(quote)
            break
        else:
            tally.lost += 1
    return run


def _summary(run: Run, phase: str) -> tuple[float, float, float]:
    """(mean utilisation, the busiest provider's utilisation, mean multiplier) over `phase`,
    each provider's utilisation averaged over the phase first."""
    start, end = PHASES[phase]
    picked = [i for i, t in enumerate(run.times) if start <= t < end]
    per_provider = [statistics.fmean(run.uses[i][p] for i in picked) for p in range(PROVIDERS)]
    factor = statistics.fmean(run.mean_multiplier[i] for i in picked)
    return statistics.fmean(per_provider), max(per_provider), factor


def report(name: str, run: Run) -> None:
    print(f"{name}:")
    print(
        f"  {'phase':<7} {'mean use':>8} {'max use':>8} {'max/mean':>8} {'served':>7} {'busy':>6} "
        f"{'lost':>6} {'wait s':>6} {'mult':>5} {'price paid':>10}"
    )
    for phase in PHASES:
        mean, peak, factor = _summary(run, phase)
        tally = run.tallies[phase]
        paid = statistics.fmean(tally.paid) if tally.paid else 0.0
        wait = statistics.fmean(tally.waited) if tally.waited else 0.0
        print(
            f"  {phase:<7} {mean:>8.2f} {peak:>8.2f} {peak / max(mean, 1e-9):>8.2f} {tally.served:>7} "
            f"{tally.busy:>6} {tally.lost:>6} {wait:>6.2f} {factor:>5.2f} {paid:>10.0f}"
        )


def plot(path: str, runs: Sequence[tuple[str, Run]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (prices, uses) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, run in runs:
        prices.plot(run.times, run.mean_multiplier, label=name)
        uses.plot(run.times, run.mean_use, label=f"{name}: mean")
        uses.plot(run.times, run.max_use, label=f"{name}: busiest", linestyle=":")
    for axes in (prices, uses):
        axes.axvspan(SHOCK_START, SHOCK_END, color="0.9")
        axes.legend(loc="upper right", fontsize=8)
    prices.set_ylabel("mean price multiplier")
    uses.set_ylabel("utilisation")
    uses.set_xlabel("seconds (shaded: demand x5)")
    figure.suptitle(f"{PROVIDERS} providers, {CALLERS} callers with budgets")
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", default="market.png", help="where to write the PNG (default market.png)")
    args = parser.parse_args()
    with_surge = simulate(SURGE, args.seed)
    without = simulate(None, args.seed)
    print(
        f"market: {PROVIDERS} providers x {SLOTS} slots + {QUEUE} queue, {CALLERS} callers, "
        f"demand {BASE_DEMAND:.0%} of slots, x{SHOCK:g} from {SHOCK_START:.0f}s to {SHOCK_END:.0f}s, "
        f"seed {args.seed}"
    )
    report(f"with surge {SURGE}", with_surge)
    report("without surge (baseline)", without)
    shock_with, shock_without = _summary(with_surge, "shock"), _summary(without, "shock")
    print(
        f"during the shock, max/mean utilisation: {shock_with[1] / shock_with[0]:.2f} with surge, "
        f"{shock_without[1] / shock_without[0]:.2f} without "
        f"({(shock_with[1] / shock_with[0]) / (shock_without[1] / shock_without[0]):.2f}x)"
    )
    before, during, after = (_summary(with_surge, phase)[2] for phase in PHASES)
    print(
        f"mean multiplier with surge: {before:.2f} before, {during:.2f} during, {after:.2f} after the shock"
    )
    try:
        plot(args.plot, [("surge", with_surge), ("no surge", without)])
    except ImportError:
        print("plot: SKIPPED: matplotlib is not installed (pip install 'hubnet[photos]')")
    else:
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
