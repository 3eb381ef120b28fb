"""The relay service: reservations for private nodes, and circuits spliced through to them.

A public node with `[relay]` in services.toml answers the relay protocol
(`node.relay_protocol`) on its one port. A private node keeps a reservation connection
open; a caller asks for it (Connect), the relay tells the holder (Incoming), the holder
claims the circuit on a fresh outbound connection (Claim), and the relay splices the
caller's and the target's raw bytes, inside which their own Noise session runs end to
end. What may be held and carried is decided by `RelayBook` (pure, no I/O); `Relay` owns
the waiting, the notices and the splice.

A relay learns who holds reservations (their peer ids), which source addresses call
them, when and how many bytes pass; it never sees a circuit's plaintext, and cannot pose
as a target, whose key the caller checks in the end-to-end handshake. The caller's hop to
the relay uses a fresh key per circuit, so the relay does not learn the caller's identity
either: callers are counted by their source address instead.

A relay with a price (`price_per_mib`) and a ledger charges each circuit's bytes to the
target's account there (node.relay_charges decides; this module holds, settles, releases).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field

import trio

from hubnet.identity.keys import fingerprint
from hubnet.identity.secure import SecureStream
from hubnet.node.connections import Connection, Phase, source_of
from hubnet.node.ledger import Ledger
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import Price
from hubnet.node.relay_charges import circuit_cost, circuit_hold
from hubnet.node.relay_protocol import (
    CIRCUIT_ID_LEN,
    CircuitLimits,
    Claim,
    Connect,
    ConnectionClosed,
    Event,
    Incoming,
    Linked,
    Message,
    RefusalCode,
    Refused,
    RelayConnection,
    Reserve,
    Reserved,
    Role,
)
from hubnet.node.services import RelayConfig, Service

log = logging.getLogger("hubnet.node.relay")

# The service a relay publishes an offer for, so that private nodes find relays in the DHT.
RELAY_SERVICE_NAME = "hubnet-relay"
RELAY_SERVICE_ID = service_id_for_name(RELAY_SERVICE_NAME)


def relay_service(config: RelayConfig) -> Service:
    """What a relay's offer says: the well-known relay service at the relay's price per MiB.
    (Its command is never run: a Call for it finds no such service in services.toml.)"""
    return Service(
        RELAY_SERVICE_NAME,
        RELAY_SERVICE_ID,
        ("hubnode-relay",),
        description="relays circuits to nodes behind NATs",
        price=Price(per_mib=config.price_per_mib),
    )


CLAIM_TIMEOUT = 10.0  # how long a caller waits for the target to claim its circuit
SPLICE_CHUNK = 256 * 1024  # one read of a spliced stream: as the job protocol's output chunks


class RelayBook:
    """Who holds reservations and circuits here, against the limits (pure bookkeeping)."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.reservations: Counter[bytes] = Counter()  # by holder peer id
        self.circuits_to: Counter[bytes] = Counter()  # by target peer id
        self.circuits_from: Counter[str | None] = Counter()  # by caller source (an IP)

    @property
    def limits(self) -> CircuitLimits:
        return CircuitLimits(self.config.max_circuit_bytes, self.config.max_circuit_seconds)

    def reserve(self, peer: bytes) -> Refused | None:
        """Take a reservation for `peer`, or say why not."""
        if self.reservations[peer] >= self.config.max_reservations_per_peer:
            return Refused(
                RefusalCode.PEER_RESERVATIONS_FULL,
                f"you hold {self.reservations[peer]} reservations here, the most one peer may",
            )
        if self.reservations.total() >= self.config.max_reservations:
            return Refused(
                RefusalCode.RESERVATIONS_FULL,
                f"this relay holds {self.reservations.total()} reservations, the most it takes",
            )
        self.reservations[peer] += 1
        return None

    def release(self, peer: bytes) -> None:
        self.reservations[peer] -= 1
        self.reservations += Counter()  # drops the counts that reached 0

    def open_circuit(self, target: bytes, source: str | None) -> Refused | None:
        """Take a circuit from `source` to `target`, or say why not."""
        if not self.reservations[target]:
            return Refused(RefusalCode.NO_RESERVATION, "the target holds no reservation at this relay")
        most = self.config.max_circuits_per_peer
        if self.circuits_to[target] >= most:
            return Refused(RefusalCode.CIRCUITS_FULL, f"the target has {most} circuits through this relay")
        if self.circuits_from[source] >= most:
            return Refused(RefusalCode.CIRCUITS_FULL, f"your address has {most} circuits through this relay")
        self.circuits_to[target] += 1
        self.circuits_from[source] += 1
        return None

    def close_circuit(self, target: bytes, source: str | None) -> None:
        self.circuits_to[target] -= 1
        self.circuits_from[source] -= 1
        self.circuits_to += Counter()  # drops the counts that reached 0
        self.circuits_from += Counter()


class RawStream(trio.abc.HalfCloseableStream):
    """A transport whose relay session has ended (`SecureStream.detach`): the bytes that
    session had read but not decrypted first, then the transport's own."""

    def __init__(self, transport: trio.abc.Stream, first: bytes) -> None:
        self.transport = transport
        self.first = first  # read before the transport (the relay splices it out at once)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.transport, trio.abc.HalfCloseableStream):
            await self.transport.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.first:
            size = len(self.first) if max_bytes is None else max_bytes
            chunk, self.first = self.first[:size], self.first[size:]
            await trio.lowlevel.checkpoint()
            return chunk
        return bytes(await self.transport.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.transport.aclose()


@dataclass(eq=False)
class _Holder:
    """One reservation connection: where Incoming notices for its peer go."""

    peer: bytes
    notices: trio.MemorySendChannel[bytes]


@dataclass(eq=False)
class _Pending:
    """A circuit a caller waits on until its target claims it; `caller_ip` is where the
    caller's connection comes from when it asked to hole-punch (else "")."""

    target: bytes
    caller_ip: str
    claimed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    target_stream: RawStream | None = None
    taken: bool = False  # a claim for it has been accepted
    linked: Linked | None = None  # what the caller is told once the target has claimed it


class Relay:
    """Serves relay requests; with `config` None, refuses them all (this node is no relay)."""

    def __init__(
        self,
        config: RelayConfig | None,
        *,
        ledger: Ledger | None = None,
        claim_timeout: float = CLAIM_TIMEOUT,
    ) -> None:
        self.config = config
        # Where circuits are charged to their targets (a priced relay); without one, relaying is free.
        self.ledger = ledger if config is not None and config.price_per_mib else None
        self.book = RelayBook(config) if config is not None else None
        self.claim_timeout = claim_timeout
        self.bytes_relayed = 0
        self._holders: dict[bytes, list[_Holder]] = {}
        self._pending: dict[bytes, _Pending] = {}

    async def serve(self, stream: SecureStream, first: bytes, tracked: Connection | None) -> None:
        """Answer the request that `first` (the first bytes after the handshake) begins."""
        conn = RelayConnection(Role.RELAY)
        conn.receive_data(first)
        request = await next_relay_event(stream, conn)
        if isinstance(request, ConnectionClosed):
            return
        if self.book is None:
            await _send(stream, conn, Refused(RefusalCode.NOT_A_RELAY, "this node does not relay"))
            return
        if isinstance(request, Reserve):
            _activate(tracked)  # a live holder: never shed for a newcomer
            await self._hold(stream, conn, self.book)
        elif isinstance(request, Connect):
            await self._connect(stream, conn, request, tracked, self.book)
        elif isinstance(request, Claim):
            await self._claim(stream, conn, request, tracked)

    def _charge(self, peer: bytes, circuit: bytes | None = None) -> int | Refused:
        """Hold one circuit's price of `peer`'s account (as the hold of `circuit`; with None,
        only see that it could be): the amount, 0 at a free relay, or the refusal."""
        if self.ledger is None:
            return 0
        assert self.config is not None
        amount = circuit_hold(self.config, self.ledger.balance(peer).available)
        if circuit is not None and not isinstance(amount, Refused):
            # No await since the balance was read: no other hold can have come between.
            self.ledger.hold(peer, _hold_id(circuit), amount)
        return amount

    async def _hold(self, stream: SecureStream, conn: RelayConnection, book: RelayBook) -> None:
        peer = stream.remote_identity
        charge = self._charge(peer)
        refusal = charge if isinstance(charge, Refused) else book.reserve(peer)
        if refusal is not None:
            log.info("refused a reservation for %s: %s", fingerprint(peer), refusal.code)
            await _send(stream, conn, refusal)
            return
        seconds = book.config.reservation_seconds
        notices, incoming = trio.open_memory_channel[bytes](book.config.max_circuits_per_peer)
        holder = _Holder(peer, notices)
        self._holders.setdefault(peer, []).append(holder)
        lock = trio.Lock()  # renewals and notices both write: one message at a time
        price = book.config.price_per_mib if self.ledger is not None else 0
        try:
            await _send(stream, conn, Reserved(seconds, book.limits, price))
            log.info("reservation for %s (%d held)", fingerprint(peer), book.reservations.total())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_send_notices, stream, conn, incoming, lock)
                with trio.move_on_after(seconds) as expiry:
                    while not isinstance(await next_relay_event(stream, conn), ConnectionClosed):
                        async with lock:
                            await _send(stream, conn, Reserved(seconds, book.limits, price))
                        expiry.deadline = trio.current_time() + seconds
                nursery.cancel_scope.cancel()
        finally:
            self._holders[peer].remove(holder)
            if not self._holders[peer]:
                del self._holders[peer]
            book.release(peer)
            log.info("reservation for %s ended", fingerprint(peer))

    async def _connect(
        self,
        stream: SecureStream,
        conn: RelayConnection,
        request: Connect,
        tracked: Connection | None,
        book: RelayBook,
    ) -> None:
        target = request.target
        source = tracked.source if tracked is not None else None
        refusal = book.open_circuit(target, source)
        if refusal is not None:
            log.info("refused a circuit from %s to %s: %s", source, fingerprint(target), refusal.code)
            await _send(stream, conn, refusal)
            return
        circuit = secrets.token_bytes(CIRCUIT_ID_LEN)
        held = self._charge(target, circuit)
        if isinstance(held, Refused):
            book.close_circuit(target, source)
            log.info("refused a circuit to %s: its account cannot pay for it", fingerprint(target))
            await _send(stream, conn, held)
            return
        pending = _Pending(target, punchable_ip(stream) if request.punch else "")
        self._pending[circuit] = pending
        budget = _Budget(book.limits.max_bytes)
        try:
            # The newest reservation first: an older one of the same peer may be a dead connection.
            holder = self._holders[target][-1]
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                holder.notices.send_nowait(circuit)
            with trio.move_on_after(self.claim_timeout):
                await pending.claimed.wait()
            if pending.target_stream is None or pending.linked is None:
                await _send(
                    stream, conn, Refused(RefusalCode.TARGET_UNAVAILABLE, "the target did not answer")
                )
                return
            await _send(stream, conn, pending.linked)
            _activate(tracked)  # a circuit carries a live call: never shed for a newcomer
            caller = RawStream(stream.transport, stream.detach())
            await self._splice(caller, pending.target_stream, book.limits, budget)
        finally:
            del self._pending[circuit]
            pending.done.set()
            book.close_circuit(target, source)
            if pending.linked is not None:
                # How many bytes a circuit carried tells a hole punch (a few dozen) from a relayed call.
                log.info("a circuit to %s closed after %d bytes", fingerprint(target), budget.carried)
            if self.ledger is not None:
                cost = circuit_cost(book.config, budget.carried, held)
                self.ledger.settle(_hold_id(circuit), cost, note=f"relayed {budget.carried} bytes")

    async def _claim(
        self, stream: SecureStream, conn: RelayConnection, claim: Claim, tracked: Connection | None
    ) -> None:
        pending = self._pending.get(claim.circuit)
        if pending is None or pending.target != stream.remote_identity or pending.taken:
            await _send(stream, conn, Refused(RefusalCode.NO_SUCH_CIRCUIT, "no circuit waits for you there"))
            return
        pending.taken = True  # before any wait: a second claim of the same circuit is refused
        assert self.book is not None
        target_ip = punchable_ip(stream) if claim.punch else ""
        pending.linked, to_target = linked_pair(self.book.limits, pending.caller_ip, target_ip)
        await _send(stream, conn, to_target)
        _activate(tracked)
        pending.target_stream = RawStream(stream.transport, stream.detach())
        pending.claimed.set()
        await pending.done.wait()  # the caller's task splices; this connection lives as long

    async def _splice(
        self, caller: RawStream, target: RawStream, limits: CircuitLimits, budget: _Budget
    ) -> None:
        """Copy bytes both ways until both ends have closed, or a limit is reached (then both
        are cut), counting them in `budget`. An end of stream is passed on as one, so each end
        can finish its last word."""
        with trio.move_on_after(limits.max_seconds) as timer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, caller, target, budget, nursery.cancel_scope)
                nursery.start_soon(self._pump, target, caller, budget, nursery.cancel_scope)
        if timer.cancelled_caught:
            log.info("a circuit reached its %d s limit and was cut", limits.max_seconds)
        elif budget.cut:
            log.info("a circuit reached its %d byte limit and was cut", limits.max_bytes)

    async def _pump(
        self, source: RawStream, sink: RawStream, budget: _Budget, both: trio.CancelScope
    ) -> None:
        try:
            if source.first:  # what the relay's own session had read past its last message
                data, source.first = source.first, b""
                if not self._carried(len(data), budget, both):
                    return
                await sink.send_all(data)
            from_socket, to_socket = _socket_of(source), _socket_of(sink)
            if from_socket is not None and to_socket is not None and hasattr(os, "splice"):
                if not await self._splice_sockets(from_socket, to_socket, budget, both):
                    return
            else:
                while data := await source.receive_some(SPLICE_CHUNK):
                    if not self._carried(len(data), budget, both):
                        return
                    await sink.send_all(data)
            await sink.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            both.cancel()  # one end is gone: the other has nothing more to hear

    def _carried(self, size: int, budget: _Budget, both: trio.CancelScope) -> bool:
        """Count `size` more bytes against the circuit's budget; False (and both ends cut) past it."""
        if size > budget.left:
            budget.cut = True
            both.cancel()
            return False
        budget.left -= size
        budget.carried += size
        self.bytes_relayed += size
        return True

    async def _splice_sockets(
        self,
        source: trio.socket.SocketType,
        sink: trio.socket.SocketType,
        budget: _Budget,
        both: trio.CancelScope,
    ) -> bool:
        """Move bytes from socket to socket through a pipe with splice(2), until the end of
        `source`'s stream (True) or the budget (False): the bytes never enter this process,
        which then costs a relay a fraction of the CPU of reading and writing them."""
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        try:
            with contextlib.suppress(OSError):  # a bigger pipe, fewer trips; the default 64 KiB works too
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, SPLICE_CHUNK)
            while True:
                await trio.lowlevel.wait_readable(source)
                try:
                    size = os.splice(source.fileno(), write_end, SPLICE_CHUNK, flags=flags)
                except BlockingIOError:
                    continue
                if size == 0:
                    return True
                if not self._carried(size, budget, both):
                    return False
                while size:
                    await trio.lowlevel.wait_writable(sink)
                    with contextlib.suppress(BlockingIOError):
                        size -= os.splice(read_end, sink.fileno(), size, flags=flags)
        finally:
            os.close(read_end)
            os.close(write_end)


@dataclass
class _Budget:
    """What a circuit may still carry (both directions), what it has carried, and whether it
    was cut for wanting more."""

    left: int
    carried: int = 0
    cut: bool = False


def linked_pair(limits: CircuitLimits, caller_ip: str, target_ip: str) -> tuple[Linked, Linked]:
    """What the relay tells the caller and the target once a circuit is linked. `caller_ip`
    and `target_ip` are where each end comes from if it asked to hole-punch and could be
    dialled there, else "": only when both are known do they punch, and only then does
    either learn where the relay sees the other. Two ends behind one address (one home's
    router) do not: each would dial its own router's public side, which few routers loop
    back (and a LAN has a shorter way: docs/lan-discovery.md)."""
    if caller_ip and target_ip and caller_ip != target_ip:
        return Linked(limits, True, caller_ip, target_ip), Linked(limits, True, target_ip, caller_ip)
    return Linked(limits), Linked(limits)


def punchable_ip(stream: SecureStream) -> str:
    """The IPv4 address `stream` comes from, if a hole punch could dial it, else ""."""
    source, _ = source_of(stream.transport)
    try:
        ip = ipaddress.IPv4Address(source or "")
    except ValueError:
        return ""
    return "" if ip.is_loopback or ip.is_unspecified or ip.is_multicast else str(ip)


def _hold_id(circuit: bytes) -> str:
    """A circuit's hold in the ledger (beside jobs' ids)."""
    return f"relay-{circuit.hex()}"


def _socket_of(stream: RawStream) -> trio.socket.SocketType | None:
    transport = stream.transport
    return transport.socket if isinstance(transport, trio.SocketStream) else None


def _activate(tracked: Connection | None) -> None:
    if tracked is not None:
        tracked.phase = Phase.ACTIVE


async def _send_notices(
    stream: SecureStream, conn: RelayConnection, circuits: trio.MemoryReceiveChannel[bytes], lock: trio.Lock
) -> None:
    async for circuit in circuits:
        async with lock:
            await _send(stream, conn, Incoming(circuit))


async def _send(stream: SecureStream, conn: RelayConnection, message: Message) -> None:
    await stream.send_all(conn.send(message))


async def next_relay_event(stream: SecureStream, conn: RelayConnection) -> Event:
    """The peer's next relay message (or ConnectionClosed), read from `stream`."""
    while (event := conn.next_event()) is None:
        conn.receive_data(await stream.receive_some())
    return event
