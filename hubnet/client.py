"""The client: open a secure session to a node and run a call, list or status.

This is the Pi's hot path, so it drives the sans-IO session and job machines over a
plain blocking socket and one thread for stdin, without an event loop: importing
Trio would cost more than the whole call.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from identity.errors import (
    HandshakeError,
    HostKeyMismatch,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from identity.keys import Identity, encode_peer_id
from identity.session import MAX_RECEIVE, Data, HandshakeComplete, NoiseSession
from node.naming import Target
from node.protocol import (
    DATA_CHUNK,
    Accept,
    Call,
    ConnectionClosed,
    Exit,
    JobConnection,
    Message,
    Reject,
    Role,
    Start,
    Stderr,
    Stdin,
    StdinEnd,
    Stdout,
)

ReplyT = TypeVar("ReplyT", bound=Message)


class KnownHostsStore(Protocol):
    """What `connect` needs from known_hosts (see `hubnet.known_hosts.KnownHosts`)."""

    def lookup(self, address: str) -> bytes | None: ...

    def add(self, address: str, peer: bytes) -> None: ...


class SecureConnection:
    """A finished secure session over a blocking socket; `send` is safe from two threads."""

    def __init__(self, sock: socket.socket, session: NoiseSession, remote_identity: bytes) -> None:
        self.sock = sock
        self.remote_identity = remote_identity
        self._session = session
        self._send_lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            try:
                self.sock.sendall(self._session.send(data))
            except OSError as exc:
                raise TransportError(f"connection lost: {exc.strerror or exc}") from exc

    def receive(self) -> bytes:
        """Decrypted bytes; b"" when the peer closed cleanly."""
        while True:
            event = self._session.next_event()
            if isinstance(event, Data):
                if event.data:
                    return event.data
                continue
            if event is not None:
                raise RemoteProtocolError("second handshake inside a session")
            chunk = _recv(self.sock)
            if not chunk:
                self._session.check_eof()
                return b""
            self._session.receive_data(chunk)

    def close(self) -> None:
        self.sock.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(MAX_RECEIVE)
    except TimeoutError as exc:
        raise TransportError("timed out waiting for the server") from exc
    except OSError as exc:
        raise TransportError(f"connection lost: {exc.strerror or exc}") from exc


def _dial(target: Target, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except TimeoutError as exc:
        raise TransportError(f"cannot connect to {target.address}: timed out") from exc
    except OSError as exc:
        raise TransportError(f"cannot connect to {target.address}: {exc.strerror or exc}") from exc
    # Each handshake message goes out in one write; without NODELAY delayed ACKs stall every call.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _handshake(
    target: Target, identity: Identity, remote: bytes | None, first_data: bytes, timeout: float
) -> tuple[socket.socket, NoiseSession, HandshakeComplete]:
    sock = _dial(target, timeout)
    try:
        session = NoiseSession(
            initiator=True,
            identity=identity.public_key,
            static_private=identity.noise_private_key,
            remote_identity=remote,
        )
        sock.sendall(session.initiate(first_data if remote is not None else b""))
        while True:
            event = session.next_event()
            outgoing = session.data_to_send()
            if outgoing:
                sock.sendall(outgoing)
            if isinstance(event, HandshakeComplete):
                return sock, session, event
            chunk = _recv(sock)
            if not chunk:
                raise HandshakeError(f"{target.address} closed the connection during the handshake")
            session.receive_data(chunk)
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
    announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> SecureConnection:
    """Open a secure session to `target` and deliver `first_data` as early as is safe.

    A pinned or remembered key gives IK (the request rides in the first packet). An
    unknown server is reached with XX and remembered. If a remembered key fails, an XX
    probe tells a changed key (refused loudly) from any other failure.
    """
    remembered = known_hosts.lookup(target.address)
    if target.peer is not None and remembered is not None and remembered != target.peer:
        raise HostKeyMismatch(_changed_key_message(target, remembered, target.peer, known_hosts))
    expected = target.peer or remembered
    try:
        sock, session, done = _handshake(target, identity, expected, first_data, timeout)
    except HandshakeError:
        if expected is None:
            raise
        actual = _probe_identity(target, identity, timeout)
        if actual != expected:
            if target.peer is not None:
                raise HostKeyMismatch(
                    f"{target.address} is {encode_peer_id(actual)}, not the pinned {encode_peer_id(expected)}"
                ) from None
            raise HostKeyMismatch(_changed_key_message(target, expected, actual, known_hosts)) from None
        raise
    sock.settimeout(None)  # jobs may run for as long as the server allows
    conn = SecureConnection(sock, session, done.remote_identity)
    if expected is None:
        if remembered is None:
            known_hosts.add(target.address, done.remote_identity)
            announce(
                f"hubnode: remembered {target.address} as {encode_peer_id(done.remote_identity)} "
                "(trust on first use)"
            )
        conn.send(first_data)
    return conn


def _probe_identity(target: Target, identity: Identity, timeout: float) -> bytes:
    """Learn the key a server presents now (XX), sending it nothing else."""
    sock, _session, done = _handshake(target, identity, None, b"", timeout)
    sock.close()
    return done.remote_identity


def _changed_key_message(target: Target, old: bytes, new: bytes, known_hosts: KnownHostsStore) -> str:
    where = getattr(known_hosts, "path", "known_hosts")
    return (
        f"REMOTE KEY CHANGED for {target.address}: remembered {encode_peer_id(old)}, "
        f"now {encode_peer_id(new)}; someone may be intercepting. "
        f"If the server really changed its key, remove its line from {where}"
    )


def _messages(conn: SecureConnection, job: JobConnection) -> Message | None:
    while (event := job.next_event()) is None:
        job.receive_data(conn.receive())
    return None if isinstance(event, ConnectionClosed) else event


def request(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    message: Message,
    reply_type: type[ReplyT],
    *,
    timeout: float = 10.0,
) -> ReplyT:
    """One request, one reply of `reply_type`: a service list or a status."""
    job = JobConnection(Role.CLIENT)
    conn = connect(target, identity, known_hosts, job.send(message), timeout=timeout)
    conn.sock.settimeout(timeout)
    try:
        reply = _messages(conn, job)
    finally:
        conn.close()
    if reply is None:
        raise TransportError(f"{target.address} closed the connection without answering")
    if not isinstance(reply, reply_type):
        raise RemoteProtocolError(f"expected {reply_type.__name__}, got {type(reply).__name__}")
    return reply


@dataclass(frozen=True)
class CallResult:
    exit: Exit
    job_id: str


def open_call(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    call: Call,
    *,
    timeout: float = 10.0,
    wait_for_accept: bool = False,
) -> OpenCall:
    """Connect and send the call. With `wait_for_accept`, also wait until the node accepts.

    Waiting costs a round trip before stdin flows, but every failure up to then (refused
    connection, wrong key, busy, no such service) has consumed no stdin, so a caller that
    chose this node from several can safely try the next one.
    """
    job = JobConnection(Role.CLIENT)
    conn = connect(target, identity, known_hosts, job.send(call), timeout=timeout)
    if not wait_for_accept:
        return OpenCall(target, conn, job)
    try:
        conn.send(job.send(Start()))
        conn.sock.settimeout(timeout)
        first = _messages(conn, job)
        conn.sock.settimeout(None)  # accepted: the job may run for as long as the node allows
    except BaseException:
        conn.close()
        raise
    if isinstance(first, Accept):
        return OpenCall(target, conn, job, first.job_id, started=True)
    conn.close()
    if isinstance(first, Reject):
        raise Rejected(first.code, first.reason)
    raise TransportError(f"{target.address} closed the connection before accepting the call")


@dataclass
class OpenCall:
    """A call whose request has been sent (and, if `started`, accepted)."""

    target: Target
    conn: SecureConnection
    job: JobConnection
    job_id: str = ""
    started: bool = False


def call(
    target: Target,
    identity: Identity,
    known_hosts: KnownHostsStore,
    call: Call,
    *,
    stdin_fd: int | None,
    timeout: float = 10.0,
) -> CallResult:
    """Run one remote job on `target` (see `finish_call`)."""
    return finish_call(open_call(target, identity, known_hosts, call, timeout=timeout), stdin_fd=stdin_fd)


def finish_call(
    opened: OpenCall, *, stdin_fd: int | None, stdout_fd: int = 1, stderr_fd: int = 2
) -> CallResult:
    """Stream stdin up and stdout/stderr down as they come, until the job exits.

    `stdin_fd=None` sends an empty stdin. Raises `Rejected` if the node refuses, and
    TransportError/RemoteProtocolError if the connection fails before the exit.
    """
    conn, job, job_id = opened.conn, opened.job, opened.job_id
    try:
        start = b"" if opened.started else job.send(Start())
        if stdin_fd is None:
            _send_quietly(conn, start + job.send(StdinEnd()))
        else:
            if start:
                _send_quietly(conn, start)
            # Encoding happens on the stdin thread; JobConnection's send-side state is only
            # touched there from now on, and the main thread only receives.
            threading.Thread(target=_pump_stdin, args=(conn, job, stdin_fd), daemon=True).start()
        while True:
            message = _messages(conn, job)
            if message is None:
                raise TransportError(f"{opened.target.address} closed the connection before the job finished")
            if isinstance(message, Stdout):
                _write_all(stdout_fd, message.data)
            elif isinstance(message, Stderr):
                _write_all(stderr_fd, message.data)
            elif isinstance(message, Accept):
                job_id = message.job_id
            elif isinstance(message, Reject):
                raise Rejected(message.code, message.reason)
            elif isinstance(message, Exit):
                return CallResult(message, job_id)
    finally:
        conn.close()


def _send_quietly(conn: SecureConnection, data: bytes) -> None:
    # The node may have refused the call and closed already; its Reject is still there to read,
    # and a send error must not hide it. A real failure shows up on the next receive.
    with contextlib.suppress(TransportError):
        conn.send(data)


def _pump_stdin(conn: SecureConnection, job: JobConnection, fd: int) -> None:
    with contextlib.suppress(TransportError, OSError):
        while data := os.read(fd, DATA_CHUNK):
            conn.send(job.send(Stdin(data)))
        conn.send(job.send(StdinEnd()))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
