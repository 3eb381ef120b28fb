"""node.offer_check: the serving node's DHT stores offers that name only their publisher."""

from __future__ import annotations

import msgpack
import pytest

from hubnet.dht.addresses import DirectAddress, RelayAddress, parse_address
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.store import RecordRefused
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.node.offer_check import accept_record, address_allowed
from tests.helpers import signed_offer

NOW = 1_700_000_000
PUBLISHER = Identity.from_seed(b"p" * 32)
SID = bytes(range(16))


def offer_record(*addresses: str) -> ProviderRecord:
    return signed_offer(PUBLISHER, SID, addresses, issued_at=NOW)


@pytest.mark.parametrize(
    ("address", "source", "allowed"),
    [
        # From a public source: its own IP only (any port: the UDP port says nothing of TCP).
        ("203.0.113.5:7070", "203.0.113.5", True),
        ("203.0.113.5:9999", "203.0.113.5", True),
        ("203.0.113.5:7070", "::ffff:203.0.113.5", True),
        ("[2001:db8::1]:7070", "2001:db8::1", True),
        ("198.51.100.7:53", "203.0.113.5", False),  # a third party: the victim of issue 15
        ("203.0.113.6:7070", "203.0.113.5", False),  # even next door
        ("192.168.1.5:7070", "203.0.113.5", False),  # someone's LAN
        ("127.0.0.1:7070", "203.0.113.5", False),  # the client's own machine
        ("0.0.0.0:7070", "203.0.113.5", False),
        ("node.example.org:7070", "203.0.113.5", False),  # a name: anyone's
        # From loopback: this machine, as trusted as this node's own publisher.
        ("127.0.0.1:7070", "127.0.0.1", True),
        ("203.0.113.5:7070", "127.0.0.1", True),
        ("192.168.1.5:7070", "::1", True),
        ("robot.local:7070", "127.0.0.1", True),
        # From a private address: what is inside the LAN, never the internet or loopback.
        ("192.168.1.5:7070", "192.168.1.5", True),
        ("192.168.1.9:7070", "192.168.1.5", True),
        ("10.0.0.2:7070", "192.168.1.5", True),
        ("robot.local:7070", "192.168.1.5", True),
        ("198.51.100.7:53", "192.168.1.5", False),
        ("127.0.0.1:7070", "192.168.1.5", False),
    ],
)
def test_direct_addresses(address: str, source: str, allowed: bool) -> None:
    assert address_allowed(parse_address(address), source, PUBLISHER.public_key) is allowed


RELAY = Identity.from_seed(b"r" * 32).public_key


@pytest.mark.parametrize(
    ("relay_host", "source", "allowed"),
    [
        # From a public source: a relay at any IP in public space (it is somewhere else).
        ("198.51.100.7", "203.0.113.5", True),
        ("198.18.2.11", "198.18.11.1", True),  # the namespaces' public link (tests/netns.py)
        ("2001:db8::7", "203.0.113.5", True),
        ("192.168.1.5", "203.0.113.5", False),  # someone's LAN
        ("127.0.0.1", "203.0.113.5", False),  # the client's own machine
        ("0.0.0.0", "203.0.113.5", False),
        ("224.0.0.1", "203.0.113.5", False),
        ("relay.example.org", "203.0.113.5", False),  # a name: anyone's
        # From loopback: anything, as for a direct address.
        ("127.0.0.1", "127.0.0.1", True),
        ("relay.example.org", "::1", True),
        # From inside a LAN: what is inside it, or public space; never loopback.
        ("192.168.1.9", "192.168.1.5", True),
        ("198.51.100.7", "192.168.1.5", True),
        ("127.0.0.1", "192.168.1.5", False),
    ],
)
def test_relayed_addresses_name_a_relay_in_public_space(relay_host: str, source: str, allowed: bool) -> None:
    relayed = RelayAddress(RELAY, DirectAddress(relay_host, 7070), PUBLISHER.public_key)
    assert address_allowed(relayed, source, PUBLISHER.public_key) is allowed


def test_a_relayed_address_leads_to_its_publisher_through_another_peer() -> None:
    other = Identity.from_seed(b"o" * 32).public_key
    relay = DirectAddress("198.51.100.7", 7070)
    assert address_allowed(
        RelayAddress(RELAY, relay, PUBLISHER.public_key), "203.0.113.5", PUBLISHER.public_key
    )
    # A circuit to someone else: the publisher would send clients at a third party.
    assert not address_allowed(RelayAddress(RELAY, relay, other), "203.0.113.5", PUBLISHER.public_key)
    # The publisher as its own relay: no relay at all (and then a direct address, held to that rule).
    assert not address_allowed(
        RelayAddress(PUBLISHER.public_key, relay, PUBLISHER.public_key), "203.0.113.5", PUBLISHER.public_key
    )
    relayed = f"{encode_peer_id(RELAY)}@10.0.0.7:7070/circuit/{encode_peer_id(PUBLISHER.public_key)}"
    with pytest.raises(RecordRefused, match="does not lead to its publisher"):
        accept_record(offer_record(relayed), ("203.0.113.5", 7070))
    elsewhere = f"{encode_peer_id(RELAY)}@198.51.100.7:7070/circuit/{encode_peer_id(other)}"
    with pytest.raises(RecordRefused, match="does not lead to its publisher"):
        accept_record(offer_record(elsewhere), ("203.0.113.5", 7070))
    good = f"{encode_peer_id(RELAY)}@198.51.100.7:7070/circuit/{encode_peer_id(PUBLISHER.public_key)}"
    assert accept_record(offer_record(good), ("203.0.113.5", 7070))
    node = NodeRecord.create(
        PUBLISHER, (RelayAddress(RELAY, relay, other),), sequence=1, issued_at=NOW, ttl=60
    )
    with pytest.raises(RecordRefused, match="node record names"):
        accept_record(node, ("203.0.113.5", 7070))


def test_an_offer_passes_only_if_every_address_does() -> None:
    assert accept_record(offer_record("203.0.113.5:7070", "203.0.113.5:7071"), ("203.0.113.5", 7070))
    with pytest.raises(RecordRefused, match=r"offer names 198\.51\.100\.7:53, not the address it came from"):
        accept_record(offer_record("203.0.113.5:7070", "198.51.100.7:53"), ("203.0.113.5", 7070))


def test_node_records_are_held_to_the_same_rule() -> None:
    mine = NodeRecord.create(
        PUBLISHER, (DirectAddress("203.0.113.5", 7070),), sequence=1, issued_at=NOW, ttl=60
    )
    assert accept_record(mine, ("203.0.113.5", 4444))
    with pytest.raises(RecordRefused, match="node record names"):
        accept_record(mine, ("203.0.113.9", 7070))


def test_records_that_are_not_offers_are_not_its_business() -> None:
    other = ProviderRecord.create(
        PUBLISHER, bytes(20), b"an organisation's list", sequence=1, issued_at=NOW, ttl=60
    )
    assert accept_record(other, ("203.0.113.5", 7070))
    payload = msgpack.packb([SID, "who", [[0, "198.51.100.7", 53]], [0, 0, 0], [0, 0, 1]])
    wrong_key = ProviderRecord.create(PUBLISHER, bytes(20), payload, sequence=1, issued_at=NOW, ttl=60)
    assert accept_record(wrong_key, ("203.0.113.5", 7070))  # no reader takes it as an offer either
