"""Tests of node.protocol: the job protocol codec and the JobConnection state machine."""

from __future__ import annotations

import contextlib
import itertools
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from identity.errors import LocalProtocolError, RemoteProtocolError
from node.protocol import (
    MAX_ARGS,
    MAX_ARGS_BYTES,
    MAX_DATA,
    MAX_MESSAGE,
    MAX_SERVICES,
    MAX_TEXT,
    SERVICE_ID_LEN,
    Accept,
    Call,
    Cancel,
    Exit,
    GetPeers,
    GetStatus,
    JobConnection,
    Kind,
    ListServices,
    Message,
    MessageDecoder,
    PeerInfo,
    Peers,
    Phase,
    Reject,
    Role,
    ServiceInfo,
    Services,
    Start,
    StatusReply,
    Stderr,
    Stdin,
    StdinEnd,
    Stdout,
    Usage,
    decode,
    encode,
)

FAST = settings(max_examples=100, deadline=None)
SID = bytes(range(SERVICE_ID_LEN))

service_ids = st.binary(min_size=SERVICE_ID_LEN, max_size=SERVICE_ID_LEN)
texts = st.text(max_size=40)
counts = st.integers(min_value=0, max_value=(1 << 63) - 1)
int32 = st.integers(min_value=-(1 << 31), max_value=(1 << 31) - 1)
floats = st.floats(allow_nan=False)
data = st.binary(max_size=300)

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Call: st.builds(Call, service_ids, st.lists(texts, max_size=12).map(tuple)),
    ListServices: st.just(ListServices()),
    GetStatus: st.just(GetStatus()),
    Start: st.just(Start()),
    Stdin: st.builds(Stdin, data),
    StdinEnd: st.just(StdinEnd()),
    Cancel: st.just(Cancel()),
    Accept: st.builds(Accept, texts, counts),
    Reject: st.builds(Reject, texts, texts),
    Stdout: st.builds(Stdout, data),
    Stderr: st.builds(Stderr, data),
    Exit: st.builds(
        Exit,
        st.none() | int32,
        st.none() | int32,
        st.none() | texts,
        st.builds(Usage, counts, counts, counts, counts, counts),
        counts,
    ),
    Services: st.builds(
        Services, st.lists(st.builds(ServiceInfo, texts, service_ids, texts, texts), max_size=6).map(tuple)
    ),
    StatusReply: st.builds(StatusReply, counts, counts, counts, st.tuples(floats, floats, floats)),
    GetPeers: st.just(GetPeers()),
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


@FAST
@given(messages)
def test_round_trip(message: Message) -> None:
    wire = encode(message)
    assert decode(wire) == message
    kind, fields = msgpack.unpackb(wire)
    assert kind in set(Kind) and isinstance(fields, list)


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
        pytest.param(_raw(Kind.CALL, [SID, [], 1]), id="call-arity-3"),
        pytest.param(_raw(Kind.START, [1]), id="start-arity"),
        pytest.param(_raw(Kind.STDIN, ["text"]), id="stdin-not-bytes"),
        pytest.param(_raw(Kind.ACCEPT, ["job", -1]), id="negative-quote"),
        pytest.param(_raw(Kind.ACCEPT, ["job", True]), id="bool-quote"),
        pytest.param(_raw(Kind.ACCEPT, ["job", 1 << 63]), id="huge-quote"),
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


def test_field_limits_at_their_boundaries_are_accepted() -> None:
    args = ("a" * (MAX_ARGS_BYTES // MAX_ARGS),) * MAX_ARGS
    assert decode(encode(Call(SID, args))) == Call(SID, args)
    assert decode(encode(Call(SID, ("z" * MAX_ARGS_BYTES,)))) == Call(SID, ("z" * MAX_ARGS_BYTES,))
    assert decode(encode(Reject("busy", "r" * MAX_TEXT))) == Reject("busy", "r" * MAX_TEXT)
    edge = Exit(-(1 << 31), (1 << 31) - 1, "timeout", Usage(*([(1 << 63) - 1] * 5)), (1 << 63) - 1)
    assert decode(encode(edge)) == edge


# --- JobConnection ---------------------------------------------------------------------------------------


class Pair:
    """A client and a server JobConnection wired back to back."""

    def __init__(self) -> None:
        self.client = JobConnection(Role.CLIENT)
        self.server = JobConnection(Role.SERVER)

    def c2s(self, message: Message) -> None:
        self.server.receive_data(self.client.send(message))
        assert self.server.next_event() == message
        assert self.server.phase is self.client.phase

    def s2c(self, message: Message) -> None:
        self.client.receive_data(self.server.send(message))
        assert self.client.next_event() == message
        assert self.client.phase is self.server.phase

    def refused_from_client(self, message: Message) -> None:
        """The client may not send it, and a server that receives it anyway refuses it."""
        with pytest.raises(LocalProtocolError):
            self.client.send(message)
        self.server.receive_data(encode(message))
        with pytest.raises(RemoteProtocolError):
            self.server.next_event()

    def refused_from_server(self, message: Message) -> None:
        with pytest.raises(LocalProtocolError):
            self.server.send(message)
        self.client.receive_data(encode(message))
        with pytest.raises(RemoteProtocolError):
            self.client.next_event()


EXIT = Exit(0, None, None, Usage(wall_ms=5), 10)


def test_call_sequence() -> None:
    p = Pair()
    p.c2s(Call(SID, ("-v", "en")))
    assert p.server.request == Call(SID, ("-v", "en")) and p.server.phase is Phase.REQUESTED
    p.s2c(Accept("job-1", 7))
    assert p.client.phase is Phase.RUNNING
    p.c2s(Start())
    assert p.server.started
    for chunk in (b"one", b"two", b""):
        p.c2s(Stdin(chunk))
    p.s2c(Stdout(b"out"))
    p.s2c(Stderr(b"err"))
    p.c2s(StdinEnd())
    assert p.server.stdin_closed
    p.s2c(Stdout(b"more"))
    p.s2c(EXIT)
    assert (p.client.phase, p.server.phase) == (Phase.DONE, Phase.DONE)


def test_start_may_precede_accept() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.c2s(Start())
    p.c2s(Stdin(b"early input"))
    p.s2c(Accept("job"))
    p.s2c(EXIT)


def test_call_rejected() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.s2c(Reject("busy", "try later"))
    assert p.client.phase is Phase.DONE
    p.refused_from_server(Accept("late"))


def test_cancel_while_running() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.s2c(Accept("job"))
    p.c2s(Cancel())
    p.s2c(Exit(None, 15, "cancelled"))


def test_list_sequence() -> None:
    p = Pair()
    p.c2s(ListServices())
    p.s2c(Services((ServiceInfo("espeak", SID, "speech", "text"),)))
    assert p.client.phase is Phase.DONE


def test_status_sequence() -> None:
    p = Pair()
    p.c2s(GetStatus())
    p.s2c(StatusReply(1, 0, 4, (0.5, 0.25, 0.125)))
    assert p.client.phase is Phase.DONE


def test_peers_sequence_and_wrong_replies() -> None:
    p = Pair()
    p.c2s(GetPeers())
    p.refused_from_server(StatusReply(0, 0, 1, (0.0, 0.0, 0.0)))
    p.refused_from_server(Accept("job"))
    p.refused_from_client(Start())
    p.s2c(Peers((PeerInfo(b"k" * 32, "127.0.0.1", 7070),)))
    assert p.client.phase is Phase.DONE


@pytest.mark.parametrize(
    "fields",
    [
        [[[b"short", "h", 1]]],
        [[[b"k" * 32, "h", 0]]],
        [[[b"k" * 32, "h" * 300, 1]]],
        [[[b"k" * 32, "h"]]],
        [[[b"k" * 32, "h", 1]] * 4097],
    ],
)
def test_malformed_peer_lists_are_refused(fields: list[Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(msgpack.packb([Kind.PEERS_REPLY, fields]))


def test_stdin_before_start_is_refused() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.s2c(Accept("job"))
    p.refused_from_client(Stdin(b"no start yet"))
    p.refused_from_client(StdinEnd())


def test_stdin_after_stdin_end_and_second_start_are_refused() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.c2s(Start())
    p.c2s(StdinEnd())
    p.refused_from_client(Stdin(b"after end"))
    p.refused_from_client(StdinEnd())
    p.refused_from_client(Start())


def test_accept_to_a_list_request_is_refused() -> None:
    p = Pair()
    p.c2s(ListServices())
    p.refused_from_server(Accept("job"))
    p.refused_from_server(StatusReply(0, 0, 0, (0.0, 0.0, 0.0)))
    p.s2c(Services(()))


def test_wrong_reply_to_status_is_refused() -> None:
    p = Pair()
    p.c2s(GetStatus())
    p.refused_from_server(Services(()))
    p.refused_from_server(Stdout(b"x"))
    p.s2c(StatusReply(0, 0, 1, (0.0, 0.0, 0.0)))


def test_start_for_a_list_request_is_refused() -> None:
    p = Pair()
    p.c2s(ListServices())
    p.refused_from_client(Start())
    p.refused_from_client(Stdin(b"x"))


def test_nothing_from_the_server_after_exit() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.s2c(Accept("job"))
    p.s2c(EXIT)
    for late in (Stdout(b"late"), Stderr(b"late"), EXIT, Accept("again"), Reject("busy", "")):
        p.refused_from_server(late)


def test_client_may_flush_stdin_after_exit() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.c2s(Start())
    p.s2c(Accept("job"))
    p.s2c(EXIT)
    p.c2s(Stdin(b"already in flight"))
    p.c2s(StdinEnd())
    p.refused_from_client(Call(SID))


def test_second_request_is_refused() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.refused_from_client(Call(SID))
    p.refused_from_client(ListServices())
    p.refused_from_client(GetStatus())


def test_server_may_not_speak_first() -> None:
    p = Pair()
    for message in (Accept("job"), Stdout(b"x"), EXIT, Services(()), StatusReply(0, 0, 0, (0.0, 0.0, 0.0))):
        p.refused_from_server(message)


def test_output_before_accept_is_refused() -> None:
    p = Pair()
    p.c2s(Call(SID))
    p.refused_from_server(Stdout(b"before accept"))
    p.refused_from_server(EXIT)


def test_messages_of_the_wrong_role_are_refused() -> None:
    p = Pair()
    p.refused_from_client(Accept("job"))  # a server message from the client
    p.c2s(Call(SID))
    p.refused_from_server(Call(SID))  # a client message from the server
    p.refused_from_server(Stdin(b"x"))


def test_garbage_and_oversize_reach_the_connection_as_remote_errors() -> None:
    conn = JobConnection(Role.SERVER, max_message=128)
    conn.receive_data(b"\xc1")
    with pytest.raises(RemoteProtocolError):
        conn.next_event()
    conn = JobConnection(Role.SERVER, max_message=128)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(bytes(1000))


@FAST
@given(st.lists(messages, max_size=12))
def test_both_ends_agree_on_legality(sequence: list[Message]) -> None:
    """Whatever one side may send, the other accepts; whatever it may not, the other refuses."""
    client, server = JobConnection(Role.CLIENT), JobConnection(Role.SERVER)
    for message in sequence:
        from_client = isinstance(message, Call | ListServices | GetStatus | Start | Stdin | StdinEnd | Cancel)
        sender, receiver = (client, server) if from_client else (server, client)
        try:
            wire = sender.send(message)
        except LocalProtocolError:
            receiver.receive_data(encode(message))
            with pytest.raises(RemoteProtocolError):
                receiver.next_event()
        else:
            receiver.receive_data(wire)
            assert receiver.next_event() == message
        assert client.phase is server.phase
        assert (client.started, client.stdin_closed) == (server.started, server.stdin_closed)


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
    p = Pair()
    p.c2s(Call(SID) if isinstance(message, Stdout) else ListServices())
    if isinstance(message, Stdout):
        p.s2c(Accept("job"))
    try:
        wire = p.server.send(message)
    except LocalProtocolError:
        return
    p.client.receive_data(wire)
    assert p.client.next_event() == message
