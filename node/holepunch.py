"""Hole punching: turn a relayed connection into a direct one, as libp2p's DCUtR does.

Two nodes behind NATs that already talk through a relay agree, over that relayed stream,
on a moment to dial each other at once. Each side's outgoing SYN makes its own router
expect the other's, so the two SYNs cross and TCP's simultaneous open connects them
directly. Between two cone NATs that keep ports (plain MASQUERADE, most home routers)
this works; a symmetric NAT picks a new port for every destination, the address the other
side dials is then wrong, and the two stay on the relay.

The exchange (`HolePunch`, sans-IO, per role, a literal transition table):

    initiator                           responder
      Connect(addresses)  ------------->            the initiator starts its clock
                          <-------------  Connect(addresses)
      Sync                ------------->            round trip measured: RTT
      waits RTT / 2, dials                          dials at once, on Sync
      Result(connected)   <------------>  Result(connected)   each says how its dial went

so both SYNs leave within a few milliseconds of each other. The `addresses` are where a
side will dial *from*: its IP as the relay sees it and the local port it bound for the
punch, which a port-keeping NAT maps to the same number.

The Results make the outcome one both sides know: the direct connection is used only when
both dials connected (`Outcome.DIRECT`), else both stay on the relayed stream, in which
every message of the exchange has then been read (`Outcome.RELAYED`): it is as clean as
before the exchange, and the end-to-end handshake runs in it next. Without them a dial that
connects on one side only (a SYN-ACK lost at the edge of the timeout) would leave one side
on each path. A failure before the outcome (a timeout, a violation, a closed stream) leaves
the relayed stream in an unknown state: drivers raise `PunchFailed` and drop it.

The drivers are thin: `node.holepunch_trio` (the serving node, the Trio client) and
`node.holepunch_blocking` (`hubnode call`, which must not import Trio) each bind the port,
feed this machine, sleep until `dial_at`, dial `dial_to` and report the dial. The direct
connection is not trusted because it connected: whoever uses it runs the Noise handshake
with the peer's key over it, as over any connection.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import msgpack

from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import LocalProtocolError, RemoteProtocolError, TransportError
from hubnet.identity.frozen import frozen

if TYPE_CHECKING:
    from typing import NoReturn

MAX_FRAME = 1024  # bytes of one message, after its 2-byte length
MAX_ADDRESSES = 4
# One attempt per call: a relayed call whose punch fails must not become slow. The SYNs of a
# simultaneous open are retried after 1 s, so a dial gets that one retry and a little more.
DIAL_TIMEOUT = 2.0
# The whole exchange, the dial included; past it the relayed stream's state is unknown.
PUNCH_TIMEOUT = 5.0


class PunchFailed(TransportError):
    """The exchange broke off before its outcome: the relayed stream it ran over is in an
    unknown state (a message of it may be unread) and must not carry anything more."""


class Role(enum.Enum):
    INITIATOR = "initiator"  # the caller: sends the first Connect and measures the round trip
    RESPONDER = "responder"  # the target


class State(enum.Enum):
    START = "start"
    CONNECT_SENT = "connect-sent"  # initiator: waits for the responder's Connect
    CONNECT_RECEIVED = "connect-received"  # initiator: sends Sync; responder: answers Connect
    SYNC_AWAITED = "sync-awaited"  # responder: its Connect sent, waits for Sync
    DIAL = "dial"  # both: dial now (the initiator after RTT / 2), then send the Result
    RESULT_SENT = "result-sent"  # ours sent, the peer's awaited
    RESULT_RECEIVED = "result-received"  # the peer's in, ours not yet sent
    DONE = "done"  # both Results known: the outcome is decided
    ERROR = "error"  # a violation, by either side: refuses everything


class Outcome(enum.Enum):
    DIRECT = "direct"  # both dials connected: use the direct connection, drop the relayed one
    RELAYED = "relayed"  # carry on over the relayed stream, every message of the exchange read


@frozen
class Connect:
    """Where the sender will dial from: `IPv4:PORT` strings (at most MAX_ADDRESSES)."""

    addresses: tuple[str, ...]


@frozen
class Sync:
    """The initiator's go: the responder dials on receiving it."""


@frozen
class Result:
    """Whether the sender's dial connected."""

    connected: bool


Message = Connect | Sync | Result

# (role, state) -> {(message type, sent by us): next state}. Anything else is a violation.
_RESULTS: dict[tuple[type, bool], State] = {
    (Result, True): State.RESULT_SENT,
    (Result, False): State.RESULT_RECEIVED,
}
TRANSITIONS: dict[tuple[Role, State], dict[tuple[type, bool], State]] = {
    (Role.INITIATOR, State.START): {(Connect, True): State.CONNECT_SENT},
    (Role.INITIATOR, State.CONNECT_SENT): {(Connect, False): State.CONNECT_RECEIVED},
    (Role.INITIATOR, State.CONNECT_RECEIVED): {(Sync, True): State.DIAL},
    (Role.RESPONDER, State.START): {(Connect, False): State.CONNECT_RECEIVED},
    (Role.RESPONDER, State.CONNECT_RECEIVED): {(Connect, True): State.SYNC_AWAITED},
    (Role.RESPONDER, State.SYNC_AWAITED): {(Sync, False): State.DIAL},
    **{(role, State.DIAL): _RESULTS for role in Role},
    **{(role, State.RESULT_SENT): {(Result, False): State.DONE} for role in Role},
    **{(role, State.RESULT_RECEIVED): {(Result, True): State.DONE} for role in Role},
}

_KINDS: dict[type, int] = {Connect: 1, Sync: 2, Result: 3}


def encode(message: Message) -> bytes:
    """The framed bytes of `message`: a 2-byte big-endian length, then msgpack [kind, fields]."""
    if isinstance(message, Connect):
        fields: list[object] = list(message.addresses)
    else:
        fields = [message.connected] if isinstance(message, Result) else []
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
        case [3, [bool() as connected]]:
            return Result(connected)
    raise RemoteProtocolError("unknown or malformed hole-punch message")


class HolePunch:
    """One side of the exchange in the module docstring.

    `start` gives the first bytes to write (the initiator's Connect; nothing for the
    responder); `receive_data` takes what arrived and gives what to write in answer; once
    `dial_at` is set the driver dials `dial_to` at that time (the clock is the caller's:
    every `now` comes from it) and reports with `dialled`, whose bytes it writes; `outcome`
    is set once both Results are known, and `leftover` then holds what the peer sent after
    its last message (the start of the stream's next protocol, which the initiator begins:
    the responder's bytes after its Result are a violation). With `peer_ip` (where the
    relay sees the peer), a Connect naming another IP is a violation: a peer cannot aim
    our dial at a third party.
    """

    def __init__(self, role: Role, ours: Connect, peer_ip: str | None = None) -> None:
        self.role = role
        self.state = State.START
        self.ours = ours
        self.peer_ip = peer_ip
        self.dial_at: float | None = None
        self.dial_to: tuple[str, int] | None = None
        self.outcome: Outcome | None = None
        self._started = 0.0
        self._connected: dict[bool, bool] = {}  # by "sent by us": each side's Result
        self._buffer = b""

    @property
    def leftover(self) -> bytes:
        """Bytes after the peer's last message (only once the outcome is known)."""
        if self.outcome is None:
            raise LocalProtocolError("the hole punch has not finished")
        return self._buffer

    def start(self, now: float) -> bytes:
        """The first bytes to write."""
        self._started = now
        return self._send(self.ours) if self.role is Role.INITIATOR else b""

    def receive_data(self, data: bytes, now: float) -> bytes:
        """Bytes from the peer; the bytes to write in answer (maybe none)."""
        if self.state is State.ERROR:
            raise LocalProtocolError("the hole punch failed earlier: nothing more can be received")
        self._buffer += data
        answer = b""
        while self.outcome is None and (message := self._next_message()) is not None:
            self._step(message, sent=False)
            answer += self._received(message, now)
        if self.role is Role.INITIATOR and False in self._connected and self._buffer:
            # What follows is the end-to-end handshake, whose first word is the initiator's.
            self._fail(RemoteProtocolError("the responder sent data after its hole-punch Result"))
        return answer

    def dialled(self, connected: bool) -> bytes:
        """Our dial's outcome: the Result to write."""
        if self.dial_at is None:
            raise LocalProtocolError("dialled before the exchange said to dial")
        return self._send(Result(connected))

    def _received(self, message: Message, now: float) -> bytes:
        if isinstance(message, Connect):
            self.dial_to = self._peer_address(message)
            if self.role is Role.RESPONDER:
                return self._send(self.ours)
            # The round trip Connect to Connect: the Sync takes half of it to the responder,
            # who dials on it, so the initiator waits as long and both SYNs leave together.
            self.dial_at = now + (now - self._started) / 2
            return self._send(Sync())
        if isinstance(message, Sync):
            self.dial_at = now
        return b""

    def _peer_address(self, message: Connect) -> tuple[str, int]:
        address = check_address(message.addresses[0])
        if self.peer_ip is not None and address[0] != self.peer_ip:
            self._fail(RemoteProtocolError(f"the peer would be dialled at {address[0]}, not {self.peer_ip}"))
        return address

    def _send(self, message: Message) -> bytes:
        if self.state is State.ERROR:
            raise LocalProtocolError("the hole punch failed earlier: nothing more can be sent")
        data = encode(message)
        self._step(message, sent=True)
        return data

    def _step(self, message: Message, sent: bool) -> None:
        following = TRANSITIONS.get((self.role, self.state), {}).get((type(message), sent))
        if following is None:
            what = f"{'sending' if sent else 'receiving'} {type(message).__name__}"
            error = LocalProtocolError if sent else RemoteProtocolError
            self._fail(error(f"hole punch ({self.role.value}): {what} in state {self.state.value}"))
        self.state = following
        if isinstance(message, Result):
            self._connected[sent] = message.connected
        if following is State.DONE:
            self.outcome = Outcome.DIRECT if all(self._connected.values()) else Outcome.RELAYED

    def _next_message(self) -> Message | None:
        if len(self._buffer) < 2:
            return None
        (length,) = struct.unpack(">H", self._buffer[:2])
        if length > MAX_FRAME:
            self._fail(RemoteProtocolError(f"a hole-punch message of {length} bytes exceeds {MAX_FRAME}"))
        if len(self._buffer) < 2 + length:
            return None
        body, self._buffer = self._buffer[2 : 2 + length], self._buffer[2 + length :]
        try:
            return _decode(body)
        except RemoteProtocolError as exc:
            self._fail(exc)

    def _fail(self, error: LocalProtocolError | RemoteProtocolError) -> NoReturn:
        self.state = State.ERROR
        raise error
