"""Choosing a provider: the [select] rules, acceptable(), rank(), probe_targets() and choose()."""

from __future__ import annotations

import random
import re
import tomllib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.addresses import DirectAddress
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import replace
from hubnet.identity.keys import Identity, encode_peer_id, fingerprint
from hubnet.identity.orgs import Attestation, RevocationList, Role
from hubnet.node.offers import Load, Offer, Price
from hubnet.select import (
    PriceCap,
    Probe,
    SelectionRules,
    UrandomDraw,
    Weights,
    acceptable,
    choose,
    parse_selection_rules,
    probe_targets,
    proven_memberships,
    rank,
    with_trusted_orgs,
)

NOW = 1_700_000_000
DOC = Path(__file__).resolve().parents[2] / "docs" / "client-rules.md"
DEFAULTS = SelectionRules()


def peer(i: int) -> bytes:
    return bytes([i]) * 32


def offer(
    i: int,
    per_call: int = 100,
    *,
    per_second: int = 0,
    per_mib: int = 0,
    running: int = 0,
    queued: int = 0,
    capacity: int = 4,
    sequence: int = 1,
    expires_at: int = NOW + 600,
) -> Offer:
    return Offer(
        publisher=peer(i),
        service_id=b"s" * 16,
        name="espeak",
        addresses=(DirectAddress(f"10.0.0.{i}", 7070),),
        price=Price(per_call, per_second, per_mib),
        load=Load(running, queued, capacity),
        sequence=sequence,
        issued_at=NOW - 60,
        expires_at=expires_at,
    )


def ids(offers: Sequence[Offer]) -> list[int]:
    return [o.publisher[0] for o in offers]


def answered(offers: Sequence[Offer], rtt: float = 0.05) -> dict[bytes, Probe | None]:
    return {o.publisher: Probe(rtt) for o in offers}


def first_choice(offers: Sequence[Offer], rules: SelectionRules, rng: random.Random) -> Offer:
    """The whole client-side flow, with every probed node answering and no live load."""
    ranked = rank(acceptable(offers, rules, now=NOW), rules)
    return choose(ranked, answered(probe_targets(ranked, rules, rng)), rules, rng)[0]


# --- the defaults ---------------------------------------------------------------------------


def test_defaults_pick_the_cheapest() -> None:
    offers = [offer(1, 300), offer(2, 100), offer(3, 200)]
    assert ids(rank(acceptable(offers, DEFAULTS, now=NOW), DEFAULTS)) == [2, 3, 1]
    rng = random.Random(1)
    assert {first_choice(offers, DEFAULTS, rng).publisher[0] for _ in range(200)} == {2}


def test_ties_in_price_are_broken_by_load_then_by_key() -> None:
    offers = [offer(1, running=3), offer(2, running=1), offer(4), offer(3)]
    assert ids(rank(offers, DEFAULTS)) == [3, 4, 2, 1]


def test_the_cost_is_estimated_for_the_expected_job() -> None:
    per_call = offer(1, 500)
    per_second = offer(2, 0, per_second=100)
    assert ids(rank([per_call, per_second], DEFAULTS)) == [2, 1]  # 1 s: 100 < 500
    long_jobs = SelectionRules(expected_seconds=10)
    assert ids(rank([per_call, per_second], long_jobs)) == [1, 2]  # 10 s: 1000 > 500
    assert long_jobs.cost(offer(3, 7, per_second=2, per_mib=5)) == 7 + 20 + 5


# --- acceptable() ---------------------------------------------------------------------------


def test_expired_offers_are_dropped() -> None:
    offers = [offer(1, expires_at=NOW), offer(2, expires_at=NOW - 1), offer(3, expires_at=NOW + 1)]
    assert ids(acceptable(offers, DEFAULTS, now=NOW)) == [3]


def test_the_newest_offer_of_a_publisher_wins() -> None:
    offers = [offer(1, 100, sequence=5), offer(1, 50, sequence=7), offer(1, 10, sequence=6), offer(2)]
    kept = acceptable(offers, DEFAULTS, now=NOW)
    assert [(o.publisher[0], o.sequence) for o in kept] == [(1, 7), (2, 1)]


def test_an_older_cheaper_offer_does_not_stand_in_for_a_newer_refused_one() -> None:
    rules = SelectionRules(max_cost=100)
    offers = [offer(1, 50, sequence=1), offer(1, 500, sequence=2)]
    assert acceptable(offers, rules, now=NOW) == []


def test_excluded_peers_are_dropped() -> None:
    rules = SelectionRules(exclude=frozenset({peer(2)}))
    assert ids(acceptable([offer(1), offer(2), offer(3)], rules, now=NOW)) == [1, 3]


def test_only_listed_peers_are_acceptable_when_the_list_is_given() -> None:
    rules = SelectionRules(only=frozenset({peer(2), peer(9)}))
    assert ids(acceptable([offer(1), offer(2), offer(3)], rules, now=NOW)) == [2]


def test_price_caps_apply_to_each_part() -> None:
    offers = [offer(1, 100), offer(2, 1000), offer(3, 0, per_second=50), offer(4, 0, per_mib=50)]
    assert ids(acceptable(offers, SelectionRules(max_price=PriceCap(per_call=500)), now=NOW)) == [1, 3, 4]
    assert ids(acceptable(offers, SelectionRules(max_price=PriceCap(per_second=49)), now=NOW)) == [1, 2, 4]
    assert ids(acceptable(offers, SelectionRules(max_price=PriceCap(per_mib=50)), now=NOW)) == [1, 2, 3, 4]


def test_max_cost_applies_to_the_expected_job() -> None:
    offers = [offer(1, 100), offer(2, 0, per_second=30)]
    assert ids(acceptable(offers, SelectionRules(max_cost=100), now=NOW)) == [1, 2]
    assert ids(acceptable(offers, SelectionRules(max_cost=100, expected_seconds=4), now=NOW)) == [1]


def test_max_utilisation_drops_offers_that_show_a_long_queue() -> None:
    rules = SelectionRules(max_utilisation=1.0)
    offers = [offer(1, running=4), offer(2, running=4, queued=1)]
    assert ids(acceptable(offers, rules, now=NOW)) == [1]


# --- trust ----------------------------------------------------------------------------------


def test_trusted_peers_come_first_even_when_dearer() -> None:
    rules = SelectionRules(trusted=frozenset({peer(3)}))
    offers = [offer(1, 100), offer(2, 200), offer(3, 900)]
    ranked = rank(offers, rules)
    assert ids(ranked) == [3, 1, 2]
    assert ids(probe_targets(ranked, rules, random.Random(0))) == [3, 1, 2]
    assert ids(choose(ranked, answered(ranked), rules, random.Random(0))) == [3, 1, 2]


def test_untrusted_peers_are_used_when_no_trusted_one_answers() -> None:
    rules = SelectionRules(trusted=frozenset({peer(3)}))
    ranked = rank([offer(1, 100), offer(2, 200), offer(3, 900)], rules)
    probes: dict[bytes, Probe | None] = {peer(1): Probe(0.1), peer(2): Probe(0.1), peer(3): None}
    assert ids(choose(ranked, probes, rules, random.Random(0))) == [1, 2, 3]


# --- choose() -------------------------------------------------------------------------------


def test_greedy_herds_but_choose_spreads_over_equal_offers() -> None:
    offers = [offer(i) for i in range(1, 21)]
    rng = random.Random(7)
    greedy = Counter(rank(acceptable(offers, DEFAULTS, now=NOW), DEFAULTS)[0].publisher for _ in range(1000))
    spread = Counter(first_choice(offers, DEFAULTS, rng).publisher for _ in range(1000))
    assert len(greedy) == 1
    assert len(spread) == 20
    assert max(spread.values()) / (1000 / 20) < 1.6


def test_choose_spreads_when_every_provider_answered() -> None:
    ranked = rank([offer(i) for i in range(1, 21)], DEFAULTS)
    rng = random.Random(3)
    picks = Counter(choose(ranked, answered(ranked), DEFAULTS, rng)[0].publisher for _ in range(1000))
    assert len(picks) == 20
    assert max(picks.values()) / (1000 / 20) < 1.6


def test_a_much_cheaper_offer_wins_even_when_busier() -> None:
    offers = [offer(1, 10, running=3)] + [offer(i, 100) for i in range(2, 21)]
    rng = random.Random(5)
    assert {first_choice(offers, DEFAULTS, rng).publisher for _ in range(1000)} == {peer(1)}


def test_inside_the_price_band_price_and_load_are_weighed() -> None:
    rng = random.Random(5)
    idle = [offer(1, 100), offer(2, 105), offer(3, 200)]
    assert {first_choice(idle, DEFAULTS, rng).publisher[0] for _ in range(100)} == {1}
    busier = [offer(1, 100, running=1), offer(2, 105), offer(3, 200)]  # 25 % load outweighs 5 % price
    assert {first_choice(busier, DEFAULTS, rng).publisher[0] for _ in range(100)} == {2}
    strict = SelectionRules(price_tolerance=0)  # no band: the cheapest, however busy
    assert {first_choice(busier, strict, rng).publisher[0] for _ in range(100)} == {1}
    wide = SelectionRules(price_tolerance=1)  # 200 is in the band but loses every pair
    assert {first_choice(idle, wide, rng).publisher[0] for _ in range(100)} == {1, 2}


def test_a_band_of_mixed_prices_spreads_but_favours_the_cheaper() -> None:
    offers = [offer(i, 100 + i) for i in range(10)]  # all within 10 % of the cheapest
    ranked = rank(offers, DEFAULTS)
    rng = random.Random(2)
    picks = Counter(choose(ranked, answered(ranked), DEFAULTS, rng)[0].publisher[0] for _ in range(2000))
    assert len(picks) == 9  # the dearest never wins a pair
    assert picks[0] > picks[5] > picks[8]


def test_the_live_load_from_the_probe_beats_the_published_one() -> None:
    ranked = rank([offer(1, running=0), offer(2, running=4)], DEFAULTS)
    probes: dict[bytes, Probe | None] = {
        peer(1): Probe(0.05, Load(4, 4, 4)),
        peer(2): Probe(0.05, Load(0, 0, 4)),
    }
    for seed in range(20):
        assert ids(choose(ranked, probes, DEFAULTS, random.Random(seed))) == [2, 1]


def test_latency_counts_with_its_weight() -> None:
    ranked = rank([offer(1), offer(2)], DEFAULTS)
    probes: dict[bytes, Probe | None] = {peer(1): Probe(0.5), peer(2): Probe(0.01)}
    assert ids(choose(ranked, probes, DEFAULTS, random.Random(0))) == [2, 1]
    deaf = SelectionRules(weights=Weights(latency=0))  # a tie now: the first drawn wins
    firsts = {choose(ranked, probes, deaf, random.Random(seed))[0].publisher[0] for seed in range(50)}
    assert firsts == {1, 2}


def test_silent_providers_go_last_after_the_unprobed_ones() -> None:
    ranked = rank([offer(i, 100 + i) for i in range(1, 6)], DEFAULTS)
    probes: dict[bytes, Probe | None] = {peer(1): None, peer(2): Probe(0.1), peer(3): None}
    assert ids(choose(ranked, probes, DEFAULTS, random.Random(0))) == [2, 4, 5, 1, 3]
    assert ids(choose(ranked, {}, DEFAULTS, random.Random(0))) == [1, 2, 3, 4, 5]


def test_a_live_load_above_the_limit_counts_as_silent() -> None:
    rules = SelectionRules(max_utilisation=1.0)
    ranked = rank([offer(1), offer(2, 500)], rules)
    probes: dict[bytes, Probe | None] = {peer(1): Probe(0.1, Load(4, 8, 4)), peer(2): Probe(0.1)}
    assert ids(choose(ranked, probes, rules, random.Random(0))) == [2, 1]


def test_probe_targets_sample_the_price_band_then_top_up_in_rank_order() -> None:
    ranked = rank([offer(i, 100) for i in range(1, 11)] + [offer(20, 300), offer(21, 200)], DEFAULTS)
    rng = random.Random(0)
    samples = [probe_targets(ranked, DEFAULTS, rng) for _ in range(200)]
    assert all(len(s) == 3 and set(ids(s)) <= set(range(1, 11)) for s in samples)
    assert len({p for s in samples for p in ids(s)}) == 10
    small = rank([offer(1, 100), offer(2, 300), offer(3, 200), offer(4, 400)], DEFAULTS)
    assert ids(probe_targets(small, DEFAULTS, rng)) == [1, 3, 2]
    assert probe_targets([], DEFAULTS, rng) == []
    assert choose([], {}, DEFAULTS, rng) == []


# --- parse_selection_rules() ----------------------------------------------------------------


def _doc_select_tables() -> list[tuple[int, dict[str, object]]]:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, re.M | re.S)
    return [(n, tomllib.loads(b)["select"]) for n, b in enumerate(blocks) if "[select" in b]


def test_the_documented_examples_parse() -> None:
    tables = _doc_select_tables()
    assert len(tables) >= 2
    for n, table in tables:
        parse_selection_rules(table, source=f"client-rules.md block {n}")


def test_the_full_example_sets_every_key() -> None:
    one, two = encode_peer_id(peer(1)), encode_peer_id(peer(2))
    table = tomllib.loads(f"""
        [select]
        max_cost = 5000
        expected_seconds = 2
        expected_mib = 0.5
        max_utilisation = 1.5
        trusted = ["{one}"]
        only = ["{one}", "{two}"]
        exclude = ["{"ab" * 32}"]
        price_tolerance = 0.2
        probe_count = 4
        offer_cache = 0
        [select.max_price]
        per_call = 1000
        per_second = 200
        [select.weights]
        latency = 2.5
    """)["select"]
    rules = parse_selection_rules(table, source="client.toml")
    assert rules == SelectionRules(
        max_price=PriceCap(per_call=1000, per_second=200),
        max_cost=5000,
        expected_seconds=2.0,
        expected_mib=0.5,
        max_utilisation=1.5,
        trusted=frozenset({peer(1)}),
        only=frozenset({peer(1), peer(2)}),
        exclude=frozenset({bytes.fromhex("ab" * 32)}),
        price_tolerance=0.2,
        weights=Weights(latency=2.5),
        probe_count=4,
        offer_cache=0.0,
    )
    assert parse_selection_rules({}, source="client.toml") == DEFAULTS


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"probe_cont": 3}, "client.toml: select.probe_cont: unknown key (did you mean 'probe_count'?)"),
        ({"zzz": 3}, "client.toml: select.zzz: unknown key"),
        ({"weights": {"lod": 1}}, "client.toml: select.weights.lod: unknown key (did you mean 'load'?)"),
        ({"max_price": {"per_cal": 1}}, "select.max_price.per_cal: unknown key (did you mean 'per_call'?)"),
        ({"max_price": 100}, "client.toml: select.max_price: must be a table"),
        ({"max_price": {"per_call": 1.5}}, "client.toml: select.max_price.per_call: must be an integer >= 0"),
        ({"max_price": {"per_mib": -1}}, "select.max_price.per_mib: must be an integer >= 0"),
        ({"max_cost": "5000"}, "client.toml: select.max_cost: must be an integer >= 0"),
        ({"max_cost": True}, "select.max_cost: must be an integer >= 0"),
        ({"probe_count": 0}, "select.probe_count: must be an integer >= 1"),
        ({"offer_cache": -1}, "select.offer_cache: must be a number >= 0"),
        ({"expected_seconds": -1}, "select.expected_seconds: must be a number >= 0"),
        ({"expected_mib": float("inf")}, "select.expected_mib: must be a number >= 0"),
        ({"price_tolerance": float("nan")}, "select.price_tolerance: must be a number >= 0"),
        ({"max_utilisation": 0}, "select.max_utilisation: must be a number > 0"),
        ({"weights": {"load": False}}, "select.weights.load: must be a number >= 0"),
        ({"weights": []}, "select.weights: must be a table"),
        ({"trusted": "abc"}, "client.toml: select.trusted: must be a list of peer ids"),
        ({"only": [1]}, "select.only: must be a list of peer ids"),
        ({"exclude": ["nope"]}, "client.toml: select.exclude: not a peer id"),
        (
            {"trusted": ["ab" * 32], "exclude": ["ab" * 32]},
            "select.exclude: a peer is both excluded and in 'trusted'",
        ),
        ({"only": ["ab" * 32], "exclude": ["ab" * 32]}, "a peer is both excluded and in 'only'"),
    ],
)
def test_bad_tables_are_refused_naming_the_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_selection_rules(table, source="client.toml")


# --- invariants -----------------------------------------------------------------------------

_offers = st.lists(
    st.builds(
        offer,
        st.integers(1, 12),
        st.integers(0, 1000),
        per_second=st.integers(0, 50),
        running=st.integers(0, 6),
        queued=st.integers(0, 6),
        capacity=st.integers(0, 4),
        sequence=st.integers(0, 3),
        expires_at=st.integers(NOW - 2, NOW + 2),
    ),
    max_size=15,
)
_rules = st.builds(
    SelectionRules,
    trusted=st.frozensets(st.integers(1, 12).map(peer), max_size=3),
    price_tolerance=st.sampled_from([0.0, 0.1, 1.0]),
    probe_count=st.integers(1, 5),
    max_utilisation=st.none() | st.sampled_from([0.5, 1.0, 2.0]),
)
_probe = st.none() | st.builds(Probe, st.floats(0, 2), st.none() | st.builds(Load, *[st.integers(0, 8)] * 3))


def _busy(offer: Offer, probe: Probe, rules: SelectionRules) -> bool:
    load = probe.load or offer.load
    return rules.max_utilisation is not None and load.utilisation > rules.max_utilisation


@given(_offers, _rules)
def test_acceptable_keeps_one_live_newest_offer_per_publisher(
    offers: list[Offer], rules: SelectionRules
) -> None:
    kept = acceptable(offers, rules, now=NOW)
    assert len({o.publisher for o in kept}) == len(kept)
    for o in kept:
        assert o.expires_at > NOW
        assert o.sequence == max(
            x.sequence for x in offers if x.publisher == o.publisher and x.expires_at > NOW
        )


@given(_offers, _rules, st.randoms(use_true_random=False))
def test_rank_is_a_total_order_independent_of_input_order(
    offers: list[Offer], rules: SelectionRules, shuffler: random.Random
) -> None:
    kept = acceptable(offers, rules, now=NOW)
    ranked = rank(kept, rules)
    assert sorted(ids(ranked)) == sorted(ids(kept))
    shuffler.shuffle(kept)
    assert rank(kept, rules) == ranked


@given(_offers, _rules, st.dictionaries(st.integers(1, 12).map(peer), _probe), st.integers(0, 2**32))
def test_choose_is_a_seeded_permutation_led_by_the_price_band(
    offers: list[Offer], rules: SelectionRules, probes: dict[bytes, Probe | None], seed: int
) -> None:
    ranked = rank(acceptable(offers, rules, now=NOW), rules)
    order = choose(ranked, probes, rules, random.Random(seed))
    assert sorted(ids(order)) == sorted(ids(ranked))
    assert order == choose(ranked, probes, rules, random.Random(seed))
    live = [o for o in ranked if (p := probes.get(o.publisher)) is not None and not _busy(o, p, rules)]
    if live:
        assert order[0] in live
        if any(o.publisher in rules.trusted for o in live):
            assert order[0].publisher in rules.trusted
            live = [o for o in live if o.publisher in rules.trusted]
        cheapest = min(rules.cost(o) for o in live)
        assert rules.cost(order[0]) <= cheapest * (1 + rules.price_tolerance)


@given(_offers, _rules, st.integers(0, 2**32))
def test_probe_targets_are_distinct_ranked_offers(
    offers: list[Offer], rules: SelectionRules, seed: int
) -> None:
    ranked = rank(acceptable(offers, rules, now=NOW), rules)
    targets = probe_targets(ranked, rules, random.Random(seed))
    assert len(targets) == min(rules.probe_count, len(ranked))
    assert len({o.publisher for o in targets}) == len(targets)
    assert all(o in ranked for o in targets)
    assert targets == probe_targets(ranked, rules, random.Random(seed))


# --- organisations ------------------------------------------------------------------------------

LAB = Identity.from_seed(b"L" * 32)
CLUB = Identity.from_seed(b"C" * 32)


def member_offer(i: int, per_call: int, *attestations: Attestation) -> Offer:
    return replace(offer(i, per_call), attestations=tuple(a.encode() for a in attestations))


def attest(
    i: int, org: Identity = LAB, role: Role = Role.SERVER, *, member: bytes | None = None
) -> Attestation:
    return Attestation.issue(org, member or peer(i), role, f"desk {i}", NOW - 3600, NOW + 86400)


def org_rules(**rules: list[str]) -> SelectionRules:
    return parse_selection_rules(rules, source="client.toml")


def chosen(
    offers: Sequence[Offer], rules: SelectionRules, revocations: dict[bytes, RevocationList] | None = None
) -> list[int]:
    proven, _ = proven_memberships(offers, NOW, revocations or {})
    allowed = acceptable(offers, rules, now=NOW, proven=proven)
    return ids(rank(allowed, with_trusted_orgs(rules, allowed, proven)))


def test_only_orgs_never_uses_a_cheaper_provider_outside_the_organisation() -> None:
    offers = [member_offer(1, 500, attest(1)), offer(2, 10), member_offer(3, 900, attest(3, CLUB))]
    assert chosen(offers, org_rules(only_orgs=[LAB.peer_id])) == [1]
    assert chosen(offers, org_rules(only_orgs=[LAB.peer_id, CLUB.peer_id])) == [1, 3]
    assert chosen(offers, org_rules(only_orgs=[f"{LAB.peer_id}/robot"])) == []  # the wrong role


def test_trusted_orgs_ranks_members_before_cheaper_strangers() -> None:
    offers = [offer(2, 10), member_offer(1, 500, attest(1)), offer(4, 20)]
    assert chosen(offers, org_rules(trusted_orgs=[LAB.peer_id])) == [1, 2, 4]
    assert chosen(offers, DEFAULTS) == [2, 4, 1]


def test_exclude_orgs_drops_members() -> None:
    offers = [member_offer(1, 5, attest(1)), offer(2, 10)]
    assert chosen(offers, org_rules(exclude_orgs=[LAB.peer_id])) == [2]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(attest(9), id="another-key"),  # peer 9's attestation, presented by peer 1
        pytest.param(attest(1, Identity.from_seed(b"X" * 32)), id="another-org"),
        pytest.param(
            Attestation.issue(LAB, peer(1), Role.SERVER, "old", NOW - 90000, NOW - 3600), id="expired"
        ),
    ],
)
def test_an_attestation_that_proves_nothing_counts_as_none_and_says_why(bad: Attestation) -> None:
    offers = [member_offer(1, 5, bad)]
    assert chosen(offers, org_rules(only_orgs=[LAB.peer_id])) == []
    proven, refused = proven_memberships(offers, NOW, {})
    assert (LAB.public_key, Role.SERVER) not in proven.get(peer(1), set())
    if bad.org == LAB.public_key:
        assert len(refused) == 1 and fingerprint(peer(1)) in refused[0]


def test_a_revoked_provider_is_no_member() -> None:
    offers = [member_offer(1, 5, attest(1)), member_offer(3, 50, attest(3))]
    revoked = {LAB.public_key: RevocationList.issue(LAB, 1, NOW, [peer(1)])}
    assert chosen(offers, org_rules(only_orgs=[LAB.peer_id]), revoked) == [3]
    _, refused = proven_memberships(offers, NOW, revoked)
    assert len(refused) == 1 and refused[0].startswith(fingerprint(peer(1)))
    assert refused[0].endswith("proves nothing: the organisation revoked it")


def test_org_rules_need_organisation_ids() -> None:
    with pytest.raises(ConfigError, match=r"client.toml: select.only_orgs: .*not a peer id"):
        org_rules(only_orgs=["lab"])
    with pytest.raises(ConfigError, match="not a role"):
        org_rules(trusted_orgs=[f"{LAB.peer_id}/pilot"])
    assert org_rules(only_orgs=[LAB.peer_id], exclude_orgs=[CLUB.peer_id]).orgs == {
        LAB.public_key,
        CLUB.public_key,
    }


@given(st.lists(st.integers(), max_size=12, unique=True), st.data())
def test_an_urandom_draw_is_k_distinct_members_of_the_population(
    population: list[int], data: st.DataObject
) -> None:
    k = data.draw(st.integers(0, len(population)))
    drawn = UrandomDraw().sample(population, k)
    assert len(drawn) == k and len(set(drawn)) == k and set(drawn) <= set(population)


@pytest.mark.parametrize("k", [-1, 4])
def test_an_urandom_draw_of_more_than_there_is_or_of_fewer_than_none_is_refused(k: int) -> None:
    with pytest.raises(ValueError, match=f"cannot draw {k} of 3"):
        UrandomDraw().sample([1, 2, 3], k)


def test_an_urandom_draw_makes_every_ordered_pair_about_equally_often() -> None:
    # 12 ordered pairs of 4, 12000 draws: 1000 expected each, with a standard deviation of
    # about 30; 800..1200 fails by chance with a probability below 1e-10.
    seen = Counter(tuple(UrandomDraw().sample("abcd", 2)) for _ in range(12000))
    assert len(seen) == 12
    assert all(800 <= n <= 1200 for n in seen.values()), seen
