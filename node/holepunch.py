"""Hole punching: turn a relayed connection into a direct one, as libp2p's DCUtR does.

Two nodes behind NATs that already talk through a relay agree, over that relayed stream,
on a moment to dial each other at once. Each side's outgoing SYN makes its own router
expect the other's, so the two SYNs cross and TCP's simultaneous open connects them
directly. Between two cone NATs that keep ports (plain MASQUERADE, most home routers)
this works; a symmetric NAT picks a new port for every destination, the address the other
side dials is then wrong, and the caller stays on the relay.

The exchange (`HolePunch`, sans-IO, per role, a literal transition table):

    initiator                           responder
      Connect(addresses)  ------------->            the initiator starts its clock
                          <-------------  Connect(addresses)
      Sync                ------------->            round trip measured: RTT
      waits RTT / 2, dials                          dials at once, on Sync

so both SYNs leave within a few milliseconds of each other. The `addresses` are where a
side will dial *from*: its observed IP (the router's, from `node.reach`) and the local
port it bound for the punch, which a port-keeping NAT maps to the same number.

`punch` is the Trio driver over any stream (the relayed one in use): it binds the port,
runs the exchange, dials, and returns the direct socket stream or None. The direct
connection is not trusted because it connected: whoever uses it runs the Noise handshake
with the peer's key over it, as over any connection. A failed attempt is retried up to
`ATTEMPTS` times, as DCUtR does, each with a fresh port.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import msgpack
import trio

from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError

MAX_FRAME = 1024  # bytes of one message, after its 2-byte length
MAX_ADDRESSES = 4
ATTEMPTS = 3
EXCHANGE_TIMEOUT = 10.0  # seconds for Connect, Connect, Sync over the relay
DIAL_TIMEOUT = 5.0  # seconds for the simultaneous open (SYNs are retried after 1 and 3 s)


class Role(enum.Enum):
    INITIATOR = "initiator"  # sends the first Connect and measures the round trip
    RESPONDER = "responder"


class State(enum.Enum):
    START = "start"
    CONNECT_SENT = "connect-sent"  # initiator: waits for the responder's Connect
    CONNECT_RECEIVED = "connect-received"  # initiator: sends Sync; responder: answers Connect
    SYNC_AWAITED = "sync-awaited"  # responder: its Connect sent, waits for Sync
    DIAL = "dial"  # both: dial now (the initiator after RTT / 2)
    ERROR = "error"  # a violation, by either side: refuses everything


@dataclass(frozen=True)
class Connect:
    """Where the sender will dial from: `HOST:PORT` strings (at most MAX_ADDRESSES)."""

    addresses: tuple[str, ...]


@dataclass(frozen=True)
class Sync:
    """The initiator's go: the responder dials on receiving it."""


Message = Connect | Sync

# (role, state) -> {(message type, sent by us): next state}. Anything else is a violation.
TRANSITIONS: dict[tuple[Role, State], dict[tuple[type, bool], State]] = {
    (Role.INITIATOR, State.START): {(Connect, True): State.CONNECT_SENT},
    (Role.INITIATOR, State.CONNECT_SENT): {(Connect, False): State.CONNECT_RECEIVED},
    (Role.INITIATOR, State.CONNECT_RECEIVED): {(Sync, True): State.DIAL},
    (Role.RESPONDER, State.START): {(Connect, False): State.CONNECT_RECEIVED},
    (Role.RESPONDER, State.CONNECT_RECEIVED): {(Connect, True): State.SYNC_AWAITED},
    (Role.RESPONDER, State.SYNC_AWAITED): {(Sync, False): State.DIAL},
}

_KINDS: dict[type, int] = {Connect: 1, Sync: 2}


def encode(message: Message) -> bytes:
    """The framed bytes of `message`: a 2-byte big-endian length, then msgpack [kind, fields]."""
    fields = list(message.addresses) if isinstance(message, Connect) else []
    body = bytes(msgpack.packb([_KINDS[type(message)], fields]))
    if len(body) > MAX_FRAME:
        raise LocalProtocolError(f"a hole-punch message of {len(body)} bytes exceeds {MAX_FRAME}")
    return struct.pack(">H", len(body)) + body


def check_address(text: str) -> tuple[str, int]:
    """IPv4:PORT of a Connect as (ip, port); RemoteProtocolError unless a host one may dial
    (not loopback, unspecified or multicast: a peer must not aim our dial anywhere odd).
    Only IPv4 is punched: NAT is an IPv4 affair."""
    host, _, port = text.rpartition(":")
    try:
        ip = ipaddress.IPv4Address(host)
    except ValueError:
        raise RemoteProtocolError(f"hole-punch address {text[:80]!r} is not IPv4:PORT") from None
    if not (port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise RemoteProtocolError(f"hole-punch address {text[:80]!r} has no port in 1..65535")
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise RemoteProtocolError(f"hole-punch address {text[:80]!r} is not a host to dial")
    return str(ip), int(port)


def _decode(body: bytes) -> Message:
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RemoteProtocolError("hole-punch message is not msgpack") from exc
    match value:
        case [1, list() as addresses] if 0 < len(addresses) <= MAX_ADDRESSES and all(
            isinstance(a, str) for a in addresses
        ):
            for address in addresses:
                check_address(address)
            return Connect(tuple(addresses))
        case [2, []]:
            return Sync()
    raise RemoteProtocolError("unknown or malformed hole-punch message")


class HolePunch:
    """One side of the exchange in the module docstring: `send` returns bytes to write,
    `receive_data` takes what arrived, `next_event` gives the peer's messages in order."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.state = State.START
        self._buffer = b""

    def _step(self, message: Message, sent: bool) -> None:
        following = TRANSITIONS.get((self.role, self.state), {}).get((type(message), sent))
        if following is None:
            what = f"{'sending' if sent else 'receiving'} {type(message).__name__}"
            state, self.state = self.state, State.ERROR
            error = LocalProtocolError if sent else RemoteProtocolError
            raise error(f"hole punch ({self.role.value}): {what} in state {state.value}")
        self.state = following

    def send(self, message: Message) -> bytes:
        if self.state is State.ERROR:
            raise LocalProtocolError("the hole punch failed earlier: nothing more can be sent")
        data = encode(message)
        self._step(message, sent=True)
        return data

    def receive_data(self, data: bytes) -> None:
        if self.state is State.ERROR:
            raise LocalProtocolError("the hole punch failed earlier: nothing more can be received")
        self._buffer += data
        if len(self._buffer) > 2 + MAX_FRAME + 2 + MAX_FRAME:  # never more than two messages in flight
            self.state = State.ERROR
            raise RemoteProtocolError("the peer sent more than the hole punch allows")

    def next_event(self) -> Message | None:
        """The next whole message from the peer, or None if more bytes are needed."""
        if self.state is State.ERROR:
            raise LocalProtocolError("the hole punch failed earlier")
        if len(self._buffer) < 2:
            return None
        (length,) = struct.unpack(">H", self._buffer[:2])
        if length > MAX_FRAME:
            self.state = State.ERROR
            raise RemoteProtocolError(f"a hole-punch message of {length} bytes exceeds {MAX_FRAME}")
        if len(self._buffer) < 2 + length:
            return None
        body, self._buffer = self._buffer[2 : 2 + length], self._buffer[2 + length :]
        try:
            message = _decode(body)
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        self._step(message, sent=False)
        return message


# --- the Trio driver ------------------------------------------------------------------------


async def _next(stream: trio.abc.Stream, machine: HolePunch) -> Message:
    while True:
        message = machine.next_event()
        if message is not None:
            return message
        data = await stream.receive_some(MAX_FRAME)
        if not data:
            raise RemoteProtocolError("the peer closed the stream during the hole punch")
        machine.receive_data(bytes(data))


def _bound_socket() -> trio.socket.SocketType:
    """A TCP socket bound to a fresh port on every interface, to dial from (and be dialled at)."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _dial(sock: trio.socket.SocketType, addresses: Sequence[str]) -> trio.SocketStream | None:
    """Simultaneous open from `sock` to the first of `addresses` (only IPv4 is punched)."""
    host, port = check_address(addresses[0])
    with trio.move_on_after(DIAL_TIMEOUT):
        try:
            await sock.connect((host, port))
        except OSError:
            return None
        return trio.SocketStream(sock)
    return None


async def punch_once(stream: trio.abc.Stream, role: Role, observed_ip: str) -> trio.SocketStream | None:
    """One exchange over `stream` and one simultaneous open; the direct stream, or None."""
    machine = HolePunch(role)
    sock = _bound_socket()
    try:
        await sock.bind(("0.0.0.0", 0))
        ours = Connect((f"{observed_ip}:{sock.getsockname()[1]}",))
        with trio.fail_after(EXCHANGE_TIMEOUT):
            if role is Role.INITIATOR:
                started = trio.current_time()
                await stream.send_all(machine.send(ours))
                theirs = await _next(stream, machine)
                rtt = trio.current_time() - started
                await stream.send_all(machine.send(Sync()))
                await trio.sleep(rtt / 2)  # the Sync's way to the responder: both dial now
            else:
                theirs = await _next(stream, machine)
                await stream.send_all(machine.send(ours))
                await _next(stream, machine)  # Sync
        assert isinstance(theirs, Connect)
        direct = await _dial(sock, theirs.addresses)
    except BaseException:
        sock.close()
        raise
    if direct is None:
        sock.close()
    return direct


async def punch(
    stream: trio.abc.Stream, role: Role, observed_ip: str, *, attempts: int = ATTEMPTS
) -> trio.SocketStream | None:
    """Up to `attempts` punches over `stream` (both sides must agree on `attempts`); the direct
    stream, or None when every one failed (stay on the relay). A violation by the peer, a
    timeout of the exchange or a closed stream end it at once, also with None."""
    for _ in range(attempts):
        try:
            direct = await punch_once(stream, role, observed_ip)
        except (RemoteProtocolError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if direct is not None:
            return direct
    return None
