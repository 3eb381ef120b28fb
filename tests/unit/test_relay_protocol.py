"""Tests of node.relay_protocol: the codec, the table and the RelayConnection machine."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import ClosedEarly, LocalProtocolError, RemoteProtocolError
from hubnet.node import protocol as job_protocol
from hubnet.node.relay_protocol import (
    CIRCUIT_ID_LEN,
    INITIAL,
    MAX_RELAY_MESSAGE,
    PEER_ID_LEN,
    RELAY_OWES,
    TRANSITIONS,
    CircuitLimits,
    Claim,
    Connect,
    ConnectionClosed,
    Incoming,
    Kind,
    Linked,
    Message,
    RefusalCode,
    Refused,
    RelayConnection,
    Reserve,
    Reserved,
    Role,
    State,
    decode_object,
    encode,
    is_relay_request,
)

LIMITS = CircuitLimits(1 << 30, 3600)
LIMITS_FIELDS = [LIMITS.max_bytes, LIMITS.max_seconds]
CIRCUIT = bytes(range(CIRCUIT_ID_LEN))
TARGET = bytes(range(PEER_ID_LEN))
EVERY_MESSAGE: list[Message] = [
    Reserve(),
    Connect(TARGET),
    Claim(CIRCUIT),
    Reserved(120, LIMITS),
    Reserved(120, LIMITS, 7),
    Incoming(CIRCUIT),
    Linked(LIMITS),
    Refused(RefusalCode.CIRCUITS_FULL, "the target has 16 circuits"),
    Refused(RefusalCode.PAYMENT_REQUIRED, "this relay charges", 1024),
]
REQUESTS = [m for m in EVERY_MESSAGE if isinstance(m, Reserve | Connect | Claim)]
ANSWERS = [m for m in EVERY_MESSAGE if m not in REQUESTS]


def pair() -> tuple[RelayConnection, RelayConnection]:
    return RelayConnection(Role.REQUESTER), RelayConnection(Role.RELAY)


def deliver(sender: RelayConnection, receiver: RelayConnection, message: Message) -> object:
    receiver.receive_data(sender.send(message))
    return receiver.next_event()


# ---- codec ---------------------------------------------------------------------------------------


messages = st.one_of(
    st.just(Reserve()),
    # The optional trailing fields (a punch, a price, the amount needed) are there, so that
    # what the tests append comes after every field this version reads.
    st.builds(Connect, st.binary(min_size=PEER_ID_LEN, max_size=PEER_ID_LEN), st.just(True)),
    st.builds(Claim, st.binary(min_size=CIRCUIT_ID_LEN, max_size=CIRCUIT_ID_LEN), st.just(True)),
    st.binary(min_size=CIRCUIT_ID_LEN, max_size=CIRCUIT_ID_LEN).map(Incoming),
    st.builds(
        Reserved,
        st.integers(0, (1 << 63) - 1),
        st.builds(CircuitLimits, st.integers(0, (1 << 63) - 1), st.integers(0, (1 << 63) - 1)),
        st.integers(1, (1 << 63) - 1),
    ),
    st.builds(
        Linked,
        st.builds(CircuitLimits, st.integers(0, 1 << 40), st.integers(0, 1 << 20)),
        st.booleans(),
        st.ip_addresses().map(str),
        st.ip_addresses().map(str) | st.just(""),
    ),
    st.builds(Refused, st.text(max_size=64), st.text(max_size=1024), st.integers(0, (1 << 63) - 1)),
)


@given(messages)
def test_every_message_round_trips(message: Message) -> None:
    assert decode_object(msgpack.unpackb(encode(message))) == message


@given(st.binary(max_size=256))
@settings(max_examples=300)
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    conn = RelayConnection(Role.RELAY)
    try:
        conn.receive_data(data)
        for _ in range(len(data) + 1):  # each event takes at least a byte
            if conn.next_event() in (None, ConnectionClosed()):
                break
    except RemoteProtocolError:
        assert conn.errored


@given(messages, st.lists(st.integers() | st.binary(max_size=8) | st.none(), max_size=3))
def test_appended_fields_are_ignored(message: Message, extra: list[object]) -> None:
    kind, fields = msgpack.unpackb(encode(message))
    assert decode_object([kind, [*fields, *extra]]) == message


def test_a_free_relays_reserved_and_a_plain_refusal_leave_the_optional_fields_out() -> None:
    """As a relay before prices sent them: an older holder reads them as before."""
    assert msgpack.unpackb(encode(Reserved(120, LIMITS))) == [Kind.RESERVED, [120, *LIMITS_FIELDS]]
    assert msgpack.unpackb(encode(Refused("x", "y"))) == [Kind.REFUSED, ["x", "y"]]
    assert decode_object([Kind.RESERVED, [120, *LIMITS_FIELDS]]) == Reserved(120, LIMITS, 0)
    assert decode_object([Kind.RESERVED, [120, *LIMITS_FIELDS, 5]]) == Reserved(120, LIMITS, 5)
    assert decode_object([Kind.REFUSED, ["x", "y", 9]]) == Refused("x", "y", 9)


def test_the_punch_fields_are_left_out_when_they_say_nothing_and_older_forms_read_as_no_punch() -> None:
    """An older relay reads Connect and Claim as ever (it ignores the flag); an older caller
    or target reads Linked as ever; and what they send reads as "no punch"."""
    target, circuit = b"t" * PEER_ID_LEN, b"c" * CIRCUIT_ID_LEN
    assert msgpack.unpackb(encode(Connect(target))) == [Kind.CONNECT, [target]]
    assert msgpack.unpackb(encode(Claim(circuit))) == [Kind.CLAIM, [circuit]]
    assert msgpack.unpackb(encode(Linked(LIMITS))) == [Kind.LINKED, LIMITS_FIELDS]
    assert decode_object([Kind.CONNECT, [target]]) == Connect(target, False)
    assert decode_object([Kind.CONNECT, [target, True]]) == Connect(target, True)
    assert decode_object([Kind.CLAIM, [circuit, True]]) == Claim(circuit, True)
    full = [*LIMITS_FIELDS, True, "198.18.12.1", "198.18.11.1"]
    assert decode_object([Kind.LINKED, full]) == Linked(LIMITS, True, "198.18.12.1", "198.18.11.1")
    assert decode_object([Kind.LINKED, LIMITS_FIELDS]) == Linked(LIMITS)


@pytest.mark.parametrize(
    "obj",
    [
        [Kind.CONNECT, [b"t" * PEER_ID_LEN, 1]],  # a flag is true or false, not a number
        [Kind.CLAIM, [b"c" * CIRCUIT_ID_LEN, "yes"]],
        [Kind.LINKED, [*LIMITS_FIELDS, True]],  # Linked's three come together
        [Kind.LINKED, [*LIMITS_FIELDS, True, "198.18.12.1"]],
        [Kind.LINKED, [*LIMITS_FIELDS, True, b"198.18.12.1", ""]],
        [Kind.LINKED, [*LIMITS_FIELDS, True, "1" * 46, ""]],
    ],
)
def test_malformed_punch_fields_are_refused(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_object(obj)


@pytest.mark.parametrize(
    "obj",
    [
        [Kind.RESERVED, [120, 1, 1, -5]],
        [Kind.REFUSED, ["payment-required", "", "lots"]],
        [Kind.CONNECT, [b"short"]],
        [Kind.CLAIM, [bytes(PEER_ID_LEN)]],
        [Kind.RESERVED, [-1, 0, 0]],
        [Kind.RESERVED, [True, 0, 0]],
        [Kind.LINKED, [1]],
        [Kind.REFUSED, ["x" * 2000, ""]],
        [99, []],
        [job_protocol.Kind.CALL, [bytes(16), []]],
        [Kind.RESERVE],
        "not a message",
    ],
)
def test_malformed_messages_are_remote_errors(obj: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_object(obj)


def test_a_message_beyond_the_limit_is_refused_before_it_is_buffered() -> None:
    conn = RelayConnection(Role.RELAY)
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(
            b"\x92" + b"\xc5" + (MAX_RELAY_MESSAGE + 1).to_bytes(2, "big") * 2 * MAX_RELAY_MESSAGE
        )
    assert conn.errored


def test_relay_requests_are_told_from_job_requests() -> None:
    assert all(is_relay_request(encode(m)) for m in REQUESTS)
    assert not any(is_relay_request(encode(m)) for m in ANSWERS)
    for job_request in (job_protocol.Call(bytes(16)), job_protocol.GetStatus(), job_protocol.ListServices()):
        assert not is_relay_request(job_protocol.encode(job_request))
    assert not is_relay_request(b"")
    assert not is_relay_request(b"\xc1garbage")


# ---- the table -----------------------------------------------------------------------------------


def test_the_table_names_every_state_of_each_role() -> None:
    requester_states = {
        State.IDLE, State.RESERVING, State.RESERVED, State.CONNECTING, State.CLAIMING,
        State.LINKED, State.DONE, State.CLOSED, State.ERROR,
    }  # fmt: skip
    assert set(TRANSITIONS[Role.REQUESTER]) == requester_states
    assert set(TRANSITIONS[Role.RELAY]) == set(State) - requester_states | {
        State.LINKED, State.DONE, State.CLOSED, State.ERROR,
    }  # fmt: skip
    for role in Role:
        for final in (State.LINKED, State.CLOSED, State.ERROR):
            assert TRANSITIONS[role][final] == {}
    assert INITIAL == {Role.REQUESTER: State.IDLE, Role.RELAY: State.WAITING}


def test_only_requests_move_the_relay_and_only_from_where_it_listens() -> None:
    assert {
        (Reserve, State.WAITING): State.MUST_RESERVE,
        (Reserve, State.HOLDING): State.MUST_RENEW,
        (Connect, State.WAITING): State.MUST_CONNECT,
        (Claim, State.WAITING): State.MUST_CLAIM,
    } == RELAY_OWES


def _reachable() -> list[tuple[list[Message], RelayConnection, RelayConnection]]:
    """Every conversation prefix the table allows (at most four messages), as a live pair."""
    found = []
    frontier: list[list[Message]] = [[]]
    for _ in range(4):
        following = []
        for history in frontier:
            for message in EVERY_MESSAGE:
                requester, relay = replay(history)
                sender = requester if message in REQUESTS else relay
                try:
                    sender.send(message)
                except LocalProtocolError:
                    continue
                following.append([*history, message])
        found.extend(following)
        frontier = following
    return [(h, *replay(h)) for h in [[], *found]]


def replay(history: list[Message]) -> tuple[RelayConnection, RelayConnection]:
    requester, relay = pair()
    for message in history:
        if message in REQUESTS:
            deliver(requester, relay, message)
        else:
            deliver(relay, requester, message)
    return requester, relay


def test_both_ends_agree_on_both_states_after_every_allowed_conversation() -> None:
    conversations = _reachable()
    assert len(conversations) > 10
    for history, requester, relay in conversations:
        assert requester.states == relay.states, history


def test_what_the_table_refuses_to_send_the_peer_refuses_to_receive() -> None:
    for history, _, _ in _reachable():
        for message in EVERY_MESSAGE:
            requester, relay = replay(history)
            sender, receiver = (requester, relay) if message in REQUESTS else (relay, requester)
            try:
                wire = sender.send(message)
            except LocalProtocolError:
                assert sender.errored
                # The same bytes, forged by a peer, are refused at the other end.
                receiver.receive_data(encode(message))
                with pytest.raises(RemoteProtocolError):
                    receiver.next_event()
                assert receiver.errored
                with pytest.raises(RemoteProtocolError):
                    receiver.next_event()
                continue
            receiver.receive_data(wire)
            assert receiver.next_event() == message


# ---- stories -------------------------------------------------------------------------------------


def test_a_reservation_is_granted_renewed_and_carries_incoming_circuits() -> None:
    holder, relay = pair()
    assert deliver(holder, relay, Reserve()) == Reserve()
    assert relay.our_state is State.MUST_RESERVE
    assert deliver(relay, holder, Reserved(120, LIMITS)) == Reserved(120, LIMITS)
    assert (holder.our_state, holder.their_state) == (State.RESERVED, State.HOLDING)
    assert deliver(relay, holder, Incoming(CIRCUIT)) == Incoming(CIRCUIT)
    # A renewal crosses an Incoming: both are legal whichever comes first.
    renewal = holder.send(Reserve())
    incoming = relay.send(Incoming(CIRCUIT))
    holder.receive_data(incoming)
    assert holder.next_event() == Incoming(CIRCUIT)
    relay.receive_data(renewal)
    assert relay.next_event() == Reserve()
    assert deliver(relay, holder, Reserved(120, LIMITS)) == Reserved(120, LIMITS)
    assert holder.states == relay.states == {Role.REQUESTER: State.RESERVED, Role.RELAY: State.HOLDING}


def test_a_connect_ends_linked_and_nothing_may_follow_in_the_relays_session() -> None:
    caller, relay = pair()
    deliver(caller, relay, Connect(TARGET))
    assert deliver(relay, caller, Linked(LIMITS)) == Linked(LIMITS)
    assert caller.states == {Role.REQUESTER: State.LINKED, Role.RELAY: State.LINKED}
    with pytest.raises(LocalProtocolError):
        caller.send(Reserve())

    caller, relay = pair()
    deliver(caller, relay, Connect(TARGET))
    caller.receive_data(relay.send(Linked(LIMITS)) + b"\x00")
    with pytest.raises(RemoteProtocolError, match="after Linked"):
        caller.next_event()


def test_a_refused_claim_is_the_end() -> None:
    target, relay = pair()
    deliver(target, relay, Claim(CIRCUIT))
    refusal = Refused(RefusalCode.NO_SUCH_CIRCUIT, "no circuit waits for you")
    assert deliver(relay, target, refusal) == refusal
    assert target.our_state is State.DONE
    target.receive_data(b"")
    assert target.next_event() == ConnectionClosed()


def test_a_relay_that_closes_before_its_answer_is_a_transport_failure() -> None:
    caller, relay = pair()
    deliver(caller, relay, Connect(TARGET))
    caller.receive_data(b"")
    with pytest.raises(ClosedEarly):
        caller.next_event()
    assert caller.errored


def test_a_request_never_rides_twice() -> None:
    caller, relay = pair()
    deliver(caller, relay, Connect(TARGET))
    relay.receive_data(encode(Connect(TARGET)))
    with pytest.raises(RemoteProtocolError):
        relay.next_event()
