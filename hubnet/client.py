"""The blocking client: `hubnode call`, `services` and `status` on one socket, one thread.

This is the Pi's hot path, so it drives the sans-IO machines (the secure session through
`identity.blocking`, the call through `hubnet.call_machine`) over a plain blocking socket
with `poll`, without an event loop: importing Trio would cost more than the whole call.
One thread does everything, so no machine is ever shared between threads; stdin is read
only as far as the node's credit allows, and a deadline (the call machine's: the node's
time to accept, its idle time, the caller's own) or an interrupt sends a Cancel.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import select
import sys
import time
from collections.abc import Callable

from hubnet.call_machine import CallMachine, CallResult, Timeouts, located
from hubnet.dht.addresses import DirectAddress
from hubnet.dialer import Dialer, TcpDialer, dial_first
from hubnet.identity.blocking import SecureSocket, connect_secure_socket
from hubnet.identity.cheap_typing import TypeVar
from hubnet.identity.errors import HandshakeError, Rejected, RemoteProtocolError, TransportError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.node.naming import Target
from hubnet.node.protocol import (
    DATA_CHUNK,
    Accept,
    Call,
    Event,
    JobConnection,
    Message,
    Reject,
    RejectCode,
    Role,
    Stderr,
    Stdout,
)
from hubnet.trust import KnownHostsStore, expected_key, explain_failure, remember

ReplyT = TypeVar("ReplyT", bound=Message)
Sink = Callable[[bytes], object]

_TCP = TcpDialer()
# What `hubnode call` asks of the pipes it reads and writes (as the node does of a job's):
# each read then takes up to a whole stdin message, and each write of output goes in whole.
_PIPE_SIZE = 1 << 20


def _handshake(
    target: Target,
    identity: Identity,
    remote: bytes | None,
    first_data: bytes,
    timeout: float,
    dialer: Dialer,
) -> SecureSocket:
    sock = dial_first(dialer, target.addresses, timeout)
    try:
        return connect_secure_socket(sock, identity, remote, first_data if remote is not None else b"")
    except HandshakeError as exc:
        sock.close()
        raise type(exc)(f"{target.address}: {exc}") from None
    except BaseException:
        sock.close()
        raise


def connect(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    first_data: bytes,
    *,
    timeout: float = 10.0,
    dialer: Dialer = _TCP,
    announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> SecureSocket:
    """Open a secure session to `target` and deliver `first_data` as early as is safe.

    A pinned or remembered key gives IK (the request rides in the first packet). An
    unknown node is reached with XX and remembered (see `hubnet.trust`). The returned
    socket keeps `timeout` for reads; callers clear it once a job may run long.
    """
    expected = expected_key(target, known_hosts)
    try:
        secure = _handshake(target, identity, expected, first_data, timeout, dialer)
    except HandshakeError:
        if expected is None:
            raise
        probe = _handshake(target, identity, None, b"", timeout, dialer)
        probe.close()
        explain_failure(target, expected, probe.remote_identity, known_hosts)
        raise
    if expected is None:
        remember(target, secure.remote_identity, known_hosts, announce)
        secure.send_all(first_data)
    return secure


def _next_event(secure: SecureSocket, conn: JobConnection | CallMachine) -> Event:
    while (event := conn.next_event()) is None:
        conn.receive_data(secure.receive_some())
    return event


def request(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    message: Message,
    reply_type: type[ReplyT],
    *,
    timeout: float = 10.0,
    dialer: Dialer = _TCP,
) -> ReplyT:
    """One request, one reply of `reply_type`: a service list, a status or a peer list."""
    return exchange(target, identity, known_hosts, message, reply_type, timeout=timeout, dialer=dialer)[0]


def exchange(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    message: Message,
    reply_type: type[ReplyT],
    *,
    timeout: float = 10.0,
    dialer: Dialer = _TCP,
) -> tuple[ReplyT, bytes]:
    """As `request`, and the key of the node that answered (to check what it signed).
    A Reject raises Rejected."""
    job = JobConnection(Role.CLIENT)
    secure = connect(target, identity, known_hosts, job.send(message), timeout=timeout, dialer=dialer)
    try:
        reply = _next_event(secure, job)
    except TransportError as exc:
        raise located(exc, target.address) from exc
    finally:
        secure.close()
    if isinstance(reply, Reject) and reply_type is not Reject:
        raise Rejected(reply.code, reply.reason, reply.needed)
    if not isinstance(reply, reply_type):
        raise RemoteProtocolError(f"expected {reply_type.__name__}, got {type(reply).__name__}")
    return reply, secure.remote_identity


class PaymentRequired(Rejected):
    """The node `target` (pinned to the key its handshake proved) refused the call for want
    of money: it needs `needed` msat held (no account there, or too little in it)."""

    needed: int

    def __init__(self, reason: str, needed: int, target: Target) -> None:
        super().__init__(RejectCode.PAYMENT_REQUIRED, reason, needed)
        self.target = target

    @property
    def provider(self) -> str:
        """The node that asked, as --server takes it (PEER_ID@HOST:PORT, or its relayed address)."""
        address = self.target.address
        if isinstance(address, DirectAddress) and self.target.peer is not None:
            return f"{encode_peer_id(self.target.peer)}@{address}"
        return str(address)


@frozen
class OpenCall:
    """A call whose request has been sent (and, if the machine has started, accepted)."""

    target: Target
    secure: SecureSocket
    machine: CallMachine


def open_call(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    call: Call,
    *,
    timeout: float = 10.0,
    wait_for_accept: bool = False,
    dialer: Dialer = _TCP,
    timeouts: Timeouts | None = None,
) -> OpenCall:
    """Connect and send the call. With `wait_for_accept`, also wait until the node accepts.

    Waiting costs a round trip before stdin flows, but every failure up to then (refused
    connection, wrong key, busy, no such service, no Accept within `timeouts.accept`) has
    consumed no stdin, so a caller that chose this node from several can safely try the
    next one (`hubnet.discover` gives such a caller a shorter accept timeout), and a caller
    that pays can pay: a `payment-required` refusal naming its amount is PaymentRequired,
    with the node that asked.
    """
    machine = CallMachine(call, timeouts)
    secure = connect(target, identity, known_hosts, machine.request_data(), timeout=timeout, dialer=dialer)
    machine.connected(time.monotonic(), secure.remote_identity)
    opened = OpenCall(target, secure, machine)
    if not wait_for_accept:
        return opened
    return _accepted(opened, machine.start())


def open_call_on(
    target: Target,
    secure: SecureSocket,
    probed: JobConnection,
    call: Call,
    *,
    timeout: float = 10.0,
    timeouts: Timeouts | None = None,
) -> OpenCall:
    """`open_call` with `wait_for_accept`, on the connection of a status request the node
    answered (`probed` in PROBED, its StatusReply saying `calls`): no new connection or
    handshake. The session is already the node's (its key is `secure.remote_identity`)."""
    machine = CallMachine(call, timeouts, probed)
    secure.sock.settimeout(timeout)
    machine.connected(time.monotonic(), secure.remote_identity)
    return _accepted(OpenCall(target, secure, machine), machine.request_data() + machine.start())


def _accepted(opened: OpenCall, first: bytes) -> OpenCall:
    """`opened` once the node accepted its call, after sending `first` (the Start, and the
    Call if it has not gone yet); closed, and the failure raised, if it did not."""
    target, secure = opened.target, opened.secure
    try:
        secure.send_all(first)
        _pump(opened, _Sender(secure), None, _STDOUT, _STDERR, until_accepted=True)
    except TransportError as exc:
        secure.close()
        raise located(exc, target.address) from exc
    except Rejected as exc:
        secure.close()
        if exc.code != RejectCode.PAYMENT_REQUIRED or exc.needed is None:
            raise
        # Pinned to the key that asked: a token goes to that node and no other.
        asked = Target(target.address, secure.remote_identity, target.fallbacks)
        raise PaymentRequired(exc.reason, exc.needed, asked) from None
    except BaseException:
        secure.close()
        raise
    return opened


def fd_writer(fd: int) -> Sink:
    """A sink that writes everything to `fd`, blocking as a pipe's reader makes it."""

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    return write


_STDOUT, _STDERR = fd_writer(1), fd_writer(2)


def finish_call(
    opened: OpenCall,
    *,
    stdin_fd: int | None,
    stdout: Sink = _STDOUT,
    stderr: Sink = _STDERR,
    deadline: float | None = None,
) -> CallResult:
    """Stream stdin up and stdout/stderr down as they come, until the job exits.

    `stdin_fd=None` sends an empty stdin. `deadline` (time.monotonic()) cancels the job
    when it passes, as do the machine's `Timeouts` (no Accept in time, a node silent for
    too long), and the call raises TransportError (as the Trio client does) once the
    node has ended it or CANCEL_GRACE has passed. Raises `Rejected` if the node refuses,
    TransportError if the connection fails, and RemoteProtocolError if the node breaks
    the protocol.
    """
    secure, machine = opened.secure, opened.machine
    sender = _Sender(secure)
    try:
        machine.set_deadline(deadline)
        # A job may run as long as its node allows; the machine's deadlines bound the waits,
        # and a node that stops reading fails a send after the idle time, not never.
        secure.sock.settimeout(machine.timeouts.idle)
        for fd in (stdin_fd, 1 if stdout is _STDOUT else None):
            _widen_pipe(fd)
        sender.send(b"" if machine.started else machine.start())
        if stdin_fd is None:
            sender.send(machine.end_stdin())
        _pump(opened, sender, stdin_fd, stdout, stderr)
    except TransportError as exc:
        raise located(exc, opened.target.address) from exc
    except RemoteProtocolError as exc:
        raise RemoteProtocolError(f"{opened.target.address}: the node broke the protocol: {exc}") from exc
    except KeyboardInterrupt:
        # Tell the node at once, so that the job stops (and stops costing) now, not at its timeout.
        sender.send(machine.cancel())
        raise
    finally:
        secure.close()
    return machine.result()


def _widen_pipe(fd: int | None) -> None:
    """Best effort: a file, a terminal or a refusal (pipe-max-size) leaves it as it was."""
    if fd is not None:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _pump(
    opened: OpenCall,
    sender: _Sender,
    stdin_fd: int | None,
    stdout: Sink,
    stderr: Sink,
    *,
    until_accepted: bool = False,
) -> None:
    """Until the node's last word (or, `until_accepted`, its Accept): its messages to the
    sinks, stdin up within the credit (through `sender`), and the machine's deadlines kept."""
    secure, machine, sock = opened.secure, opened.machine, opened.secure.sock
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    reading_stdin = False
    while True:
        # Every whole message first: one read (the handshake's last, too) may have brought several.
        if early := secure.pending():
            machine.receive_data(early, time.monotonic())
        while not machine.complete and (event := machine.next_event()) is not None:
            _deliver(machine, event, stdout, stderr)
            if until_accepted and isinstance(event, Accept):
                return
        if machine.complete:
            break
        if stdin_fd is not None and (machine.stdin_room > 0) != reading_stdin:
            reading_stdin = not reading_stdin
            if reading_stdin:
                poller.register(stdin_fd, select.POLLIN)
            else:
                poller.unregister(stdin_fd)
        wake_at = machine.wake_at()
        wait_ms = None if wake_at == math.inf else max(0, math.ceil((wake_at - time.monotonic()) * 1000))
        ready = dict(poller.poll(wait_ms))
        if not ready:
            sender.send(machine.on_timer(time.monotonic()))  # raises once it is over
            continue
        if sock.fileno() in ready:
            data = secure.receive_ready()
            if data is None:
                machine.receive_data(b"")  # the node closed its stream
            elif data:
                machine.receive_data(data, time.monotonic())
        elif stdin_fd is not None and stdin_fd in ready:
            data = os.read(stdin_fd, min(machine.stdin_room, DATA_CHUNK))
            sender.send(*(machine.send_stdin(data) if data else (machine.end_stdin(),)))
    if machine.timed_out is not None:
        raise machine.timed_out


def _deliver(machine: CallMachine, event: Event, stdout: Sink, stderr: Sink) -> None:
    if isinstance(event, Stdout):
        stdout(event.data)
    elif isinstance(event, Stderr):
        stderr(event.data)
    elif isinstance(event, Reject):
        # After a Cancel at a deadline, the refusal is the deadline's doing: say so.
        raise machine.timed_out or Rejected(event.code, event.reason, event.needed)


class _Sender:
    """Every message of a call to the node, in order, each encrypted and written at once.

    A failed send is kept quiet: the node may have refused the call and closed already,
    its Reject is still there to read, and a send error must not hide it. A real failure
    shows up on the next receive.

    It used to hand bulk stdin to a thread of its own, so that encrypting and writing
    overlapped reading; but each hand-off's wake-ups cost more than they saved: without the
    thread, `bench/throughput.py`'s upload went from 400-610 to 520-710 MiB/s and a round
    trip through `cat` from 240-265 to 270-330, with less CPU.
    """

    def __init__(self, secure: SecureSocket) -> None:
        self._secure = secure
        self.failed = False

    def send(self, *parts: bytes) -> None:
        if not any(parts) or self.failed:
            return
        try:
            self._secure.send_parts(parts)
        except TransportError:
            self.failed = True
