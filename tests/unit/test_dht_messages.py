"""dht.messages: the signed datagram codec, and its refusal of anything else."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from hubnet.dht.ids import ID_LEN, node_id
from hubnet.dht.messages import (
    DATAGRAM_DOMAIN,
    MAX_CONTACTS,
    MAX_DATAGRAM,
    MAX_REASON_CHARS,
    MAX_RECORDS_PER_REPLY,
    TXID_LEN,
    AddProvider,
    Contact,
    Datagram,
    FindNode,
    GetNode,
    GetProviders,
    InvalidMessage,
    Message,
    NodeFound,
    Nodes,
    Ping,
    Pong,
    Providers,
    PutNode,
    Stored,
    decode,
    encode,
)
from hubnet.dht.records import MAX_PROVIDER_RECORD_LEN, ProviderRecord
from hubnet.identity.keys import PUBLIC_KEY_LEN, Identity
from hubnet.identity.records import SignedRecord
from tests.strategies import msgpack_values

FAST = settings(max_examples=200, deadline=None, derandomize=True)
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
TXID = b"t" * TXID_LEN

# -- strategies ---------------------------------------------------------------------------

ids = st.binary(min_size=ID_LEN, max_size=ID_LEN)
keys = st.binary(min_size=PUBLIC_KEY_LEN, max_size=PUBLIC_KEY_LEN)
hosts = st.text(st.characters(blacklist_categories=("C", "Z")), min_size=1, max_size=30)
contacts = st.builds(Contact, keys, hosts, st.integers(1, 65535))
contact_lists = st.lists(contacts, max_size=MAX_CONTACTS).map(tuple)
records = st.binary(max_size=500)
counts = st.integers(0, 2**32 - 1)

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping),
    st.builds(Pong),
    st.builds(FindNode, ids),
    st.builds(GetProviders, ids, counts),
    st.builds(AddProvider, records),
    st.builds(PutNode, records),
    st.builds(GetNode, keys),
    st.builds(Nodes, contact_lists),
    st.builds(Providers, st.lists(records, max_size=MAX_RECORDS_PER_REPLY).map(tuple), counts, contact_lists),
    st.builds(Stored, st.booleans(), st.text(max_size=MAX_REASON_CHARS)),
    st.builds(NodeFound, st.none() | records, contact_lists),
)
REQUESTS = (Ping, FindNode, GetProviders, AddProvider, PutNode, GetNode)
ALL_KINDS = {*REQUESTS, Pong, Nodes, Providers, Stored, NodeFound}


def valid_datagram(message: Message | None = None) -> bytes:
    contact = Contact(MALLORY.public_key, "192.0.2.7", 7070)
    return encode(ALICE, TXID, message or Nodes((contact,)), serving=True)


def signed_body(body: object, identity: Identity = ALICE) -> bytes:
    return SignedRecord.sign(identity, DATAGRAM_DOMAIN, bytes(msgpack.packb(body))).encode()


def decodes_or_refuses(data: bytes) -> Datagram | None:
    """decode(data), or None if it raised InvalidMessage (any other exception propagates)."""
    try:
        return decode(data)
    except InvalidMessage:
        return None


# -- round trips --------------------------------------------------------------------------


@FAST
@given(messages, st.binary(min_size=TXID_LEN, max_size=TXID_LEN), st.booleans())
def test_every_message_round_trips(message: Message, txid: bytes, serving: bool) -> None:
    data = encode(ALICE, txid, message, serving=serving)
    assert len(data) <= MAX_DATAGRAM
    datagram = decode(data)
    assert datagram == Datagram(txid, message, ALICE.public_key, serving)
    assert datagram.is_request == isinstance(message, REQUESTS)


def test_strategy_covers_every_kind() -> None:
    seen: set[type] = set()

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(messages)
    def collect(message: Message) -> None:
        seen.add(type(message))

    collect()
    assert seen == ALL_KINDS


def test_contact_identity_and_wire_form() -> None:
    contact = Contact(ALICE.public_key, "192.0.2.1", 7070)
    assert contact.id == node_id(ALICE.public_key)
    assert contact.address == ("192.0.2.1", 7070)
    assert Contact.from_wire(contact.to_wire()) == contact
    assert contact != Contact(ALICE.public_key, "192.0.2.1", 7071)
    assert contact != Contact(MALLORY.public_key, "192.0.2.1", 7070)
    assert len({contact, Contact(ALICE.public_key, "192.0.2.1", 7070)}) == 1


def test_largest_reply_fits_in_a_datagram() -> None:
    """MAX_RECORDS_PER_REPLY records of the largest size and MAX_CONTACTS IPv6 contacts fit."""
    payload = b"x" * MAX_PROVIDER_RECORD_LEN
    while True:
        try:
            record = ProviderRecord.create(
                ALICE, bytes(ID_LEN), payload, sequence=2**63 - 1, issued_at=0, ttl=9
            )
            break
        except ValueError:
            payload = payload[:-1]
    assert len(record.raw) == MAX_PROVIDER_RECORD_LEN
    host = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    full = tuple(Contact(bytes([i]) * 32, host, 65535) for i in range(MAX_CONTACTS))
    reply = Providers((record.raw,) * MAX_RECORDS_PER_REPLY, 2**32 - 1, full)
    assert decode(encode(ALICE, TXID, reply, serving=True)).message == reply


def test_encoding_an_oversized_datagram_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(ALICE, TXID, AddProvider(b"x" * MAX_DATAGRAM), serving=True)


# -- refusals -----------------------------------------------------------------------------


def test_oversized_datagram_refused() -> None:
    with pytest.raises(InvalidMessage, match="too large"):
        decode(valid_datagram() + b"\x00" * (MAX_DATAGRAM + 1))
    big = signed_body([TXID, 7, [b"x" * MAX_DATAGRAM], True])
    assert len(big) > MAX_DATAGRAM
    with pytest.raises(InvalidMessage):
        decode(big)


def test_resigned_by_another_key_refused() -> None:
    domain, body, public_key, _ = msgpack.unpackb(valid_datagram(), raw=False)
    assert public_key == ALICE.public_key
    signature = MALLORY.sign(DATAGRAM_DOMAIN.encode() + b"\x00" + body)
    forged = msgpack.packb([domain, body, public_key, signature])
    with pytest.raises(InvalidMessage, match="signature"):
        decode(bytes(forged))
    # Signed by Mallory under his own key, the same body is his datagram, not Alice's.
    assert decode(SignedRecord.sign(MALLORY, DATAGRAM_DOMAIN, body).encode()).sender == MALLORY.public_key


def test_other_domains_refused() -> None:
    body = bytes(msgpack.packb([TXID, 1, [], True]))
    assert decode(SignedRecord.sign(ALICE, DATAGRAM_DOMAIN, body).encode()).message == Ping()
    for domain in ("hubnet/provider/1", "hubnet/node/1", "hubnet/dht/2"):
        with pytest.raises(InvalidMessage, match="domain"):
            decode(SignedRecord.sign(ALICE, domain, body).encode())


CONTACT = Contact(MALLORY.public_key, "192.0.2.7", 7070).to_wire()


@pytest.mark.parametrize(
    "body",
    [
        [TXID, 1, []],  # three fields
        [TXID, 1, [], True, 0],  # five
        {"txid": TXID},
        [TXID[:7], 1, [], True],
        [TXID + b"x", 1, [], True],
        [TXID.decode(), 1, [], True],
        [TXID, 1, [], 1],  # serving not a bool
        [TXID, 1, {}, True],
        [TXID, 0, [], True],
        [TXID, 12, [], True],
        [TXID, "1", [], True],
        [TXID, None, [], True],
        [TXID, 1, [b"extra"], True],
        [TXID, 3, [], True],
        [TXID, 3, [b"x" * 19], True],
        [TXID, 3, ["x" * 20], True],
        [TXID, 4, [[CONTACT] * (MAX_CONTACTS + 1)], True],
        [TXID, 4, [[CONTACT[:2]]], True],
        [TXID, 4, [[[b"k" * 31, "192.0.2.7", 7070]]], True],
        [TXID, 4, [[[b"k" * 32, "bad host", 7070]]], True],
        [TXID, 4, [[[b"k" * 32, "192.0.2.7", 0]]], True],
        [TXID, 4, [[[b"k" * 32, "192.0.2.7", 70000]]], True],
        [TXID, 4, [[[b"k" * 32, b"192.0.2.7", 7070]]], True],
        [TXID, 4, [CONTACT], True],
        [TXID, 5, [b"k" * 20, -1], True],
        [TXID, 5, [b"k" * 20, 2**32], True],
        [TXID, 5, [b"k" * 20, False], True],
        [TXID, 5, [b"k" * 20], True],
        [TXID, 6, [[b"r"] * (MAX_RECORDS_PER_REPLY + 1), 7, []], True],
        [TXID, 6, [["r"], 1, []], True],
        [TXID, 6, [b"r", 1, []], True],
        [TXID, 6, [[], -1, []], True],
        [TXID, 7, ["record"], True],
        [TXID, 7, [None], True],
        [TXID, 8, [1, ""], True],
        [TXID, 8, [True, b"reason"], True],
        [TXID, 8, [False, "r" * (MAX_REASON_CHARS + 1)], True],
        [TXID, 9, [123], True],
        [TXID, 10, [b"k" * 20], True],
        [TXID, 11, ["record", []], True],
        [TXID, 11, [None, None], True],
    ],
)
def test_malformed_bodies_refused(body: object) -> None:
    with pytest.raises(InvalidMessage):
        decode(signed_body(body))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x94",
        b"\xc1",
        b"\x94\xac" + DATAGRAM_DOMAIN.encode(),
        bytes(msgpack.packb([DATAGRAM_DOMAIN, b"body", ALICE.public_key])),
        bytes(msgpack.packb([DATAGRAM_DOMAIN, b"\xc1", ALICE.public_key, b"s" * 64])),
    ],
)
def test_garbage_refused(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode(data)


def test_signed_garbage_body_refused() -> None:
    with pytest.raises(InvalidMessage, match="msgpack"):
        decode(SignedRecord.sign(ALICE, DATAGRAM_DOMAIN, b"\xc1\xc1").encode())


def test_truncations_refused() -> None:
    data = valid_datagram()
    for length in range(len(data)):
        with pytest.raises(InvalidMessage):
            decode(data[:length])


@FAST
@given(st.binary(max_size=MAX_DATAGRAM + 16))
def test_random_bytes_refused(data: bytes) -> None:
    with pytest.raises(InvalidMessage):
        decode(data)


@FAST
@given(messages, st.data())
def test_mutated_datagrams_refused(message: Message, data: st.DataObject) -> None:
    original = valid_datagram(message)
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(mutated)))
        match data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"])):
            case "flip" if position < len(mutated):
                mutated[position] ^= 1 << data.draw(st.integers(0, 7))
            case "set" if position < len(mutated):
                mutated[position] = data.draw(st.integers(0, 255))
            case "insert":
                mutated[position:position] = data.draw(st.binary(min_size=1, max_size=8))
            case "delete":
                del mutated[position : position + data.draw(st.integers(1, 8))]
            case "truncate":
                del mutated[position:]
    datagram = decodes_or_refuses(bytes(mutated))
    # Only a "mutation" that changed nothing (a byte set to itself) can decode, and only as itself.
    assert datagram is None or (bytes(mutated) == original and datagram == decode(original))


@FAST
@given(messages, st.binary(min_size=1, max_size=PUBLIC_KEY_LEN))
def test_sender_key_swapped_refused(message: Message, prefix: bytes) -> None:
    domain, body, public_key, signature = msgpack.unpackb(valid_datagram(message), raw=False)
    other = (prefix + public_key)[:PUBLIC_KEY_LEN]
    if other == public_key:
        other = MALLORY.public_key
    with pytest.raises(InvalidMessage):
        decode(bytes(msgpack.packb([domain, body, other, signature])))


field_values = (
    st.sampled_from([b"k" * 20, b"k" * 32, 0, 7, True, "", "reason", None, [], CONTACT, [CONTACT]])
    | msgpack_values
)


def wire_body(message: Message, serving: bool = True) -> list[object]:
    """The msgpack body `[txid, kind, fields, serving]` that `encode` signs, as Python values."""
    body = msgpack.unpackb(msgpack.unpackb(encode(ALICE, TXID, message, serving=serving))[1])
    assert isinstance(body, list)
    return body


def mutate(data: st.DataObject, value: object) -> object:
    """`value` with one element somewhere inside it replaced, dropped or duplicated."""
    descend = data.draw(st.sampled_from([True, True, False]))
    if isinstance(value, list) and value and descend:
        value = list(value)
        index = data.draw(st.integers(0, len(value) - 1))
        match data.draw(st.sampled_from(["inside", "inside", "drop", "duplicate"])):
            case "inside":
                value[index] = mutate(data, value[index])
            case "drop":
                del value[index]
            case "duplicate":
                value.insert(index, value[index])
        return value
    return data.draw(field_values)


@FAST
@given(messages, st.data())
def test_any_correctly_signed_body_decodes_or_raises_invalid_message(
    message: Message, data: st.DataObject
) -> None:
    """A peer can sign anything it likes: decode returns a message or raises InvalidMessage.

    The bodies are valid ones with a part replaced (so all the field checks are reached),
    or any msgpack value at all.
    """
    match data.draw(st.sampled_from(["mutated"] * 8 + ["valid", "anything"])):
        case "mutated":
            body = mutate(data, wire_body(message))
        case "valid":
            body = wire_body(message)
        case _:
            body = data.draw(msgpack_values)
    datagram = decodes_or_refuses(signed_body(body))
    event("decoded" if datagram is not None else "refused")
    if datagram is not None:
        assert datagram.sender == ALICE.public_key
        assert type(datagram.message) in ALL_KINDS
        # What decodes re-encodes to a datagram that decodes the same.
        again = decode(encode(ALICE, datagram.txid, datagram.message, serving=datagram.serving))
        assert again == datagram
