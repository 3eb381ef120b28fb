"""Tests of hubnet.call_machine: one call from the caller's side, driven back to back against
a server-role JobConnection (bytes from one are fed to the other, no I/O)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import event as note_event
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.call_machine import (
    CANCEL_GRACE,
    DEFAULT_ACCEPT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    RECEIPT_WAIT,
    CallMachine,
    Timeouts,
)
from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError, TransportError
from hubnet.node.naming import service_id_for_name
from hubnet.node.protocol import (
    KEEPALIVE,
    MAX_DATA,
    MAX_STDIN_WINDOW,
    STDIN_WINDOW,
    Accept,
    Call,
    Cancel,
    ConnectionClosed,
    Credit,
    Event,
    Exit,
    JobConnection,
    Message,
    Receipt,
    Reject,
    RejectCode,
    Role,
    Start,
    State,
    Stdin,
    StdinEnd,
    Stdout,
    Terms,
    Usage,
)

CALL = Call(service_id_for_name("cat"), ("-u",))
TERMS = Terms(per_call=5, per_second=7, per_mib=11, held=1000)
EXIT = Exit(0, None, None, Usage(wall_ms=12, stdin_bytes=3), cost=9)
ACCEPT = Accept("job-1", TERMS)


class BackToBack:
    """A CallMachine and the node's JobConnection, wired by hand."""

    def __init__(self, call: Call = CALL) -> None:
        self.machine = CallMachine(call)
        self.node = JobConnection(Role.SERVER)

    def to_node(self, data: bytes | tuple[bytes, ...]) -> list[Event]:
        """Feed the caller's bytes (or parts of them, as `send_stdin` gives) to the node;
        every event they make."""
        data = b"".join(data) if isinstance(data, tuple) else data
        if data:
            self.node.receive_data(data)
        events = []
        while (event := self.node.next_event()) is not None:
            events.append(event)
        return events

    def to_caller(self, *messages: Message) -> list[Event]:
        """The node sends `messages`; every event the caller's machine makes of them."""
        self.machine.receive_data(b"".join(self.node.send(m) for m in messages))
        events = []
        while (event := self.machine.next_event()) is not None:
            events.append(event)
        return events

    def started(self, accept: Accept | None = ACCEPT) -> BackToBack:
        assert self.to_node(self.machine.request_data()) == [self.machine.call]
        assert self.to_node(self.machine.start()) == [Start(MAX_STDIN_WINDOW)]
        if accept is not None:
            assert self.to_caller(accept) == [accept]
        return self


def test_request_data_is_the_call_and_start_makes_the_caller_live() -> None:
    pair = BackToBack()
    assert pair.to_node(pair.machine.request_data()) == [CALL]
    assert pair.node.their_state is State.CALLED
    assert pair.node.our_state is State.MUST_ANSWER_CALL
    assert not pair.machine.started
    assert pair.to_node(pair.machine.start()) == [Start(MAX_STDIN_WINDOW)]
    assert pair.machine.started
    assert pair.node.their_state is State.SENDING_STDIN


def test_no_stdin_before_start() -> None:
    pair = BackToBack()
    pair.to_node(pair.machine.request_data())
    assert not pair.machine.wants_stdin
    assert pair.machine.stdin_room == 0
    assert pair.machine.send_stdin(b"early") == ()
    assert pair.machine.end_stdin() == b""


def test_stdin_room_starts_at_the_window_capped_by_max_data() -> None:
    pair = BackToBack().started()
    assert pair.machine.wants_stdin
    assert pair.machine.stdin_room == min(STDIN_WINDOW, MAX_DATA)


def test_stdin_room_shrinks_as_stdin_is_sent_and_grows_back_on_credit() -> None:
    pair = BackToBack().started()
    chunk = b"x" * (STDIN_WINDOW // 4)
    sent = 0
    while (room := pair.machine.stdin_room) > 0:
        data = chunk[:room]
        assert pair.to_node(pair.machine.send_stdin(data)) == [Stdin(data)]
        sent += len(data)
        assert pair.machine.stdin_room == min(STDIN_WINDOW - sent, MAX_DATA)
    assert sent == STDIN_WINDOW
    assert pair.machine.wants_stdin, "room 0 means: wait for credit, not: stop"
    assert pair.to_caller(Credit(1000)) == [Credit(1000)]
    assert pair.machine.stdin_room == 1000
    assert pair.to_caller(Credit(STDIN_WINDOW - 1000)) == [Credit(STDIN_WINDOW - 1000)]
    assert pair.machine.stdin_room == min(STDIN_WINDOW, MAX_DATA)


def test_stdin_beyond_the_room_is_refused_before_it_is_sent() -> None:
    pair = BackToBack().started()
    pair.to_node(pair.machine.send_stdin(b"x" * (STDIN_WINDOW // 2)))
    pair.to_node(pair.machine.send_stdin(b"x" * (STDIN_WINDOW // 2 - 10)))
    assert pair.machine.stdin_room == 10
    with pytest.raises(LocalProtocolError, match="window"):
        pair.machine.send_stdin(b"y" * 11)


def test_stdin_may_flow_before_the_accept() -> None:
    # The node reads the caller at once from Start on; the window, not the Accept, bounds stdin.
    pair = BackToBack().started(accept=None)
    assert pair.machine.stdin_room == min(STDIN_WINDOW, MAX_DATA)
    assert pair.to_node(pair.machine.send_stdin(b"abc")) == [Stdin(b"abc")]


def test_a_credit_beyond_the_window_is_the_nodes_fault() -> None:
    pair = BackToBack().started()
    pair.to_node(pair.machine.send_stdin(b"abc"))
    # The node's own machine refuses to send it, so it is forged here from a second connection.
    forger = JobConnection(Role.SERVER)
    forger.receive_data(CallMachine(CALL).request_data())
    forger.next_event()
    forger.send(Accept("x"))
    forger.stdin_window, forger.stdin_cap = 0, 2 * MAX_STDIN_WINDOW
    # 3 bytes sent: credit may take the window back to the cap the caller's Start asked for.
    assert pair.node.stdin_cap == MAX_STDIN_WINDOW
    pair.machine.receive_data(forger.send(Credit(MAX_STDIN_WINDOW - STDIN_WINDOW + 4)))
    with pytest.raises(RemoteProtocolError, match="credit beyond"):
        pair.machine.next_event()


def test_end_of_stdin() -> None:
    pair = BackToBack().started()
    assert pair.to_node(pair.machine.send_stdin(b"last")) == [Stdin(b"last")]
    assert pair.to_node(pair.machine.end_stdin()) == [StdinEnd()]
    assert not pair.machine.wants_stdin
    assert pair.machine.stdin_room == 0
    assert pair.machine.send_stdin(b"more") == ()
    assert pair.machine.end_stdin() == b""


def test_send_stdin_of_nothing_sends_nothing() -> None:
    pair = BackToBack().started()
    assert pair.machine.send_stdin(b"") == ()
    assert pair.machine.wants_stdin


@pytest.mark.parametrize("last_word", [EXIT, Reject(RejectCode.BUSY, "full")])
def test_stdin_stops_once_the_node_has_said_its_last_word(last_word: Exit | Reject) -> None:
    pair = BackToBack().started(accept=Accept("j") if isinstance(last_word, Exit) else None)
    assert pair.to_caller(last_word) == [last_word]
    assert pair.machine.finished
    assert not pair.machine.wants_stdin
    assert pair.machine.stdin_room == 0
    assert pair.machine.send_stdin(b"unwanted") == ()
    assert pair.machine.end_stdin() == b""


def test_result_carries_the_job_id_terms_and_exit() -> None:
    pair = BackToBack().started()
    with pytest.raises(LookupError):
        pair.machine.result()
    assert pair.to_caller(Stdout(b"out")) == [Stdout(b"out")]
    assert not pair.machine.finished
    with pytest.raises(LookupError):
        pair.machine.result()
    assert pair.to_caller(EXIT) == [EXIT]
    assert pair.machine.finished
    result = pair.machine.result()
    assert (result.exit, result.job_id, result.terms, result.receipt) == (EXIT, "job-1", TERMS, None)


def test_result_carries_the_receipt_that_follows_the_exit() -> None:
    pair = BackToBack().started()
    assert pair.to_caller(EXIT, Receipt(b"signed usage")) == [EXIT, Receipt(b"signed usage")]
    assert pair.machine.result().receipt == b"signed usage"
    pair.machine.receive_data(b"")
    assert pair.machine.next_event() == ConnectionClosed()


def test_a_rejected_call_is_finished_but_has_no_result() -> None:
    pair = BackToBack().started(accept=None)
    reject = Reject(RejectCode.NO_SUCH_SERVICE, "no such service")
    assert pair.to_caller(reject) == [reject]
    assert pair.machine.finished
    assert pair.machine.reject == reject
    with pytest.raises(LookupError):
        pair.machine.result()


def test_the_node_may_close_after_its_exit() -> None:
    pair = BackToBack().started()
    pair.to_caller(EXIT)
    pair.machine.receive_data(b"")
    assert pair.machine.next_event() == ConnectionClosed()
    assert pair.machine.result().exit == EXIT


@pytest.mark.parametrize("accepted", [False, True])
def test_a_node_that_closes_before_its_exit_is_a_transport_error(accepted: bool) -> None:
    pair = BackToBack().started(accept=Accept("j") if accepted else None)
    if accepted:
        pair.to_caller(Stdout(b"partial"))
    pair.machine.receive_data(b"")
    with pytest.raises(TransportError, match="closed the connection before its answer"):
        pair.machine.next_event()
    assert not pair.machine.finished


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xc1",  # never valid msgpack
        b"\x92\x63\x90",  # [99, []]: an unknown kind
        b"\x93\x01\x02\x03",  # not [kind, fields]
    ],
)
def test_garbage_from_the_node_is_a_remote_protocol_error(garbage: bytes) -> None:
    pair = BackToBack().started()
    pair.machine.receive_data(garbage)
    with pytest.raises(RemoteProtocolError):
        pair.machine.next_event()
    # The connection is dead from then on.
    with pytest.raises(RemoteProtocolError):
        pair.machine.next_event()


def test_a_message_out_of_order_is_a_remote_protocol_error() -> None:
    pair = BackToBack().started(accept=None)
    # Stdout before the Accept: the node's own machine refuses to send it, so it is forged.
    forger = JobConnection(Role.SERVER)
    forger.receive_data(CallMachine(CALL).request_data())
    forger.next_event()
    forger.send(Accept("x"))
    pair.machine.receive_data(forger.send(Stdout(b"too soon")))
    with pytest.raises(RemoteProtocolError, match="not allowed"):
        pair.machine.next_event()


def test_a_node_that_closes_mid_message_is_a_remote_protocol_error() -> None:
    pair = BackToBack().started()
    pair.machine.receive_data(pair.node.send(EXIT)[:-1])
    assert pair.machine.next_event() is None
    pair.machine.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a message"):
        pair.machine.next_event()


# ---- cancel: at most once, and only while the node can still act on it -------------------------


def test_cancel_while_the_job_runs_reaches_the_node_once() -> None:
    pair = BackToBack().started()
    pair.to_node(pair.machine.send_stdin(b"abc"))
    assert pair.to_node(pair.machine.cancel()) == [Cancel()]
    assert pair.machine.cancel() == b""
    assert not pair.machine.wants_stdin
    assert pair.machine.stdin_room == 0
    assert pair.machine.send_stdin(b"more") == ()
    assert pair.machine.end_stdin() == b""
    # The node still owes its Exit, and the caller still takes it.
    cancelled = Exit(None, 9, "cancelled")
    assert pair.to_caller(Stdout(b"late"), cancelled) == [Stdout(b"late"), cancelled]
    assert pair.machine.result().exit == cancelled


def test_cancel_after_the_end_of_stdin_still_matters() -> None:
    pair = BackToBack().started()
    pair.to_node(pair.machine.end_stdin())
    assert pair.to_node(pair.machine.cancel()) == [Cancel()]
    assert pair.machine.cancel() == b""


def test_cancel_before_start_is_legal_and_final() -> None:
    # The protocol lets a caller that never went live withdraw its call (the node stops waiting
    # for its Start); after that it can no longer start.
    pair = BackToBack()
    pair.to_node(pair.machine.request_data())
    assert pair.to_node(pair.machine.cancel()) == [Cancel()]
    assert pair.machine.cancel() == b""
    assert not pair.machine.wants_stdin
    with pytest.raises(LocalProtocolError):
        pair.machine.start()


@pytest.mark.parametrize("last_word", [EXIT, Reject(RejectCode.BUSY, "full")])
def test_no_cancel_once_the_node_has_said_its_last_word(last_word: Exit | Reject) -> None:
    pair = BackToBack().started(accept=Accept("j") if isinstance(last_word, Exit) else None)
    pair.to_caller(last_word)
    assert pair.machine.cancel() == b""
    assert pair.machine.cancel() == b""


@pytest.mark.parametrize("garbage", [b"", b"\xc1"], ids=["closed-before-exit", "garbage"])
def test_no_cancel_once_the_connection_has_failed(garbage: bytes) -> None:
    pair = BackToBack().started(accept=Accept("j"))
    pair.machine.receive_data(garbage)
    with pytest.raises((TransportError, RemoteProtocolError)):
        pair.machine.next_event()
    assert pair.machine.cancel() == b""


def test_no_cancel_after_a_receipt() -> None:
    pair = BackToBack().started()
    pair.to_caller(EXIT, Receipt(b"r"))
    assert pair.machine.cancel() == b""


# ---- stdin within the credit, for any chunking ---------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    chunks=st.lists(st.integers(1, 3 * MAX_DATA // 2), min_size=1, max_size=8),
    credit_steps=st.lists(st.integers(STDIN_WINDOW // 64, STDIN_WINDOW), min_size=1, max_size=8),
)
def test_stdin_in_any_chunks_stays_within_the_window(chunks: list[int], credit_steps: list[int]) -> None:
    """A driver that sends min(chunk, stdin_room) and waits for credit when the room is 0 never
    sends what the node's machine refuses, and the node gets every byte, in order."""
    pair = BackToBack().started()
    payload = (bytes(range(251)) * (sum(chunks) // 251 + 1))[: sum(chunks)]
    received = bytearray()
    uncredited = 0  # what the node has taken but not yet credited back
    steps = itertools.cycle(credit_steps)
    offset = 0
    for size in chunks:
        chunk = payload[offset : offset + size]
        offset += size
        while chunk:
            room = pair.machine.stdin_room
            if room == 0:
                # The node grants part of what its job has taken (the window is empty, so it is > 0).
                grant = min(next(steps), uncredited)
                assert grant > 0
                assert pair.to_caller(Credit(grant)) == [Credit(grant)]
                uncredited -= grant
                continue
            assert room <= MAX_DATA
            assert room == min(pair.node.stdin_window, MAX_DATA), "both ends agree on the window"
            piece, chunk = chunk[:room], chunk[room:]
            (event,) = pair.to_node(pair.machine.send_stdin(piece))
            assert isinstance(event, Stdin)
            received += event.data
            uncredited += len(event.data)
    assert pair.to_node(pair.machine.end_stdin()) == [StdinEnd()]
    assert bytes(received) == payload
    assert not pair.node.errored
    note_event("waited for credit" if len(payload) > STDIN_WINDOW else "within the first window")


# ---- deadlines: the caller trusts no node to make progress --------------------------------------------


def _connected(timeouts: Timeouts, now: float = 100.0) -> BackToBack:
    pair = BackToBack()
    pair.machine = CallMachine(CALL, timeouts)
    pair.to_node(pair.machine.request_data())
    pair.machine.connected(now)
    pair.to_node(pair.machine.start())
    return pair


def _heard(pair: BackToBack, now: float, *messages: Message) -> list[Event]:
    pair.machine.receive_data(b"".join(pair.node.send(m) for m in messages), now)
    events = []
    while (event := pair.machine.next_event()) is not None:
        events.append(event)
    return events


def test_the_default_timeouts() -> None:
    assert Timeouts() == Timeouts(accept=DEFAULT_ACCEPT_TIMEOUT, idle=DEFAULT_IDLE_TIMEOUT)
    assert (DEFAULT_ACCEPT_TIMEOUT, DEFAULT_IDLE_TIMEOUT) == (60.0, 60.0)
    assert DEFAULT_IDLE_TIMEOUT >= 2 * KEEPALIVE  # a live node is never taken for a dead one
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError):
            Timeouts(accept=bad)
        with pytest.raises(ValueError):
            Timeouts(idle=bad)


def test_no_deadline_before_the_handshake_is_done() -> None:
    assert CallMachine(CALL).wake_at() == math.inf


def test_a_node_that_does_not_accept_is_cancelled_then_given_up() -> None:
    pair = _connected(Timeouts(accept=5, idle=1))
    assert pair.machine.wake_at() == 105  # the accept timeout, not the (shorter) idle one
    assert pair.machine.on_timer(104.9) == b""  # too early: nothing
    assert pair.to_node(pair.machine.on_timer(105)) == [Cancel()]
    assert pair.machine.wake_at() == 105 + CANCEL_GRACE
    with pytest.raises(
        TransportError, match="did not accept the call within 5s and the node did not end the call"
    ):
        pair.machine.on_timer(105 + CANCEL_GRACE)


def test_a_reject_in_the_grace_is_still_the_timeout() -> None:
    pair = _connected(Timeouts(accept=5))
    pair.to_node(pair.machine.on_timer(105))
    _heard(pair, 106, Reject(RejectCode.CANCELLED, "cancelled while queued"))
    assert pair.machine.finished and pair.machine.wake_at() == math.inf
    assert str(pair.machine.timed_out) == "the node did not accept the call within 5s; the call was cancelled"


def test_a_node_silent_during_the_job_is_cancelled() -> None:
    pair = _connected(Timeouts(accept=5, idle=10))
    _heard(pair, 103, ACCEPT)
    assert pair.machine.wake_at() == 113
    _heard(pair, 110, Stdout(b"x"))
    assert pair.machine.wake_at() == 120  # every message renews it
    _heard(pair, 119, Credit(0))  # the node's keepalive
    assert pair.machine.wake_at() == 129
    assert pair.to_node(pair.machine.on_timer(129)) == [Cancel()]
    _heard(pair, 130, Exit(None, 9, "cancelled"))
    assert (
        str(pair.machine.timed_out)
        == "the node sent nothing for 10s while the job ran; the job was cancelled"
    )


def test_part_of_a_message_is_not_silence() -> None:
    pair = _connected(Timeouts(idle=10))
    _heard(pair, 101, ACCEPT)
    wire = pair.node.send(Stdout(b"y" * 1000))
    pair.machine.receive_data(wire[:500], 109)
    assert pair.machine.next_event() is None
    assert pair.machine.wake_at() == 119


def test_the_callers_deadline_comes_first_when_it_is_sooner() -> None:
    pair = _connected(Timeouts(accept=60, idle=60))
    pair.machine.set_deadline(102)
    assert pair.machine.wake_at() == 102
    pair.to_node(pair.machine.on_timer(102))
    assert "deadline passed" in str(pair.machine.timed_out)
    pair.machine.set_deadline(None)


def test_no_timer_once_the_node_has_exited_and_sent_the_receipt() -> None:
    pair = _connected(Timeouts(accept=1, idle=1))
    _heard(pair, 100.5, ACCEPT, EXIT, Receipt(b"signed"))
    assert pair.machine.complete
    assert pair.machine.wake_at() == math.inf
    assert pair.machine.on_timer(1000) == b""
    assert pair.machine.timed_out is None
    assert pair.machine.result().exit == EXIT
    assert pair.machine.result().receipt == b"signed"


def test_a_paid_job_waits_a_while_for_its_receipt_and_then_is_complete_without() -> None:
    pair = _connected(Timeouts(accept=1, idle=1))
    _heard(pair, 100.5, ACCEPT, EXIT)
    assert pair.machine.finished and not pair.machine.complete
    assert pair.machine.wake_at() == 100.5 + RECEIPT_WAIT
    assert pair.machine.on_timer(100.5 + RECEIPT_WAIT) == b""  # no Cancel: the job is over
    assert pair.machine.complete and pair.machine.timed_out is None
    assert pair.machine.result().receipt is None


def test_a_node_that_closes_after_exit_completes_the_call() -> None:
    pair = _connected(Timeouts(accept=1, idle=1))
    _heard(pair, 100.5, ACCEPT, EXIT)
    pair.machine.receive_data(b"")
    assert pair.machine.next_event() == ConnectionClosed()
    assert pair.machine.complete


def test_a_free_job_is_complete_at_its_exit() -> None:
    pair = _connected(Timeouts(accept=1, idle=1))
    _heard(pair, 100.5, Accept("job-2", Terms()), EXIT)
    assert pair.machine.complete
    assert pair.machine.wake_at() == math.inf
