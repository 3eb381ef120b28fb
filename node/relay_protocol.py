"""The relay protocol: how a private node keeps a reservation, and how a caller reaches it.

Everything here rides in a Noise session with the *relay* on the node's one port (the
same port, handshake and framing as the job protocol), as the first message after the
handshake: never in the handshake's first message, which anyone who recorded it can
replay (a replayed Reserve must not displace the real holder's reservation).

Three requests, each on a connection of its own:

- **Reserve** (the private node, the *holder*): "keep me reachable". The relay answers
  Reserved (how long the reservation lasts unless renewed, and the limits of each
  circuit) or Refused. The connection stays open: over it the relay sends Incoming each
  time a caller asks for the holder, and the holder sends Reserve again to renew.
- **Connect** (the *caller*): "link me to TARGET". The relay tells the target's holder
  connection Incoming(circuit), and waits for the target to claim it.
- **Claim** (the target, on a fresh outbound connection): "I take circuit C". The relay
  answers Linked on both connections, and from then on splices their raw bytes.

After Linked nothing more of the relay's session is sent or read: the connection is the
circuit, and the caller and the target run their own Noise IK handshake end to end in
it, so the relay sees only their ciphertext and cannot pose as the target. One fresh TCP
connection per circuit (rather than streams multiplexed over the reservation) keeps the
relay a plain byte splicer: each circuit has the kernel's own flow control and back-
pressure, a slow circuit cannot hold up another, and the relay never decrypts or frames
circuit data. A node behind a NAT can always open one more outbound connection.

`RelayConnection` is the sans-IO machine for one end (as `node.protocol.JobConnection`):
per-role states, a literal table of legal steps (`TRANSITIONS`), a request moving the
relay to the state in which it owes the answer (`RELAY_OWES`) and an answer moving the
requester (`ANSWER_MOVES`); anything else, sent or received, puts both roles in ERROR.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

import msgpack

from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import HubnetError, LocalProtocolError, RemoteProtocolError
from hubnet.identity.frozen import frozen
from hubnet.node.machine import ConnectionClosed as ConnectionClosed
from hubnet.node.machine import PeerMachine

if TYPE_CHECKING:
    from typing import Any

PEER_ID_LEN = 32
CIRCUIT_ID_LEN = 16
MAX_RELAY_MESSAGE = 4096  # every relay message is small: refuse to buffer more
MAX_REASON = 1024
MAX_COUNT = (1 << 63) - 1
MAX_IP_TEXT = 45  # the longest IPv6 text form


class Kind(enum.IntEnum):
    """Message kinds: a range of their own, apart from the job protocol's (1..25)."""

    RESERVE = 32
    CONNECT = 33
    CLAIM = 34
    RESERVED = 40
    INCOMING = 41
    LINKED = 42
    REFUSED = 43


class RefusalCode(enum.StrEnum):
    """Why a relay refused; on the wire as the text. A reader keeps codes it does not know
    and treats them as a refusal."""

    NOT_A_RELAY = "not-a-relay"  # this node does not relay
    RESERVATIONS_FULL = "reservations-full"  # the relay holds as many reservations as it takes
    PEER_RESERVATIONS_FULL = "peer-reservations-full"  # this peer holds as many as one peer may
    NO_RESERVATION = "no-reservation"  # the target holds no reservation here
    CIRCUITS_FULL = "circuits-full"  # the target, or the caller, has as many circuits as allowed
    TARGET_UNAVAILABLE = "target-unavailable"  # the target did not claim the circuit in time
    NO_SUCH_CIRCUIT = "no-such-circuit"  # a claim for a circuit that is not waiting for this peer
    PAYMENT_REQUIRED = "payment-required"  # a priced relay: the holder's account cannot cover a circuit


@frozen
class CircuitLimits:
    """What one circuit may carry (both directions together) and for how long."""

    max_bytes: int
    max_seconds: int


@frozen
class Reserve:
    """Holder -> relay: reserve (or renew) a slot through which callers reach me."""


@frozen
class Connect:
    """Caller -> relay: link me to `target` (a peer id holding a reservation here); `punch`:
    the caller would hole-punch a direct connection (optional, 2nd)."""

    target: bytes
    punch: bool = False


@frozen
class Claim:
    """Target -> relay, on a fresh connection: this is my end of `circuit`; `punch`: the
    target would hole-punch a direct connection (optional, 2nd)."""

    circuit: bytes
    punch: bool = False


@frozen
class Reserved:
    """Relay -> holder: the reservation holds for `expires_in` seconds unless renewed."""

    expires_in: int
    limits: CircuitLimits
    price_per_mib: int = 0  # msat per MiB a circuit carries, charged to the holder (optional, 4th)


@frozen
class Incoming:
    """Relay -> holder: a caller waits on `circuit`; claim it on a fresh connection."""

    circuit: bytes


@frozen
class Linked:
    """Relay -> caller and target: from the next byte on, this connection is the circuit.

    The optional fields (3rd to 5th, sent together): `punch`, both ends asked to hole-punch
    (`node.holepunch` runs first in the circuit); `observed`, the IP the relay sees this
    connection from (a caller that never asked anyone learns its public IP); `peer`, the IP
    it sees the other end's from ("" for either when it cannot tell)."""

    limits: CircuitLimits
    punch: bool = False
    observed: str = ""
    peer: str = ""


@frozen
class Refused:
    """Relay -> requester: `code` is a `RefusalCode` (or one this reader does not know)."""

    code: str
    reason: str
    needed: int | None = None  # msat the refused request needs (payment-required; optional, 3rd)


Request = Reserve | Connect | Claim
Answer = Reserved | Incoming | Linked | Refused
Message = Request | Answer
Event = Message | ConnectionClosed


# ---- codec -------------------------------------------------------------------------------------


def _count(v: object) -> int:
    if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COUNT):
        raise RemoteProtocolError("expected a non-negative integer")
    return v


def _key(v: object, length: int, what: str) -> bytes:
    if not (isinstance(v, bytes) and len(v) == length):
        raise RemoteProtocolError(f"{what} must be {length} bytes")
    return v


def _text(v: object) -> str:
    if not (isinstance(v, str) and len(v) <= MAX_REASON):
        raise RemoteProtocolError(f"expected a string of at most {MAX_REASON} characters")
    return v


def _limits(bytes_: object, seconds: object) -> CircuitLimits:
    return CircuitLimits(_count(bytes_), _count(seconds))


def _flag(v: object) -> bool:
    if not isinstance(v, bool):
        raise RemoteProtocolError("expected true or false")
    return v


def _ip_text(v: object) -> str:
    if not (isinstance(v, str) and len(v) <= MAX_IP_TEXT):
        raise RemoteProtocolError(f"expected an IP address of at most {MAX_IP_TEXT} characters")
    return v


def _unless_free(price_per_mib: int) -> list[int]:
    """A free relay's Reserved leaves the price out, as a relay before prices sent it."""
    return [price_per_mib] if price_per_mib else []


def _linked_extras(m: Linked) -> list[object]:
    """Linked's optional fields, left out (as by older relays) when none says anything."""
    return [m.punch, m.observed, m.peer] if (m.punch or m.observed or m.peer) else []


def _read_linked_extras(f: list[Any]) -> tuple[bool, str, str]:
    if not f:
        return False, "", ""
    if len(f) < 3:
        raise RemoteProtocolError("Linked's optional fields come together: punch, observed, peer")
    return _flag(f[0]), _ip_text(f[1]), _ip_text(f[2])


# Each kind: its number, how many fields it must have, and its encoder and decoder. A
# decoder reads its optional trailing fields when they are there (the fields after them,
# a newer peer's, are cut off before it sees them: `_OPTIONAL`).
_CODECS: dict[type[Any], tuple[Kind, int, Callable[[Any], list[Any]], Callable[[list[Any]], Message]]] = {
    Reserve: (Kind.RESERVE, 0, lambda m: [], lambda f: Reserve()),
    Connect: (
        Kind.CONNECT,
        1,
        lambda m: [m.target, *([True] if m.punch else [])],
        lambda f: Connect(_key(f[0], PEER_ID_LEN, "a peer id"), len(f) > 1 and _flag(f[1])),
    ),
    Claim: (
        Kind.CLAIM,
        1,
        lambda m: [m.circuit, *([True] if m.punch else [])],
        lambda f: Claim(_key(f[0], CIRCUIT_ID_LEN, "a circuit id"), len(f) > 1 and _flag(f[1])),
    ),
    Reserved: (
        Kind.RESERVED,
        3,
        lambda m: [m.expires_in, m.limits.max_bytes, m.limits.max_seconds, *_unless_free(m.price_per_mib)],
        lambda f: Reserved(_count(f[0]), _limits(f[1], f[2]), _count(f[3]) if len(f) > 3 else 0),
    ),
    Incoming: (
        Kind.INCOMING,
        1,
        lambda m: [m.circuit],
        lambda f: Incoming(_key(f[0], CIRCUIT_ID_LEN, "a circuit id")),
    ),
    Linked: (
        Kind.LINKED,
        2,
        lambda m: [m.limits.max_bytes, m.limits.max_seconds, *_linked_extras(m)],
        lambda f: Linked(_limits(f[0], f[1]), *_read_linked_extras(f[2:])),
    ),
    Refused: (
        Kind.REFUSED,
        2,
        lambda m: [m.code, m.reason, *([] if m.needed is None else [m.needed])],
        lambda f: Refused(_text(f[0]), _text(f[1]), _count(f[2]) if len(f) > 2 else None),
    ),
}
_BY_KIND = {spec[0]: (spec[1], spec[3]) for spec in _CODECS.values()}
# The optional trailing fields this version reads, by kind.
_OPTIONAL = {Kind.CONNECT: 1, Kind.CLAIM: 1, Kind.RESERVED: 1, Kind.LINKED: 3, Kind.REFUSED: 1}


def encode(message: Message) -> bytes:
    """The wire bytes of one message."""
    kind, _, fields, _ = _CODECS[type(message)]
    return bytes(msgpack.packb([int(kind), fields(message)]))


def decode_object(obj: object) -> Message:
    """One unpacked msgpack value as a message. A reader takes the fields it knows from the
    front and ignores any a newer peer appends (the job protocol's versioning rule)."""
    if not (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list)):
        raise RemoteProtocolError("a relay message is [kind, fields]")
    kind, fields = obj
    if not (isinstance(kind, int) and not isinstance(kind, bool)):
        raise RemoteProtocolError("a relay message kind is an integer")
    try:
        arity, decoder = _BY_KIND[Kind(kind)]
    except ValueError:
        raise RemoteProtocolError(f"unknown relay message kind {kind}") from None
    if len(fields) < arity:
        raise RemoteProtocolError(f"relay message kind {kind} needs {arity} fields")
    return decoder(fields[: arity + _OPTIONAL.get(Kind(kind), 0)])


def _unpacker() -> msgpack.Unpacker:
    return msgpack.Unpacker(
        raw=False,
        strict_map_key=True,
        max_buffer_size=MAX_RELAY_MESSAGE,
        max_bin_len=MAX_RELAY_MESSAGE,
        max_str_len=MAX_RELAY_MESSAGE,
        max_array_len=16,
        max_map_len=0,
        max_ext_len=0,
    )


def is_relay_request(data: bytes | bytearray) -> bool:
    """Whether `data`, a connection's first bytes after the handshake, begin a relay request
    (rather than a job-protocol request): a `[kind, ...]` whose kind is a relay request's.
    A node looks at this to pick the machine that reads the connection."""
    unpacker = _unpacker()
    try:
        unpacker.feed(bytes(data[:MAX_RELAY_MESSAGE]))
        if unpacker.read_array_header() != 2:
            return False
        kind = unpacker.unpack()
    except Exception:  # msgpack raises many types for short or malformed input
        return False
    return isinstance(kind, int) and kind in (Kind.RESERVE, Kind.CONNECT, Kind.CLAIM)


# ---- the connection machine ---------------------------------------------------------------------


class Role(enum.Enum):
    REQUESTER = "requester"  # the holder, the caller or the claiming target
    RELAY = "relay"


class State(enum.Enum):
    """Where one role is (both roles' states in one enum, as in h11)."""

    # requester
    IDLE = "idle"
    RESERVING = "reserving"  # Reserve sent (first or renewal), its answer not yet in
    RESERVED = "reserved"  # holding a reservation: may renew
    CONNECTING = "connecting"
    CLAIMING = "claiming"
    # relay
    WAITING = "waiting"  # no request yet
    MUST_RESERVE = "must-reserve"
    HOLDING = "holding"  # a reservation is held: Incoming may go out
    MUST_RENEW = "must-renew"  # a renewal asked while holding; Incoming may still go out
    MUST_CONNECT = "must-connect"
    MUST_CLAIM = "must-claim"
    # both
    LINKED = "linked"  # the connection is a circuit now: nothing of this protocol follows
    DONE = "done"  # refused: nothing more to say
    CLOSED = "closed"
    ERROR = "error"


MessageType = type[Message] | type[ConnectionClosed]

TRANSITIONS: dict[Role, dict[State, dict[MessageType, State]]] = {
    Role.REQUESTER: {
        State.IDLE: {
            Reserve: State.RESERVING,
            Connect: State.CONNECTING,
            Claim: State.CLAIMING,
            ConnectionClosed: State.CLOSED,
        },
        State.RESERVING: {ConnectionClosed: State.CLOSED},
        State.RESERVED: {Reserve: State.RESERVING, ConnectionClosed: State.CLOSED},
        State.CONNECTING: {ConnectionClosed: State.CLOSED},
        State.CLAIMING: {ConnectionClosed: State.CLOSED},
        State.DONE: {ConnectionClosed: State.CLOSED},
        State.LINKED: {},
        State.CLOSED: {},
        State.ERROR: {},
    },
    Role.RELAY: {
        State.WAITING: {},
        State.MUST_RESERVE: {Reserved: State.HOLDING, Refused: State.DONE},
        # A relay may end a reservation (it expired, the relay is stopping) by closing.
        State.HOLDING: {Incoming: State.HOLDING, ConnectionClosed: State.CLOSED},
        State.MUST_RENEW: {
            Reserved: State.HOLDING,
            Refused: State.DONE,
            Incoming: State.MUST_RENEW,
            ConnectionClosed: State.CLOSED,
        },
        State.MUST_CONNECT: {Linked: State.LINKED, Refused: State.DONE},
        State.MUST_CLAIM: {Linked: State.LINKED, Refused: State.DONE},
        State.DONE: {ConnectionClosed: State.CLOSED},
        State.LINKED: {},
        State.CLOSED: {},
        State.ERROR: {},
    },
}

# A request moves the relay, from the state it is in, to the state in which it owes the answer.
RELAY_OWES: dict[tuple[MessageType, State], State] = {
    (Reserve, State.WAITING): State.MUST_RESERVE,
    (Reserve, State.HOLDING): State.MUST_RENEW,
    (Connect, State.WAITING): State.MUST_CONNECT,
    (Claim, State.WAITING): State.MUST_CLAIM,
}
# An answer moves the requester out of the state in which it waits for one (Incoming, not
# an answer to anything the requester asked, leaves it where it is).
ANSWER_MOVES: dict[MessageType, State] = {
    Reserved: State.RESERVED,
    Linked: State.LINKED,
    Refused: State.DONE,
}
AWAITING_ANSWER = (State.RESERVING, State.CONNECTING, State.CLAIMING)
INITIAL = {Role.REQUESTER: State.IDLE, Role.RELAY: State.WAITING}


class RelayConnection(PeerMachine[Role, State, Message]):
    """One end of one relay-protocol connection (h11-style, no I/O; `node.machine`).

    `send` checks that *we* follow the protocol (LocalProtocolError), `next_event` that
    the peer does (RemoteProtocolError); after either both roles are in ERROR. Once
    LINKED the machine is finished: the bytes that follow on the connection are the
    circuit's, and the driver reads them raw (a Linked with anything after it in the
    relay's session is a violation: the relay's session has ended).
    """

    connection_name = "relay connection"
    message_name = "relay message"
    answerer_name = "relay"

    def __init__(self, role: Role) -> None:
        super().__init__(
            role,
            answerer=Role.RELAY,
            asker=Role.REQUESTER,
            initial=INITIAL,
            transitions=TRANSITIONS,
            closed=State.CLOSED,
            error=State.ERROR,
        )
        self._unpacker = _unpacker()
        self._fed = 0
        self._consumed = 0

    def _encode(self, message: Message) -> bytes:
        wire = encode(message)
        if len(wire) > MAX_RELAY_MESSAGE:
            raise LocalProtocolError(f"{type(message).__name__} exceeds {MAX_RELAY_MESSAGE} bytes")
        try:
            decode_object(msgpack.unpackb(wire))  # never send what the peer would refuse
        except RemoteProtocolError as exc:
            raise LocalProtocolError(str(exc)) from None
        return wire

    def _feed(self, data: bytes | bytearray) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise RemoteProtocolError(f"a relay message exceeds {MAX_RELAY_MESSAGE} bytes") from None
        self._fed += len(data)

    def _next_message(self) -> Message | None:
        try:
            obj = self._unpacker.unpack()
        except msgpack.OutOfData:
            return None
        except Exception as exc:  # msgpack raises many types for malformed input
            raise RemoteProtocolError(f"malformed relay message: {exc}") from None
        self._consumed = int(self._unpacker.tell())
        return decode_object(obj)

    def _partial(self) -> bool:
        return self._fed > self._consumed

    def _moved(self, role: Role, event: Event, error: type[HubnetError]) -> None:
        if role is Role.REQUESTER and not isinstance(event, ConnectionClosed):
            owed = RELAY_OWES.get((type(event), self.states[Role.RELAY]))
            if owed is None:
                raise error(f"{type(event).__name__} while the relay is {self.states[Role.RELAY].value}")
            self.states[Role.RELAY] = owed
        if (
            role is Role.RELAY
            and type(event) in ANSWER_MOVES
            and self.states[Role.REQUESTER] in AWAITING_ANSWER
        ):
            self.states[Role.REQUESTER] = ANSWER_MOVES[type(event)]

    def _received(self, event: Event) -> None:
        if isinstance(event, Linked) and self._fed > self._consumed:
            raise RemoteProtocolError("the relay's session went on after Linked")
