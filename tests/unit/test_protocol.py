"""Tests of node.protocol: the job protocol codec, the JobConnection machine and its table."""

from __future__ import annotations

import contextlib
import itertools
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError, TransportError
from hubnet.node.protocol import (
    INITIAL,
    MAX_ARGS,
    MAX_ARGS_BYTES,
    MAX_ATTESTATION_BYTES,
    MAX_CALL_ATTESTATIONS,
    MAX_DATA,
    MAX_EXIT_CODE,
    MAX_MESSAGE,
    MAX_PEERS,
    MAX_RECEIPT,
    MAX_RELAYS,
    MAX_SERVICES,
    MAX_SIGNAL,
    MAX_STDIN_WINDOW,
    MAX_TEXT,
    MAX_TOKEN,
    SERVICE_ID_LEN,
    STDIN_WINDOW,
    TRANSITIONS,
    Accept,
    BalanceReply,
    Call,
    Cancel,
    ConnectionClosed,
    Credit,
    Deposit,
    Event,
    Exit,
    GetBalance,
    GetPeers,
    GetStatus,
    JobConnection,
    Kind,
    ListServices,
    Message,
    MessageDecoder,
    PeerInfo,
    Peers,
    ReachStatus,
    Receipt,
    Reject,
    Role,
    ServiceInfo,
    Services,
    Start,
    State,
    StatusReply,
    Stderr,
    Stdin,
    StdinEnd,
    Stdout,
    Terms,
    Usage,
    decode,
    encode,
)

FAST = settings(max_examples=100, deadline=None)
SID = bytes(range(SERVICE_ID_LEN))
LOAD = [0.5, 0.25, 0.125]

service_ids = st.binary(min_size=SERVICE_ID_LEN, max_size=SERVICE_ID_LEN)
texts = st.text(max_size=40)
counts = st.integers(min_value=0, max_value=(1 << 63) - 1)
floats = st.floats(allow_nan=False)
data = st.binary(max_size=300)

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Call: st.builds(
        Call,
        service_ids,
        st.lists(texts, max_size=12).map(tuple),
        st.lists(st.binary(max_size=MAX_ATTESTATION_BYTES), max_size=MAX_CALL_ATTESTATIONS).map(tuple),
        st.none() | counts,
        st.none() | st.text(max_size=200),
    ),
    ListServices: st.just(ListServices()),
    GetBalance: st.just(GetBalance()),
    BalanceReply: st.builds(BalanceReply, counts, counts),
    GetStatus: st.just(GetStatus()),
    Start: st.builds(Start, counts),
    Stdin: st.builds(Stdin, data),
    StdinEnd: st.just(StdinEnd()),
    Cancel: st.just(Cancel()),
    Accept: st.builds(Accept, texts, st.builds(Terms, counts, counts, counts, counts)),
    Credit: st.builds(Credit, counts),
    Receipt: st.builds(Receipt, st.binary(max_size=MAX_RECEIPT)),
    Reject: st.builds(Reject, texts, texts, st.none() | counts),
    Stdout: st.builds(Stdout, data),
    Stderr: st.builds(Stderr, data),
    Exit: st.one_of(
        st.tuples(st.integers(min_value=0, max_value=MAX_EXIT_CODE), st.none()),
        st.tuples(st.none(), st.integers(min_value=1, max_value=MAX_SIGNAL)),
    ).flatmap(
        lambda ended: st.builds(
            Exit,
            st.just(ended[0]),
            st.just(ended[1]),
            st.none() | texts,
            st.builds(Usage, counts, counts, counts, counts, counts),
            counts,
        )
    ),
    Services: st.builds(
        Services,
        st.lists(
            st.builds(
                ServiceInfo,
                texts,
                service_ids,
                texts,
                texts,
                texts,
                st.tuples(counts, counts, counts),
                st.floats(min_value=0.01, max_value=1000),
            ),
            max_size=6,
        ).map(tuple),
    ),
    StatusReply: st.builds(
        StatusReply,
        counts,
        counts,
        counts,
        st.tuples(floats, floats, floats),
        st.builds(ReachStatus, texts, texts, texts, counts, st.lists(texts, max_size=MAX_RELAYS).map(tuple)),
        st.booleans(),
    )
    | st.builds(StatusReply, counts, counts, counts, st.tuples(floats, floats, floats)),
    GetPeers: st.just(GetPeers()),
    Deposit: st.builds(Deposit, st.text(max_size=200)),
    Peers: st.builds(
        Peers,
        st.lists(
            st.builds(
                PeerInfo,
                st.binary(min_size=32, max_size=32),
                st.text(max_size=40),
                st.integers(min_value=1, max_value=65535),
            ),
            max_size=6,
        ).map(tuple),
    ),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(typing.get_args(Message))


# --- Codec -----------------------------------------------------------------------------------------------

KIND_OF_DATA = {Stdin: Kind.STDIN, Stdout: Kind.STDOUT, Stderr: Kind.STDERR}


@FAST
@given(messages)
def test_round_trip(message: Message) -> None:
    wire = encode(message)
    assert decode(wire) == message
    kind, fields = msgpack.unpackb(wire)
    assert kind in set(Kind) and isinstance(fields, list)


@FAST
@given(
    st.sampled_from([Stdin, Stdout, Stderr]),
    st.sampled_from([0, 1, 255, 256, 65535, 65536, MAX_DATA]).flatmap(
        lambda edge: st.integers(min_value=max(edge - 2, 0), max_value=min(edge + 2, MAX_DATA))
    ),
)
def test_data_messages_are_encoded_as_msgpack_packs_them(
    kind: type[Stdin | Stdout | Stderr], size: int
) -> None:
    """Data messages skip packb's copies but not its format: the same bytes, at every bin
    size boundary."""
    message = kind(bytes(i % 251 for i in range(size)))
    assert encode(message) == msgpack.packb([int(KIND_OF_DATA[kind]), [message.data]])


@FAST
@given(st.lists(messages, max_size=8), st.lists(st.integers(min_value=0), max_size=10))
def test_decoder_reassembles_any_split(batch: list[Message], cuts: list[int]) -> None:
    wire = b"".join(encode(m) for m in batch)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    decoder = MessageDecoder()
    got = []
    for start, end in itertools.pairwise(points):
        decoder.feed(wire[start:end])
        while (message := decoder.next_message()) is not None:
            got.append(message)
    assert got == batch
    assert decoder.buffered == 0


def test_a_stream_of_data_messages_never_goes_through_msgpacks_buffer() -> None:
    """The short way is taken for data messages however reads cut them, once the decoder is
    between messages: else every byte of a stream would be copied twice more."""
    messages = [Stdout(bytes([i]) * size) for i, size in enumerate([70_000, 1, 0, 300, 65_536, 5])]
    wire = b"".join(encode(m) for m in messages)
    decoder = MessageDecoder()
    got = []
    for start in range(0, len(wire), 65_519):  # a Noise frame's payload at a time
        decoder.feed(wire[start : start + 65_519])
        while (message := decoder.next_message()) is not None:
            got.append(message)
    assert got == messages and decoder.buffered == 0
    assert decoder._unpacker_fed == 0


def test_a_read_of_many_data_messages_gives_them_one_at_a_time() -> None:
    """Taken as asked for, each counted until it is: the rest stays bytes, not messages."""
    wires = [encode(Stdout(bytes([i % 256]))) for i in range(1000)]
    decoder = MessageDecoder()
    decoder.feed(b"".join(wires))
    for i in range(len(wires)):
        assert decoder.next_message() == Stdout(bytes([i % 256]))
        assert decoder.buffered == sum(len(w) for w in wires[i + 1 :])
    assert decoder.next_message() is None


def test_decoder_counts_buffered_bytes() -> None:
    wire = encode(Stdin(b"abc"))
    decoder = MessageDecoder()
    decoder.feed(wire + wire[:2])
    assert decoder.buffered == len(wire) + 2
    assert decoder.next_message() == Stdin(b"abc")
    assert decoder.buffered == 2
    assert decoder.next_message() is None


def test_buffered_counts_a_partial_message_after_a_read_attempt() -> None:
    # msgpack's Unpacker.tell() moves past a partial object when unpack() runs out of data, so
    # `buffered` must not be computed from tell() alone.
    wire = encode(Call(SID, ("a", "b")))
    decoder = MessageDecoder()
    decoder.feed(wire[:5])
    assert decoder.next_message() is None
    assert decoder.buffered == 5
    decoder.feed(wire[5:])
    assert decoder.buffered == len(wire)
    assert decoder.next_message() == Call(SID, ("a", "b"))
    assert decoder.buffered == 0
    conn = JobConnection(Role.SERVER)
    conn.receive_data(wire[:3])
    assert conn.next_event() is None
    assert conn.buffered == 3


def test_decode_wants_exactly_one_message() -> None:
    wire = encode(Start())
    for bad in (b"", wire + wire, wire[:-1] if len(wire) > 1 else b"\x92"):
        with pytest.raises(RemoteProtocolError):
            decode(bad)


def _consume(raw: bytes, max_message: int = MAX_MESSAGE) -> list[Message]:
    """Feed `raw` to a decoder and take messages until it wants more; only RemoteProtocolError may escape."""
    decoder = MessageDecoder(max_message)
    decoder.feed(raw)
    got: list[Message] = []
    for _ in range(len(raw) + 1):  # every message consumes at least one byte: no unbounded loop
        message = decoder.next_message()
        if message is None:
            return got
        got.append(message)
    raise AssertionError("decoder kept producing messages without consuming input")


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_remote_errors(raw: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _consume(raw)


msgpack_objects = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=30,
)
# Mostly well-formed envelopes with a real kind, so that every field decoder gets garbage.
envelopes = st.tuples(
    st.sampled_from([int(k) for k in Kind]) | st.integers(min_value=-5, max_value=300),
    st.lists(msgpack_objects, max_size=6),
).map(list)


@settings(max_examples=300, deadline=None)
@given(msgpack_objects | envelopes)
def test_random_msgpack_objects_only_raise_remote_errors(obj: Any) -> None:
    raw = msgpack.packb(obj, use_bin_type=True)
    try:
        [message] = _consume(raw)
    except RemoteProtocolError:
        return
    # Whatever was accepted must be a real message that survives a round trip.
    assert decode(encode(message)) == message


def test_deep_nesting_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError):
        _consume(b"\x91" * 5000 + b"\xc0")


def test_oversized_bin_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        decode(encode(Stdin(bytes(MAX_MESSAGE + 1))))
    assert decode(encode(Stdin(bytes(MAX_MESSAGE)))) == Stdin(bytes(MAX_MESSAGE))


def test_feeding_past_the_buffer_limit_is_refused() -> None:
    decoder = MessageDecoder()
    header = b"\xc6" + (MAX_MESSAGE).to_bytes(4, "big")  # bin32 that never finishes
    decoder.feed(header + bytes(MAX_MESSAGE - 10))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(bytes(MAX_MESSAGE + 100))


def test_small_limit_is_honoured() -> None:
    assert _consume(encode(Stdout(bytes(64))), max_message=64) == [Stdout(bytes(64))]
    with pytest.raises(RemoteProtocolError):
        _consume(encode(Stdout(bytes(65))), max_message=64)
    with pytest.raises(RemoteProtocolError):
        _consume(msgpack.packb([int(Kind.CALL), [SID, ["a" * 65]]]), max_message=64)


def _raw(kind: int, fields: list[Any]) -> bytes:
    return bytes(msgpack.packb([kind, fields], use_bin_type=True))


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(_raw(Kind.CALL, [SID[:-1], []]), id="service-id-15"),
        pytest.param(_raw(Kind.CALL, [SID + b"x", []]), id="service-id-17"),
        pytest.param(_raw(Kind.CALL, ["0123456789abcdef", []]), id="service-id-str"),
        pytest.param(_raw(Kind.CALL, [SID, ["a"] * (MAX_ARGS + 1)]), id="too-many-args"),
        pytest.param(_raw(Kind.CALL, [SID, ["a" * 40000, "b" * 40000]]), id="args-too-long"),
        pytest.param(_raw(Kind.CALL, [SID, [b"bytes"]]), id="arg-not-str"),
        pytest.param(_raw(Kind.CALL, [SID, "a"]), id="args-not-list"),
        pytest.param(_raw(Kind.CALL, [SID]), id="call-arity"),
        pytest.param(_raw(Kind.STDIN, ["text"]), id="stdin-not-bytes"),
        pytest.param(_raw(Kind.ACCEPT, ["job", [-1, 0, 0, 0]]), id="negative-price"),
        pytest.param(_raw(Kind.ACCEPT, ["job", [True, 0, 0, 0]]), id="bool-price"),
        pytest.param(_raw(Kind.ACCEPT, ["job", [0, 0, 0, 1 << 63]]), id="huge-hold"),
        pytest.param(_raw(Kind.ACCEPT, ["job", [0, 0, 0]]), id="terms-arity"),
        pytest.param(_raw(Kind.ACCEPT, ["job", 0]), id="terms-not-list"),
        pytest.param(_raw(Kind.CREDIT, [-5]), id="negative-credit"),
        pytest.param(_raw(Kind.RECEIPT, [b"r" * (MAX_RECEIPT + 1)]), id="long-receipt"),
        pytest.param(_raw(Kind.RECEIPT, ["text"]), id="receipt-not-bytes"),
        pytest.param(_raw(Kind.REJECT, ["busy", "x" * (MAX_TEXT + 1)]), id="long-reason"),
        pytest.param(_raw(Kind.EXIT, [1 << 31, None, None, [0] * 5, 0]), id="exit-code-range"),
        pytest.param(_raw(Kind.EXIT, [0, None, None, [0] * 4, 0]), id="usage-arity"),
        pytest.param(_raw(Kind.EXIT, [0, None, 5, [0] * 5, 0]), id="error-not-str"),
        pytest.param(_raw(Kind.EXIT, [0.0, None, None, [0] * 5, 0]), id="exit-code-float"),
        pytest.param(_raw(Kind.SERVICES, [[["n", SID, "d"]]]), id="service-entry-arity"),
        pytest.param(_raw(Kind.SERVICES, [[["n", b"short", "d", "a"]]]), id="service-entry-id"),
        pytest.param(_raw(Kind.SERVICES, ["not a list"]), id="services-not-list"),
        pytest.param(_raw(Kind.STATUS_REPLY, [0, 0, 1, [0.1, 0.2]]), id="load-arity"),
        pytest.param(_raw(Kind.STATUS_REPLY, [0, 0, 1, [0, 0, 0]]), id="load-ints"),
        pytest.param(_raw(99, []), id="unknown-kind"),
        pytest.param(_raw(Kind.LIST, {}), id="fields-map"),  # type: ignore[arg-type]
        pytest.param(msgpack.packb([1]), id="no-fields"),
        pytest.param(msgpack.packb([True, []]), id="bool-kind"),
        pytest.param(msgpack.packb({"kind": 1}), id="map"),
        pytest.param(msgpack.packb(None), id="nil"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(msgpack.packb(msgpack.ExtType(1, b"x")), id="ext"),
    ],
)
def test_malformed_fields_are_refused(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(raw)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(
            _raw(Kind.CALL, [SID, ["a"], [b"att"], 5, "cashuB", "later"]),
            Call(SID, ("a",), (b"att",), 5, "cashuB"),
            id="call",
        ),
        pytest.param(
            _raw(Kind.REJECT, ["payment-required", "r", 7, "later"]),
            Reject("payment-required", "r", 7),
            id="reject",
        ),
        pytest.param(_raw(Kind.START, [1 << 22, 2]), Start(1 << 22), id="start"),
        pytest.param(
            _raw(Kind.ACCEPT, ["j", [1, 2, 3, 4, 5], {}]), Accept("j", Terms(1, 2, 3, 4)), id="terms"
        ),
        pytest.param(
            _raw(Kind.EXIT, [0, None, None, [1, 2, 3, 4, 5, 6], 7, "x"]),
            Exit(0, None, None, Usage(1, 2, 3, 4, 5), 7),
            id="usage",
        ),
        pytest.param(
            _raw(Kind.SERVICES, [[["n", SID, "d", "a", "i", [1, 2, 3, 4], 1.5, "new"]]]),
            Services((ServiceInfo("n", SID, "d", "a", "i", (1, 2, 3), 1.5),)),
            id="service-entry",
        ),
        pytest.param(  # from a node older than sandboxes: its services' isolation unknown
            _raw(Kind.SERVICES, [[["n", SID, "d", "a"]]]),
            Services((ServiceInfo("n", SID, "d", "a", ""),)),
            id="service-entry-without-isolation",
        ),
        pytest.param(
            _raw(Kind.PEERS_REPLY, [[[b"k" * 32, "h", 1, "new"]]]),
            Peers((PeerInfo(b"k" * 32, "h", 1),)),
            id="peer-entry",
        ),
        pytest.param(
            _raw(
                Kind.STATUS_REPLY,
                [1, 0, 4, LOAD, ["private", "198.51.100.7:7070", "client", 3, ["r"], [10], "new"], True, 9],
            ),
            StatusReply(
                1,
                0,
                4,
                (0.5, 0.25, 0.125),
                ReachStatus("private", "198.51.100.7:7070", "client", 3, ("r",), (10,)),
                calls=True,
            ),
            id="status-reach",
        ),
        pytest.param(  # from a node older than calls after a status
            _raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["private", "", "client", 3, ["r"], [10]]]),
            StatusReply(1, 0, 4, (0.5, 0.25, 0.125), ReachStatus("private", "", "client", 3, ("r",), (10,))),
            id="status-without-calls",
        ),
        pytest.param(  # from a node older than relay prices
            _raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["private", "", "client", 3, ["r"]]]),
            StatusReply(1, 0, 4, (0.5, 0.25, 0.125), ReachStatus("private", "", "client", 3, ("r",))),
            id="status-reach-without-relay-prices",
        ),
        pytest.param(  # from a node that knows no relays yet
            _raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["public", "", "server", 0]]),
            StatusReply(1, 0, 4, (0.5, 0.25, 0.125), ReachStatus("public", "", "server", 0)),
            id="status-reach-without-relays",
        ),
        pytest.param(  # from a node older than reachability
            _raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD]),
            StatusReply(1, 0, 4, (0.5, 0.25, 0.125)),
            id="status-without-reach",
        ),
    ],
)
def test_fields_a_newer_peer_appends_are_ignored(raw: bytes, message: Message) -> None:
    """The versioning rule of docs/protocol.md: readers take the fields they know."""
    assert decode(raw) == message


@pytest.mark.parametrize(
    "reach",
    [
        pytest.param("private", id="not-an-array"),
        pytest.param(["private", "", "client"], id="too-few-fields"),
        pytest.param(["private", "", "client", -1], id="negative-peers"),
        pytest.param(["private", b"", "client", 1], id="observed-not-text"),
        pytest.param(["private", "", "client", 1, ["r"] * (MAX_RELAYS + 1)], id="too-many-relays"),
        pytest.param(["private", "", "client", 1, [1]], id="relay-not-text"),
        pytest.param(["private", "", "client", 1, ["r"], [1, 2]], id="prices-not-one-per-relay"),
        pytest.param(["private", "", "client", 1, ["r"], [-1]], id="negative-price"),
    ],
)
def test_a_malformed_reach_entry_is_a_protocol_error(reach: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD, reach]))


@pytest.mark.parametrize("calls", [1, 0, "yes", None])
def test_calls_in_a_status_reply_is_a_boolean_or_a_protocol_error(calls: object) -> None:
    with pytest.raises(RemoteProtocolError, match="calls must be a boolean"):
        decode(_raw(Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["public", "", "server", 0], calls]))


def test_a_status_reply_says_calls_only_after_its_reach() -> None:
    with pytest.raises(ValueError, match="follows `reach`"):
        StatusReply(1, 0, 4, (0.5, 0.25, 0.125), calls=True)
    reach = ReachStatus("public", "", "server", 0)
    assert encode(StatusReply(1, 0, 4, LOAD, reach)) == _raw(
        Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["public", "", "server", 0, []]]
    )
    assert encode(StatusReply(1, 0, 4, LOAD, reach, calls=True)) == _raw(
        Kind.STATUS_REPLY, [1, 0, 4, LOAD, ["public", "", "server", 0, []], True]
    )


def test_a_call_without_attestations_keeps_its_short_form() -> None:
    assert encode(Call(SID, ("a",))) == _raw(Kind.CALL, [SID, ["a"]])
    assert decode(_raw(Kind.CALL, [SID, ["a"], []])) == Call(SID, ("a",))


@pytest.mark.parametrize(
    "attestations",
    [
        pytest.param("x", id="not-an-array"),
        pytest.param([b"a"] * (MAX_CALL_ATTESTATIONS + 1), id="too-many"),
        pytest.param([bytes(MAX_ATTESTATION_BYTES + 1)], id="too-long"),
        pytest.param(["text"], id="not-bytes"),
    ],
)
def test_bad_call_attestations_are_refused(attestations: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(_raw(Kind.CALL, [SID, [], attestations]))


@pytest.mark.parametrize(
    ("code", "signal"),
    [
        pytest.param(256, None, id="exit-256"),
        pytest.param(-1, None, id="exit-negative"),
        pytest.param(1 << 40, None, id="exit-huge"),
        pytest.param(None, 0, id="signal-0"),
        pytest.param(None, -128, id="signal-negative"),
        pytest.param(None, MAX_SIGNAL + 1, id="signal-65"),
        pytest.param(0, 9, id="both"),
        pytest.param(None, None, id="neither"),
        pytest.param(True, None, id="exit-bool"),
        pytest.param(0.0, None, id="exit-float"),
        pytest.param(None, "9", id="signal-text"),
    ],
)
def test_an_exit_no_program_can_have_is_refused(code: object, signal: object) -> None:
    """A shell takes status 256 as 0: an Exit out of range must never pass for success."""
    with pytest.raises(RemoteProtocolError, match=r"exit code|signal"):
        decode(_raw(Kind.EXIT, [code, signal, "output-limit", [0, 0, 0, 0, 0], 0]))


def test_field_limits_at_their_boundaries_are_accepted() -> None:
    args = ("a" * (MAX_ARGS_BYTES // MAX_ARGS),) * MAX_ARGS
    assert decode(encode(Call(SID, args))) == Call(SID, args)
    assert decode(encode(Call(SID, ("z" * MAX_ARGS_BYTES,)))) == Call(SID, ("z" * MAX_ARGS_BYTES,))
    assert decode(encode(Reject("busy", "r" * MAX_TEXT))) == Reject("busy", "r" * MAX_TEXT)
    edge = Exit(MAX_EXIT_CODE, None, "timeout", Usage(*([(1 << 63) - 1] * 5)), (1 << 63) - 1)
    assert decode(encode(edge)) == edge
    for ended in ((0, None), (None, 1), (None, MAX_SIGNAL)):
        assert decode(encode(Exit(*ended))) == Exit(*ended)
    # A whole routing table fits: the decoder's array limit must not be below MAX_PEERS.
    peers = Peers((PeerInfo(b"k" * 32, "192.0.2.1", 7070),) * MAX_PEERS)
    assert decode(encode(peers)) == peers


@pytest.mark.parametrize(
    "fields",
    [
        [[[b"short", "h", 1]]],
        [[[b"k" * 32, "h", 0]]],
        [[[b"k" * 32, "h" * 300, 1]]],
        [[[b"k" * 32, "h"]]],
        [[[b"k" * 32, "h", 1]] * (MAX_PEERS + 1)],
    ],
)
def test_malformed_peer_lists_are_refused(fields: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(msgpack.packb([Kind.PEERS_REPLY, fields]))


@pytest.mark.parametrize("fields", [[], [b"cashuB"], [None], ["c" * (MAX_TOKEN + 1)]])
def test_malformed_deposits_are_refused(fields: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(msgpack.packb([Kind.DEPOSIT, fields]))


def test_a_deposit_is_answered_by_a_receipt_or_a_refusal_and_nothing_else() -> None:
    for answer in (Receipt(b"signed"), Reject("token-spent", "already spent")):
        pair = Pair(Deposit("cashuBtoken"))
        pair.deliver(answer)
        assert pair.server.our_state is State.DONE
    with pytest.raises(LocalProtocolError):
        Pair(Deposit("cashuBtoken")).server.send(Services(()))


# --- JobConnection ---------------------------------------------------------------------------------------

EXIT = Exit(0, None, None, Usage(wall_ms=5), 10)
CLIENT_MESSAGES: tuple[Message, ...] = (
    Call(SID, ("-v",)),
    ListServices(),
    GetStatus(),
    GetPeers(),
    Deposit("cashuBtoken"),
    GetBalance(),
    Start(),
    Stdin(b"in"),
    StdinEnd(),
    Cancel(),
)
SERVER_MESSAGES: tuple[Message, ...] = (
    Accept("job", Terms(1, 2, 3, 4)),
    Reject("busy", "try later"),
    Stdout(b"out"),
    Stderr(b"err"),
    Credit(2),
    EXIT,
    Receipt(b"signed"),
    Services((ServiceInfo("espeak", SID, "speech", "text"),)),
    StatusReply(1, 0, 4, (0.5, 0.25, 0.125)),
    Peers((PeerInfo(b"k" * 32, "127.0.0.1", 7070),)),
    BalanceReply(5, 6),
)


def _from_client(message: Message) -> bool:
    return any(type(message) is type(m) for m in CLIENT_MESSAGES)


class Pair:
    """A client and a server JobConnection wired back to back; both must agree on every state."""

    def __init__(self, *prefix: Message) -> None:
        self.client = JobConnection(Role.CLIENT)
        self.server = JobConnection(Role.SERVER)
        for message in prefix:
            self.deliver(message)

    def deliver(self, message: Message) -> None:
        sender, receiver = (self.client, self.server) if _from_client(message) else (self.server, self.client)
        receiver.receive_data(sender.send(message))
        assert receiver.next_event() == message
        assert self.client.states == self.server.states
        assert self.client.stdin_window == self.server.stdin_window

    def close(self, role: Role) -> Event | None:
        """`role` ends its stream: what the other end's machine makes of it."""
        receiver = self.server if role is Role.CLIENT else self.client
        receiver.receive_data(b"")
        return receiver.next_event()


# One way into every state each role can be in, by the messages that lead there.
PATHS: dict[tuple[Role, State], tuple[Message, ...]] = {
    (Role.CLIENT, State.IDLE): (),
    (Role.CLIENT, State.CALLED): (Call(SID),),
    (Role.CLIENT, State.SENDING_STDIN): (Call(SID), Start()),
    (Role.CLIENT, State.STDIN_DONE): (Call(SID), Start(), StdinEnd()),
    (Role.CLIENT, State.CANCELLED): (Call(SID), Cancel()),
    (Role.CLIENT, State.ASKED): (ListServices(),),
    (Role.CLIENT, State.PROBED): (GetStatus(), StatusReply(1, 0, 4, (0.5, 0.25, 0.125))),
    (Role.SERVER, State.WAITING): (),
    (Role.SERVER, State.MUST_ANSWER_CALL): (Call(SID),),
    (Role.SERVER, State.MUST_LIST): (ListServices(),),
    (Role.SERVER, State.MUST_STATUS): (GetStatus(),),
    (Role.SERVER, State.MUST_PEERS): (GetPeers(),),
    (Role.SERVER, State.MUST_DEPOSIT): (Deposit("cashuBtoken"),),
    (Role.SERVER, State.MUST_BALANCE): (GetBalance(),),
    (Role.SERVER, State.RUNNING): (Call(SID), Start(), Stdin(b"in"), Accept("job")),
    (Role.SERVER, State.EXITED): (Call(SID), Accept("job"), EXIT),
    (Role.SERVER, State.DONE): (Call(SID), Reject("busy", "")),
}
_LIVE_STATES = [
    (role, state)
    for role, table in TRANSITIONS.items()
    for state in table
    if state not in (State.CLOSED, State.ERROR)
]


def test_every_live_state_of_the_table_has_a_path() -> None:
    assert sorted(PATHS, key=str) == sorted(_LIVE_STATES, key=str)
    for (role, state), path in PATHS.items():
        assert Pair(*path).client.states[role] is state


def _cases(legal: bool) -> list[Any]:
    cases = []
    for (role, state), path in PATHS.items():
        own = CLIENT_MESSAGES if role is Role.CLIENT else SERVER_MESSAGES
        for message in own:
            if (type(message) in TRANSITIONS[role][state]) is legal:
                cases.append(
                    pytest.param(path, message, id=f"{role.value}-{state.value}-{type(message).__name__}")
                )
    return cases


@pytest.mark.parametrize(("path", "message"), _cases(legal=True))
def test_every_row_of_the_table_is_a_legal_step(path: tuple[Message, ...], message: Message) -> None:
    pair = Pair(*path)
    role = Role.CLIENT if _from_client(message) else Role.SERVER
    state = pair.client.states[role]
    pair.deliver(message)
    assert pair.client.states[role] is TRANSITIONS[role][state][type(message)]


@pytest.mark.parametrize(("path", "message"), _cases(legal=False))
def test_every_illegal_step_is_refused_and_leaves_the_machine_in_error(
    path: tuple[Message, ...], message: Message
) -> None:
    sender_role = Role.CLIENT if _from_client(message) else Role.SERVER
    # Sent by us: refused locally, and nothing works afterwards.
    pair = Pair(*path)
    sender = pair.client if sender_role is Role.CLIENT else pair.server
    with pytest.raises(LocalProtocolError):
        sender.send(message)
    _assert_dead(sender)
    # Received from a peer that broke the rule: refused as the peer's fault, and likewise dead.
    pair = Pair(*path)
    receiver = pair.server if sender_role is Role.CLIENT else pair.client
    receiver.receive_data(encode(message))
    with pytest.raises(RemoteProtocolError):
        receiver.next_event()
    _assert_dead(receiver)


def _assert_dead(conn: JobConnection) -> None:
    assert conn.errored and set(conn.states.values()) == {State.ERROR}
    with pytest.raises(LocalProtocolError):
        conn.send(Call(SID) if conn.our_role is Role.CLIENT else Reject("busy", ""))
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"more")


@pytest.mark.parametrize(("role", "state"), list(PATHS))
def test_end_of_stream_is_an_event_the_table_decides(role: Role, state: State) -> None:
    """A client may always walk away; a node may close only after its last word."""
    pair = Pair(*PATHS[(role, state)])
    receiver = pair.server if role is Role.CLIENT else pair.client
    if ConnectionClosed in TRANSITIONS[role][state]:
        assert pair.close(role) == ConnectionClosed()
        assert receiver.their_state is State.CLOSED
        assert receiver.next_event() == ConnectionClosed()  # and stays so
    else:
        with pytest.raises(TransportError, match="closed the connection before its answer"):
            pair.close(role)
        assert receiver.errored


def test_a_stream_cut_inside_a_message_is_a_remote_error() -> None:
    conn = JobConnection(Role.CLIENT)
    conn.send(Call(SID))
    conn.receive_data(encode(Accept("job"))[:-1])
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a message"):
        conn.next_event()
    assert conn.errored


def test_messages_before_the_close_are_delivered_first() -> None:
    pair = Pair(Call(SID), Accept("job"))
    pair.client.receive_data(pair.server.send(Stdout(b"last")) + pair.server.send(EXIT))
    pair.client.receive_data(b"")
    assert [pair.client.next_event() for _ in range(3)] == [Stdout(b"last"), EXIT, ConnectionClosed()]


def test_a_whole_call_with_receipt() -> None:
    pair = Pair(Call(SID, ("-v", "en")), Start())
    assert pair.server.request == Call(SID, ("-v", "en"))
    steps: list[Message] = [Stdin(b"early"), Accept("job-1", Terms(per_call=7, held=7)), Stdin(b"one")]
    steps += [Credit(5), Stdout(b"out"), Stderr(b"err"), StdinEnd(), Stdout(b"more"), EXIT, Receipt(b"sig")]
    for message in steps:
        pair.deliver(message)
    assert pair.client.states == {Role.CLIENT: State.STDIN_DONE, Role.SERVER: State.DONE}
    assert pair.close(Role.SERVER) == ConnectionClosed()


def test_stdin_may_flow_before_accept_and_after_exit() -> None:
    """The caller streams without waiting a round trip, and may still be flushing at the end."""
    pair = Pair(Call(SID), Start(), Stdin(b"early input"), Accept("job"), EXIT)
    pair.deliver(Stdin(b"already in flight"))
    pair.deliver(StdinEnd())


def test_stdin_is_bounded_by_the_window_and_credit_reopens_it() -> None:
    pair = Pair(Call(SID), Start(), Accept("job"))
    chunk = bytes(STDIN_WINDOW // 4)
    for _ in range(4):
        pair.deliver(Stdin(chunk))
    assert pair.client.stdin_window == 0
    pair.deliver(Stdin(b""))  # an empty chunk costs nothing
    with pytest.raises(LocalProtocolError, match="window"):
        Pair(Call(SID), Start(), *[Stdin(chunk)] * 4).client.send(Stdin(b"x"))
    receiver = Pair(Call(SID), Start(), Accept("job"), *[Stdin(chunk)] * 4).server
    receiver.receive_data(encode(Stdin(b"x")))
    with pytest.raises(RemoteProtocolError, match="window"):
        receiver.next_event()
    pair.deliver(Credit(len(chunk)))
    pair.deliver(Stdin(chunk))
    assert pair.client.stdin_window == 0


def test_credit_beyond_the_window_is_refused() -> None:
    pair = Pair(Call(SID), Start(), Accept("job"), Stdin(b"12345"))
    pair.deliver(Credit(5))
    with pytest.raises(LocalProtocolError, match="credit beyond"):
        pair.server.send(Credit(1))
    client = Pair(Call(SID), Start(), Accept("job")).client
    client.receive_data(encode(Credit(1)))
    with pytest.raises(RemoteProtocolError, match="credit beyond"):
        client.next_event()


def test_a_quarter_of_the_widest_window_fits_in_the_first() -> None:
    """The node grants credit in quarters of the cap, and widens only once the job has taken
    the first window: were a quarter larger than that window, a job could wait for stdin that
    its caller may not send before a grant that never comes."""
    assert STDIN_WINDOW < MAX_STDIN_WINDOW <= 4 * STDIN_WINDOW


@pytest.mark.parametrize(
    ("asked", "cap"),
    [
        (None, STDIN_WINDOW),  # a version-1 caller that does not know the field
        (MAX_STDIN_WINDOW, MAX_STDIN_WINDOW),
        (2 * STDIN_WINDOW, 2 * STDIN_WINDOW),
        (16 * MAX_STDIN_WINDOW, MAX_STDIN_WINDOW),  # a later caller's wider ask is held to ours
        (0, STDIN_WINDOW),  # never below what every version-1 peer takes
    ],
)
def test_start_sets_how_far_credit_may_widen_the_window(asked: int | None, cap: int) -> None:
    """The window starts at STDIN_WINDOW whatever Start asks; credit may then take it up to
    the cap both ends agree on, and not a byte further."""
    pair = Pair(Call(SID), Start() if asked is None else Start(asked), Accept("job"))
    assert pair.client.stdin_cap == pair.server.stdin_cap == cap
    assert pair.client.stdin_window == STDIN_WINDOW
    if cap > STDIN_WINDOW:
        pair.deliver(Credit(cap - STDIN_WINDOW))
        for _ in range(cap // (STDIN_WINDOW // 4)):
            pair.deliver(Stdin(bytes(STDIN_WINDOW // 4)))
        assert pair.client.stdin_window == 0
        pair.deliver(Credit(cap))
    with pytest.raises(LocalProtocolError, match="credit beyond"):
        pair.server.send(Credit(1))
    pair.client.receive_data(encode(Credit(1)))
    with pytest.raises(RemoteProtocolError, match=f"credit beyond the stdin window of {cap} bytes"):
        pair.client.next_event()


def test_bytes_after_the_end_of_stream_are_a_driver_bug() -> None:
    conn = JobConnection(Role.SERVER)
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"late")


def test_garbage_and_oversize_reach_the_connection_as_remote_errors() -> None:
    conn = JobConnection(Role.SERVER, max_message=128)
    conn.receive_data(b"\xc1")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    assert conn.errored
    conn = JobConnection(Role.SERVER, max_message=128)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(bytes(1000))
    assert conn.errored


@FAST
@given(st.lists(messages, max_size=12))
def test_both_ends_agree_on_legality(sequence: list[Message]) -> None:
    """Whatever one side may send, the other accepts; whatever it may not, the other refuses."""
    client, server = JobConnection(Role.CLIENT), JobConnection(Role.SERVER)
    for message in sequence:
        sender, receiver = (client, server) if _from_client(message) else (server, client)
        try:
            wire = sender.send(message)
        except LocalProtocolError:
            receiver.receive_data(encode(message))
            with pytest.raises(RemoteProtocolError):
                receiver.next_event()
            return
        receiver.receive_data(wire)
        assert receiver.next_event() == message
        assert client.states == server.states and client.stdin_window == server.stdin_window


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(
            Services(tuple(ServiceInfo(f"s{i}", SID, "", "") for i in range(MAX_SERVICES + 1))), id="services"
        ),
        pytest.param(
            Services(tuple(ServiceInfo(f"s{i}", SID, "", "") for i in range(300))), id="300-services"
        ),
        pytest.param(Stdout(bytes(MAX_DATA + 1)), id="data"),
        pytest.param(Services((ServiceInfo("s", SID, "d" * (MAX_TEXT + 1), ""),)), id="description"),
    ],
)
def test_sender_refuses_what_the_receiver_would_refuse(message: Message) -> None:
    """Whatever the sender accepts, the receiver decodes; what it would refuse, the sender refuses."""
    pair = Pair(Call(SID), Accept("job")) if isinstance(message, Stdout) else Pair(ListServices())
    try:
        wire = pair.server.send(message)
    except LocalProtocolError:
        return
    pair.client.receive_data(wire)
    assert pair.client.next_event() == message


def test_initial_states() -> None:
    conn = JobConnection(Role.CLIENT)
    assert conn.states == INITIAL and (conn.our_state, conn.their_state) == (State.IDLE, State.WAITING)


def test_a_prober_calls_on_the_connection_its_status_came_on() -> None:
    """After the node's StatusReply the caller may call (the node, DONE, then owes the call
    an answer) or close; both ends agree on every state (Pair checks it)."""
    pair = Pair(GetStatus(), StatusReply(0, 0, 4, (0.5, 0.25, 0.125)))
    assert pair.client.states == {Role.CLIENT: State.PROBED, Role.SERVER: State.DONE}
    for message in (Call(SID), Start(), Accept("job"), StdinEnd(), EXIT):
        pair.deliver(message)
    assert pair.client.states == {Role.CLIENT: State.STDIN_DONE, Role.SERVER: State.EXITED}


def test_a_call_before_the_status_reply_is_refused_both_ways() -> None:
    # The node owes the status first: a call then would overwrite what it owes.
    pair = Pair(GetStatus())
    with pytest.raises(LocalProtocolError, match="not allowed from the client in state asked"):
        pair.client.send(Call(SID))
    pair = Pair(GetStatus())
    pair.server.receive_data(encode(Call(SID)))
    with pytest.raises(RemoteProtocolError, match="not allowed from the client in state asked"):
        pair.server.next_event()


def test_only_a_status_reply_lets_the_caller_call_after_its_request() -> None:
    pair = Pair(ListServices(), Services(()))
    assert pair.client.states == {Role.CLIENT: State.ASKED, Role.SERVER: State.DONE}
    with pytest.raises(LocalProtocolError):
        pair.client.send(Call(SID))
