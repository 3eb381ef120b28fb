"""The client's core: one call as a sans-IO machine, shared by every driver.

The blocking `hubnode call` (`hubnet.client`), the Trio API (`hubnet.trio_client`) and
later fan-out all drive this one machine, so what a call may send and when lives here
once: the request, the live caller's Start, stdin within the credit the node grants,
end of stdin, a Cancel (at most once, and only while it can still matter), and the
node's answers up to Exit. Drivers own the socket and the clock; the deadlines are here.

A caller trusts no node to make progress (see `Timeouts`): from the handshake the node
has `accept` seconds to Accept (or Reject) the call, and while the job runs it may send
nothing at all for at most `idle` seconds (a live node sends a keepalive, an empty
Credit, every `KEEPALIVE` seconds); the caller's own deadline for the whole call comes on
top. A driver waits for the node until `wake_at()`; when that comes, `on_timer()` gives
it the Cancel to send, and after `CANCEL_GRACE` more without the node's last word it
raises TransportError. When the node does end the call in that grace, `timed_out` is the
error the driver raises: a call cancelled at a deadline never looks like a success.

A paid job (its Accept held money) is followed by the node's signed receipt: a driver
reads on after Exit until `complete` (the receipt came, the node closed, or RECEIPT_WAIT
passed); whether the receipt is right is for `hubnet.receipt_spool` to check.

It wraps the job protocol's `JobConnection`, which refuses anything illegal; this layer
adds what a caller needs on top: how much stdin it may send now, whether the job is
over, and its result.
"""

from __future__ import annotations

import math

from hubnet.identity.errors import OutputTooLarge, TransportError
from hubnet.identity.frozen import frozen
from hubnet.node.protocol import (
    KEEPALIVE,
    MAX_DATA,
    MAX_STDIN_WINDOW,
    Accept,
    Call,
    Cancel,
    ConnectionClosed,
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
# What the API and `hubnode map` keep of one job's output in memory unless told otherwise: above a
# node's own default cap (services.toml's max_output, 100 MiB), far below a robot's memory.
DEFAULT_MAX_OUTPUT = 256 << 20
CANCEL_GRACE = 2.0
# How long a caller waits, by default, from the handshake to the node's Accept (a call
# that waits in a busy node's queue counts), and how long a running job's node may send
# nothing at all (it sends a keepalive every KEEPALIVE seconds). client.toml's
# `accept_timeout` and `idle_timeout` change them; docs/getting-started.md lists them.
DEFAULT_ACCEPT_TIMEOUT = 60.0
DEFAULT_IDLE_TIMEOUT = 4 * KEEPALIVE
# How long a caller waits after a paid job's Exit for its receipt (the node sends both at once).
RECEIPT_WAIT = 5.0

_NODE_FINISHED = (State.EXITED, State.DONE, State.CLOSED)


def located(error: TransportError, address: object) -> TransportError:
    """`error` (of the same class), saying which node it concerns: a caller with many calls
    needs to know."""
    if str(address) in str(error):
        return error
    return type(error)(f"{address}: {error}")


class CollectedOutput:
    """A job's stdout and stderr kept in memory, at most `limit` bytes together (None: no
    limit). Every byte from a node is hostile until checked, and a node need not keep its
    own output limit: one that sends more ends the call with OutputTooLarge."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.stdout = bytearray()
        self.stderr = bytearray()

    def add_stdout(self, data: bytes) -> None:
        self._add(self.stdout, data)

    def add_stderr(self, data: bytes) -> None:
        self._add(self.stderr, data)

    def _add(self, buffer: bytearray, data: bytes) -> None:
        if self.limit is not None and len(self.stdout) + len(self.stderr) + len(data) > self.limit:
            raise OutputTooLarge(f"the node sent more than {self.limit} bytes of output (max_output)")
        buffer.extend(data)


@frozen
class CallResult:
    """How a job ended: the node's Exit, its job id, the terms it ran on, the node's signed
    receipt (a paid job's) and the node's key (b"" when the driver did not say)."""

    exit: Exit
    job_id: str
    terms: Terms
    receipt: bytes | None = None
    node: bytes = b""


@frozen
class Timeouts:
    """How long a caller waits for a node to make progress, in seconds.

    `accept`: from the end of the handshake until the node accepts (or refuses) the call.
    `idle`: while the job runs, the longest the node may send nothing at all.
    """

    accept: float = DEFAULT_ACCEPT_TIMEOUT
    idle: float = DEFAULT_IDLE_TIMEOUT

    def __post_init__(self) -> None:
        if not (self.accept > 0 and self.idle > 0):
            raise ValueError("timeouts must be positive")


class CallMachine:
    """One call from the caller's side: bytes out, events in, deadlines; no I/O.

    The clock is the driver's (time.monotonic, trio.current_time): every time given to
    the machine and every time it returns is on that clock.
    """

    def __init__(
        self, call: Call, timeouts: Timeouts | None = None, conn: JobConnection | None = None
    ) -> None:
        """`conn`: a connection whose status request the node answered (PROBED), to call on
        instead of a new one."""
        self.call = call
        self.timeouts = timeouts or Timeouts()
        self._conn = conn if conn is not None else JobConnection(Role.CLIENT)
        self._request = self._conn.send(call)
        self.accept: Accept | None = None
        self.reject: Reject | None = None
        self.exit: Exit | None = None
        self.receipt: bytes | None = None
        self.node = b""  # the node's key, once connected
        self._node_closed = False
        self._receipt_late = False
        self._deadline = math.inf  # the caller's own, for the whole call
        self._accept_by = math.inf
        self._heard = math.inf  # when the node last sent anything
        self._expired: str | None = None  # which deadline passed (a Cancel went out then)
        self._grace_until = math.inf

    def connected(self, now: float, node: bytes = b"") -> None:
        """The handshake with `node` (its key) is done at `now`: the node has
        `timeouts.accept` from now to accept."""
        self.node = node
        self._accept_by = now + self.timeouts.accept
        self._heard = now

    def set_deadline(self, deadline: float | None) -> None:
        """The caller's own deadline for the whole call (None: none); the call is cancelled
        when it passes."""
        self._deadline = math.inf if deadline is None else deadline

    def wake_at(self) -> float:
        """When the driver must call `on_timer` if the node sends nothing (math.inf: never)."""
        if self.finished:
            return self._heard + RECEIPT_WAIT if self.awaiting_receipt else math.inf
        if self._expired is not None:
            return self._grace_until
        if self.accept is None:
            return min(self._deadline, self._accept_by)
        return min(self._deadline, self._heard + self.timeouts.idle)

    def on_timer(self, now: float) -> bytes:
        """`wake_at()` has come: the Cancel to send (the node then has CANCEL_GRACE to end the
        call). Raises TransportError when the grace has passed too, or if the node can no
        longer be told. Before `wake_at()`, nothing."""
        if now < self.wake_at():
            return b""
        if self.awaiting_receipt:
            self._receipt_late = True  # the call is complete without it; the driver reports that
            return b""
        if self._expired is not None:
            raise TransportError(f"{self._expired} and the node did not end the {self._what}")
        if now >= self._deadline:
            self._expired = "the call's deadline passed"
        elif self.accept is None:
            self._expired = f"the node did not accept the call within {self.timeouts.accept:g}s"
        else:
            self._expired = f"the node sent nothing for {self.timeouts.idle:g}s while the job ran"
        self._grace_until = now + CANCEL_GRACE
        cancel = self.cancel()
        if not cancel:
            raise TransportError(f"{self._expired} and the node did not end the {self._what}")
        return cancel

    @property
    def _what(self) -> str:
        return "job" if self.accept is not None else "call"

    @property
    def timed_out(self) -> TransportError | None:
        """The error for a call that `on_timer` cancelled; None if none was."""
        if self._expired is None:
            return None
        return TransportError(f"{self._expired}; the {self._what} was cancelled")

    def request_data(self) -> bytes:
        """The Call's bytes: they ride in the secure session's first handshake message (or,
        on a probed connection, follow its status reply)."""
        return self._request

    def start(self) -> bytes:
        """Prove the caller is live: the node runs nothing before this. It asks for the widest
        stdin window; a node that does not know the field keeps to the first."""
        return self._conn.send(Start(MAX_STDIN_WINDOW))

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

    def send_stdin(self, data: bytes) -> tuple[bytes, ...]:
        """The parts to write for `data` (at most `stdin_room`; see `PeerMachine.send_parts`);
        none once the job can take no more."""
        if not self.wants_stdin or not data:
            return ()
        return self._conn.send_parts(Stdin(data))

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

    @property
    def awaiting_receipt(self) -> bool:
        """A paid job has exited and its receipt is still to come (see RECEIPT_WAIT)."""
        paid = self.accept is not None and self.accept.terms.held > 0
        waiting = not (self._node_closed or self._receipt_late or self._conn.errored)
        return paid and self.exit is not None and self.receipt is None and waiting

    @property
    def complete(self) -> bool:
        """Nothing more to wait for: finished, and a paid job's receipt came (or will not)."""
        return self.finished and not self.awaiting_receipt

    def receive_data(self, data: bytes | bytearray, now: float | None = None) -> None:
        """Bytes from the node (received at `now`: the node is not idle); b"" when it
        closed its stream."""
        if data and now is not None:
            self._heard = now
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
        elif isinstance(event, ConnectionClosed):
            self._node_closed = True
        return event

    def result(self) -> CallResult:
        """The finished call's result; LookupError before Exit."""
        if self.exit is None:
            raise LookupError("the call has not exited")
        accept = self.accept or Accept("")
        return CallResult(self.exit, accept.job_id, accept.terms, self.receipt, self.node)
