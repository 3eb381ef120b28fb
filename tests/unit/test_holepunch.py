"""node.holepunch's machine: its transition table, the exchange of both roles to an outcome,
its codec, and its refusal of anything else."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError
from hubnet.node.holepunch import (
    MAX_ADDRESSES,
    MAX_FRAME,
    TRANSITIONS,
    Connect,
    HolePunch,
    Message,
    Outcome,
    Result,
    Role,
    State,
    Sync,
    encode,
)

HERE = Connect(("198.18.11.1:40001",))  # the initiator's
THERE = Connect(("198.18.12.1:40002",))  # the responder's


def frame(value: object) -> bytes:
    body = bytes(msgpack.packb(value))
    return struct.pack(">H", len(body)) + body


def exchange() -> tuple[HolePunch, HolePunch]:
    """Both machines through Connect, Connect, Sync: each told to dial. The clock: the
    initiator starts at 10.0, its Connect's answer comes at 10.2."""
    initiator = HolePunch(Role.INITIATOR, HERE, peer_ip="198.18.12.1")
    responder = HolePunch(Role.RESPONDER, THERE, peer_ip="198.18.11.1")
    connect = initiator.start(10.0)
    assert responder.start(10.0) == b""
    answer = responder.receive_data(connect, 10.1)
    assert answer == encode(THERE) and responder.dial_at is None
    sync = initiator.receive_data(answer, 10.2)
    assert sync == encode(Sync())
    assert responder.receive_data(sync, 10.3) == b""
    return initiator, responder


def test_both_roles_dial_at_the_same_moment_and_at_each_others_address() -> None:
    initiator, responder = exchange()
    # The round trip was 0.2 s: the initiator waits half of it, the Sync's way over.
    assert initiator.dial_at == pytest.approx(10.3) and responder.dial_at == pytest.approx(10.3)
    assert initiator.dial_to == ("198.18.12.1", 40002) and responder.dial_to == ("198.18.11.1", 40001)
    assert initiator.state is responder.state is State.DIAL


@pytest.mark.parametrize(
    ("ours", "theirs", "outcome"),
    [
        (True, True, Outcome.DIRECT),
        (True, False, Outcome.RELAYED),  # one side's dial connected: both stay relayed
        (False, True, Outcome.RELAYED),
        (False, False, Outcome.RELAYED),
    ],
)
@pytest.mark.parametrize("initiator_first", [True, False])
def test_the_outcome_is_direct_only_when_both_dials_connected(
    ours: bool, theirs: bool, outcome: Outcome, initiator_first: bool
) -> None:
    initiator, responder = exchange()
    if initiator_first:
        assert responder.receive_data(initiator.dialled(ours), 11.0) == b""
        assert initiator.receive_data(responder.dialled(theirs), 11.0) == b""
    else:
        assert initiator.receive_data(responder.dialled(theirs), 11.0) == b""
        assert responder.receive_data(initiator.dialled(ours), 11.0) == b""
    assert initiator.outcome is responder.outcome is outcome
    assert initiator.state is responder.state is State.DONE
    assert initiator.leftover == responder.leftover == b""


def test_what_follows_the_last_message_is_left_for_the_stream_s_next_protocol() -> None:
    """The caller's Noise handshake may arrive in the same read as its Result."""
    initiator, responder = exchange()
    initiator.receive_data(responder.dialled(False), 11.0)
    responder.receive_data(initiator.dialled(False) + b"noise message 1", 11.0)
    assert responder.outcome is Outcome.RELAYED and responder.leftover == b"noise message 1"


def test_the_responder_may_not_speak_after_its_result() -> None:
    """The handshake that follows is the initiator's to begin."""
    initiator, responder = exchange()
    with pytest.raises(RemoteProtocolError):
        initiator.receive_data(responder.dialled(False) + b"x", 11.0)
    assert initiator.state is State.ERROR


def test_leftover_and_dialled_refuse_to_come_early() -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    with pytest.raises(LocalProtocolError):
        _ = machine.leftover
    with pytest.raises(LocalProtocolError):
        machine.dialled(True)


def test_a_connect_naming_another_ip_than_the_relay_sees_is_refused() -> None:
    """A caller cannot aim the target's dial at a third party (nor the target the caller's)."""
    responder = HolePunch(Role.RESPONDER, THERE, peer_ip="198.18.13.1")
    with pytest.raises(RemoteProtocolError, match=r"not 198\.18\.13\.1"):
        responder.receive_data(encode(HERE), 1.0)
    assert responder.state is State.ERROR


@pytest.mark.parametrize("role", list(Role))
def test_the_table_is_one_path_to_dial_then_the_two_results_in_either_order(role: Role) -> None:
    """From START each role has exactly one legal step at a time, alternating as in the module
    docstring (the initiator sends first), up to DIAL; there either Result may come first,
    and DONE (like ERROR) allows nothing."""
    state, steps = State.START, []
    while state is not State.DIAL:
        rows = TRANSITIONS[(role, state)]
        assert len(rows) == 1
        ((step, state),) = rows.items()
        steps.append(step)
    first_sent = role is Role.INITIATOR
    assert steps == [(Connect, first_sent), (Connect, not first_sent), (Sync, first_sent)]
    assert TRANSITIONS[(role, State.DIAL)] == {
        (Result, True): State.RESULT_SENT,
        (Result, False): State.RESULT_RECEIVED,
    }
    assert TRANSITIONS[(role, State.RESULT_SENT)] == {(Result, False): State.DONE}
    assert TRANSITIONS[(role, State.RESULT_RECEIVED)] == {(Result, True): State.DONE}
    assert (role, State.DONE) not in TRANSITIONS and (role, State.ERROR) not in TRANSITIONS


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("message", [HERE, Sync(), Result(True)])
def test_every_received_message_outside_the_table_is_refused_and_breaks_the_machine(
    role: Role, message: Message
) -> None:
    for state in State:
        if state is State.ERROR or (type(message), False) in TRANSITIONS.get((role, state), {}):
            continue
        machine = HolePunch(role, THERE)
        machine.state = state
        with pytest.raises(RemoteProtocolError):
            machine.receive_data(encode(message), 1.0)
        assert machine.state is State.ERROR
        with pytest.raises(LocalProtocolError):
            machine.dialled(True)
        with pytest.raises(LocalProtocolError):
            machine.receive_data(b"", 1.0)


def test_sending_out_of_turn_is_a_local_error() -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    machine.dial_at = 1.0  # as if told to dial, while in START: a bug of ours
    with pytest.raises(LocalProtocolError):
        machine.dialled(True)
    assert machine.state is State.ERROR


@pytest.mark.parametrize(
    "value",
    [
        [1, []],  # no address
        [1, ["198.18.11.1:1"] * (MAX_ADDRESSES + 1)],
        [1, ["127.0.0.1:4000"]],  # loopback: ours, not the peer's
        [1, ["0.0.0.0:4000"]],
        [1, ["224.0.0.1:4000"]],
        [1, ["example.com:4000"]],  # names are not dialled
        [1, ["198.18.11.1:0"]],
        [1, ["198.18.11.1:99999"]],
        [1, [b"198.18.11.1:4000"]],
        [1, "198.18.11.1:4000"],
        [2, [b"x"]],
        [3, [1]],
        [3, []],
        [4, []],
        [2],
        {"kind": 2},
    ],
)
def test_malformed_messages_are_refused(value: object) -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    machine.state = {2: State.SYNC_AWAITED, 3: State.DIAL}.get(_kind(value), State.START)
    with pytest.raises(RemoteProtocolError):
        machine.receive_data(frame(value), 1.0)
    assert machine.state is State.ERROR


def _kind(value: object) -> object:
    return value[0] if isinstance(value, list) else None


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    with pytest.raises(RemoteProtocolError):
        machine.receive_data(struct.pack(">H", MAX_FRAME + 1), 1.0)
    with pytest.raises(LocalProtocolError):
        encode(Connect(("198.18.11.1:4000", "x" * MAX_FRAME)))


def test_messages_arrive_in_any_pieces() -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    data = encode(HERE)
    for byte in data[:-1]:
        assert machine.receive_data(bytes([byte]), 1.0) == b""
    assert machine.receive_data(data[-1:], 1.0) == encode(THERE)
    assert machine.dial_to == ("198.18.11.1", 40001)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    machine = HolePunch(Role.RESPONDER, THERE)
    try:
        machine.receive_data(data, 1.0)
    except RemoteProtocolError:
        assert machine.state is State.ERROR
