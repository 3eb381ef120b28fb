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
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hubnet.client import OpenCall, open_call, request
from hubnet.dht.addresses import DirectAddress
from hubnet.dht.client import DhtClient
from hubnet.dht.ids import service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.records import ProviderRecord
from hubnet.identity.errors import (
    ConfigError,
    HostKeyMismatch,
    NotOffered,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.identity.records import InvalidRecord
from hubnet.node.naming import Target
from hubnet.node.offers import InvalidOffer, Load, Offer, offer_from_record
from hubnet.node.protocol import Call, GetStatus, StatusReply
from hubnet.select import (
    Probe,
    SelectionRules,
    acceptable,
    choose,
    probe_targets,
    proven_memberships,
    rank,
    with_trusted_orgs,
)
from hubnet.trust import PinnedKeys

if TYPE_CHECKING:
    from hubnet.identity.orgs import Profile, RevocationList

MAX_ATTEMPTS = 5
PROBE_TIMEOUT = 2.0
# `hubnode services` looks up the profile and revocation list of at most this many of the
# organisations that offers name (two DHT lookups each); the rest are shown by id alone.
MAX_DESCRIBED_ORGS = 16


def seeds(targets: Sequence[str]) -> list[Seed]:
    parsed = [Target.parse(t) for t in targets]
    return [Seed((t.direct.host, t.direct.port), t.peer) for t in parsed]


# `hubnet.commands.NO_SERVER` is how it starts (that module must not import this one).
NO_WHERE_TO_LOOK = (
    "no server given and no DHT to find one in: give --server PEER_ID@HOST:PORT or "
    "--bootstrap PEER_ID@HOST:PORT before SERVICE, or set server or bootstrap in client.toml"
)


@dataclass(frozen=True)
class Found:
    """What the DHT holds for a call: the service's valid offers, and the newest revocation
    lists of the organisations the client's rules name. For `hubnode services`, also those
    of the organisations the offers name, and their profiles."""

    offers: list[Offer]
    revocations: dict[bytes, RevocationList] = field(default_factory=dict)
    profiles: dict[bytes, Profile] = field(default_factory=dict)


def find_offers(
    identity: Identity,
    bootstrap: Sequence[str],
    service_id: bytes,
    orgs: Collection[bytes] = (),
    *,
    describe_orgs: bool = False,
) -> Found:
    """Every valid offer for `service_id` that the DHT holds, and the lists of `orgs`.

    With `describe_orgs` (for `hubnode services`, never on `hubnode call`'s path), also the
    lists and profiles of the organisations that the offers' attestations and free_orgs name
    (the first `MAX_DESCRIBED_ORGS` of them). ConfigError (a usage error) without bootstrap
    nodes; TransportError if none answers.
    """
    if not bootstrap:
        raise ConfigError(NO_WHERE_TO_LOOK)
    given = seeds(bootstrap)
    with DhtClient(identity, given) as dht:
        records = dht.find_providers(service_key(service_id))
        if not records and not dht.seen:
            # Seeds given with their keys are queried without a first question, so a dead one
            # looks like an empty DHT: say it is the network, not "nobody offers it".
            where = ", ".join(f"{host}:{port}" for host, port in (seed.address for seed in given))
            raise TransportError(
                f"no DHT node answered at {where}: check --bootstrap or `bootstrap` in client.toml"
            )
        offers = _valid_offers(records, service_id)
        named = orgs_named(offers)[:MAX_DESCRIBED_ORGS] if describe_orgs else []
        revocations = _revocation_lists(dht, {*orgs, *named})
        profiles = _profiles(dht, named)
    return Found(offers, revocations, profiles)


def _valid_offers(records: Sequence[ProviderRecord], service_id: bytes) -> list[Offer]:
    offers = []
    for record in records:
        try:
            offer = offer_from_record(record)
        except (InvalidOffer, InvalidRecord):
            continue
        if offer.service_id == service_id:
            offers.append(offer)
    return offers


def orgs_named(offers: Sequence[Offer]) -> list[bytes]:
    """The organisations `offers` name (the issuers of their attestations, valid or not, and
    their free_orgs), each once, those named by the most offers first."""
    from hubnet.identity.orgs import Attestation

    counts: dict[bytes, int] = {}
    for offer in offers:
        named = set(offer.free_orgs)
        for raw in offer.attestations:
            try:
                named.add(Attestation.decode(raw).org)
            except InvalidRecord:
                continue
        for org in named:
            counts[org] = counts.get(org, 0) + 1
    return sorted(counts, key=lambda org: (-counts[org], org))


def _revocation_lists(dht: DhtClient, orgs: Collection[bytes]) -> dict[bytes, RevocationList]:
    if not orgs:
        return {}
    # Only a client whose rules name organisations pays for these imports and lookups.
    from hubnet.node.org_records import newest_revocations, revocations_key

    lists = {org: newest_revocations(dht.find_providers(revocations_key(org)), org) for org in orgs}
    return {org: found for org, found in lists.items() if found is not None}


def _profiles(dht: DhtClient, orgs: Collection[bytes]) -> dict[bytes, Profile]:
    if not orgs:
        return {}
    from hubnet.node.org_records import newest_profile, profile_key

    profiles = {org: newest_profile(dht.find_providers(profile_key(org)), org) for org in orgs}
    return {org: found for org, found in profiles.items() if found is not None}


def nobody_offers(name: str) -> NotOffered:
    """The DHT answered and holds no valid offer for the service `name` (as the user typed it)."""
    return NotOffered(
        f"nobody in the DHT offers {name}: check the name, or ask a node you know what it offers "
        "with hubnode services --server PEER_ID@HOST:PORT"
    )


def none_acceptable(name: str, found: int, rules_source: str) -> NotOffered:
    """Offers for `name` were found, but the client's [select] rules refuse every one."""
    return NotOffered(
        f"{found} offer(s) of {name} found, none acceptable under [select] in {rules_source} "
        "(price, only, exclude, max_utilisation, or no address this client can dial): "
        "relax those rules, or call one node with --server"
    )


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


def ranked_offers(
    found: Found, rules: SelectionRules, *, verbose: bool = False
) -> tuple[list[Offer], SelectionRules]:
    """The acceptable offers best first, and the rules with trusted organisations resolved.

    With `verbose`, says on stderr why an offer's attestation proves nothing."""
    now = int(time.time())
    proven, refused = proven_memberships(found.offers, now, found.revocations) if rules.orgs else ({}, [])
    if verbose:
        for why in refused:
            print(f"hubnode: {why}", file=sys.stderr)
    allowed = acceptable(found.offers, rules, now=now, proven=proven)
    resolved = with_trusted_orgs(rules, allowed, proven)
    return rank(allowed, resolved), resolved


def candidates(
    identity: Identity, found: Found, rules: SelectionRules, *, verbose: bool = False
) -> list[Offer]:
    """The offers to try, in order: filtered, ranked, probed, power-of-two-choices."""
    rng = random.Random()
    ranked, resolved = ranked_offers(found, rules, verbose=verbose)
    return choose(ranked, probe(identity, probe_targets(ranked, resolved, rng)), resolved, rng)


def open_discovered_call(
    identity: Identity,
    found: Found,
    rules: SelectionRules,
    call: Call,
    *,
    timeout: float,
    verbose: bool,
    name: str = "the service",
    rules_source: str = "client.toml",
) -> OpenCall:
    """Open the call on the first candidate that accepts it.

    NotOffered if the rules accept none of `offers`; Rejected if every provider tried
    refused the call for one reason (say, all busy); else TransportError if none took it.
    """
    ordered = candidates(identity, found, rules, verbose=verbose)
    if not ordered:
        raise none_acceptable(name, len(found.offers), rules_source)
    failures = []
    refusals: set[str] = set()
    for offer in ordered[:MAX_ATTEMPTS]:
        target = target_of(offer)
        if verbose:
            print(f"hubnode: trying {encode_peer_id(offer.publisher)}@{target.address}", file=sys.stderr)
        try:
            return open_call(target, identity, PinnedKeys(), call, timeout=timeout, wait_for_accept=True)
        except (TransportError, RemoteProtocolError, HostKeyMismatch, Rejected, OSError) as exc:
            failures.append(f"{target.address}: {exc}")
            refusals.add(exc.code if isinstance(exc, Rejected) else "")
    if len(refusals) == 1 and "" not in refusals:
        # Every node answered and refused for the same reason: that reason, and its exit status.
        raise Rejected(refusals.pop(), f"every provider of {name} refused the call: {'; '.join(failures)}")
    raise TransportError(f"every provider of {name} failed before accepting: {'; '.join(failures)}")
