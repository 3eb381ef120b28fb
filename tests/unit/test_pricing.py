"""node.pricing (the demand multiplier), its place in admission and in published offers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.records import ProviderRecord
from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import Role
from hubnet.node.admission import Admitted, Occupancy, Standing, admit, payers, payment_required, terms_for
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import Load, Price, offer_from_record
from hubnet.node.pricing import IDLE_AFTER, Surge, multiplier, scaled, utilisation
from hubnet.node.protocol import Call, Reject, RejectCode, Terms
from hubnet.node.publisher import OfferPublisher
from hubnet.node.services import parse_services

SURGE = Surge(start=0.5, max=3.0, idle=0.5)
NOW = 1_800_000_000


def test_utilisation_counts_slots_and_queue_and_stops_at_full() -> None:
    assert utilisation(Load(0, 0, 4), 4) == 0
    assert utilisation(Load(4, 0, 4), 4) == 0.5
    assert utilisation(Load(4, 4, 4), 4) == 1
    assert utilisation(Load(4, 9, 4), 4) == 1


def test_the_multiplier_is_flat_to_start_then_rises_linearly_to_max_at_a_full_queue() -> None:
    busy = [multiplier(SURGE, Load(4, queued, 4), 4, 0.0) for queued in range(5)]
    assert busy == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert multiplier(SURGE, Load(2, 0, 4), 4, 0.0) == 1.0
    assert multiplier(None, Load(4, 4, 4), 4, 0.0) == 1.0  # no surge: the listed price always


def test_an_idle_node_lowers_its_price_only_after_idle_after() -> None:
    assert multiplier(SURGE, Load(0, 0, 4), 4, IDLE_AFTER - 1) == 1.0
    assert multiplier(SURGE, Load(0, 0, 4), 4, IDLE_AFTER) == 0.5
    assert multiplier(Surge(), Load(0, 0, 4), 4, 10 * IDLE_AFTER) == 1.0  # no idle price set


@given(
    st.integers(0, 16),
    st.integers(0, 40),
    st.integers(1, 16),
    st.integers(0, 64),
    st.floats(0, 0.95),
    st.floats(1, 10),
)
def test_the_multiplier_stays_between_one_and_max_and_never_falls_as_load_rises(
    running: int, queued: int, capacity: int, max_queued: int, start: float, top: float
) -> None:
    surge = Surge(start=start, max=top)
    now = multiplier(surge, Load(running, queued, capacity), max_queued, 0.0)
    more = multiplier(surge, Load(running, queued + 1, capacity), max_queued, 0.0)
    assert 1.0 <= now <= more <= round(top, 2) + 0.05


def test_scaled_prices_round_up_and_keep_a_free_part_free() -> None:
    assert scaled(Price(100, 0, 7), 1.5) == Price(150, 0, 11)
    assert scaled(Price(1, 1, 1), 0.5) == Price(1, 1, 1)  # never 0 from above 0
    assert scaled(Price(3, 0, 0), 1.0) == Price(3, 0, 0)


@pytest.mark.parametrize(
    ("surge", "why"),
    [
        ("start = 1", "surge.start: must be a utilisation from 0 to below 1"),
        ("max = 0.5", "surge.max: must be a multiplier from 1 to 100"),
        ("idle = 0", "surge.idle: must be a multiplier above 0 and at most 1"),
        ('max = "x"', "surge.max: must be a number"),
        ("top = 2", "surge.top: unknown key"),
    ],
)
def test_bad_surge_tables_are_config_errors(surge: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why.replace(".", r"\.")):
        parse_services(f'[services.a]\ncommand = ["true"]\nsurge = {{ {surge} }}\n')


CONFIG = parse_services(
    """
    max_jobs = 2
    max_queued = 2
    [services.speech]
    command = ["true"]
    timeout = 10
    max_output = "1M"
    price = { per_call = 100, per_second = 10, per_mib = 1000 }
    surge = { start = 0.5, max = 3.0, idle = 0.5 }
    """
)
SPEECH = CONFIG.by_name("speech")
CALLER = b"c" * 32


def test_terms_hold_the_worst_case_at_the_multiplied_price() -> None:
    assert SPEECH is not None
    assert terms_for(SPEECH) == Terms(100, 10, 1000, 100 + 10 * 10 + 1000 * 2)
    assert terms_for(SPEECH, 2.0) == Terms(200, 20, 2000, 200 + 20 * 10 + 2000 * 2)


def test_admission_refuses_a_worst_case_above_the_callers_ceiling_naming_the_amount() -> None:
    sid = service_id_for_name("speech")
    held = 100 + 10 * 10 + 1000 * 2
    ok = admit(Call(sid, (), (), held), CALLER, CONFIG, Occupancy(True, 0))
    assert isinstance(ok, Admitted) and ok.terms.held == held
    refused = admit(Call(sid, (), (), held), CALLER, CONFIG, Occupancy(True, 0), multiplier=1.5)
    assert isinstance(refused, Reject) and refused.code == RejectCode.TOO_EXPENSIVE
    assert refused.needed == round(held * 1.5) and f"up to {refused.needed} msat" in refused.reason


def test_payment_required_names_what_is_needed_and_what_there_is() -> None:
    assert SPEECH is not None
    none = payment_required(SPEECH, 2200, 0)
    assert none.code == RejectCode.PAYMENT_REQUIRED and none.needed == 2200
    assert "needs 2200 msat" in none.reason and "no balance" in none.reason
    assert "balance here is 5 msat" in payment_required(SPEECH, 2200, 5).reason


def test_the_caller_pays_first_then_its_organisations() -> None:
    lab, zoo = b"o" * 32, b"z" * 32
    standing = Standing(frozenset({(zoo, Role.ROBOT), (lab, Role.MEMBER), (lab, Role.ROBOT)}))
    assert payers(CALLER, standing) == (CALLER, lab, zoo)


def test_offers_carry_the_multiplied_price_and_are_republished_soon_after_it_changes() -> None:
    factor = [1.0]
    publisher = OfferPublisher(
        Identity.from_seed(b"p" * 32),
        CONFIG,
        (DirectAddress("127.0.0.1", 7070),),
        interval=100,
        min_gap=5,
        multiplier=lambda service: factor[0],
    )
    load = Load(1, 0, 2)
    first = publisher.publish(load, NOW)
    assert offer_from_record(ProviderRecord.parse(first.offers[0].raw, now=NOW)).price == Price(100, 10, 1000)
    factor[0] = 0.5  # the node went idle: the same load, a new price
    assert not publisher.due(load, NOW + 4)
    assert publisher.due(load, NOW + 5)
    second = publisher.publish(load, NOW + 5).offers[0]
    republished = offer_from_record(ProviderRecord.parse(second.raw, now=NOW + 5))
    assert (republished.price, republished.multiplier) == (Price(50, 5, 500), 0.5)
    assert not publisher.due(load, NOW + 10)
