"""The client's core: one call as a sans-IO machine, shared by every driver.

The blocking `hubnode call` (`hubnet.client`), the Trio API (`hubnet.trio_client`) and
later fan-out all drive this one machine, so what a call may send and when lives here
once: the request, the live caller's Start, stdin within the credit the node grants,
end of stdin, a Cancel (at most once, and only while it can still matter), and the
node's answers up to Exit. Drivers own the socket, the clock and the deadline; when the
deadline passes they ask `cancel()` for the bytes to send and then wait at most
`CANCEL_GRACE` for the node's Exit.

It wraps the job protocol's `JobConnection`, which refuses anything illegal; this layer
adds what a caller needs on top: how much stdin it may send now, whether the job is
over, and its result.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubnet.identity.errors import TransportError
from hubnet.node.protocol import (
    MAX_DATA,
    Accept,
    Call,
    Cancel,
    Event,
    Exit,
    JobConnection,
    Receipt,
    Reject,
    Role,
    Start,
    State,
    Stdin,
    StdinEnd,
    Terms,
)

# How long a driver waits for the node's Exit after sending Cancel (at a deadline or on
# an interrupt) before it gives up on the connection.
CANCEL_GRACE = 2.0

_NODE_FINISHED = (State.EXITED, State.DONE, State.CLOSED)


def located(error: TransportError, address: object) -> TransportError:
    """`error`, saying which node it concerns: a caller with many calls needs to know."""
    if str(address) in str(error):
        return error
    return TransportError(f"{address}: {error}")


@dataclass(frozen=True)
class CallResult:
    """How a job ended: the node's Exit, its job id and the terms it ran on."""

    exit: Exit
    job_id: str
    terms: Terms
    receipt: bytes | None = None


class CallMachine:
    """One call from the caller's side: bytes out, events in, no I/O."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self._conn = JobConnection(Role.CLIENT)
        self._request = self._conn.send(call)
        self.accept: Accept | None = None
        self.reject: Reject | None = None
        self.exit: Exit | None = None
        self.receipt: bytes | None = None

    def request_data(self) -> bytes:
        """The Call's bytes: they ride in the secure session's first handshake message."""
        return self._request

    def start(self) -> bytes:
        """Prove the caller is live: the node runs nothing before this."""
        return self._conn.send(Start())

    @property
    def started(self) -> bool:
        return self._conn.our_state not in (State.IDLE, State.CALLED)

    @property
    def wants_stdin(self) -> bool:
        """Whether stdin should still be read and sent: the job may still take it."""
        return self._conn.our_state is State.SENDING_STDIN and self._conn.their_state not in _NODE_FINISHED

    @property
    def stdin_room(self) -> int:
        """How many bytes of stdin may go in the next `send_stdin` (0: wait for credit)."""
        return min(self._conn.stdin_window, MAX_DATA) if self.wants_stdin else 0

    def send_stdin(self, data: bytes) -> bytes:
        """Bytes for `data` (at most `stdin_room`); nothing once the job can take no more."""
        if not self.wants_stdin or not data:
            return b""
        return self._conn.send(Stdin(data))

    def end_stdin(self) -> bytes:
        if not self.wants_stdin:
            return b""
        return self._conn.send(StdinEnd())

    def cancel(self) -> bytes:
        """A Cancel, if the node can still act on one; otherwise nothing."""
        if self.finished or self._conn.errored or self._conn.our_state in (State.CANCELLED, State.CLOSED):
            return b""
        return self._conn.send(Cancel())

    @property
    def finished(self) -> bool:
        """The node has said its last word about the job: Exit or Reject."""
        return self.exit is not None or self.reject is not None

    def receive_data(self, data: bytes) -> None:
        """Bytes from the node; b"" when it closed its stream."""
        self._conn.receive_data(data)

    def next_event(self) -> Event | None:
        """The node's next message (Accept, Stdout, Stderr, Credit, Exit, Receipt, Reject), or
        ConnectionClosed after its last word; None for more data. A node that closes before
        its last word raises TransportError, one that breaks the protocol RemoteProtocolError."""
        event = self._conn.next_event()
        if isinstance(event, Accept):
            self.accept = event
        elif isinstance(event, Reject):
            self.reject = event
        elif isinstance(event, Exit):
            self.exit = event
        elif isinstance(event, Receipt):
            self.receipt = event.record
        return event

    def result(self) -> CallResult:
        """The finished call's result; LookupError before Exit."""
        if self.exit is None:
            raise LookupError("the call has not exited")
        accept = self.accept or Accept("")
        return CallResult(self.exit, accept.job_id, accept.terms, self.receipt)
