"""node.holepunch's machine: its transition table, its codec, and its refusal of anything else."""

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
    Role,
    State,
    Sync,
    encode,
)

HERE = Connect(("198.18.11.1:40001",))
THERE = Connect(("198.18.12.1:40002",))


def frame(value: object) -> bytes:
    body = bytes(msgpack.packb(value))
    return struct.pack(">H", len(body)) + body


def receive(machine: HolePunch, data: bytes) -> Message | None:
    machine.receive_data(data)
    return machine.next_event()


def test_the_exchange_of_both_roles() -> None:
    initiator, responder = HolePunch(Role.INITIATOR), HolePunch(Role.RESPONDER)
    assert receive(responder, initiator.send(HERE)) == HERE
    assert receive(initiator, responder.send(THERE)) == THERE
    assert receive(responder, initiator.send(Sync())) == Sync()
    assert initiator.state is responder.state is State.DIAL


@pytest.mark.parametrize("role", list(Role))
def test_the_table_is_one_path_of_three_steps_to_dial(role: Role) -> None:
    """From START each role has exactly one legal step at a time, alternating as in the module
    docstring (the initiator sends first), and DIAL and ERROR end it."""
    state, steps = State.START, []
    while rows := TRANSITIONS.get((role, state), {}):
        assert len(rows) == 1
        ((step, state),) = rows.items()
        steps.append(step)
    first_sent = role is Role.INITIATOR
    assert steps == [(Connect, first_sent), (Connect, not first_sent), (Sync, first_sent)]
    assert state is State.DIAL and (role, State.ERROR) not in TRANSITIONS


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("message", [HERE, Sync()])
@pytest.mark.parametrize("sent", [True, False])
def test_every_step_outside_the_table_is_refused_and_breaks_the_machine(
    role: Role, message: Message, sent: bool
) -> None:
    for state in State:
        if (type(message), sent) in TRANSITIONS.get((role, state), {}):
            continue
        machine = HolePunch(role)
        machine.state = state
        if state is State.ERROR:
            with pytest.raises(LocalProtocolError):
                machine.send(message) if sent else receive(machine, encode(message))
            continue
        with pytest.raises(LocalProtocolError if sent else RemoteProtocolError):
            machine.send(message) if sent else receive(machine, encode(message))
        assert machine.state is State.ERROR
        with pytest.raises(LocalProtocolError):
            machine.send(Sync())
        with pytest.raises(LocalProtocolError):
            machine.receive_data(b"")


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
        [3, []],
        [2],
        {"kind": 2},
    ],
)
def test_malformed_messages_are_refused(value: object) -> None:
    machine = HolePunch(Role.RESPONDER)
    machine.state = State.SYNC_AWAITED if value == [2] else State.START
    with pytest.raises(RemoteProtocolError):
        receive(machine, frame(value))
    assert machine.state is State.ERROR


def test_a_frame_over_the_limit_is_refused_before_it_is_read() -> None:
    machine = HolePunch(Role.RESPONDER)
    with pytest.raises(RemoteProtocolError):
        receive(machine, struct.pack(">H", MAX_FRAME + 1))
    with pytest.raises(LocalProtocolError):
        encode(Connect(("198.18.11.1:4000", "x" * MAX_FRAME)))


def test_messages_arrive_in_any_pieces() -> None:
    machine = HolePunch(Role.RESPONDER)
    data = encode(HERE)
    for byte in data[:-1]:
        assert receive(machine, bytes([byte])) is None
    assert receive(machine, data[-1:]) == HERE


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=3000))
def test_random_bytes_raise_only_remote_errors(data: bytes) -> None:
    machine = HolePunch(Role.RESPONDER)
    try:
        receive(machine, data)
    except RemoteProtocolError:
        assert machine.state is State.ERROR
