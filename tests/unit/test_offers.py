"""Offers: the payload codec, its strict parsing, prices in services.toml, and the publisher."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.dht.ids import service_key
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import replace
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import MAX_LABEL, Attestation, Role
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import (
    MAX_ADDRESSES,
    MAX_FREE_ORGS,
    MAX_OFFER_ATTESTATIONS,
    InvalidOffer,
    Load,
    Offer,
    Price,
    offer_from_record,
)
from hubnet.node.publisher import OfferPublisher
from hubnet.node.services import parse_services
from tests.strategies import addresses

IDENTITY = Identity.from_seed(bytes(range(32)))
SID = service_id_for_name("espeak")
NOW = 1_800_000_000


def _record(payload: bytes, key: bytes = service_key(SID)) -> ProviderRecord:
    return ProviderRecord.create(IDENTITY, key, payload, sequence=7, issued_at=NOW, ttl=300)


def _offer(**changes: object) -> Offer:
    fields: dict[str, object] = {
        "publisher": IDENTITY.public_key,
        "service_id": SID,
        "name": "espeak",
        "addresses": (DirectAddress("127.0.0.1", 7070),),
        "price": Price(5, 2, 1),
        "load": Load(1, 0, 4),
        "sequence": 7,
        "issued_at": NOW,
        "expires_at": NOW + 300,
    }
    fields.update(changes)
    return Offer(**fields)  # type: ignore[arg-type]


prices = st.integers(min_value=0, max_value=2**53)
loads = st.integers(min_value=0, max_value=2**20)


@given(
    price=st.builds(Price, prices, prices, prices),
    load=st.builds(Load, loads, loads, loads),
    name=st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
    listed=st.lists(addresses, min_size=1, max_size=4),
)
def test_offer_round_trips_through_a_signed_record(
    price: Price, load: Load, name: str, listed: list[Address]
) -> None:
    offer = _offer(price=price, load=load, name=name, addresses=tuple(listed))
    record = ProviderRecord.parse(_record(offer.payload()).raw, now=NOW)
    assert offer_from_record(record) == offer


def test_offers_from_before_typed_addresses_still_read() -> None:
    # They listed "HOST:PORT" strings, direct addresses only.
    payload = msgpack.packb([SID, "espeak", ["10.0.0.1:7070", "[2001:db8::1]:7071"], [0, 0, 0], [0, 0, 1]])
    offer = offer_from_record(_record(payload))
    assert offer.addresses == (DirectAddress("10.0.0.1", 7070), DirectAddress("2001:db8::1", 7071))


@pytest.mark.parametrize("count", [0, MAX_ADDRESSES + 1])
def test_an_offer_refuses_to_encode_what_readers_refuse(count: int) -> None:
    with pytest.raises(ValueError, match="addresses"):
        _offer(addresses=(DirectAddress("10.0.0.1", 7070),) * count).payload()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([SID, "espeak"]), "at least 5 elements"),
        (msgpack.packb([b"short", "espeak", ["h:1"], [0, 0, 0], [0, 0, 1]]), "16 bytes"),
        (msgpack.packb([SID, "-bad", ["h:1"], [0, 0, 0], [0, 0, 1]]), "name"),
        (msgpack.packb([SID, "espeak", [], [0, 0, 0], [0, 0, 1]]), "addresses"),
        (msgpack.packb([SID, "espeak", ["no port here:x"], [0, 0, 0], [0, 0, 1]]), "HOST:PORT"),
        (msgpack.packb([SID, "espeak", [[0, "h", 0]], [0, 0, 0], [0, 0, 1]]), "port"),
        (msgpack.packb([SID, "espeak", [[1, b"k", "h", 1, b"t"]], [0, 0, 0], [0, 0, 1]]), "32 bytes"),
        (msgpack.packb([SID, "espeak", [[9, "h", 1]], [0, 0, 0], [0, 0, 1]]), "kind"),
        (msgpack.packb([SID, "espeak", ["h:1"], [-1, 0, 0], [0, 0, 1]]), "price"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 2**60], [0, 0, 1]]), "price"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, True, 1]]), "load"),
        (msgpack.packb([SID, "espeak", ["h:1"] * 9, [0, 0, 0], [0, 0, 1]]), "addresses"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], [b"a"] * 3, []]), "attestations"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], ["text"], []]), "attestations"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], [], [b"short"]]), "free_orgs"),
        (msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], [], [bytes(32)] * 5]), "free_orgs"),
    ],
)
def test_malformed_offers_are_refused(payload: bytes, why: str) -> None:
    with pytest.raises(InvalidOffer, match=why):
        offer_from_record(_record(payload))


def test_attestations_and_free_orgs_ride_in_the_offer_and_fit_its_record() -> None:
    lab = Identity.from_seed(b"L" * 32)
    attestations = tuple(
        Attestation.issue(lab, IDENTITY.public_key, Role.SERVER, "x" * MAX_LABEL, NOW, NOW + 86400).encode()
        for _ in range(MAX_OFFER_ATTESTATIONS)
    )
    # A desktop with an IPv4 and an IPv6 address, both attestations with the longest labels.
    addresses = (DirectAddress("203.0.113.10", 7070), DirectAddress("2001:db8::10", 7070))
    free = (lab.public_key,) * MAX_FREE_ORGS
    offer = _offer(addresses=addresses, attestations=attestations, free_orgs=free)
    parsed = offer_from_record(_record(offer.payload()))  # create() refuses a record over its limit
    assert (parsed.attestations, parsed.free_orgs) == (offer.attestations, offer.free_orgs)
    plain = _offer()
    assert offer_from_record(_record(plain.payload())) == plain
    assert len(msgpack.unpackb(plain.payload())) == 5  # unchanged on the wire without them


def test_fields_a_newer_node_appends_to_an_offer_are_ignored() -> None:
    payload = msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], [], [], 1.5, "later"])
    assert offer_from_record(_record(payload)).name == "espeak"


def test_the_demand_multiplier_rides_last_and_only_when_it_is_not_one() -> None:
    surging = replace(_offer(), multiplier=2.5)
    assert offer_from_record(_record(surging.payload())).multiplier == 2.5
    assert msgpack.unpackb(surging.payload())[5:] == [[], [], 2.5]
    for bad in (0.0, -1.0, 1001.0, 2):
        payload = msgpack.packb([SID, "espeak", ["h:1"], [0, 0, 0], [0, 0, 1], [], [], bad])
        with pytest.raises(InvalidOffer, match="multiplier"):
            offer_from_record(_record(payload))
    with pytest.raises(ValueError, match="multiplier"):
        replace(_offer(), multiplier=0.0).payload()


def test_an_offer_filed_under_another_services_key_is_refused() -> None:
    other_key = service_key(service_id_for_name("listen"))
    with pytest.raises(InvalidOffer, match="another service"):
        offer_from_record(_record(_offer().payload(), key=other_key))


@given(st.binary(max_size=300))
def test_random_payloads_raise_only_invalid_offer(payload: bytes) -> None:
    with contextlib.suppress(InvalidOffer):
        offer_from_record(_record(payload))


def test_price_estimate_and_utilisation() -> None:
    assert Price(100, 10, 4).estimate(seconds=2.0, mib=0.5) == 100 + 20 + 2
    assert Price().is_free and not Price(per_mib=1).is_free
    assert Load(2, 2, 4).utilisation == 1.0
    assert Load(0, 0, 0).utilisation == 0.0


RELAYED = RelayAddress(bytes(32), DirectAddress("198.51.100.7", 4001), IDENTITY.public_key)
SERVICES = """
listen = "127.0.0.1:7070"
bootstrap = ["127.0.0.1:7071"]
advertise = ["desk.example:7070"]

[services.espeak]
command = ["espeak-ng", "--stdout"]
price = { per_call = 1000, per_second = 20 }

[services.cat]
command = ["cat"]
"""


def test_services_toml_carries_prices_bootstrap_and_advertise() -> None:
    config = parse_services(SERVICES)
    espeak = config.by_name("espeak")
    cat = config.by_name("cat")
    assert espeak is not None and cat is not None
    assert espeak.price == Price(per_call=1000, per_second=20)
    assert cat.price == Price()
    assert [(t.address, t.peer) for t in config.bootstrap] == [(DirectAddress("127.0.0.1", 7071), None)]
    assert config.advertise == (DirectAddress("desk.example", 7070),)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('[services.a]\ncommand = ["x"]\nprice = { per_call = -1 }', "per_call: must be an integer >= 0"),
        ('[services.a]\ncommand = ["x"]\nprice = { per_cal = 1 }', "per_cal"),
        ('bootstrap = ["nope@127.0.0.1:1"]', "bootstrap"),
        ('advertise = [":7070"]', "advertise"),
        ('advertise = ["desk.example:0"]', "advertise"),
        (f"advertise = {[f'10.0.0.{i}:7070' for i in range(MAX_ADDRESSES + 1)]}", "at most"),
        (f'advertise = ["{RELAYED}"]', "reservation"),
    ],
)
def test_bad_prices_and_addresses_are_config_errors(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        parse_services(text)


def test_publisher_signs_one_offer_per_service_and_a_node_record() -> None:
    config = parse_services(SERVICES)
    listed = (DirectAddress("127.0.0.1", 7070), RELAYED)
    publisher = OfferPublisher(IDENTITY, config, listed, ttl=300)
    publication = publisher.publish(Load(0, 0, 2), NOW)
    offers = [offer_from_record(ProviderRecord.parse(r.raw, now=NOW)) for r in publication.offers]
    assert sorted(o.name for o in offers) == ["cat", "espeak"]
    assert all(o.expires_at == NOW + 300 and o.load == Load(0, 0, 2) for o in offers)
    assert all(o.addresses == listed for o in offers)
    node = NodeRecord.parse(publication.node_record.raw, now=NOW)
    assert node.addresses == listed


def test_publisher_republishes_on_timer_and_on_load_change_but_not_too_often() -> None:
    config = parse_services(SERVICES)
    publisher = OfferPublisher(IDENTITY, config, (DirectAddress("127.0.0.1", 7070),), interval=100, min_gap=5)
    idle, busy = Load(0, 0, 2), Load(2, 1, 2)
    assert publisher.due(idle, NOW)
    first = publisher.publish(idle, NOW)
    assert not publisher.due(idle, NOW + 99)
    assert not publisher.due(busy, NOW + 4)  # changed, but too soon after the last
    assert publisher.due(busy, NOW + 5)
    assert publisher.due(idle, NOW + 100)
    second = publisher.publish(busy, NOW + 5)
    # Sequences only grow, even across a restart with a fresh publisher at the same time.
    assert second.offers[0].sequence > first.offers[0].sequence
    restarted = OfferPublisher(IDENTITY, config, (DirectAddress("127.0.0.1", 7070),)).publish(idle, NOW + 6)
    assert restarted.offers[0].sequence > second.offers[0].sequence


def test_publisher_puts_its_attestations_and_free_orgs_in_every_offer_as_far_as_they_fit() -> None:
    lab, club = Identity.from_seed(b"L" * 32), Identity.from_seed(b"C" * 32)
    config = parse_services(f'[services.cat]\ncommand = ["cat"]\nfree_orgs = ["{lab.peer_id}/robot"]\n')
    attestations = tuple(
        Attestation.issue(org, IDENTITY.public_key, Role.SERVER, "x" * MAX_LABEL, NOW, NOW + 86400).encode()
        for org in (lab, club)
    )
    short = (DirectAddress("127.0.0.1", 7070),)
    [record] = (
        OfferPublisher(IDENTITY, config, short, attestations=attestations).publish(Load(0, 0, 1), NOW).offers
    )
    offer = offer_from_record(record)
    assert offer.attestations == attestations and offer.free_orgs == (lab.public_key,)
    # Eight long addresses leave room for fewer attestations: the offer still goes out.
    long = tuple(DirectAddress(f"{'h' * 40}{i}.example", 7070) for i in range(MAX_ADDRESSES))
    publisher = OfferPublisher(IDENTITY, config, long, attestations=attestations)
    [record] = publisher.publish(Load(0, 0, 1), NOW).offers
    assert (
        offer_from_record(record).attestations == attestations[: len(offer_from_record(record).attestations)]
    )
    assert len(offer_from_record(record).attestations) < len(attestations)
