"""dht.messages: the signed datagram codec, and its refusal of anything else."""

from __future__ import annotations

import time

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
    NONCE_LEN,
    TOKEN_LEN,
    TXID_LEN,
    AddProvider,
    Contact,
    Datagram,
    DialBack,
    Dialed,
    DialMe,
    DialOutcome,
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
    encoded_size,
    padding_for,
)
from hubnet.dht.records import MAX_PROVIDER_RECORD_LEN, ProviderRecord
from hubnet.identity.keys import PUBLIC_KEY_LEN, Identity
from hubnet.identity.records import SignedRecord
from tests.strategies import msgpack_values

FAST = settings(max_examples=200, deadline=None, derandomize=True)
ALICE = Identity.from_seed(b"a" * 32)
MALLORY = Identity.from_seed(b"m" * 32)
TXID = b"t" * TXID_LEN
SENT = 1_700_000_000
TOKEN = b"k" * TOKEN_LEN
TAIL = [SENT, b"", b""]  # sent_at, token, padding: the fields version 2 added

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
    st.builds(DialMe, st.binary(min_size=NONCE_LEN, max_size=NONCE_LEN), st.integers(1, 65535)),
    st.builds(Dialed, hosts, st.integers(1, 65535), st.sampled_from(DialOutcome)),
    st.builds(DialBack, st.binary(min_size=NONCE_LEN, max_size=NONCE_LEN)),
)
REQUESTS = (Ping, FindNode, GetProviders, AddProvider, PutNode, GetNode, DialMe, DialBack)
ALL_KINDS = {*REQUESTS, Pong, Nodes, Providers, Stored, NodeFound, Dialed}


def valid_datagram(message: Message | None = None) -> bytes:
    contact = Contact(MALLORY.public_key, "192.0.2.7", 7070)
    return encode(ALICE, TXID, message or Nodes((contact,)), serving=True, sent_at=SENT)


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
@given(
    messages,
    st.binary(min_size=TXID_LEN, max_size=TXID_LEN),
    st.booleans(),
    st.integers(0, 2**63 - 1),
    st.sampled_from([b"", TOKEN]),
    st.integers(0, 1500),
)
def test_every_message_round_trips(
    message: Message, txid: bytes, serving: bool, sent_at: int, token: bytes, padding: int
) -> None:
    data = encode(ALICE, txid, message, serving=serving, sent_at=sent_at, token=token, padding=padding)
    assert len(data) <= MAX_DATAGRAM
    assert len(data) == encoded_size(message, serving=serving, sent_at=sent_at, token=token, padding=padding)
    datagram = decode(data)
    assert datagram == Datagram(txid, message, ALICE.public_key, serving, sent_at, token)
    assert datagram.is_request == isinstance(message, REQUESTS)


@FAST
@given(messages, st.integers(0, 4000), st.sampled_from([b"", TOKEN]))
def test_padding_makes_a_datagram_just_as_large_as_asked(message: Message, size: int, token: bytes) -> None:
    padding = padding_for(message, size, serving=True, sent_at=SENT, token=token)
    data = encode(ALICE, TXID, message, serving=True, sent_at=SENT, token=token, padding=padding)
    assert len(data) >= size
    assert padding == 0 or len(data) <= size + 2  # a length header may grow by a byte or two


def test_sent_at_defaults_to_the_system_clock() -> None:
    before = int(time.time())
    assert before <= decode(encode(ALICE, TXID, Ping(), serving=True)).sent_at <= int(time.time())


def test_a_token_is_empty_or_full_length() -> None:
    with pytest.raises(ValueError, match="token"):
        encode(ALICE, TXID, Ping(), serving=True, token=b"short")


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
    assert decode(encode(ALICE, TXID, reply, serving=True, token=TOKEN)).message == reply


def test_encoding_an_oversized_datagram_is_a_local_error() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode(ALICE, TXID, AddProvider(b"x" * MAX_DATAGRAM), serving=True)


# -- refusals -----------------------------------------------------------------------------


def test_oversized_datagram_refused() -> None:
    with pytest.raises(InvalidMessage, match="too large"):
        decode(valid_datagram() + b"\x00" * (MAX_DATAGRAM + 1))
    big = signed_body([TXID, 7, [b"x" * MAX_DATAGRAM], True, *TAIL])
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
    body = bytes(msgpack.packb([TXID, 1, [], True, *TAIL]))
    assert DATAGRAM_DOMAIN == "hubnet/dht/2"
    assert decode(SignedRecord.sign(ALICE, DATAGRAM_DOMAIN, body).encode()).message == Ping()
    for domain in ("hubnet/provider/1", "hubnet/node/1", "hubnet/dht/1", "hubnet/dht/3"):
        with pytest.raises(InvalidMessage, match="domain"):
            decode(SignedRecord.sign(ALICE, domain, body).encode())


CONTACT = Contact(MALLORY.public_key, "192.0.2.7", 7070).to_wire()


@pytest.mark.parametrize(
    "body",
    [
        [TXID, 1, [], True, SENT, b""],  # six fields
        [TXID, 1, [], True, *TAIL, b""],  # eight
        [TXID, 1, [], True],  # version 1's four
        {"txid": TXID},
        [TXID[:7], 1, [], True, *TAIL],
        [TXID + b"x", 1, [], True, *TAIL],
        [TXID.decode(), 1, [], True, *TAIL],
        [TXID, 1, [], 1, *TAIL],  # serving not a bool
        [TXID, 1, {}, True, *TAIL],
        [TXID, 0, [], True, *TAIL],
        [TXID, 12, [], True, *TAIL],  # DialMe without fields
        [TXID, "1", [], True, *TAIL],
        [TXID, None, [], True, *TAIL],
        [TXID, 1, [b"extra"], True, *TAIL],
        [TXID, 3, [], True, *TAIL],
        [TXID, 3, [b"x" * 19], True, *TAIL],
        [TXID, 3, ["x" * 20], True, *TAIL],
        [TXID, 4, [[CONTACT] * (MAX_CONTACTS + 1)], True, *TAIL],
        [TXID, 4, [[CONTACT[:2]]], True, *TAIL],
        [TXID, 4, [[[b"k" * 31, "192.0.2.7", 7070]]], True, *TAIL],
        [TXID, 4, [[[b"k" * 32, "bad host", 7070]]], True, *TAIL],
        [TXID, 4, [[[b"k" * 32, "192.0.2.7", 0]]], True, *TAIL],
        [TXID, 4, [[[b"k" * 32, "192.0.2.7", 70000]]], True, *TAIL],
        [TXID, 4, [[[b"k" * 32, b"192.0.2.7", 7070]]], True, *TAIL],
        [TXID, 4, [CONTACT], True, *TAIL],
        [TXID, 5, [b"k" * 20, -1], True, *TAIL],
        [TXID, 5, [b"k" * 20, 2**32], True, *TAIL],
        [TXID, 5, [b"k" * 20, False], True, *TAIL],
        [TXID, 5, [b"k" * 20], True, *TAIL],
        [TXID, 6, [[b"r"] * (MAX_RECORDS_PER_REPLY + 1), 7, []], True, *TAIL],
        [TXID, 6, [["r"], 1, []], True, *TAIL],
        [TXID, 6, [b"r", 1, []], True, *TAIL],
        [TXID, 6, [[], -1, []], True, *TAIL],
        [TXID, 7, ["record"], True, *TAIL],
        [TXID, 7, [None], True, *TAIL],
        [TXID, 8, [1, ""], True, *TAIL],
        [TXID, 8, [True, b"reason"], True, *TAIL],
        [TXID, 8, [False, "r" * (MAX_REASON_CHARS + 1)], True, *TAIL],
        [TXID, 9, [123], True, *TAIL],
        [TXID, 10, [b"k" * 20], True, *TAIL],
        [TXID, 11, ["record", []], True, *TAIL],
        [TXID, 11, [None, None], True, *TAIL],
        [TXID, 12, [b"n" * NONCE_LEN], True, *TAIL],  # DialMe without its port
        [TXID, 12, [b"n" * (NONCE_LEN - 1), 7070], True, *TAIL],
        [TXID, 12, [b"n" * NONCE_LEN, 0], True, *TAIL],
        [TXID, 12, [b"n" * NONCE_LEN, 65536], True, *TAIL],
        [TXID, 12, [b"n" * NONCE_LEN, True], True, *TAIL],
        [TXID, 12, ["n" * NONCE_LEN, 7070], True, *TAIL],
        [TXID, 13, ["192.0.2.7", 7070, 3], True, *TAIL],  # no such outcome
        [TXID, 13, ["192.0.2.7", 7070, True], True, *TAIL],
        [TXID, 13, ["192.0.2.7", 7070, "1"], True, *TAIL],
        [TXID, 13, ["bad host", 7070, 1], True, *TAIL],
        [TXID, 13, ["h" * 254, 7070, 1], True, *TAIL],
        [TXID, 13, [b"192.0.2.7", 7070, 1], True, *TAIL],
        [TXID, 13, ["192.0.2.7", 0, 1], True, *TAIL],
        [TXID, 13, ["192.0.2.7", 7070], True, *TAIL],
        [TXID, 14, [b"n" * (NONCE_LEN + 1)], True, *TAIL],
        [TXID, 14, [], True, *TAIL],
        [TXID, 15, [], True, *TAIL],
        [TXID, 1, [], True, -1, b"", b""],
        [TXID, 1, [], True, 2**63, b"", b""],
        [TXID, 1, [], True, True, b"", b""],
        [TXID, 1, [], True, "1700000000", b"", b""],
        [TXID, 1, [], True, SENT, b"k" * 7, b""],
        [TXID, 1, [], True, SENT, b"k" * 9, b""],
        [TXID, 1, [], True, SENT, "k" * 8, b""],
        [TXID, 1, [], True, SENT, None, b""],
        [TXID, 1, [], True, SENT, b"", ""],
        [TXID, 1, [], True, SENT, b"", None],
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
    """The msgpack body `[txid, kind, fields, serving, sent_at, token, padding]` that `encode`
    signs, as Python values."""
    data = encode(ALICE, TXID, message, serving=serving, sent_at=SENT, token=TOKEN, padding=3)
    body = msgpack.unpackb(msgpack.unpackb(data)[1])
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
        again = decode(
            encode(
                ALICE,
                datagram.txid,
                datagram.message,
                serving=datagram.serving,
                sent_at=datagram.sent_at,
                token=datagram.token,
            )
        )
        assert again == datagram
