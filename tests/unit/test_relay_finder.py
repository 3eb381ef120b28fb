"""Which relays a private node tries among those the DHT names: node.reservations.cheapest_relays."""

from __future__ import annotations

from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.identity.keys import Identity
from hubnet.node.offers import Load, Offer, Price
from hubnet.node.relay import RELAY_SERVICE_ID, RELAY_SERVICE_NAME
from hubnet.node.reservations import cheapest_relays

ME = Identity.generate().public_key


def _offer(publisher: bytes, per_mib: int, *addresses: DirectAddress | RelayAddress) -> Offer:
    return Offer(
        publisher,
        RELAY_SERVICE_ID,
        RELAY_SERVICE_NAME,
        addresses or (DirectAddress("192.0.2.1", 7070),),
        Price(per_mib=per_mib),
        Load(0, 0, 1),
        1,
        0,
        300,
    )


def test_the_cheapest_relays_come_first_and_equals_in_every_order() -> None:
    free = [Identity.generate().public_key for _ in range(3)]
    dear, middling = Identity.generate().public_key, Identity.generate().public_key
    offers = [_offer(dear, 50), *(_offer(peer, 0) for peer in free), _offer(middling, 5)]
    orders = set()
    for _ in range(200):  # bounded: 200 shuffles of 3 miss one of the 6 orders with a chance of about 1e-15
        found = [t.peer for t in cheapest_relays(offers, ME)]
        assert set(found[:3]) == set(free) and found[3:] == [middling, dear]
        orders.add(tuple(found[:3]))
    assert len(orders) == 6  # private nodes spread over equally cheap relays


def test_a_relay_must_be_dialled_directly_and_is_never_oneself() -> None:
    other = Identity.generate().public_key
    only_relayed = _offer(other, 0, RelayAddress(ME, DirectAddress("192.0.2.2", 7070), other))
    both = _offer(
        other, 0, RelayAddress(ME, DirectAddress("192.0.2.2", 7070), other), DirectAddress("192.0.2.3", 1)
    )
    assert cheapest_relays([only_relayed, _offer(ME, 0)], ME) == []
    (target,) = cheapest_relays([both], ME)
    assert (target.peer, target.direct) == (other, DirectAddress("192.0.2.3", 1))
