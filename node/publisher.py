"""What a node publishes about itself, and when: sans-IO, on the caller's clock.

One signed offer per service (provider record under the service's key) and one node
record. Offers carry the node's load and its prices (times the demand multiplier of
node.pricing), which go stale quickly, so they live for minutes and are republished on a
timer and soon after the load or a multiplier changes, but never more than once per
`min_gap` seconds however fast jobs come and go.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from hubnet.dht.addresses import Address
from hubnet.dht.ids import service_key
from hubnet.dht.records import MAX_NODE_ADDRESSES, NodeRecord, ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.node.offers import MAX_FREE_ORGS, MAX_OFFER_ATTESTATIONS, Load, Offer
from hubnet.node.pricing import scaled
from hubnet.node.services import NodeConfig, Service

OFFER_TTL = 300
REPUBLISH_INTERVAL = 100.0
MIN_GAP = 5.0


@dataclass(frozen=True)
class Publication:
    """Everything to (re)publish now."""

    offers: tuple[ProviderRecord, ...]
    node_record: NodeRecord


class OfferPublisher:
    """Decides when to republish and signs the records, with ever-increasing sequences."""

    def __init__(
        self,
        identity: Identity,
        config: NodeConfig,
        addresses: tuple[Address, ...],
        *,
        ttl: int = OFFER_TTL,
        interval: float = REPUBLISH_INTERVAL,
        min_gap: float = MIN_GAP,
        attestations: tuple[bytes, ...] = (),
        multiplier: Callable[[Service], float] = lambda service: 1.0,
        relay: Service | None = None,
    ) -> None:
        self.identity = identity
        # The demand multiplier on a service's prices now (`node.server.Node.multiplier`).
        self.multiplier = multiplier
        # A relay offers its relaying like a service (node.relay.relay_service), so that
        # private nodes find it in the DHT; nobody calls it as a job.
        self.relay = relay
        # This node's organisation attestations (encoded), carried by every offer as far as
        # the record's size allows.
        self.attestations = attestations[:MAX_OFFER_ATTESTATIONS]
        self.config = config
        self.addresses = addresses
        self.ttl = ttl
        self.interval = interval
        self.min_gap = min_gap
        self._sequence = 0
        self._last_time: float | None = None
        self._last_load: Load | None = None
        self._last_multipliers: list[float] = []

    @property
    def offered(self) -> list[Service]:
        """What this node publishes offers for: its services, and its relaying if it relays."""
        return [*self.config.services.values(), *([self.relay] if self.relay else [])]

    def readdress(self, addresses: tuple[Address, ...]) -> None:
        """Publish `addresses` from now on, and at once (a private node's relays changed)."""
        self.addresses = addresses
        self._last_time = None

    def due(self, load: Load, now: float) -> bool:
        """Whether to publish now: never yet, the timer ran out, or the load or a price changed."""
        if self._last_time is None:
            return True
        elapsed = now - self._last_time
        changed = load != self._last_load or self._multipliers() != self._last_multipliers
        return elapsed >= self.interval or (changed and elapsed >= self.min_gap)

    def _multipliers(self) -> list[float]:
        return [self.multiplier(service) for service in self.config.services.values()]

    def publish(self, load: Load, now: float) -> Publication:
        """Sign fresh records for `load` at `now` (unix seconds) and remember that we did."""
        # Sequences follow the clock in milliseconds, so a restarted node still outbids its
        # own records from before the restart.
        self._sequence = max(self._sequence + 1, int(now * 1000))
        issued = int(now)
        offers = tuple(self._offer(service, load, issued) for service in self.offered)
        node_record = NodeRecord.create(
            self.identity,
            self.addresses[:MAX_NODE_ADDRESSES],
            sequence=self._sequence,
            issued_at=issued,
            ttl=self.ttl,
        )
        self._last_time, self._last_load = now, load
        self._last_multipliers = self._multipliers()
        return Publication(offers, node_record)

    def _offer(self, service: Service, load: Load, issued: int) -> ProviderRecord:
        """The signed offer for `service`, with as many of our attestations as fit in a record."""
        for count in range(len(self.attestations), 0, -1):
            with contextlib.suppress(ValueError):  # too large for a record: try with one fewer
                return self._signed_offer(service, load, issued, self.attestations[:count])
        return self._signed_offer(service, load, issued, ())

    def _signed_offer(
        self, service: Service, load: Load, issued: int, attestations: tuple[bytes, ...]
    ) -> ProviderRecord:
        offer = Offer(
            publisher=self.identity.public_key,
            service_id=service.id,
            name=service.name,
            addresses=self.addresses,
            price=scaled(service.price, self.multiplier(service)),
            multiplier=self.multiplier(service),
            load=load,
            sequence=self._sequence,
            issued_at=issued,
            expires_at=issued + self.ttl,
            attestations=attestations,
            free_orgs=tuple(dict.fromkeys(rule.org for rule in service.free_orgs))[:MAX_FREE_ORGS],
        )
        return ProviderRecord.create(
            self.identity,
            service_key(service.id),
            offer.payload(),
            sequence=self._sequence,
            issued_at=issued,
            ttl=self.ttl,
        )
