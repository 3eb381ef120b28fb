"""The serving node's Trio driver: one TCP port, many services.

Each connection is one secure session carrying one request (see `node.protocol`).
Everything the peer sends is checked by the sans-IO machines; this module owns the
sockets, the timeouts, the job slots and the process runner.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from identity.errors import HubnetError, PolicyError, TransportError
from identity.keys import Identity, encode_peer_id, fingerprint
from identity.secure import SecureStream, accept_secure
from identity.session import MAX_RECEIVE
from node.naming import format_service_id
from node.protocol import (
    DATA_CHUNK,
    MAX_PEERS,
    MAX_TEXT,
    Accept,
    Call,
    Cancel,
    Exit,
    GetPeers,
    GetStatus,
    JobConnection,
    ListServices,
    Message,
    PeerInfo,
    Peers,
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
)
from node.runner import Job, JobLimits, JobOutcome, SpawnError
from node.services import NodeConfig, Service

log = logging.getLogger("hubnet.node")

# A job's environment is built from nothing: only these come from the node's own.
_PASSED_ENV = ("PATH",)
_STDIN_BUFFER = 4  # chunks in flight between the client and the job's stdin


class Node:
    """A node serving `config`'s services as `identity` on one TCP port."""

    def __init__(
        self,
        config: NodeConfig,
        identity: Identity,
        *,
        handshake_timeout: float = 10.0,
        start_timeout: float = 30.0,
        max_connections: int = 256,
    ) -> None:
        self.config = config
        self.identity = identity
        self.handshake_timeout = handshake_timeout
        self.start_timeout = start_timeout
        self.running = 0
        # What `hubnode peers --server` is told: set by whoever runs the node's DHT peer.
        self.peers: Callable[[], Sequence[PeerInfo]] = tuple
        self.queued = 0
        # Connections still in the handshake or waiting hold memory and a socket; bound them.
        self._connections = trio.CapacityLimiter(max_connections)
        self._slots = trio.CapacityLimiter(config.max_jobs)
        self._service_slots = {
            sid: trio.CapacityLimiter(svc.max_concurrent) for sid, svc in config.services.items()
        }

    async def serve(
        self, *, task_status: trio.TaskStatus[list[tuple[str, int]]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve forever; `nursery.start(node.serve)` returns the bound addresses."""
        host = self.config.listen_host or None
        listeners = await trio.open_tcp_listeners(self.config.listen_port, host=host)
        task_status.started([listener.socket.getsockname()[:2] for listener in listeners])
        await trio.serve_listeners(self.handle_connection, listeners)

    async def handle_connection(self, transport: trio.abc.Stream) -> None:
        """Serve one connection; a misbehaving peer only ends its own connection."""
        async with transport:
            try:
                self._connections.acquire_nowait()
            except trio.WouldBlock:
                log.warning("too many connections; refusing one")
                return
            try:
                await self._serve(transport)
            except* trio.TooSlowError:
                log.info("connection timed out")
            except* (HubnetError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
                log.info("connection ended: %s", "; ".join(str(e) for e in group.exceptions))
            except* Exception:
                # A bug must cost one connection, never the node and every other caller's job.
                log.exception("internal error while serving a connection")
            finally:
                self._connections.release()

    async def _serve(self, transport: trio.abc.Stream) -> None:
        with trio.fail_after(self.handshake_timeout):
            stream, first_data = await accept_secure(transport, self.identity)
        conn = JobConnection(Role.SERVER)
        conn.receive_data(first_data)
        with trio.fail_after(self.start_timeout):
            request = await _next_message(stream, conn)
        if isinstance(request, ListServices):
            await _reply(stream, conn, self._services())
        elif isinstance(request, GetStatus):
            await _reply(stream, conn, self.status())
        elif isinstance(request, GetPeers):
            await _reply(stream, conn, Peers(tuple(self.peers()[:MAX_PEERS])))
        elif isinstance(request, Call):
            await self._call(stream, conn, request)
        await _linger(stream)

    def status(self) -> StatusReply:
        one, five, fifteen = os.getloadavg()
        return StatusReply(self.running, self.queued, self.config.max_jobs, (one, five, fifteen))

    def _services(self) -> Services:
        return Services(
            tuple(
                ServiceInfo(svc.name, svc.id, svc.description[:MAX_TEXT], svc.policy.summary()[:MAX_TEXT])
                for svc in sorted(self.config.services.values(), key=lambda s: s.name)
            )
        )

    def _check_call(self, call: Call, peer: bytes) -> tuple[Service, list[str]] | Reject:
        service = self.config.services.get(call.service_id)
        if service is None:
            return Reject("no-such-service", f"no service {format_service_id(call.service_id)} here")
        if not service.allows(peer):
            return Reject("not-allowed", f"peer {fingerprint(peer)} may not call {service.name}")
        try:
            argv = service.argv(call.args)
        except PolicyError as exc:
            return Reject("bad-arguments", str(exc))
        free = self._slots.available_tokens and self._service_slots[service.id].available_tokens
        if not free and self.queued >= self.config.max_queued:
            return Reject("busy", "too many calls are waiting; try again later")
        return service, argv

    async def _call(self, stream: SecureStream, conn: JobConnection, call: Call) -> None:
        peer = stream.remote_identity
        checked = self._check_call(call, peer)
        if isinstance(checked, Reject):
            log.info(
                "refused %s from %s: %s",
                format_service_id(call.service_id),
                fingerprint(peer),
                checked.reason,
            )
            await _reply(stream, conn, checked)
            return
        service, argv = checked
        # The request may be a replay of a recorded handshake; only the live caller can send Start.
        with trio.fail_after(self.start_timeout):
            go = await _next_message(stream, conn)
        if not isinstance(go, Start):
            return
        async with self._job_slot(service):
            await self._run(stream, conn, service, argv, peer)

    @asynccontextmanager
    async def _job_slot(self, service: Service) -> AsyncIterator[None]:
        self.queued += 1
        try:
            await self._service_slots[service.id].acquire()
        except BaseException:
            self.queued -= 1
            raise
        try:
            async with self._slots:
                self.queued -= 1
                self.running += 1
                try:
                    yield
                finally:
                    self.running -= 1
        finally:
            self._service_slots[service.id].release()

    async def _run(
        self, stream: SecureStream, conn: JobConnection, service: Service, argv: list[str], peer: bytes
    ) -> None:
        job_id = secrets.token_hex(8)
        workdir = tempfile.mkdtemp(prefix=f"hubnet-{service.name}-")
        env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
        env |= {"LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
        env |= dict(service.env)
        env |= {"HUBNET_CLIENT": encode_peer_id(peer), "HUBNET_JOB": job_id, "HUBNET_SERVICE": service.name}
        limits = JobLimits(service.timeout, service.max_output, service.cpu_seconds, service.memory_bytes)
        job = Job(argv, env=env, cwd=workdir, limits=limits, read_size=DATA_CHUNK)
        output = _JobOutput(stream, conn)
        try:
            await stream.send_all(conn.send(Accept(job_id, 0)))
            stdin_send, stdin_receive = trio.open_memory_channel[bytes](_STDIN_BUFFER)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pump_client, stream, conn, job, stdin_send)
                try:
                    outcome = await job.run(stdin_receive, output)
                except SpawnError as exc:
                    await output.send_stderr(f"hubnode: {exc}\n".encode())
                    outcome = JobOutcome(127, None, "failed-to-start", 0.0, 0.0, 0, 0, 0)
                nursery.cancel_scope.cancel()
            ended = f"exit {outcome.exit_code}" if outcome.signal is None else f"signal {outcome.signal}"
            log.info(
                "job %s %s for %s: %s%s after %.2fs",
                job_id,
                service.name,
                fingerprint(peer),
                ended,
                f" ({outcome.error})" if outcome.error else "",
                outcome.wall_seconds,
            )
            await _reply(stream, conn, _exit_message(outcome))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


class _JobOutput:
    """Sends a job's output to the client as protocol messages."""

    def __init__(self, stream: SecureStream, conn: JobConnection) -> None:
        self._stream = stream
        self._conn = conn

    async def send_stdout(self, data: bytes) -> None:
        await self._stream.send_all(self._conn.send(Stdout(data)))

    async def send_stderr(self, data: bytes) -> None:
        await self._stream.send_all(self._conn.send(Stderr(data)))


async def _pump_client(
    stream: SecureStream, conn: JobConnection, job: Job, stdin: trio.MemorySendChannel[bytes]
) -> None:
    """Client messages -> the job: stdin data, end of stdin, cancel; a vanished client kills it."""
    async with stdin:
        while True:
            try:
                message = await _next_message(stream, conn)
            except TransportError as exc:
                # A reset (a killed caller with unread data sends one) is as much a vanished caller
                # as a clean close: end the job the same way, so it is reported, not torn down.
                log.info("caller lost: %s", exc)
                message = None
            except HubnetError:
                job.cancel("disconnected")
                raise
            if message is None:
                job.cancel("disconnected")
                return
            if isinstance(message, Stdin):
                # If the program closed its stdin, the rest is dropped, as a pipe would.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stdin.send(message.data)
            elif isinstance(message, StdinEnd):
                await stdin.aclose()
            elif isinstance(message, Cancel):
                job.cancel("cancelled")


def _exit_message(outcome: JobOutcome) -> Exit:
    usage = Usage(
        wall_ms=round(outcome.wall_seconds * 1000),
        cpu_ms=round(outcome.cpu_seconds * 1000),
        stdin_bytes=outcome.stdin_bytes,
        stdout_bytes=outcome.stdout_bytes,
        stderr_bytes=outcome.stderr_bytes,
    )
    return Exit(outcome.exit_code, outcome.signal, outcome.error, usage, 0)


async def _reply(stream: SecureStream, conn: JobConnection, message: Message) -> None:
    await stream.send_all(conn.send(message))


async def _linger(stream: SecureStream, timeout: float = 5.0) -> None:
    """Let the client read our last reply before we close.

    Closing a TCP socket with unread input sends a reset, which can destroy the reply
    still in flight (an Exit after a job that ignored part of its stdin, a Reject that
    crossed the client's stdin). So we half-close and discard input until the client
    closes, for a bounded time.
    """
    transport = stream.transport
    with trio.move_on_after(timeout), contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        if isinstance(transport, trio.abc.HalfCloseableStream):
            await transport.send_eof()
        while await transport.receive_some(MAX_RECEIVE):
            pass


async def _next_message(stream: SecureStream, conn: JobConnection) -> Message | None:
    """The peer's next protocol message, or None when it closed the stream."""
    while (message := conn.next_event()) is None:
        data = await stream.receive_some()
        if not data:
            return None
        conn.receive_data(data)
    return message
