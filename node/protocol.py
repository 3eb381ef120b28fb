"""The job protocol: what a client and a node say over the secure stream.

Each message is msgpack `[kind, fields]` with `fields` a fixed-layout array. One
connection carries one request: a call (then its stdin/stdout/stderr and exit), a
service list, or a status. `JobConnection` is the sans-IO machine for either role;
it checks every message's shape and that it is legal in the current state, and
raises RemoteProtocolError for anything the peer should not have sent.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from identity.errors import LocalProtocolError, RemoteProtocolError

SERVICE_ID_LEN = 16
MAX_MESSAGE = 1 << 20
MAX_ARGS = 256
MAX_ARGS_BYTES = 64 * 1024
MAX_TEXT = 4096
MAX_SERVICES = 1024
MAX_PEERS = 4096  # a routing table holds at most k per bucket: 20 x 160, with room
MAX_HOST = 253
# Largest stdin/stdout/stderr chunk in one message. Senders read up to DATA_CHUNK at a time:
# a read returns what is there, so this adds no latency, and under bulk load fewer, larger
# messages cost less per byte (the secure session splits them into Noise frames).
MAX_DATA = MAX_MESSAGE - 64
DATA_CHUNK = 256 * 1024


class Kind(enum.IntEnum):
    CALL = 1
    LIST = 2
    STATUS = 3
    START = 4
    STDIN = 5
    STDIN_END = 6
    CANCEL = 7
    PEERS = 8
    ACCEPT = 16
    REJECT = 17
    STDOUT = 18
    STDERR = 19
    EXIT = 20
    SERVICES = 21
    STATUS_REPLY = 22
    PEERS_REPLY = 23


@dataclass(frozen=True)
class Call:
    """Run `service_id` with the client's `args`."""

    service_id: bytes
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class ListServices:
    """Ask which services the node offers."""


@dataclass(frozen=True)
class GetStatus:
    """Ask how busy the node is."""


@dataclass(frozen=True)
class GetPeers:
    """Ask which DHT nodes the node knows (its routing table)."""


@dataclass(frozen=True)
class Start:
    """The caller is live: the first transport message, after which a job may start.

    The request itself may have come in a replayable handshake message; this one cannot
    be replayed, so nothing runs or is charged before it arrives.
    """


@dataclass(frozen=True)
class Stdin:
    data: bytes


@dataclass(frozen=True)
class StdinEnd:
    pass


@dataclass(frozen=True)
class Cancel:
    pass


@dataclass(frozen=True)
class Accept:
    """The job started; `quote` is its price per call in millisatoshi."""

    job_id: str
    quote: int = 0


@dataclass(frozen=True)
class Reject:
    """The node refused the request. `code` is one word: no-such-service, not-allowed,
    bad-arguments, busy, failed-to-start, timeout."""

    code: str
    reason: str


@dataclass(frozen=True)
class Stdout:
    data: bytes


@dataclass(frozen=True)
class Stderr:
    data: bytes


@dataclass(frozen=True)
class Usage:
    wall_ms: int = 0
    cpu_ms: int = 0
    stdin_bytes: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0


@dataclass(frozen=True)
class Exit:
    """The job ended: `exit_code` when it exited, `signal` when it was killed;
    `error` says why hubnet ended it (timeout, output-limit, cancelled)."""

    exit_code: int | None
    signal: int | None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost: int = 0


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    service_id: bytes
    description: str
    arguments: str


@dataclass(frozen=True)
class Services:
    services: tuple[ServiceInfo, ...]


@dataclass(frozen=True)
class StatusReply:
    running: int
    queued: int
    capacity: int
    load: tuple[float, float, float]


@dataclass(frozen=True)
class PeerInfo:
    """One DHT contact: its Ed25519 key and UDP address."""

    public_key: bytes
    host: str
    port: int


@dataclass(frozen=True)
class Peers:
    peers: tuple[PeerInfo, ...]


ClientMessage = Call | ListServices | GetStatus | GetPeers | Start | Stdin | StdinEnd | Cancel
ServerMessage = Accept | Reject | Stdout | Stderr | Exit | Services | StatusReply | Peers
Request = Call | ListServices | GetStatus | GetPeers
Message = ClientMessage | ServerMessage


# ---- codec -------------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The wire bytes of one message."""
    return bytes(msgpack.packb([_KIND_OF[type(message)], _FIELDS_OF[type(message)](message)]))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text(v: object, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or len(v) > limit:
        raise RemoteProtocolError("expected a short string")
    return v


def _count(v: object) -> int:
    if not _is_int(v) or not 0 <= v < 1 << 63:  # type: ignore[operator]
        raise RemoteProtocolError("expected a non-negative integer")
    return v  # type: ignore[return-value]


def _optional_int(v: object) -> int | None:
    if v is None:
        return None
    if not _is_int(v) or not -(1 << 31) <= v < 1 << 31:  # type: ignore[operator]
        raise RemoteProtocolError("expected a 32-bit integer or nil")
    return v  # type: ignore[return-value]


def _bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise RemoteProtocolError("expected bytes")
    return v


def _decode_call(f: list[Any]) -> Call:
    sid, args = f
    if not isinstance(sid, bytes) or len(sid) != SERVICE_ID_LEN:
        raise RemoteProtocolError("service id must be 16 bytes")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise RemoteProtocolError("too many arguments")
    parsed = tuple(_text(a, MAX_ARGS_BYTES) for a in args)
    if sum(len(a) for a in parsed) > MAX_ARGS_BYTES:
        raise RemoteProtocolError("arguments too long")
    return Call(sid, parsed)


def _decode_exit(f: list[Any]) -> Exit:
    code, sig, error, usage, cost = f
    if not isinstance(usage, list) or len(usage) != 5:
        raise RemoteProtocolError("bad usage record")
    return Exit(
        _optional_int(code),
        _optional_int(sig),
        None if error is None else _text(error),
        Usage(*(_count(u) for u in usage)),
        _count(cost),
    )


def _decode_services(f: list[Any]) -> Services:
    (items,) = f
    if not isinstance(items, list) or len(items) > MAX_SERVICES:
        raise RemoteProtocolError(f"service list must be an array of at most {MAX_SERVICES}")
    infos = []
    for item in items:
        if not isinstance(item, list) or len(item) != 4:
            raise RemoteProtocolError("bad service entry")
        name, sid, desc, arguments = item
        if not isinstance(sid, bytes) or len(sid) != SERVICE_ID_LEN:
            raise RemoteProtocolError("service id must be 16 bytes")
        infos.append(ServiceInfo(_text(name), sid, _text(desc), _text(arguments)))
    return Services(tuple(infos))


def _decode_status(f: list[Any]) -> StatusReply:
    running, queued, capacity, load = f
    if not (isinstance(load, list) and len(load) == 3 and all(isinstance(x, float) for x in load)):
        raise RemoteProtocolError("load must be three floats")
    return StatusReply(_count(running), _count(queued), _count(capacity), (load[0], load[1], load[2]))


def _decode_peers(f: list[Any]) -> Peers:
    (items,) = f
    if not isinstance(items, list) or len(items) > MAX_PEERS:
        raise RemoteProtocolError(f"peer list must be an array of at most {MAX_PEERS}")
    peers = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise RemoteProtocolError("bad peer entry")
        key, host, port = item
        if not isinstance(key, bytes) or len(key) != 32:
            raise RemoteProtocolError("peer key must be 32 bytes")
        if not _is_int(port) or not 0 < port < 65536:
            raise RemoteProtocolError("peer port must be in 1..65535")
        peers.append(PeerInfo(key, _text(host, MAX_HOST), port))
    return Peers(tuple(peers))


_CODECS: dict[type[Any], tuple[Kind, int, Callable[[Any], list[Any]], Callable[[list[Any]], Message]]] = {
    Call: (Kind.CALL, 2, lambda m: [m.service_id, list(m.args)], _decode_call),
    ListServices: (Kind.LIST, 0, lambda m: [], lambda f: ListServices()),
    GetStatus: (Kind.STATUS, 0, lambda m: [], lambda f: GetStatus()),
    GetPeers: (Kind.PEERS, 0, lambda m: [], lambda f: GetPeers()),
    Start: (Kind.START, 0, lambda m: [], lambda f: Start()),
    Stdin: (Kind.STDIN, 1, lambda m: [m.data], lambda f: Stdin(_bytes(f[0]))),
    StdinEnd: (Kind.STDIN_END, 0, lambda m: [], lambda f: StdinEnd()),
    Cancel: (Kind.CANCEL, 0, lambda m: [], lambda f: Cancel()),
    Accept: (Kind.ACCEPT, 2, lambda m: [m.job_id, m.quote], lambda f: Accept(_text(f[0]), _count(f[1]))),
    Reject: (Kind.REJECT, 2, lambda m: [m.code, m.reason], lambda f: Reject(_text(f[0]), _text(f[1]))),
    Stdout: (Kind.STDOUT, 1, lambda m: [m.data], lambda f: Stdout(_bytes(f[0]))),
    Stderr: (Kind.STDERR, 1, lambda m: [m.data], lambda f: Stderr(_bytes(f[0]))),
    Exit: (
        Kind.EXIT,
        5,
        lambda m: [
            m.exit_code,
            m.signal,
            m.error,
            [
                m.usage.wall_ms,
                m.usage.cpu_ms,
                m.usage.stdin_bytes,
                m.usage.stdout_bytes,
                m.usage.stderr_bytes,
            ],
            m.cost,
        ],
        _decode_exit,
    ),
    Services: (
        Kind.SERVICES,
        1,
        lambda m: [[[s.name, s.service_id, s.description, s.arguments] for s in m.services]],
        _decode_services,
    ),
    StatusReply: (
        Kind.STATUS_REPLY,
        4,
        lambda m: [m.running, m.queued, m.capacity, list(m.load)],
        _decode_status,
    ),
    Peers: (
        Kind.PEERS_REPLY,
        1,
        lambda m: [[[p.public_key, p.host, p.port] for p in m.peers]],
        _decode_peers,
    ),
}
_KIND_OF = {cls: spec[0] for cls, spec in _CODECS.items()}
_FIELDS_OF = {cls: spec[2] for cls, spec in _CODECS.items()}
_BY_KIND = {spec[0]: (spec[1], spec[3]) for spec in _CODECS.values()}


def decode_object(obj: object) -> Message:
    """Check one unpacked msgpack value and turn it into a message."""
    if not (isinstance(obj, list) and len(obj) == 2 and _is_int(obj[0]) and isinstance(obj[1], list)):
        raise RemoteProtocolError("a message is [kind, fields]")
    kind, fields = obj
    try:
        arity, decoder = _BY_KIND[Kind(kind)]
    except ValueError:
        raise RemoteProtocolError(f"unknown message kind {kind}") from None
    if len(fields) != arity:
        raise RemoteProtocolError(f"message kind {kind} takes {arity} fields")
    return decoder(fields)


def decode(data: bytes) -> Message:
    """Decode exactly one message from `data`."""
    decoder = MessageDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    if message is None or decoder.buffered:
        raise RemoteProtocolError("expected exactly one message")
    return message


class MessageDecoder:
    """Incremental decoder: feed bytes, take whole messages, never buffer past the limit."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=2 * max_message,
            max_bin_len=max_message,
            max_str_len=max_message,
            max_array_len=max(MAX_ARGS, MAX_SERVICES) + 8,
            max_map_len=0,
            max_ext_len=0,
        )
        self._fed = 0
        self._consumed = 0

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as messages."""
        return self._fed - self._consumed

    def feed(self, data: bytes) -> None:
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise RemoteProtocolError("message exceeds the size limit") from None
        self._fed += len(data)

    def next_message(self) -> Message | None:
        try:
            obj = self._unpacker.unpack()
        except msgpack.OutOfData:
            return None
        except Exception as exc:  # msgpack raises many types for malformed input
            raise RemoteProtocolError(f"malformed message: {exc}") from None
        # tell() also moves past a partial object when unpack() runs out of data, so it is read
        # only here, after a whole message.
        self._consumed = int(self._unpacker.tell())
        return decode_object(obj)


# ---- the connection machine ---------------------------------------------------------------------


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Phase(enum.Enum):
    IDLE = "idle"  # no request yet
    REQUESTED = "requested"  # call, list or status sent
    RUNNING = "running"  # call accepted, output flowing
    DONE = "done"  # final reply seen: exit, reject, services, status


_FINAL = (Reject, Exit, Services, StatusReply, Peers)


class JobConnection:
    """One connection's job protocol for one role (h11-style, no I/O).

    `send` checks that *we* follow the protocol (LocalProtocolError otherwise);
    `next_event` checks that the *peer* does (RemoteProtocolError).
    """

    def __init__(self, role: Role, max_message: int = MAX_MESSAGE) -> None:
        self.role = role
        self.phase = Phase.IDLE
        self.request: Request | None = None
        self.started = False
        self.stdin_closed = False
        self._decoder = MessageDecoder(max_message)

    def send(self, message: Message) -> bytes:
        self._check(message, sender=self.role, error=LocalProtocolError)
        wire = encode(message)
        _check_peer_accepts(message, wire)
        self._apply(message)
        return wire

    def receive_data(self, data: bytes) -> None:
        self._decoder.feed(data)

    def next_event(self) -> Message | None:
        message = self._decoder.next_message()
        if message is not None:
            peer = Role.SERVER if self.role is Role.CLIENT else Role.CLIENT
            self._check(message, sender=peer, error=RemoteProtocolError)
            self._apply(message)
        return message

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def _check(self, message: Message, *, sender: Role, error: type[Exception]) -> None:
        if not _legal(self, message, sender):
            raise error(
                f"{type(message).__name__} is not allowed from the {sender.value} while {self.phase.value}"
            )

    def _apply(self, message: Message) -> None:
        if isinstance(message, Request):
            self.request = message
            self.phase = Phase.REQUESTED
        elif isinstance(message, Start):
            self.started = True
        elif isinstance(message, StdinEnd):
            self.stdin_closed = True
        elif isinstance(message, Accept):
            self.phase = Phase.RUNNING
        elif isinstance(message, _FINAL):
            self.phase = Phase.DONE


def _check_peer_accepts(message: Message, wire: bytes) -> None:
    """Refuse to send what the peer's decoder would refuse: that would look like garbage to it."""
    if isinstance(message, Stdin | Stdout | Stderr):
        # Data is checked by size alone: decoding every chunk again would double the cost of streaming.
        if len(message.data) > MAX_DATA:
            raise LocalProtocolError("data chunk larger than MAX_DATA")
        return
    try:
        decode(wire)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"{type(message).__name__} breaks the protocol's limits: {exc}") from None


def _legal(conn: JobConnection, message: Message, sender: Role) -> bool:
    phase, request = conn.phase, conn.request
    if phase is Phase.DONE:
        # After the final reply a client may still be flushing stdin it had already sent.
        return sender is Role.CLIENT and isinstance(message, Stdin | StdinEnd | Cancel)
    if sender is Role.CLIENT:
        if isinstance(message, Request):
            return phase is Phase.IDLE
        if not isinstance(request, Call):
            return False
        if isinstance(message, Start):
            return not conn.started
        if isinstance(message, Stdin | StdinEnd):
            return conn.started and not conn.stdin_closed
        return isinstance(message, Cancel)
    if phase is Phase.IDLE:
        return False
    if isinstance(request, ListServices):
        return isinstance(message, Services)
    if isinstance(request, GetStatus):
        return isinstance(message, StatusReply)
    if isinstance(request, GetPeers):
        return isinstance(message, Peers)
    if phase is Phase.REQUESTED:
        return isinstance(message, Accept | Reject)
    return isinstance(message, Stdout | Stderr | Exit)
