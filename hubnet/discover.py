"""`hubnode call SERVICE` without a server: find offers in the DHT, choose, call, fail over.

The steps are those of ARCHITECTURE.md: ask the DHT for the service's offers (each one's
signature, expiry and payload checked), filter and rank them by the client's rules,
probe the best few live (a status request: round trip and current load) and try them in
the order `hubnet.select.choose` gives. A node that fails before accepting the call is
skipped; once it has accepted, stdin flows and a failure is reported, never retried.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Sequence

from hubnet.client import OpenCall, open_call, request
from hubnet.dht.addresses import DirectAddress
from hubnet.dht.client import DhtClient
from hubnet.dht.ids import service_key
from hubnet.dht.lookup import Seed
from hubnet.identity.errors import HostKeyMismatch, Rejected, RemoteProtocolError, TransportError
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.identity.records import InvalidRecord
from hubnet.node.naming import Target
from hubnet.node.offers import InvalidOffer, Load, Offer, offer_from_record
from hubnet.node.protocol import Call, GetStatus, StatusReply
from hubnet.select import Probe, SelectionRules, acceptable, choose, probe_targets, rank
from hubnet.trust import PinnedKeys

MAX_ATTEMPTS = 5
PROBE_TIMEOUT = 2.0


def seeds(targets: Sequence[str]) -> list[Seed]:
    parsed = [Target.parse(t) for t in targets]
    return [Seed((t.direct.host, t.direct.port), t.peer) for t in parsed]


def find_offers(identity: Identity, bootstrap: Sequence[str], service_id: bytes) -> list[Offer]:
    """Every valid offer for `service_id` that the DHT holds."""
    if not bootstrap:
        raise TransportError(
            "no server and no DHT to discover one: give --server, or --bootstrap PEER_ID@HOST:PORT "
            "(or `bootstrap` in client.toml)"
        )
    with DhtClient(identity, seeds(bootstrap)) as dht:
        records = dht.find_providers(service_key(service_id))
    offers = []
    for record in records:
        try:
            offer = offer_from_record(record)
        except (InvalidOffer, InvalidRecord):
            continue
        if offer.service_id == service_id:
            offers.append(offer)
    return offers


def target_of(offer: Offer) -> Target:
    # Only direct addresses can be dialled so far; hubnet.select drops offers without one.
    direct = next(a for a in offer.addresses if isinstance(a, DirectAddress))
    return Target(direct, offer.publisher)


def probe(
    identity: Identity, offers: Sequence[Offer], timeout: float = PROBE_TIMEOUT
) -> dict[bytes, Probe | None]:
    """Ask each offer's node for its status at once; the round trip includes the handshake."""
    results: dict[bytes, Probe | None] = {}

    def ask(offer: Offer) -> None:
        started = time.monotonic()
        try:
            target = target_of(offer)
            reply = request(target, identity, PinnedKeys(), GetStatus(), StatusReply, timeout=timeout)
        except (TransportError, RemoteProtocolError, HostKeyMismatch, OSError):
            results[offer.publisher] = None
            return
        load = Load(reply.running, reply.queued, reply.capacity)
        results[offer.publisher] = Probe(time.monotonic() - started, load)

    threads = [threading.Thread(target=ask, args=(offer,), daemon=True) for offer in offers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 1.0)
    return results


def candidates(identity: Identity, offers: Sequence[Offer], rules: SelectionRules) -> list[Offer]:
    """The offers to try, in order: filtered, ranked, probed, power-of-two-choices."""
    rng = random.Random()
    ranked = rank(acceptable(offers, rules, now=int(time.time())), rules)
    return choose(ranked, probe(identity, probe_targets(ranked, rules, rng)), rules, rng)


def open_discovered_call(
    identity: Identity,
    offers: Sequence[Offer],
    rules: SelectionRules,
    call: Call,
    *,
    timeout: float,
    verbose: bool,
) -> OpenCall:
    """Open the call on the first candidate that accepts it."""
    ordered = candidates(identity, offers, rules)
    if not ordered:
        raise TransportError(f"no acceptable offer among {len(offers)} found (see [select] in client.toml)")
    failures = []
    for offer in ordered[:MAX_ATTEMPTS]:
        target = target_of(offer)
        if verbose:
            print(f"hubnode: trying {encode_peer_id(offer.publisher)}@{target.address}", file=sys.stderr)
        try:
            return open_call(target, identity, PinnedKeys(), call, timeout=timeout, wait_for_accept=True)
        except (TransportError, RemoteProtocolError, HostKeyMismatch, Rejected, OSError) as exc:
            failures.append(f"{target.address}: {exc}")
    raise TransportError(f"every provider failed before accepting: {'; '.join(failures)}")
