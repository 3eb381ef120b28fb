"""Tests of dht.beacon's sans-IO part: the beacon codec, what a beacon may make us ping, and how often."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.dht.beacon import (
    BEACON_INTERVAL,
    BEACON_MAGIC,
    BEACON_RECORD_TTL,
    BEACON_VERSION,
    MAX_BEACON_LEN,
    BeaconState,
    InvalidBeacon,
    PingPeer,
    decode_beacon,
    encode_beacon,
    reachable_address,
)
from hubnet.dht.records import NODE_DOMAIN, NodeRecord, ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.identity.records import SignedRecord

FAST = settings(max_examples=200, deadline=None)
ALICE = Identity.from_seed(bytes(range(32)))
BOB = Identity.from_seed(bytes(range(32, 64)))
NOW = 1_700_000_000
LAN_IP = "192.168.1.20"


def record(
    identity: Identity, *addresses: tuple[str, int] | Address, issued_at: int = NOW, ttl: int = 300
) -> NodeRecord:
    """A node record listing `addresses`, (host, port) pairs standing for direct addresses."""
    typed = tuple(a if isinstance(a, DirectAddress | RelayAddress) else DirectAddress(*a) for a in addresses)
    return NodeRecord.create(identity, typed, sequence=issued_at, issued_at=issued_at, ttl=ttl)


def beacon(identity: Identity, *addresses: tuple[str, int], issued_at: int = NOW, ttl: int = 300) -> bytes:
    return encode_beacon(record(identity, *addresses, issued_at=issued_at, ttl=ttl))


def bob_beacon(state_now: float = NOW) -> bytes:
    return BeaconState(BOB, ("0.0.0.0", 7070)).beacon(now=state_now)


# --- the codec ---------------------------------------------------------------------------------------------


def test_a_beacon_round_trips() -> None:
    sent = record(BOB, ("10.0.0.2", 7070), ("0.0.0.0", 7070))
    data = encode_beacon(sent)
    assert data.startswith(BEACON_MAGIC + bytes([BEACON_VERSION]))
    assert len(data) <= MAX_BEACON_LEN
    assert decode_beacon(data, now=NOW) == sent


def test_state_beacons_carry_our_address_and_a_short_lived_record() -> None:
    data = BeaconState(BOB, ("10.0.0.2", 7070)).beacon(now=NOW + 0.9)
    got = decode_beacon(data, now=NOW)
    assert (got.publisher, got.addresses) == (BOB.public_key, (DirectAddress("10.0.0.2", 7070),))
    assert (got.issued_at, got.expires_at) == (NOW, NOW + BEACON_RECORD_TTL)


def test_the_largest_possible_record_fits_in_a_beacon() -> None:
    longest = tuple((f"{'h' * 100}{i}", 65535) for i in range(4))
    with pytest.raises(ValueError, match="exceeds"):
        record(BOB, *longest)  # NodeRecord refuses first, so no valid record can overflow a beacon
    fits = record(BOB, *longest[:3])
    assert len(encode_beacon(fits)) <= MAX_BEACON_LEN


def forged_signature() -> bytes:
    data = bytearray(beacon(BOB, (LAN_IP, 7070)))
    data[-1] ^= 1  # the signature is the envelope's last field
    return bytes(data)


def wrong_domain() -> bytes:
    provider = ProviderRecord.create(BOB, bytes(32), b"", sequence=1, issued_at=NOW, ttl=300)
    return BEACON_MAGIC + bytes([BEACON_VERSION]) + provider.raw


def stolen_key() -> bytes:
    # Bob's key and address with Alice's signature: the envelope names Bob but cannot prove it.
    body = msgpack.packb([[[LAN_IP, 7070]], NOW, NOW, NOW + 300])
    signed = SignedRecord.sign(ALICE, NODE_DOMAIN, body)
    forged = SignedRecord(signed.domain, signed.body, BOB.public_key, signed.signature)
    return BEACON_MAGIC + bytes([BEACON_VERSION]) + forged.encode()


HOSTILE = {
    "empty": b"",
    "garbage": b"\xff" * 64,
    "magic only": BEACON_MAGIC,
    "magic and version only": BEACON_MAGIC + bytes([BEACON_VERSION]),
    "wrong magic": b"hubnet-beacoN\x00" + beacon(BOB, (LAN_IP, 7070))[len(BEACON_MAGIC) :],
    "future version": BEACON_MAGIC + bytes([BEACON_VERSION + 1]) + record(BOB, (LAN_IP, 7070)).raw,
    "oversized": beacon(BOB, (LAN_IP, 7070)).ljust(MAX_BEACON_LEN + 1, b"\x00"),
    "huge": BEACON_MAGIC + bytes([BEACON_VERSION]) + b"\x00" * 65_000,
    "trailing bytes": beacon(BOB, (LAN_IP, 7070)) + b"\x00",
    "truncated": beacon(BOB, (LAN_IP, 7070))[:-1],
    "forged signature": forged_signature(),
    "someone else's key": stolen_key(),
    "provider record": wrong_domain(),
    "expired": beacon(BOB, (LAN_IP, 7070), issued_at=NOW - 300, ttl=300),
    "dated in the future": beacon(BOB, (LAN_IP, 7070), issued_at=NOW + 3600),
    "msgpack but not a record": BEACON_MAGIC + bytes([BEACON_VERSION]) + msgpack.packb([1, 2, 3, 4]),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_datagrams_raise_only_invalid_beacon(data: bytes) -> None:
    with pytest.raises(InvalidBeacon):
        decode_beacon(data, now=NOW)


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_datagrams_are_counted_and_ignored(data: bytes) -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(data, LAN_IP, now=NOW) is None
    assert state.dropped == 1


def test_our_own_beacon_is_ignored_but_not_counted_as_hostile() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(state.beacon(now=NOW), LAN_IP, now=NOW) is None
    assert state.dropped == 0


@FAST
@given(st.binary(max_size=2 * MAX_BEACON_LEN))
def test_random_bytes_raise_only_invalid_beacon(data: bytes) -> None:
    with pytest.raises(InvalidBeacon):
        decode_beacon(data, now=NOW)
    with pytest.raises(InvalidBeacon):
        decode_beacon(BEACON_MAGIC + bytes([BEACON_VERSION]) + data, now=NOW)


@FAST
@given(st.data())
def test_any_changed_byte_of_a_beacon_is_refused(data: st.DataObject) -> None:
    valid = bytearray(beacon(BOB, (LAN_IP, 7070)))
    index = data.draw(st.integers(0, len(valid) - 1))
    valid[index] ^= data.draw(st.integers(1, 255))
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(bytes(valid), LAN_IP, now=NOW) is None
    assert state.dropped == 1


# --- which address to ping ---------------------------------------------------------------------------------


def test_a_wildcard_address_is_pinged_at_the_beacon_source() -> None:
    assert reachable_address(record(BOB, ("0.0.0.0", 7070)), LAN_IP) == (LAN_IP, 7070)
    assert reachable_address(record(BOB, ("::", 7070)), LAN_IP) == (LAN_IP, 7070)


def test_an_address_equal_to_the_source_is_pinged() -> None:
    assert reachable_address(record(BOB, (LAN_IP, 7070)), LAN_IP) == (LAN_IP, 7070)
    assert reachable_address(record(BOB, ("127.0.0.1", 4000)), "127.0.0.1") == ("127.0.0.1", 4000)


def test_the_first_usable_address_wins() -> None:
    announced = record(BOB, ("203.0.113.9", 1), ("bob.example", 2), (LAN_IP, 3), ("0.0.0.0", 4))
    assert reachable_address(announced, LAN_IP) == (LAN_IP, 3)


def test_a_relay_address_is_never_pinged() -> None:
    # Even a relay on the sender's own IP: its port is the relay's, not the node's DHT port.
    relayed = RelayAddress(ALICE.public_key, DirectAddress(LAN_IP, 4001), BOB.public_key)
    assert reachable_address(record(BOB, relayed), LAN_IP) is None
    assert reachable_address(record(BOB, relayed, ("0.0.0.0", 7070)), LAN_IP) == (LAN_IP, 7070)


@pytest.mark.parametrize(
    "host",
    ["203.0.113.9", "127.0.0.1", "192.168.1.21", "bob.example"],
    ids=["public", "loopback", "neighbour", "hostname"],
)
def test_an_address_the_beacon_did_not_come_from_is_never_pinged(host: str) -> None:
    # Else anyone on the LAN could aim our pings at a third party with a freshly made key.
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(beacon(BOB, (host, 7070)), LAN_IP, now=NOW) is None
    assert state.dropped == 1


def test_a_source_that_is_not_an_ip_address_gives_nothing() -> None:
    assert reachable_address(record(BOB, ("0.0.0.0", 7070)), "not an ip") is None


# --- how often -----------------------------------------------------------------------------------------


def test_a_new_publisher_is_pinged_at_the_beacon_source() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(bob_beacon(), LAN_IP, now=NOW) == PingPeer(BOB.public_key, (LAN_IP, 7070))


def test_a_publisher_is_pinged_at_most_once_per_interval() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070), repeat_after=30)
    assert state.receive(bob_beacon(), LAN_IP, now=NOW) is not None
    assert state.receive(bob_beacon(), LAN_IP, now=NOW + 1) is None
    assert state.receive(bob_beacon(NOW + 29), LAN_IP, now=NOW + 29.9) is None
    assert state.receive(bob_beacon(NOW + 30), LAN_IP, now=NOW + 30) is not None
    assert state.receive(bob_beacon(NOW + 30), LAN_IP, now=NOW + 31) is None
    assert state.dropped == 0  # repeats are expected, not hostile


def test_the_default_interval_is_the_beacon_interval() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070))
    assert state.receive(bob_beacon(), LAN_IP, now=NOW) is not None
    assert state.receive(bob_beacon(), LAN_IP, now=NOW + BEACON_INTERVAL - 1) is None
    assert state.receive(bob_beacon(), LAN_IP, now=NOW + BEACON_INTERVAL) is not None


def test_publishers_are_limited_independently() -> None:
    state = BeaconState(BOB, ("0.0.0.0", 7070), repeat_after=30)
    carol = Identity.from_seed(bytes(range(64, 96)))
    assert state.receive(beacon(ALICE, ("0.0.0.0", 1)), "10.0.0.1", now=NOW) is not None
    assert state.receive(beacon(carol, ("0.0.0.0", 2)), "10.0.0.3", now=NOW + 1) is not None
    assert state.receive(beacon(ALICE, ("0.0.0.0", 1)), "10.0.0.1", now=NOW + 2) is None


def test_a_flood_of_new_keys_is_capped_per_interval() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070), repeat_after=30, max_peers=3)
    keys = [Identity.from_seed(bytes([i]) * 32) for i in range(1, 6)]
    decisions = [state.receive(beacon(k, ("0.0.0.0", 7070)), LAN_IP, now=NOW) for k in keys]
    assert [d is not None for d in decisions] == [True, True, True, False, False]
    assert state.dropped == 2
    # A window later there is room again, for the ones refused before too.
    later = [state.receive(beacon(k, ("0.0.0.0", 7070)), LAN_IP, now=NOW + 30) for k in keys[3:]]
    assert all(d is not None for d in later)


def test_a_clock_stepping_back_delays_a_ping_by_at_most_one_interval() -> None:
    state = BeaconState(ALICE, ("0.0.0.0", 7070), repeat_after=30)
    assert state.receive(bob_beacon(NOW + 1000), LAN_IP, now=NOW + 1000) is not None
    # The clock is set back 1000 s: the old entry is in the future, so it is forgotten.
    assert state.receive(bob_beacon(), LAN_IP, now=NOW) is not None
    assert state.receive(bob_beacon(), LAN_IP, now=NOW + 10) is None
