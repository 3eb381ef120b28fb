"""Typed addresses: text and wire forms, and hostile wire values."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.addresses import (
    DirectAddress,
    InvalidAddress,
    RelayAddress,
    decode_address,
    encode_address,
    parse_address,
)
from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import encode_peer_id
from tests.strategies import addresses

RELAY = bytes(range(32))
TARGET = bytes(range(32, 64))


@given(addresses)
def test_text_form_round_trips(address: DirectAddress | RelayAddress) -> None:
    assert parse_address(str(address)) == address


@given(addresses)
def test_wire_form_round_trips_through_msgpack(address: DirectAddress | RelayAddress) -> None:
    wire = msgpack.unpackb(msgpack.packb(encode_address(address)), raw=False)
    assert decode_address(wire) == address


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text() | st.binary(), st.lists))
def test_hostile_wire_values_raise_only_invalid_address(value: object) -> None:
    try:
        decoded = decode_address(value)
    except InvalidAddress:
        return
    assert isinstance(decoded, DirectAddress | RelayAddress)


def test_relay_text_form() -> None:
    text = f"{encode_peer_id(RELAY)}@10.0.0.1:4001/circuit/{encode_peer_id(TARGET)}"
    assert parse_address(text) == RelayAddress(RELAY, DirectAddress("10.0.0.1", 4001), TARGET)


def test_legacy_offer_strings_are_direct_addresses() -> None:
    assert decode_address("127.0.0.1:7070") == DirectAddress("127.0.0.1", 7070)
    assert decode_address("[::1]:7070") == DirectAddress("::1", 7070)


def test_legacy_node_record_pairs_are_direct_addresses() -> None:
    assert decode_address(["127.0.0.1", 7070]) == DirectAddress("127.0.0.1", 7070)
    assert decode_address(["::1", 7070]) == DirectAddress("::1", 7070)


@pytest.mark.parametrize(
    "value",
    [
        [0, "", 1],
        [0, "a b", 1],
        [0, "h", 0],
        [0, "h", 70000],
        [0, "h", True],
        [1, RELAY, "h", 1, b"x"],
        [2, "h", 1],
        [True, "h", 1],
        [0.0, "h", 1],
        ["h", 0],
        ["h", 1, 2],
        ["[::1]", 1],
    ],
)
def test_bad_wire_values(value: object) -> None:
    with pytest.raises(InvalidAddress):
        decode_address(value)


@pytest.mark.parametrize("text", [":7070", "host:0", "peer@host:1/circuit/x", "host:1/circuit/" + "a" * 52])
def test_bad_text_forms_name_what_was_typed(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_address(text)
