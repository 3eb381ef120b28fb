"""Prices that follow demand: a service's multiplier from how full the node is, with no I/O.

A service may set `surge = { start = 0.5, max = 3.0, idle = 0.5 }` in services.toml. The
node's utilisation is (running + queued) / (job slots + queue places): 1 is a full queue.
Up to `start` the price is the listed one; above it the multiplier rises linearly to `max`
at a full queue, so that a busy node costs more and callers (who rank offers by price)
move to others, and others see that the service pays. When the node has had nothing to do
for `IDLE_AFTER` seconds the multiplier is `idle` (below 1 to attract callers; none: 1).

The node's offers and its Accept both use `multiplier`, so the price a caller saw in an
offer a few seconds old is the one it is quoted unless the load changed in between.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hubnet.node.offers import Load, Price

# How long a node must have had no job running or waiting before its idle price applies.
IDLE_AFTER = 60.0
# Multipliers are rounded to this step, so that an offer changes only with a real change.
STEP = 0.05


@dataclass(frozen=True)
class Surge:
    """A service's demand pricing (see the module docstring)."""

    start: float = 0.5
    max: float = 3.0
    idle: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start < 1:
            raise ValueError("start must be a utilisation from 0 to below 1")
        if not 1 <= self.max <= 100:
            raise ValueError("max must be a multiplier from 1 to 100")
        if self.idle is not None and not 0 < self.idle <= 1:
            raise ValueError("idle must be a multiplier above 0 and at most 1")


def utilisation(load: Load, max_queued: int) -> float:
    """How full the node is: 0 idle, 1 every slot busy and the queue full (never above 1)."""
    room = max(load.capacity + max_queued, 1)
    return min(1.0, (load.running + load.queued) / room)


def multiplier(surge: Surge | None, load: Load, max_queued: int, idle_for: float) -> float:
    """The factor on a service's listed prices now; `idle_for` is how long the node has had
    nothing running or waiting (0 while it has)."""
    if surge is None:
        return 1.0
    if surge.idle is not None and idle_for >= IDLE_AFTER:
        return surge.idle
    used = utilisation(load, max_queued)
    if used <= surge.start:
        return 1.0
    factor = 1.0 + (surge.max - 1.0) * (used - surge.start) / (1.0 - surge.start)
    return round(round(factor / STEP) * STEP, 2)


def scaled(price: Price, factor: float) -> Price:
    """`price` times `factor`, each part rounded up to whole millisatoshi (never 0 from above 0)."""
    if factor == 1.0:
        return price
    return Price(*(math.ceil(part * factor) for part in (price.per_call, price.per_second, price.per_mib)))
