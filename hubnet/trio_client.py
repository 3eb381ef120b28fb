"""The Trio client: many calls at once from one process, each with its own deadline.

It drives the same sans-IO machines as the blocking `hubnet.client` (the call through
`hubnet.call_machine`, the session through `identity.secure`, trust through
`hubnet.trust`), so a call behaves the same from a robot's Trio program as from
`hubnode call`. Cancelling a call (its deadline, the machine's `Timeouts` for a node that
does not accept or goes silent, or any enclosing cancel scope) sends the node a Cancel,
so the job stops at once rather than at its timeout.

    client = Client(identity)
    async with trio.open_nursery() as nursery:
        for text in texts:
            nursery.start_soon(client.call, target, Call(service_id_for_name("espeak")), text.encode())
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from hubnet.call_machine import CANCEL_GRACE, CallMachine, CallResult, CollectedOutput, Timeouts, located
from hubnet.dht.addresses import Address, RelayAddress
from hubnet.dialer import linked
from hubnet.identity.errors import (
    ClosedEarly,
    HandshakeClosed,
    HandshakeError,
    HubnetError,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node.holepunch import PunchFailed
from hubnet.node.holepunch import Role as PunchRole
from hubnet.node.holepunch_trio import punch
from hubnet.node.naming import Target
from hubnet.node.protocol import (
    Accept,
    Call,
    Credit,
    Event,
    JobConnection,
    Message,
    Reject,
    Role,
    Stderr,
    Stdout,
)
from hubnet.node.relay_protocol import Connect, Linked, RelayConnection
from hubnet.node.relay_protocol import Role as RelayRole
from hubnet.punching import Punching
from hubnet.receipt_spool import keep_receipt
from hubnet.trust import KnownHostsStore, PinnedKeys, expected_key, explain_failure, remember

ReplyT = TypeVar("ReplyT", bound=Message)
OutputSink = Callable[[bytes], Awaitable[object]]
Stdin = bytes | AsyncIterable[bytes]
SHED_RETRIES = 5  # attempts after the first, for a call shed before its Accept
SHED_PAUSE = 0.05  # seconds before the first retry; doubled each time, with jitter


class StreamDialer(Protocol):
    """Connects to an address, or raises TransportError; the caller bounds the time."""

    async def dial(self, address: Address) -> trio.abc.Stream: ...


class TcpStreamDialer:
    """Direct addresses over TCP (Trio sets TCP_NODELAY on its socket streams), relayed ones
    through their relay (as `hubnet.dialer.TcpDialer`: the stream is the target's once linked,
    or the direct one when `punching` asks for a hole punch and it gets through)."""

    def __init__(self, punching: Punching | None = None) -> None:
        self.punching = punching

    async def dial(self, address: Address) -> trio.abc.Stream:
        if isinstance(address, RelayAddress):
            return await self._through_relay(address)
        try:
            return await trio.open_tcp_stream(address.host, address.port)
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror or exc}") from exc

    async def _through_relay(self, address: RelayAddress) -> trio.abc.Stream:
        punching = self.punching
        asked = punching is not None and punching.wanted(address.target)
        transport, answer = await self._linked(address, asked)
        if not (asked and answer.punch and punching is not None):
            return transport
        try:
            # The initiator's leftover is always b"": the target speaks only after our handshake.
            direct, _ = await punch(transport, PunchRole.INITIATOR, answer.observed, answer.peer)
        except PunchFailed:
            await transport.aclose()
            punching.punched(address.target, address.relay, None)
            return (await self._linked(address, False))[0]
        punching.punched(address.target, address.relay, direct is not None)
        if direct is None:
            return transport
        await transport.aclose()
        return direct

    async def _linked(self, address: RelayAddress, punch: bool) -> tuple[trio.abc.Stream, Linked]:
        """A stream to the relay, linked to `address.target`, and the relay's Linked."""
        transport = await self.dial(address.relay)
        try:
            secure = await connect_secure(transport, Identity.generate(), address.relay_peer)
            conn = RelayConnection(RelayRole.REQUESTER)
            await secure.send_all(conn.send(Connect(address.target, punch)))
            while (event := conn.next_event()) is None:
                conn.receive_data(await secure.receive_some())
            answer = linked(event, address)
            if secure.detach():
                raise RemoteProtocolError(f"relay {address.relay} sent data before the target did")
        except BaseException:
            await transport.aclose()
            raise
        return transport, answer


@dataclass(frozen=True)
class CallOutput:
    """A finished call: its result, and its output where no sink took it."""

    result: CallResult
    stdout: bytes
    stderr: bytes


class Client:
    """Calls nodes from a Trio program; safe to use from many tasks at once."""

    def __init__(
        self,
        identity: Identity,
        *,
        known_hosts: KnownHostsStore | None = None,
        dialer: StreamDialer | None = None,
        connect_timeout: float = 10.0,
        timeouts: Timeouts | None = None,
        announce: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
        receipts_dir: Path | None = None,
    ) -> None:
        """`timeouts`: how long a node may take to accept a call and stay silent during a
        job (the defaults, or client.toml's: `load_client_config(path).timeouts`).
        Every paid job's receipt is checked (a bad or missing one is said on stderr) and,
        with `receipts_dir` (a home's data folder), kept there (`hubnet.receipt_spool`)."""
        self.identity = identity
        self.known_hosts = known_hosts or PinnedKeys()
        self.dialer = dialer or TcpStreamDialer()
        self.connect_timeout = connect_timeout
        self.timeouts = timeouts or Timeouts()
        self.announce = announce
        self.receipts_dir = receipts_dir

    async def connect(self, target: Target, first_data: bytes) -> SecureStream:
        """A secure stream to `target` with `first_data` delivered (see `hubnet.trust`)."""
        expected = expected_key(target, self.known_hosts)
        try:
            with trio.fail_after(self.connect_timeout):
                try:
                    stream = await self._handshake(target, expected, first_data)
                except HandshakeError:
                    if expected is None:
                        raise
                    probe = await self._handshake(target, None, b"")
                    await probe.aclose()
                    explain_failure(target, expected, probe.remote_identity, self.known_hosts)
                    raise
        except trio.TooSlowError:
            raise TransportError(f"cannot connect to {target.address}: timed out") from None
        if expected is None:
            remember(target, stream.remote_identity, self.known_hosts, self.announce)
            await stream.send_all(first_data)
        return stream

    async def _dial(self, target: Target) -> trio.abc.Stream:
        """The first of the target's addresses that connects (its next relay when one refuses)."""
        failures: list[TransportError | RemoteProtocolError] = []
        for address in target.addresses:
            try:
                return await self.dialer.dial(address)
            except (TransportError, RemoteProtocolError) as exc:
                failures.append(exc)
        if len(failures) == 1:
            raise failures[0]
        raise TransportError("; ".join(str(exc) for exc in failures))

    async def _handshake(self, target: Target, remote: bytes | None, first_data: bytes) -> SecureStream:
        transport = await self._dial(target)
        try:
            return await connect_secure(
                transport, self.identity, remote, first_data if remote is not None else b""
            )
        except HandshakeError as exc:
            await transport.aclose()
            raise type(exc)(f"{target.address}: {exc}") from None
        except BaseException:
            await transport.aclose()
            raise

    async def request(self, target: Target, message: Message, reply_type: type[ReplyT]) -> ReplyT:
        """One request, one reply of `reply_type`: a service list, a status or a peer list."""
        job = JobConnection(Role.CLIENT)
        stream = await self.connect(target, job.send(message))
        async with stream:
            with trio.fail_after(self.connect_timeout):
                reply = await _next_event(stream, job)
        if not isinstance(reply, reply_type):
            raise RemoteProtocolError(f"expected {reply_type.__name__}, got {type(reply).__name__}")
        return reply

    async def call(
        self,
        target: Target,
        call: Call,
        *,
        stdin: Stdin = b"",
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        timeout: float | None = None,
        accepted: Callable[[Accept], object] | None = None,
        max_output: int | None = None,
    ) -> CallOutput:
        """Run one job on `target`: stream `stdin` up and the output down until it exits.

        Output goes to the sinks if given, else it is collected into the CallOutput, at most
        `max_output` bytes of it (OutputTooLarge past that; None: no limit).
        `timeout` bounds the whole call, and the client's `timeouts` the node's time to
        accept and its silences: when one passes, the job is cancelled and TransportError
        raised. Raises `Rejected` if the node refuses the call. `accepted` is told the
        node's Accept (its terms: what the job may cost) as soon as it comes.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        attempt = 0
        while True:
            machine = CallMachine(call, self.timeouts)
            try:
                collected = _Collected(stdout, stderr, accepted, max_output)
                output = await self._call(target, machine, stdin, collected, deadline)
                keep_receipt(self.receipts_dir, output.result, self.identity.public_key)
                return output
            except (TransportError, HandshakeError) as exc:
                # A node that is full sheds connections that have not started a job (node.connections):
                # closed before its Accept, the call ran nothing, so if its stdin can be sent again it
                # is retried after a short random pause, within its deadline. Other failures (no
                # connection at all, a node that holds on but does not accept) are not retried.
                pause = SHED_PAUSE * 2**attempt * (0.5 + random.random())
                retry = (
                    attempt < SHED_RETRIES
                    and isinstance(exc, ClosedEarly | HandshakeClosed)
                    and machine.accept is None
                    and machine.reject is None
                    and isinstance(stdin, bytes)
                    and trio.current_time() + pause < deadline
                )
                if not retry:
                    named = located(exc, target.address) if isinstance(exc, TransportError) else exc
                    if named is not exc:
                        raise named from exc
                    raise
                await trio.sleep(pause)
                attempt += 1

    async def _call(
        self,
        target: Target,
        machine: CallMachine,
        stdin: Stdin,
        collected: _Collected,
        deadline: float,
    ) -> CallOutput:
        with trio.move_on_at(deadline) as connecting:
            stream = await self.connect(target, machine.request_data())
        if connecting.cancelled_caught:
            raise TransportError("the call's deadline passed while connecting")
        machine.connected(trio.current_time(), stream.remote_identity)
        machine.set_deadline(deadline)  # math.inf: none
        async with stream:
            await stream.send_all(machine.start())
            credit = trio.lowlevel.ParkingLot()
            feeding = trio.CancelScope()
            failure: HubnetError | None = None
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_feed, stream, machine, stdin, credit, feeding)
                    # Errors are kept out of the nursery, which would wrap them in a group.
                    try:
                        await _receive_until_finished(stream, machine, collected, credit, feeding)
                    except HubnetError as exc:
                        failure = exc
                    nursery.cancel_scope.cancel()
            except* trio.Cancelled:
                # Cancelled from outside (it leaves the nursery inside an exception group): tell
                # the node, so that the job stops (and costs) no more.
                with trio.CancelScope(shield=True), trio.move_on_after(CANCEL_GRACE):
                    await stream.send_all(machine.cancel())
                raise
        if failure is not None:
            raise failure
        if machine.reject is not None:
            raise Rejected(machine.reject.code, machine.reject.reason, machine.reject.needed)
        kept = collected.kept
        return CallOutput(machine.result(), bytes(kept.stdout), bytes(kept.stderr))


class _Collected:
    """Where output goes: the caller's sinks, or buffers."""

    def __init__(
        self,
        stdout: OutputSink | None,
        stderr: OutputSink | None,
        accepted: Callable[[Accept], object] | None = None,
        max_output: int | None = None,
    ) -> None:
        self.kept = CollectedOutput(max_output)
        self.accepted = accepted
        self._sinks = {Stdout: stdout, Stderr: stderr}

    async def deliver(self, event: Stdout | Stderr) -> None:
        sink = self._sinks[type(event)]
        if sink is not None:
            await sink(event.data)
        else:
            (self.kept.add_stdout if isinstance(event, Stdout) else self.kept.add_stderr)(event.data)


async def _next_event(stream: SecureStream, conn: JobConnection | CallMachine) -> Event:
    while (event := conn.next_event()) is None:
        conn.receive_data(await stream.receive_some())
    return event


async def _receive_until_finished(
    stream: SecureStream,
    machine: CallMachine,
    collected: _Collected,
    credit: trio.lowlevel.ParkingLot,
    feeding: trio.CancelScope,
) -> None:
    """The node's messages until its last word, keeping the machine's deadlines: when one
    passes, the feeding stops (it may hold the stream, blocked on a node that reads no
    more) and the Cancel goes out; the machine raises once the node's grace is over too."""
    while not machine.complete:
        event = await _next_event_until(stream, machine, machine.wake_at)
        if event is None:
            feeding.cancel()
            cancel = machine.on_timer(trio.current_time())
            with trio.move_on_at(machine.wake_at()):
                if cancel:
                    await stream.send_all(cancel)
        elif isinstance(event, Stdout | Stderr):
            await collected.deliver(event)
        elif isinstance(event, Accept) and collected.accepted is not None:
            collected.accepted(event)
        elif isinstance(event, Credit | Reject):
            credit.unpark_all()
    credit.unpark_all()
    if machine.timed_out is not None:
        raise machine.timed_out


async def _next_event_until(
    stream: SecureStream, machine: CallMachine, wake_at: Callable[[], float]
) -> Event | None:
    """The node's next message, or None once `wake_at()` has come (each read renews it: a
    long message that is still arriving is no silence)."""
    while (event := machine.next_event()) is None:
        with trio.move_on_at(wake_at()):
            data = await stream.receive_some()
            machine.receive_data(data, trio.current_time())
            continue
        return None
    return event


async def _chunks(stdin: Stdin) -> AsyncIterable[bytes]:
    if isinstance(stdin, bytes):
        if stdin:
            yield stdin
        return
    async for chunk in stdin:
        yield chunk


async def _feed(
    stream: SecureStream,
    machine: CallMachine,
    stdin: Stdin,
    credit: trio.lowlevel.ParkingLot,
    scope: trio.CancelScope,
) -> None:
    """Stdin up, never beyond the credit the node granted; the end of stdin after it.

    A send that fails ends the feeding only: the node may have refused the call and closed,
    and its Reject (or a real failure) is for the receiving side to report.
    """
    with scope, contextlib.suppress(TransportError):
        async for chunk in _chunks(stdin):
            view = memoryview(chunk)
            while view:
                while machine.stdin_room == 0:
                    if not machine.wants_stdin:
                        return  # the job has ended: the rest of stdin has nowhere to go
                    await credit.park()
                size = min(len(view), machine.stdin_room)
                await stream.send_parts(machine.send_stdin(bytes(view[:size])))
                view = view[size:]
        await stream.send_all(machine.end_stdin())
