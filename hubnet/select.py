"""Choosing a provider: the client's `[select]` rules, the ranking, and the order of attempts.

`hubnode call SERVICE` finds offers in the DHT, then runs these pure functions:

1. `acceptable` drops expired and superseded offers and those the rules refuse;
2. `rank` orders the rest: trusted peers first, then cheapest, then least loaded;
3. `probe_targets` picks the few to probe live, at random among the about equally cheap;
4. `choose` turns the probe answers into the order in which to try providers.

Why randomness at all: an offer shows the load its node had when it signed it, minutes ago,
and every client reads the same offers, so "least loaded first" sends all of them to the
same node until it republishes (a herd), and even a live probe is stale for the clients
that probe at the same moment. Price is different: it is exact and does not move with our
choice. So price is a hard preference (only offers within `price_tolerance` of the cheapest
are candidates, the "price band") and power-of-two-choices spreads the calls inside it:
draw two candidates at random and take the better one. That uses stale load without
herding (Mitzenmacher, "How useful is old information?", 2000).

The module is on the call path of small machines: it imports only the standard library and
hubnet's own offer, address, key and error types.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence, Set

from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.identity.cheap_typing import TYPE_CHECKING, Protocol, TypeVar
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import frozen, replace
from hubnet.identity.hints import did_you_mean
from hubnet.identity.keys import decode_peer_id
from hubnet.node.offers import Load, Offer, Price

if TYPE_CHECKING:
    from hubnet.identity.orgs import OrgRule, RevocationList, Role

_T = TypeVar("_T")
_TABLE = "select"  # the table of client.toml this module parses


class Draw(Protocol):
    """Where the choices' randomness comes from: `random.Random` (seeded, in tests) or
    `UrandomDraw`."""

    def sample(self, population: Sequence[_T], k: int) -> list[_T]: ...


class UrandomDraw:
    """`random.Random.sample` over `os.urandom`, which is all that a call draws: importing
    `random` would cost a Pi's call about 1 ms, more than the few draws of a call."""

    def sample(self, population: Sequence[_T], k: int) -> list[_T]:
        """`k` distinct elements of `population`, each k-subset equally likely (bar a bias
        below 2**-40 from taking 64 random bits modulo a pool's size)."""
        pool = list(population)
        if not 0 <= k <= len(pool):
            raise ValueError(f"cannot draw {k} of {len(pool)}")
        return [pool.pop(int.from_bytes(os.urandom(8), "big") % len(pool)) for _ in range(k)]


@frozen
class PriceCap:
    """Upper limits on each part of a price, in millisatoshi; None means no limit."""

    per_call: int | None = None
    per_second: int | None = None
    per_mib: int | None = None

    def allows(self, price: Price) -> bool:
        caps = (
            (self.per_call, price.per_call),
            (self.per_second, price.per_second),
            (self.per_mib, price.per_mib),
        )
        return all(cap is None or value <= cap for cap, value in caps)


@frozen
class Weights:
    """How much each part counts in `choose`'s score (lower scores are better).

    score = price * (cost / cheapest - 1) + load * utilisation + latency * round-trip seconds,
    so with the defaults 10 % more cost, 10 % more utilisation and 100 ms more round trip
    weigh the same.
    """

    price: float = 1.0
    load: float = 1.0
    latency: float = 1.0


@frozen
class SelectionRules:
    """The client's rules for choosing among offers; the defaults pick the cheapest offer,
    spreading calls over offers within 10 % of its price, and accept any peer at any price."""

    max_price: PriceCap = PriceCap()
    max_cost: int | None = None  # millisatoshi for one expected job (see `cost`)
    expected_seconds: float = 1.0
    expected_mib: float = 1.0
    max_utilisation: float | None = None
    trusted: frozenset[bytes] = frozenset()  # preferred: any trusted offer beats every other
    only: frozenset[bytes] = frozenset()  # when not empty, no other peer is acceptable
    exclude: frozenset[bytes] = frozenset()
    # The same three by organisation (ORG_ID or ORG_ID/ROLE), over the memberships that an
    # offer's attestations prove (see `proven_memberships`).
    trusted_orgs: tuple[OrgRule, ...] = ()
    only_orgs: tuple[OrgRule, ...] = ()
    exclude_orgs: tuple[OrgRule, ...] = ()
    price_tolerance: float = 0.1  # the price band: costs up to 10 % above the cheapest
    weights: Weights = Weights()
    probe_count: int = 3
    # Seconds a call reuses the offers the last discovery of its service found (0: never).
    offer_cache: float = 30.0

    @property
    def orgs(self) -> set[bytes]:
        """The organisations these rules name: their revocation lists are needed to apply them."""
        return {rule.org for rule in (*self.trusted_orgs, *self.only_orgs, *self.exclude_orgs)}

    def cost(self, offer: Offer) -> float:
        """The offer's price for one job of the expected length and size: one number to compare."""
        return offer.price.estimate(self.expected_seconds, self.expected_mib)


@frozen
class Probe:
    """A live answer from a provider: the round trip in seconds and, if it said, its load now."""

    rtt: float
    load: Load | None = None


# --- filtering and ranking ---------------------------------------------------------------------


Memberships = Mapping[bytes, "Set[tuple[bytes, Role]]"]  # proven (org, role) pairs by publisher


def proven_memberships(
    offers: Sequence[Offer], now: int, revocations: Mapping[bytes, RevocationList]
) -> tuple[dict[bytes, set[tuple[bytes, Role]]], list[str]]:
    """What each offer's attestations prove of its publisher at `now`, given the organisations'
    revocation lists; and why the others prove nothing (for `-v`). An attestation that is
    forged, expired, not yet valid, revoked or bound to another key counts as none."""
    from hubnet.identity.keys import fingerprint
    from hubnet.identity.orgs import Attestation, check
    from hubnet.identity.records import InvalidRecord

    proven: dict[bytes, set[tuple[bytes, Role]]] = {}
    refused = []
    for offer in offers:
        for raw in offer.attestations:
            try:
                attestation = Attestation.decode(raw)
            except InvalidRecord as exc:
                refused.append(f"{fingerprint(offer.publisher)}: a damaged attestation ({exc})")
                continue
            why = check(attestation, offer.publisher, now, revocations.get(attestation.org))
            if why is None:
                proven.setdefault(offer.publisher, set()).add((attestation.org, attestation.role))
            else:
                org = fingerprint(attestation.org)
                refused.append(
                    f"{fingerprint(offer.publisher)}: its attestation from {org} proves nothing: {why}"
                )
    return proven, refused


def relayed_addresses(offer: Offer) -> list[RelayAddress]:
    """The offer's addresses through relays to its publisher (one naming another target is
    no way to reach this publisher)."""
    return [a for a in offer.addresses if isinstance(a, RelayAddress) and a.target == offer.publisher]


def _member(rules: Sequence[OrgRule], offer: Offer, proven: Memberships) -> bool:
    return any(rule.matches(m) for rule in rules for m in proven.get(offer.publisher, ()))


def _allowed(offer: Offer, rules: SelectionRules, proven: Memberships) -> bool:
    if not any(isinstance(address, DirectAddress) for address in offer.addresses) and not relayed_addresses(
        offer
    ):
        return False  # no address this client can dial
    peer = offer.publisher
    if peer in rules.exclude or (rules.only and peer not in rules.only):
        return False
    if _member(rules.exclude_orgs, offer, proven):
        return False
    if rules.only_orgs and not _member(rules.only_orgs, offer, proven):
        return False
    if not rules.max_price.allows(offer.price):
        return False
    if rules.max_cost is not None and rules.cost(offer) > rules.max_cost:
        return False
    return rules.max_utilisation is None or offer.load.utilisation <= rules.max_utilisation


def acceptable(
    offers: Sequence[Offer], rules: SelectionRules, *, now: int, proven: Memberships | None = None
) -> list[Offer]:
    """The offers (of one service) that may be used at unix time `now`, one per publisher.

    Expired offers go first, then each publisher's newest sequence supersedes its older
    offers, and only then are the rules applied (and offers with no address this client can
    dial dropped), so an old cheap offer cannot stand in for a new expensive one. The
    survivors come in the order their publishers first appear. `proven` is what
    `proven_memberships` found; without it no offer is a member of anything.
    """
    newest: dict[bytes, Offer] = {}
    for offer in offers:
        if offer.expires_at <= now:
            continue
        seen = newest.get(offer.publisher)
        if seen is None or offer.sequence > seen.sequence:
            newest[offer.publisher] = offer
    return [offer for offer in newest.values() if _allowed(offer, rules, proven or {})]


def with_trusted_orgs(rules: SelectionRules, offers: Sequence[Offer], proven: Memberships) -> SelectionRules:
    """`rules` with `trusted_orgs` turned into the publishers they make trusted, so that the
    ranking and the choice treat a proven member as they treat a peer named in `trusted`."""
    members = {o.publisher for o in offers if _member(rules.trusted_orgs, o, proven)}
    return replace(rules, trusted=rules.trusted | members) if members else rules


def _tier(offer: Offer, rules: SelectionRules) -> int:
    return 0 if offer.publisher in rules.trusted else 1


def rank(offers: Sequence[Offer], rules: SelectionRules) -> list[Offer]:
    """`acceptable`'s offers best first: trusted, then cheapest, then least loaded by the offer.

    A deterministic total order (the publisher's key breaks the last ties), so every
    client with the same offers and rules sees the same list.
    """
    return sorted(offers, key=lambda o: (_tier(o, rules), rules.cost(o), o.load.utilisation, o.publisher))


def _price_band(offers: Sequence[Offer], rules: SelectionRules) -> list[Offer]:
    """The offers of the best tier costing at most `price_tolerance` more than its cheapest."""
    if not offers:
        return []
    tier = min(_tier(o, rules) for o in offers)
    same = [o for o in offers if _tier(o, rules) == tier]
    limit = min(rules.cost(o) for o in same) * (1 + rules.price_tolerance)
    return [o for o in same if rules.cost(o) <= limit]


def probe_targets(ranked: Sequence[Offer], rules: SelectionRules, rng: Draw) -> list[Offer]:
    """The `probe_count` offers to probe: a random sample of the price band, topped up in rank order.

    Not simply the first few of `rank`: that order comes from the same stale offers for
    every client, so they would all probe, and call, the same few nodes.
    """
    band = _price_band(ranked, rules)
    picked = rng.sample(band, min(rules.probe_count, len(band)))
    taken = {o.publisher for o in picked}
    rest = [o for o in ranked if o.publisher not in taken]
    return picked + rest[: rules.probe_count - len(picked)]


# --- choosing with the probes -----------------------------------------------------------------


def _utilisation(offer: Offer, probe: Probe) -> float:
    """The probe's live figure when it gave one, else the (older) offer's."""
    return (offer.load if probe.load is None else probe.load).utilisation


def _score(offer: Offer, probe: Probe, cheapest: float, rules: SelectionRules) -> float:
    """Lower is better; see `Weights`."""
    # Relative to the cheapest, so the weight means the same for cheap and dear services;
    # a free cheapest offer makes every priced one count its millisatoshi in full.
    extra_cost = (rules.cost(offer) - cheapest) / max(cheapest, 1.0)
    w = rules.weights
    return w.price * extra_cost + w.load * _utilisation(offer, probe) + w.latency * probe.rtt


def _busy(offer: Offer, probe: Probe, rules: SelectionRules) -> bool:
    return rules.max_utilisation is not None and _utilisation(offer, probe) > rules.max_utilisation


def _two_choices(band: Sequence[Offer], scores: Mapping[bytes, float], rng: Draw) -> Offer:
    """Power of two choices: the better of two drawn at random.

    On a tie the first drawn wins: a fixed tie-break (say, by key) would send every tie
    to the same node.
    """
    if len(band) == 1:
        return band[0]
    a, b = rng.sample(band, 2)
    return b if scores[b.publisher] < scores[a.publisher] else a


def choose(
    ranked: Sequence[Offer],
    probes: Mapping[bytes, Probe | None],
    rules: SelectionRules,
    rng: Draw,
) -> list[Offer]:
    """The order in which to try the providers of `ranked` (every one of them, once).

    `probes` maps a publisher to its probe answer, or to None when it was probed and did
    not answer; publishers not in it were not probed. The order is:

    1. one of the answered offers in the price band, by power of two choices on the score;
    2. the other answered offers of the band, best score first;
    3. the other answered offers (dearer, or untrusted when trusted ones answered), best first;
    4. the offers not probed, in rank order;
    5. the offers that did not answer, or whose live load is above `max_utilisation`, in
       rank order: kept, not dropped, because a lost probe is better than no provider.
    """
    live: dict[bytes, Probe] = {}
    unprobed: list[Offer] = []
    failed: list[Offer] = []
    for offer in ranked:
        probe = probes.get(offer.publisher)
        if offer.publisher not in probes:
            unprobed.append(offer)
        elif probe is None or _busy(offer, probe, rules):
            failed.append(offer)
        else:
            live[offer.publisher] = probe
    answered = [o for o in ranked if o.publisher in live]
    if not answered:
        return unprobed + failed
    cheapest = min(rules.cost(o) for o in answered)
    scores = {o.publisher: _score(o, live[o.publisher], cheapest, rules) for o in answered}
    ordered = sorted(answered, key=lambda o: (_tier(o, rules), scores[o.publisher], o.publisher))
    in_band = {o.publisher for o in _price_band(answered, rules)}
    band = [o for o in ordered if o.publisher in in_band]
    first = _two_choices(band, scores, rng)
    others = [o for o in ordered if o.publisher not in in_band]
    return [first, *(o for o in band if o is not first), *others, *unprobed, *failed]


# --- the [select] table of client.toml --------------------------------------------------------


def _error(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _check_keys(table: Mapping[str, object], known: Collection[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise _error(f"{where}.{key}", "unknown key" + did_you_mean(key, known))


def _table(value: object, where: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise _error(where, "must be a table")
    return value


def _integer(value: object, where: str, minimum: int) -> int:
    if type(value) is not int or value < minimum:  # exactly int: TOML's `true` is no number
        raise _error(where, f"must be an integer >= {minimum}")
    return value


def _msat(value: object, where: str) -> int:
    return _integer(value, where, 0)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise _error(where, "must be a number >= 0")
    return float(value)


def _positive(value: object, where: str) -> float:
    number = _number(value, where)
    if number == 0:
        raise _error(where, "must be a number > 0")
    return number


def _peers(value: object, where: str) -> frozenset[bytes]:
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _error(where, "must be a list of peer ids")
    try:
        return frozenset(decode_peer_id(text) for text in value)
    except ConfigError as exc:
        raise _error(where, str(exc)) from None


def _org_rules(value: object, where: str) -> tuple[OrgRule, ...]:
    # Only a client whose rules name organisations pays for importing their parser.
    from hubnet.identity.orgs import OrgRule

    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise _error(where, "must be a list of organisation ids (ORG_ID or ORG_ID/ROLE)")
    try:
        return tuple(OrgRule.parse(text) for text in value)
    except ConfigError as exc:
        raise _error(where, str(exc)) from None


def _get(
    table: Mapping[str, object], key: str, parse: Callable[[object, str], _T], default: _T, where: str
) -> _T:
    """`table[key]` parsed, or `default` when absent; errors name `where.key`."""
    value = table.get(key)
    return default if value is None else parse(value, f"{where}.{key}")


def _parse_price_cap(value: object, where: str) -> PriceCap:
    table = _table(value, where)
    _check_keys(table, ("per_call", "per_second", "per_mib"), where)
    return PriceCap(
        per_call=_get(table, "per_call", _msat, None, where),
        per_second=_get(table, "per_second", _msat, None, where),
        per_mib=_get(table, "per_mib", _msat, None, where),
    )


def _parse_weights(value: object, where: str) -> Weights:
    table = _table(value, where)
    _check_keys(table, ("price", "load", "latency"), where)
    d = Weights()
    return Weights(
        price=_get(table, "price", _number, d.price, where),
        load=_get(table, "load", _number, d.load, where),
        latency=_get(table, "latency", _number, d.latency, where),
    )


_KEYS = (
    "max_price",
    "max_cost",
    "expected_seconds",
    "expected_mib",
    "max_utilisation",
    "trusted",
    "only",
    "exclude",
    "trusted_orgs",
    "only_orgs",
    "exclude_orgs",
    "price_tolerance",
    "weights",
    "probe_count",
    "offer_cache",
)


def parse_selection_rules(table: Mapping[str, object], *, source: str) -> SelectionRules:
    """The rules in client.toml's `[select]` table (already read by tomllib); ConfigError names
    `source` and the key at fault. Every key is optional:

        [select]
        max_cost = 5000               # millisatoshi for one expected job
        expected_seconds = 2.0        # the job length and size used to estimate its cost
        expected_mib = 0.5
        max_utilisation = 1.5         # skip nodes whose queue is longer than half their slots
        trusted = ["PEER_ID", ...]    # preferred: any of these before any other
        only = ["PEER_ID", ...]       # when given, no other peer is used
        exclude = ["PEER_ID", ...]    # never used
        trusted_orgs = ["ORG_ID", "ORG_ID/server", ...]  # the same, by the organisations
        only_orgs = ["ORG_ID", ...]                       # an offer's attestations prove
        exclude_orgs = ["ORG_ID", ...]
        price_tolerance = 0.1         # spread calls over offers up to 10 % dearer than the cheapest
        probe_count = 3               # how many offers to probe live before calling
        offer_cache = 30              # seconds a call reuses the last discovery's offers (0: never)

        [select.max_price]            # per part of the price, in millisatoshi
        per_call = 1000
        per_second = 200
        per_mib = 100

        [select.weights]              # see Weights
        price = 1.0
        load = 1.0
        latency = 1.0
    """
    where = f"{source}: {_TABLE}"
    _check_keys(table, _KEYS, where)
    d = SelectionRules()
    rules = SelectionRules(
        max_price=_get(table, "max_price", _parse_price_cap, d.max_price, where),
        max_cost=_get(table, "max_cost", _msat, d.max_cost, where),
        expected_seconds=_get(table, "expected_seconds", _number, d.expected_seconds, where),
        expected_mib=_get(table, "expected_mib", _number, d.expected_mib, where),
        max_utilisation=_get(table, "max_utilisation", _positive, d.max_utilisation, where),
        trusted=_get(table, "trusted", _peers, d.trusted, where),
        only=_get(table, "only", _peers, d.only, where),
        exclude=_get(table, "exclude", _peers, d.exclude, where),
        trusted_orgs=_get(table, "trusted_orgs", _org_rules, d.trusted_orgs, where),
        only_orgs=_get(table, "only_orgs", _org_rules, d.only_orgs, where),
        exclude_orgs=_get(table, "exclude_orgs", _org_rules, d.exclude_orgs, where),
        price_tolerance=_get(table, "price_tolerance", _number, d.price_tolerance, where),
        weights=_get(table, "weights", _parse_weights, d.weights, where),
        probe_count=_get(table, "probe_count", lambda v, w: _integer(v, w, 1), d.probe_count, where),
        offer_cache=_get(table, "offer_cache", _number, d.offer_cache, where),
    )
    for name, peers in (("trusted", rules.trusted), ("only", rules.only)):
        if peers & rules.exclude:
            raise _error(f"{where}.exclude", f"a peer is both excluded and in {name!r}")
    return rules
