"""dht.records: signed provider and node records, and everything their parsers refuse."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress
from hubnet.dht.records import (
    MAX_CLOCK_SKEW,
    MAX_NODE_ADDRESSES,
    MAX_NODE_RECORD_LEN,
    MAX_PROVIDER_RECORD_LEN,
    MAX_SEQUENCE,
    MAX_TTL,
    NODE_DOMAIN,
    PROVIDER_DOMAIN,
    NodeRecord,
    ProviderRecord,
)
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord, SignedRecord
from tests.strategies import addresses, msgpack_values

FAST = settings(max_examples=200, deadline=None, derandomize=True)
NOW = 1_700_000_000
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
KEY = bytes(range(20))
ADDRESSES = (
    DirectAddress("192.0.2.1", 7070),
    DirectAddress("2001:db8::1", 7070),
    RelayAddress(MALLORY.public_key, DirectAddress("198.51.100.7", 4001), ALICE.public_key),
)


def provider(**overrides: object) -> ProviderRecord:
    fields: dict[str, object] = {"sequence": 5, "issued_at": NOW, "ttl": 600}
    fields.update(overrides)
    return ProviderRecord.create(ALICE, KEY, b"offer", **fields)  # type: ignore[arg-type]


def node_record(**overrides: object) -> NodeRecord:
    fields: dict[str, object] = {"sequence": 5, "issued_at": NOW, "ttl": 600}
    fields.update(overrides)
    return NodeRecord.create(ALICE, ADDRESSES, **fields)  # type: ignore[arg-type]


def signed(body: object, domain: str = PROVIDER_DOMAIN, identity: Identity = ALICE) -> bytes:
    raw = body if isinstance(body, bytes) else bytes(msgpack.packb(body))
    return SignedRecord.sign(identity, domain, raw).encode()


def envelope(raw: bytes) -> list[object]:
    fields = msgpack.unpackb(raw, raw=False)
    assert isinstance(fields, list)
    return fields


# -- valid records ------------------------------------------------------------------------


def test_provider_record_round_trip() -> None:
    record = provider()
    parsed = ProviderRecord.parse(record.raw, now=NOW)
    assert parsed == record
    assert (parsed.key, parsed.publisher, parsed.payload) == (KEY, ALICE.public_key, b"offer")
    assert (parsed.sequence, parsed.issued_at, parsed.expires_at) == (5, NOW, NOW + 600)


def test_node_record_round_trip() -> None:
    record = node_record()
    parsed = NodeRecord.parse(record.raw, now=NOW)
    assert parsed == record
    assert parsed.addresses == ADDRESSES
    assert parsed.publisher == ALICE.public_key


@FAST
@given(st.lists(addresses, min_size=1, max_size=MAX_NODE_ADDRESSES))
def test_node_record_carries_any_typed_addresses_or_refuses_to_sign(listed: list[Address]) -> None:
    try:
        record = NodeRecord.create(ALICE, tuple(listed), sequence=1, issued_at=NOW, ttl=60)
    except ValueError as exc:
        # Three or four relay addresses with long host names exceed the record's size limit.
        assert f"exceeds {MAX_NODE_RECORD_LEN}" in str(exc)
        return
    assert NodeRecord.parse(record.raw, now=NOW).addresses == tuple(listed)


@pytest.mark.parametrize("count", [0, MAX_NODE_ADDRESSES + 1])
def test_node_record_refuses_to_sign_what_readers_refuse(count: int) -> None:
    with pytest.raises(ValueError, match="addresses"):
        NodeRecord.create(ALICE, (ADDRESSES[0],) * count, sequence=1, issued_at=NOW, ttl=60)


def test_node_records_from_before_typed_addresses_still_read() -> None:
    # They listed [host, port] pairs, direct addresses without a kind.
    body = [[["192.0.2.1", 7070], ["2001:db8::1", 7071]], 1, NOW, NOW + 60]
    parsed = NodeRecord.parse(signed(body, NODE_DOMAIN), now=NOW)
    assert parsed.addresses == (DirectAddress("192.0.2.1", 7070), DirectAddress("2001:db8::1", 7071))


@FAST
@given(
    payload=st.binary(max_size=600),
    sequence=st.integers(0, MAX_SEQUENCE),
    ttl=st.integers(1, MAX_TTL),
    age=st.integers(-MAX_CLOCK_SKEW, MAX_TTL),
)
def test_provider_record_valid_for_its_whole_lifetime(
    payload: bytes, sequence: int, ttl: int, age: int
) -> None:
    record = ProviderRecord.create(ALICE, KEY, payload, sequence=sequence, issued_at=NOW, ttl=ttl)
    now = NOW + age
    if age < ttl:
        assert ProviderRecord.parse(record.raw, now=now) == record
    else:
        with pytest.raises(InvalidRecord, match="expired"):
            ProviderRecord.parse(record.raw, now=now)


# -- forged -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["provider", "node"])
def test_signature_by_another_key_refused(kind: str) -> None:
    raw = provider().raw if kind == "provider" else node_record().raw
    domain, body, public_key, _ = envelope(raw)
    assert public_key == ALICE.public_key
    assert isinstance(domain, str) and isinstance(body, bytes)
    # Mallory signs Alice's body and claims it is Alice's.
    forged = msgpack.packb([domain, body, ALICE.public_key, MALLORY.sign(f"{domain}\x00".encode() + body)])
    parse = ProviderRecord.parse if kind == "provider" else NodeRecord.parse
    with pytest.raises(InvalidRecord, match="signature"):
        parse(bytes(forged), now=NOW)


def test_tampered_body_refused() -> None:
    domain, body, public_key, signature = envelope(provider().raw)
    fields = msgpack.unpackb(body)
    fields[4] = b"evil offer"
    tampered = msgpack.packb([domain, msgpack.packb(fields), public_key, signature])
    with pytest.raises(InvalidRecord, match="signature"):
        ProviderRecord.parse(bytes(tampered), now=NOW)


@FAST
@given(st.data())
def test_any_flipped_bit_refused(data: st.DataObject) -> None:
    raw = bytearray(provider().raw)
    position = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[position // 8] ^= 1 << (position % 8)
    with pytest.raises(InvalidRecord):
        ProviderRecord.parse(bytes(raw), now=NOW)


def test_resigned_record_is_the_signers_not_the_victims() -> None:
    """Re-signing Alice's body with Mallory's key gives a record *published by Mallory*."""
    _, body, _, _ = envelope(provider().raw)
    parsed = ProviderRecord.parse(signed(body, identity=MALLORY), now=NOW)
    assert parsed.publisher == MALLORY.public_key


# -- times --------------------------------------------------------------------------------


def test_expired_refused() -> None:
    record = provider(ttl=600)
    assert ProviderRecord.parse(record.raw, now=NOW + 599) == record
    with pytest.raises(InvalidRecord, match="expired"):
        ProviderRecord.parse(record.raw, now=NOW + 600)
    with pytest.raises(InvalidRecord, match="expired"):
        NodeRecord.parse(node_record(ttl=600).raw, now=NOW + 600)


def test_future_dated_refused() -> None:
    assert ProviderRecord.parse(provider(issued_at=NOW + MAX_CLOCK_SKEW).raw, now=NOW)
    with pytest.raises(InvalidRecord, match="future"):
        ProviderRecord.parse(provider(issued_at=NOW + MAX_CLOCK_SKEW + 1).raw, now=NOW)
    with pytest.raises(InvalidRecord, match="future"):
        NodeRecord.parse(node_record(issued_at=NOW + MAX_CLOCK_SKEW + 1).raw, now=NOW)


def test_too_long_ttl_refused() -> None:
    assert ProviderRecord.parse(provider(ttl=MAX_TTL).raw, now=NOW)
    with pytest.raises(InvalidRecord, match="lifetime"):
        ProviderRecord.parse(provider(ttl=MAX_TTL + 1).raw, now=NOW)
    with pytest.raises(InvalidRecord, match="lifetime"):
        NodeRecord.parse(node_record(ttl=MAX_TTL + 1).raw, now=NOW)


@pytest.mark.parametrize("ttl", [0, -10])
def test_non_positive_ttl_refused(ttl: int) -> None:
    raw = signed([KEY, 1, NOW, NOW + ttl, b""])
    with pytest.raises(InvalidRecord):
        ProviderRecord.parse(raw, now=NOW - 100)


# -- sizes and domains --------------------------------------------------------------------


def test_oversized_refused() -> None:
    raw = signed([KEY, 1, NOW, NOW + 60, b"x" * MAX_PROVIDER_RECORD_LEN])
    assert len(raw) > MAX_PROVIDER_RECORD_LEN
    with pytest.raises(InvalidRecord, match="too large"):
        ProviderRecord.parse(raw, now=NOW)
    with pytest.raises(ValueError, match="exceeds"):
        ProviderRecord.create(ALICE, KEY, b"x" * MAX_PROVIDER_RECORD_LEN, sequence=1, issued_at=NOW, ttl=60)
    raw = signed([[["h" * 200, 1]] * MAX_NODE_ADDRESSES, 1, NOW, NOW + 60], NODE_DOMAIN)
    assert len(raw) > MAX_NODE_RECORD_LEN
    with pytest.raises(InvalidRecord, match="too large"):
        NodeRecord.parse(raw, now=NOW)


def test_largest_provider_record_accepted() -> None:
    payload = b"x" * 2000
    while True:
        try:
            record = ProviderRecord.create(ALICE, KEY, payload, sequence=1, issued_at=NOW, ttl=60)
            break
        except ValueError:
            payload = payload[:-1]
    assert len(record.raw) == MAX_PROVIDER_RECORD_LEN
    assert ProviderRecord.parse(record.raw, now=NOW) == record


def test_wrong_domain_refused() -> None:
    with pytest.raises(InvalidRecord, match="domain"):
        ProviderRecord.parse(node_record().raw, now=NOW)
    with pytest.raises(InvalidRecord, match="domain"):
        NodeRecord.parse(provider().raw, now=NOW)
    with pytest.raises(InvalidRecord, match="domain"):
        ProviderRecord.parse(signed([KEY, 1, NOW, NOW + 60, b""], "hubnet/offer/1"), now=NOW)


# -- malformed bodies ---------------------------------------------------------------------

GOOD_PROVIDER_BODY = [KEY, 1, NOW, NOW + 60, b"payload"]
GOOD_NODE_BODY = [[[0, "192.0.2.1", 7070]], 1, NOW, NOW + 60]


def test_good_bodies_are_good() -> None:
    """The bodies mutated below parse as they are, so each refusal is the mutation's doing."""
    assert ProviderRecord.parse(signed(GOOD_PROVIDER_BODY), now=NOW).payload == b"payload"
    parsed = NodeRecord.parse(signed(GOOD_NODE_BODY, NODE_DOMAIN), now=NOW)
    assert parsed.addresses == (DirectAddress("192.0.2.1", 7070),)


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1 not msgpack",
        b"",
        msgpack.packb({"key": KEY}),
        msgpack.packb(GOOD_PROVIDER_BODY[:4]),
        msgpack.packb([*GOOD_PROVIDER_BODY, b"extra"]),
        msgpack.packb(GOOD_PROVIDER_BODY) + b"\x00",  # trailing bytes
        msgpack.packb([KEY[:19], 1, NOW, NOW + 60, b""]),
        msgpack.packb([KEY + b"x", 1, NOW, NOW + 60, b""]),
        msgpack.packb([KEY.hex(), 1, NOW, NOW + 60, b""]),
        msgpack.packb([KEY, 1, NOW, NOW + 60, "text payload"]),
        msgpack.packb([KEY, 1, NOW, NOW + 60, None]),
        msgpack.packb([KEY, -1, NOW, NOW + 60, b""]),
        msgpack.packb([KEY, True, NOW, NOW + 60, b""]),
        msgpack.packb([KEY, 1.0, NOW, NOW + 60, b""]),
        msgpack.packb([KEY, MAX_SEQUENCE + 1, NOW, NOW + 60, b""]),
        msgpack.packb([KEY, 1, float(NOW), NOW + 60, b""]),
        msgpack.packb([KEY, 1, NOW, None, b""]),
        msgpack.packb([KEY, 1, NOW, str(NOW + 60), b""]),
    ],
)
def test_malformed_provider_body_refused(body: bytes) -> None:
    with pytest.raises(InvalidRecord):
        ProviderRecord.parse(signed(body), now=NOW)


@pytest.mark.parametrize(
    "addresses",
    [
        [],
        [["192.0.2.1", 7070]] * (MAX_NODE_ADDRESSES + 1),
        "192.0.2.1:7070",
        [["192.0.2.1"]],
        [["192.0.2.1", 7070, 1]],
        [["192.0.2.1", 0]],
        [["192.0.2.1", 65536]],
        [["192.0.2.1", -1]],
        [["192.0.2.1", True]],
        [["192.0.2.1", "7070"]],
        [["", 7070]],
        [["bad host", 7070]],
        [["bad\nhost", 7070]],
        [["h" * 254, 7070]],
        [[b"192.0.2.1", 7070]],
        [{"host": "192.0.2.1", "port": 7070}],
        [[0, "192.0.2.1", 0]],
        [[0, "192.0.2.1"]],
        [[0, "a/b", 7070]],
        [[1, b"k" * 31, "192.0.2.1", 7070, b"t" * 32]],
        [[1, b"k" * 32, "192.0.2.1", 7070]],
        [[2, "192.0.2.1", 7070]],
        [[True, "192.0.2.1", 7070]],
    ],
)
def test_malformed_node_addresses_refused(addresses: object) -> None:
    with pytest.raises(InvalidRecord):
        NodeRecord.parse(signed([addresses, 1, NOW, NOW + 60], NODE_DOMAIN), now=NOW)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x94",
        b"\xc1",
        msgpack.packb([PROVIDER_DOMAIN, b"body", ALICE.public_key]),
        msgpack.packb([PROVIDER_DOMAIN, b"body", ALICE.public_key[:31], b"s" * 64]),
        msgpack.packb([PROVIDER_DOMAIN, b"body", ALICE.public_key, b"s" * 63]),
        msgpack.packb([PROVIDER_DOMAIN, "body", ALICE.public_key, b"s" * 64]),
        msgpack.packb({"domain": PROVIDER_DOMAIN}),
    ],
)
def test_malformed_envelope_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        ProviderRecord.parse(bytes(raw), now=NOW)
    with pytest.raises(InvalidRecord):
        NodeRecord.parse(bytes(raw), now=NOW)


near_valid_values = st.sampled_from([KEY, NOW, NOW + 60, 0, 1, b"", "192.0.2.1", 7070]) | msgpack_values


@FAST
@given(st.lists(near_valid_values, min_size=3, max_size=6) | msgpack_values)
def test_any_signed_body_parses_or_raises_invalid_record(body: object) -> None:
    """Whatever a publisher signs, parsing it either succeeds or raises InvalidRecord."""
    for domain, parse in ((PROVIDER_DOMAIN, ProviderRecord.parse), (NODE_DOMAIN, NodeRecord.parse)):
        try:
            record = parse(signed(body, domain), now=NOW)
        except InvalidRecord:
            continue
        assert record.publisher == ALICE.public_key


@FAST
@given(st.binary(max_size=MAX_PROVIDER_RECORD_LEN + 10))
def test_random_bytes_refused(raw: bytes) -> None:
    with pytest.raises(InvalidRecord):
        ProviderRecord.parse(raw, now=NOW)
    with pytest.raises(InvalidRecord):
        NodeRecord.parse(raw, now=NOW)
