"""The job protocol: what a client and a node say over the secure stream.

Each message is msgpack `[kind, fields]` with `fields` an array whose layout the kind
fixes; by the versioning rule of docs/protocol.md a reader takes the fields it knows
and ignores any a newer peer appends. One connection carries one request: a call (then
its stdin/stdout/stderr, exit and an optional receipt), a service list, a status, a
peer list, an ecash deposit or the caller's balance.

`JobConnection` is the sans-IO machine for one end (h11-style): each role has its own
state, every legal step is a row of `TRANSITIONS`, and anything else, sent or received,
puts the connection in its ERROR state, which refuses every later call. The end of the
peer's stream is an event too (`ConnectionClosed`), legal only where that role may stop.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable

import msgpack

from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import (
    HubnetError,
    LocalProtocolError,
    RemoteProtocolError,
)
from hubnet.identity.frozen import frozen
from hubnet.node.machine import ConnectionClosed as ConnectionClosed
from hubnet.node.machine import PeerMachine

if TYPE_CHECKING:
    from typing import Any

SERVICE_ID_LEN = 16
MAX_MESSAGE = 1 << 20
MAX_ARGS = 256
MAX_ARGS_BYTES = 64 * 1024
MAX_TEXT = 4096
MAX_SERVICES = 1024
MAX_PEERS = 4096  # a routing table holds at most k per bucket: 20 x 160, with room
MAX_HOST = 253
MAX_RELAYS = 16  # reservations a status reports
# Largest stdin/stdout/stderr chunk in one message. Senders read up to DATA_CHUNK at a time:
# a read returns what is there, so this adds no latency, and under bulk load fewer, larger
# messages cost less per byte (the secure session splits them into Noise frames).
MAX_DATA = MAX_MESSAGE - 64
DATA_CHUNK = 256 * 1024
# Stdin the client may send beyond what the node has fed to the job (see `Credit`): the
# node can then always read on, so a Cancel or a vanished caller is seen at once even when
# the job does not read its stdin, and a connection never buffers more than this of it.
STDIN_WINDOW = 4 * DATA_CHUNK
# The widest window a Start may ask for (version 1's extension, `Start.window`). With 1 MiB the
# credit's round trip, not the cipher, paced a bulk stream through a job: a round trip through
# `cat` ran at 168 MiB/s with 1 MiB and 223 MiB/s with 4 MiB (bench/throughput.py).
MAX_STDIN_WINDOW = 4 * STDIN_WINDOW
MAX_RECEIPT = 4096
# While a job runs, a node sends something at least every KEEPALIVE seconds: an empty
# Credit when it has nothing else to send, so that a caller can tell a silent job from a
# dead or hostile node (`hubnet.call_machine`'s idle timeout).
KEEPALIVE = 15.0
# What an Exit may report: a program's exit status, or the signal that killed it.
MAX_EXIT_CODE = 255
MAX_SIGNAL = 64
# A demand multiplier on the wire (node.pricing allows services at most 100): room for later.
MAX_MULTIPLIER = 1000.0
MAX_CALL_ATTESTATIONS = 8  # a caller belongs to a few organisations, not to many
MAX_ATTESTATION_BYTES = 512  # hubnet.identity.orgs.MAX_ATTESTATION_LEN, with room
# A Cashu token (`cashuA...`/`cashuB...`) of a few dozen proofs is a few KiB.
MAX_TOKEN = 32 * 1024


class Kind(enum.IntEnum):
    CALL = 1
    LIST = 2
    STATUS = 3
    START = 4
    STDIN = 5
    STDIN_END = 6
    CANCEL = 7
    PEERS = 8
    DEPOSIT = 12
    BALANCE = 11
    ACCEPT = 16
    REJECT = 17
    STDOUT = 18
    STDERR = 19
    EXIT = 20
    SERVICES = 21
    STATUS_REPLY = 22
    PEERS_REPLY = 23
    CREDIT = 24
    RECEIPT = 25
    BALANCE_REPLY = 27


class RejectCode(enum.StrEnum):
    """Why a node refused a request; on the wire as the text. Readers keep codes they do
    not know (a newer node may add some) and treat them as a refusal."""

    NO_SUCH_SERVICE = "no-such-service"
    NOT_ALLOWED = "not-allowed"
    BAD_ARGUMENTS = "bad-arguments"
    BUSY = "busy"
    CANCELLED = "cancelled"  # the caller cancelled while its call waited for a slot
    # Ecash refused (a deposit, or a call's token): UNTRUSTED_MINT, BAD_TOKEN and
    # MINT_UNAVAILABLE swapped nothing (the token is still the caller's); TOKEN_SPENT credited
    # nothing; DEPOSIT_FAILED: the outcome at the mint is not known yet (docs/money.md).
    UNTRUSTED_MINT = "untrusted-mint"
    BAD_TOKEN = "bad-token"
    TOKEN_SPENT = "token-spent"
    MINT_UNAVAILABLE = "mint-unavailable"
    DEPOSIT_FAILED = "deposit-failed"
    PAYMENT_REQUIRED = "payment-required"  # no account here, or too little in it for the hold
    TOO_EXPENSIVE = "too-expensive"  # the job's worst case is above the caller's ceiling


@frozen
class Call:
    """Run `service_id` with the client's `args`; `attestations` are the caller's organisation
    attestations (encoded `hubnet.identity.orgs.Attestation`s), for services that serve
    organisations' members only or free. `max_cost` is the caller's ceiling in millisatoshi:
    the node refuses (`too-expensive`) a job whose worst case is above it; None: no ceiling.
    `token`: a Cashu token that pays for this call (pay-per-call): the node redeems it into
    the caller's account before it holds the job's price, and returns the change."""

    service_id: bytes
    args: tuple[str, ...] = ()
    attestations: tuple[bytes, ...] = ()
    max_cost: int | None = None
    token: str | None = None


@frozen
class ListServices:
    """Ask which services the node offers."""


@frozen
class GetStatus:
    """Ask how busy the node is."""


@frozen
class GetPeers:
    """Ask which DHT nodes the node knows (its routing table)."""


@frozen
class Deposit:
    """Redeem `token` (a Cashu token, `cashuA...` or `cashuB...`) into the caller's account;
    the node answers with a signed deposit receipt (`Receipt`) or a `Reject`."""

    token: str


@frozen
class GetBalance:
    """Ask for the caller's own balance at the node (its prepaid account)."""


@frozen
class Start:
    """The caller is live: the first transport message, after which a job may start.

    The request itself may have come in a replayable handshake message; this one cannot
    be replayed, so nothing runs or is charged before it arrives. `window`: the widest stdin
    window the caller takes credit for; both ends hold the node to the smaller of it and
    MAX_STDIN_WINDOW (and never below STDIN_WINDOW, which every version-1 peer takes).
    """

    window: int = STDIN_WINDOW


@frozen
class Stdin:
    data: bytes


@frozen
class StdinEnd:
    pass


@frozen
class Cancel:
    pass


@frozen
class Terms:
    """What this job costs this caller, in millisatoshi: per call, per second of wall time,
    per MiB moved (stdin plus output), and how much is held against it (the most it can
    cost)."""

    per_call: int = 0
    per_second: int = 0
    per_mib: int = 0
    held: int = 0


@frozen
class Accept:
    """The job will run on these terms."""

    job_id: str
    terms: Terms = Terms()


@frozen
class Reject:
    """The node refused the request: `code` is a `RejectCode` (or one this reader does not
    know yet), `reason` a sentence for people; `needed` the millisatoshi the call needs
    when it was refused for money (`payment-required`, `too-expensive`)."""

    code: str
    reason: str
    needed: int | None = None


@frozen
class Credit:
    """The node fed `size` more bytes of stdin to the job: the client may send that much more."""

    size: int


@frozen
class Receipt:
    """After `Exit`: a signed record of what the job used and cost (opaque to this layer)."""

    record: bytes


@frozen
class Stdout:
    data: bytes


@frozen
class Stderr:
    data: bytes


@frozen
class Usage:
    wall_ms: int = 0
    cpu_ms: int = 0
    stdin_bytes: int = 0
    stdout_bytes: int = 0
    stderr_bytes: int = 0


@frozen
class Exit:
    """The job ended: `exit_code` when it exited, `signal` when it was killed;
    `error` says why hubnet ended it (timeout, output-limit, cancelled)."""

    exit_code: int | None
    signal: int | None
    error: str | None = None
    usage: Usage = Usage()
    cost: int = 0


@frozen
class ServiceInfo:
    name: str
    service_id: bytes
    description: str
    arguments: str
    isolation: str = ""  # how its jobs are isolated, one line (older nodes send none)
    # Its price now (per call, per second, per MiB, in msat), the demand multiplier applied
    # (node.pricing); older nodes send neither.
    price: tuple[int, int, int] = (0, 0, 0)
    multiplier: float = 1.0


@frozen
class Services:
    services: tuple[ServiceInfo, ...]


@frozen
class ReachStatus:
    """What a node knows of its place in the network (`node.reach`), for `hubnode status`."""

    reachability: str  # public, private or unknown (a reader shows any short text it gets)
    observed: str  # HOST:PORT where DHT peers saw it, or empty before any told it
    dht_mode: str  # server, or client (a private node: in nobody's routing table)
    peers: int  # contacts in its DHT routing table
    relays: tuple[str, ...] = ()  # PEER_ID@HOST:PORT of the relays it holds reservations with
    # msat per MiB each of `relays` charges it (optional, 6th; an older node's are unknown: None)
    relay_prices: tuple[int, ...] | None = None


@frozen
class StatusReply:
    running: int
    queued: int
    capacity: int
    load: tuple[float, float, float]
    reach: ReachStatus | None = None  # optional: older nodes and nodes without a DHT leave it out
    # Optional, after `reach`: the node takes a Call on this connection after this reply (a
    # prober may call the node it chose without a new handshake). Older nodes leave it out.
    calls: bool = False

    def __post_init__(self) -> None:
        if self.calls and self.reach is None:
            raise ValueError("`calls` follows `reach` on the wire: a reply without reach cannot say it")


@frozen
class BalanceReply:
    """The caller's account at the node, in millisatoshi: what it may spend now, and what
    its running jobs hold."""

    available: int
    held: int


@frozen
class PeerInfo:
    """One DHT contact: its Ed25519 key and UDP address."""

    public_key: bytes
    host: str
    port: int


@frozen
class Peers:
    peers: tuple[PeerInfo, ...]


ClientMessage = (
    Call | ListServices | GetStatus | GetPeers | Deposit | GetBalance | Start | Stdin | StdinEnd | Cancel
)
ServerMessage = (
    Accept
    | Reject
    | Stdout
    | Stderr
    | Credit
    | Exit
    | Receipt
    | Services
    | StatusReply
    | Peers
    | BalanceReply
)
Request = Call | ListServices | GetStatus | GetPeers | Deposit | GetBalance
Message = ClientMessage | ServerMessage
Event = Message | ConnectionClosed


# ---- codec -------------------------------------------------------------------------------------


def encode(message: Message) -> bytes:
    """The wire bytes of one message."""
    return b"".join(encode_parts(message))


def encode_parts(message: Message) -> tuple[bytes, ...]:
    """The wire bytes of one message, in parts that follow each other on the wire: a data
    message's head and its data as given, never copied into one buffer (a secure stream
    encrypts each part as it is, `NoiseSession.send_parts`), else the one whole message."""
    if isinstance(message, Stdin | Stdout | Stderr):
        return _data_head(_KIND_OF[type(message)], len(message.data)), message.data
    return (bytes(msgpack.packb([_KIND_OF[type(message)], _FIELDS_OF[type(message)](message)])),)


# msgpack's bin formats: the sizes each takes (under `limit`), its first byte, and how many
# bytes its size is written in. A data message's head is `_data_head`'s, whose fourth byte
# is one of these.
_BINS = ((1 << 8, 0xC4, 1), (1 << 16, 0xC5, 2), (1 << 32, 0xC6, 4))
_BIN_LENGTH_SIZES = {first: length_size for _, first, length_size in _BINS}


def _data_head(kind: Kind, size: int) -> bytes:
    """msgpack's own bytes for `[kind, [data]]` up to the data: packb would copy every byte of
    a stream twice (into its buffer, then out to a bytes object)."""
    first, length_size = next((first, length_size) for limit, first, length_size in _BINS if size < limit)
    # fixarray of 2, the kind (a positive fixint), fixarray of 1, then the bin's head
    return bytes((0x92, kind, 0x91, first)) + size.to_bytes(length_size, "big")


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


def _shown_int(v: object) -> str:
    """An integer for an error message; anything else as its type (never the peer's text)."""
    return str(v) if isinstance(v, int) and not isinstance(v, bool) else type(v).__name__


def _bytes(v: object) -> bytes:
    if not isinstance(v, bytes):
        raise RemoteProtocolError("expected bytes")
    return v


def _known(f: list[Any], arity: int, what: str, required: int | None = None) -> list[Any]:
    """The first `arity` fields (of which `required`, by default all, must be there); later
    ones are a newer peer's additions (versioning rule)."""
    needed = arity if required is None else required
    if not isinstance(f, list) or len(f) < needed:
        raise RemoteProtocolError(f"{what} needs at least {needed} fields")
    return f[:arity]


def _decode_call(f: list[Any]) -> Call:
    sid, args, *optional = f
    attestations = optional[0] if optional else []
    max_cost = _count(optional[1]) if len(optional) > 1 and optional[1] is not None else None
    token = _text(optional[2], MAX_TOKEN) if len(optional) > 2 and optional[2] is not None else None
    if not isinstance(attestations, list) or len(attestations) > MAX_CALL_ATTESTATIONS:
        raise RemoteProtocolError(f"a call carries at most {MAX_CALL_ATTESTATIONS} attestations")
    if not all(isinstance(a, bytes) and len(a) <= MAX_ATTESTATION_BYTES for a in attestations):
        raise RemoteProtocolError(f"an attestation is at most {MAX_ATTESTATION_BYTES} bytes")
    if not isinstance(sid, bytes) or len(sid) != SERVICE_ID_LEN:
        raise RemoteProtocolError("service id must be 16 bytes")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise RemoteProtocolError("too many arguments")
    parsed = tuple(_text(a, MAX_ARGS_BYTES) for a in args)
    if sum(len(a) for a in parsed) > MAX_ARGS_BYTES:
        raise RemoteProtocolError("arguments too long")
    return Call(sid, parsed, tuple(attestations), max_cost, token)


def _call_options(call: Call) -> list[Any]:
    """A Call's optional trailing fields, as few as say what it has (each needs those before it)."""
    if call.token is not None:
        return [list(call.attestations), call.max_cost, call.token]
    if call.max_cost is not None:
        return [list(call.attestations), call.max_cost]
    return [list(call.attestations)] if call.attestations else []


def _decode_exit(f: list[Any]) -> Exit:
    code, sig, error, usage, cost = f
    # Exactly one of them, each in its range: anything else could pass for success (a
    # status of 256 is 0 to a shell) or for another program's status.
    if (code is None) == (sig is None):
        raise RemoteProtocolError("an Exit has an exit code or a signal, exactly one of them")
    if code is not None and not (_is_int(code) and 0 <= code <= MAX_EXIT_CODE):
        raise RemoteProtocolError(f"an exit code is 0..{MAX_EXIT_CODE}, not {_shown_int(code)}")
    if sig is not None and not (_is_int(sig) and 1 <= sig <= MAX_SIGNAL):
        raise RemoteProtocolError(f"a signal is 1..{MAX_SIGNAL}, not {_shown_int(sig)}")
    return Exit(
        code,
        sig,
        None if error is None else _text(error),
        Usage(*(_count(u) for u in _known(usage, 5, "a usage record"))),
        _count(cost),
    )


def _decode_accept(f: list[Any]) -> Accept:
    job_id, terms = f
    return Accept(_text(job_id), Terms(*(_count(t) for t in _known(terms, 4, "terms"))))


def _decode_receipt(f: list[Any]) -> Receipt:
    record = _bytes(f[0])
    if len(record) > MAX_RECEIPT:
        raise RemoteProtocolError(f"a receipt is at most {MAX_RECEIPT} bytes")
    return Receipt(record)


def _decode_services(f: list[Any]) -> Services:
    (items,) = f
    if not isinstance(items, list) or len(items) > MAX_SERVICES:
        raise RemoteProtocolError(f"service list must be an array of at most {MAX_SERVICES}")
    infos = []
    for item in items:
        name, sid, desc, arguments, *rest = _known(item, 7, "a service entry", required=4)
        if not isinstance(sid, bytes) or len(sid) != SERVICE_ID_LEN:
            raise RemoteProtocolError("service id must be 16 bytes")
        isolation = _text(rest[0]) if rest else ""
        price = _known(rest[1], 3, "a price") if len(rest) > 1 else [0, 0, 0]
        factor = rest[2] if len(rest) > 2 else 1.0
        if not (isinstance(factor, float) and 0 < factor <= MAX_MULTIPLIER):
            raise RemoteProtocolError(f"a price multiplier is a float above 0, at most {MAX_MULTIPLIER:g}")
        per_call, per_second, per_mib = (_count(p) for p in price)
        infos.append(
            ServiceInfo(
                _text(name),
                sid,
                _text(desc),
                _text(arguments),
                isolation,
                (per_call, per_second, per_mib),
                factor,
            )
        )
    return Services(tuple(infos))


def _decode_status(f: list[Any]) -> StatusReply:
    running, queued, capacity, load, *optional = f
    if not (isinstance(load, list) and len(load) == 3 and all(isinstance(x, float) for x in load)):
        raise RemoteProtocolError("load must be three floats")
    reach = _decode_reach(optional[0]) if optional else None
    calls = optional[1] if len(optional) > 1 else False
    if not isinstance(calls, bool):
        raise RemoteProtocolError("calls must be a boolean")
    loads = (load[0], load[1], load[2])
    return StatusReply(_count(running), _count(queued), _count(capacity), loads, reach, calls)


def _decode_reach(f: object) -> ReachStatus:
    if not isinstance(f, list):
        raise RemoteProtocolError("a reach entry must be an array")
    reachability, observed, dht_mode, peers, *optional = _known(f, 6, "a reach entry", required=4)
    relays = optional[0] if optional else []
    if not isinstance(relays, list) or len(relays) > MAX_RELAYS:
        raise RemoteProtocolError(f"relays must be an array of at most {MAX_RELAYS}")
    prices = optional[1] if len(optional) > 1 else None
    if prices is not None and not (isinstance(prices, list) and len(prices) == len(relays)):
        raise RemoteProtocolError("relay prices must be an array as long as the relays")
    return ReachStatus(
        _text(reachability, MAX_HOST),
        _text(observed, MAX_HOST),
        _text(dht_mode, MAX_HOST),
        _count(peers),
        tuple(_text(r) for r in relays),
        None if prices is None else tuple(_count(p) for p in prices),
    )


def _decode_peers(f: list[Any]) -> Peers:
    (items,) = f
    if not isinstance(items, list) or len(items) > MAX_PEERS:
        raise RemoteProtocolError(f"peer list must be an array of at most {MAX_PEERS}")
    peers = []
    for item in items:
        key, host, port = _known(item, 3, "a peer entry")
        if not isinstance(key, bytes) or len(key) != 32:
            raise RemoteProtocolError("peer key must be 32 bytes")
        if not _is_int(port) or not 0 < port < 65536:
            raise RemoteProtocolError("peer port must be in 1..65535")
        peers.append(PeerInfo(key, _text(host, MAX_HOST), port))
    return Peers(tuple(peers))


_CODECS: dict[type[Any], tuple[Kind, int, Callable[[Any], list[Any]], Callable[[list[Any]], Message]]] = {
    Call: (
        Kind.CALL,
        2,
        # The attestations and the ceiling are optional: a call without them stays as short as before.
        lambda m: [m.service_id, list(m.args), *_call_options(m)],
        _decode_call,
    ),
    ListServices: (Kind.LIST, 0, lambda m: [], lambda f: ListServices()),
    GetStatus: (Kind.STATUS, 0, lambda m: [], lambda f: GetStatus()),
    GetPeers: (Kind.PEERS, 0, lambda m: [], lambda f: GetPeers()),
    Deposit: (Kind.DEPOSIT, 1, lambda m: [m.token], lambda f: Deposit(_text(f[0], MAX_TOKEN))),
    GetBalance: (Kind.BALANCE, 0, lambda m: [], lambda f: GetBalance()),
    Start: (
        Kind.START,
        0,
        lambda m: [] if m.window == STDIN_WINDOW else [m.window],
        lambda f: Start(_count(f[0])) if f else Start(),
    ),
    Stdin: (Kind.STDIN, 1, lambda m: [m.data], lambda f: Stdin(_bytes(f[0]))),
    StdinEnd: (Kind.STDIN_END, 0, lambda m: [], lambda f: StdinEnd()),
    Cancel: (Kind.CANCEL, 0, lambda m: [], lambda f: Cancel()),
    Accept: (
        Kind.ACCEPT,
        2,
        lambda m: [m.job_id, [m.terms.per_call, m.terms.per_second, m.terms.per_mib, m.terms.held]],
        _decode_accept,
    ),
    Credit: (Kind.CREDIT, 1, lambda m: [m.size], lambda f: Credit(_count(f[0]))),
    Receipt: (Kind.RECEIPT, 1, lambda m: [m.record], _decode_receipt),
    Reject: (
        Kind.REJECT,
        2,
        lambda m: [m.code, m.reason, *([] if m.needed is None else [m.needed])],
        lambda f: Reject(_text(f[0]), _text(f[1]), _count(f[2]) if len(f) > 2 else None),
    ),
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
        lambda m: [
            [
                [s.name, s.service_id, s.description, s.arguments, s.isolation, list(s.price), s.multiplier]
                for s in m.services
            ]
        ],
        _decode_services,
    ),
    StatusReply: (
        Kind.STATUS_REPLY,
        4,
        # The reach entry is optional: a node without a DHT leaves it out.
        lambda m: [
            m.running,
            m.queued,
            m.capacity,
            list(m.load),
            *(
                [
                    [
                        m.reach.reachability,
                        m.reach.observed,
                        m.reach.dht_mode,
                        m.reach.peers,
                        list(m.reach.relays),
                        *([] if m.reach.relay_prices is None else [list(m.reach.relay_prices)]),
                    ]
                ]
                if m.reach is not None
                else []
            ),
            *([True] if m.calls else []),
        ],
        _decode_status,
    ),
    BalanceReply: (
        Kind.BALANCE_REPLY,
        2,
        lambda m: [m.available, m.held],
        lambda f: BalanceReply(_count(f[0]), _count(f[1])),
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
# Fields this version knows beyond a kind's required ones, which a sender may leave out.
_OPTIONAL_FIELDS = {Kind.CALL: 3, Kind.START: 1, Kind.STATUS_REPLY: 2, Kind.REJECT: 1}


def decode_object(obj: object) -> Message:
    """Check one unpacked msgpack value and turn it into a message."""
    if not (isinstance(obj, list) and len(obj) == 2 and _is_int(obj[0]) and isinstance(obj[1], list)):
        raise RemoteProtocolError("a message is [kind, fields]")
    kind, fields = obj
    try:
        arity, decoder = _BY_KIND[Kind(kind)]
    except ValueError:
        raise RemoteProtocolError(f"unknown message kind {kind}") from None
    return decoder(_known(fields, arity + _OPTIONAL_FIELDS.get(kind, 0), f"message kind {kind}", arity))


def decode(data: bytes) -> Message:
    """Decode exactly one message from `data`."""
    decoder = MessageDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    if message is None or decoder.buffered:
        raise RemoteProtocolError("expected exactly one message")
    return message


_DATA_KINDS = frozenset({Kind.STDIN, Kind.STDOUT, Kind.STDERR})


class MessageDecoder:
    """Incremental decoder: feed bytes, take whole messages, never buffer past the limit.

    Data messages (stdin, stdout, stderr), the bulk of a stream, take a shorter way when
    one starts where the input is between messages: their bytes are gathered as they came
    and joined once, where msgpack would copy them into its buffer and out again. Anything
    else, and any data message that starts in the middle of msgpack's input, goes through
    msgpack's Unpacker. Both ways check a message with `decode_object`. Input is read only
    as messages are taken, one at a time, so that a read full of small messages is never
    held as many message objects at once.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._max_message = max_message
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            max_buffer_size=2 * max_message,
            max_bin_len=max_message,
            max_str_len=max_message,
            max_array_len=max(MAX_ARGS, MAX_SERVICES, MAX_PEERS) + 8,
            max_map_len=0,
            max_ext_len=0,
        )
        self._fed = 0
        self._consumed = 0  # of what was fed: the bytes of the messages returned
        self._input: collections.deque[memoryview] = collections.deque()  # fed, not yet read
        self._unpacker_fed = 0
        self._unpacker_told = 0  # the unpacker's tell() after the last message it gave
        self._gathering = False  # a data message's head was read, its payload not all yet
        self._kind = Kind.STDIN  # of that message
        self._head = 0  # its head's size
        self._left = 0  # bytes of its payload still to come
        self._pieces: list[memoryview] = []  # of its payload so far

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet returned as messages."""
        return self._fed - self._consumed

    def feed(self, data: bytes | bytearray) -> None:
        if self.buffered + len(data) > 2 * self._max_message:
            raise RemoteProtocolError("message exceeds the size limit")
        if data:
            # Pieces of bytes are kept as views (bytes never change); a bytearray's are copied.
            self._input.append(memoryview(data if isinstance(data, bytes) else bytes(data)))
            self._fed += len(data)

    def next_message(self) -> Message | None:
        while True:
            if self._gathering:
                return self._gather()
            if self._unpacker_fed != self._unpacker_told:
                message = self._unpack()  # what the unpacker holds comes first
                if message is not None or not self._input:
                    return message
                self._feed_unpacker()  # it ran out inside a message: its next bytes
            elif not self._input:
                return None
            elif not self._start_data():
                self._feed_unpacker()

    def _gather(self) -> Message | None:
        """The data message being gathered, once the input has all of it."""
        while self._left and self._input:
            view = self._input.popleft()
            if len(view) > self._left:
                self._input.appendleft(view[self._left :])
                view = view[: self._left]
            self._pieces.append(view)
            self._left -= len(view)
        if self._left:
            return None
        payload = b"".join(self._pieces)
        self._pieces.clear()
        self._gathering = False
        self._consumed += self._head + len(payload)
        return decode_object([self._kind, [payload]])

    def _start_data(self) -> bool:
        """Whether the input starts with a whole data message head; if so, the head is taken
        off and the message's payload is gathered next."""
        view = self._input[0]
        if len(view) < 5 or view[0] != 0x92 or view[1] not in _DATA_KINDS or view[2] != 0x91:
            return False
        length_size = _BIN_LENGTH_SIZES.get(view[3])
        if length_size is None or len(view) < 4 + length_size:
            return False
        size = int.from_bytes(view[4 : 4 + length_size], "big")
        if size > self._max_message:
            raise RemoteProtocolError("message exceeds the size limit")
        self._gathering, self._kind, self._head, self._left = True, Kind(view[1]), 4 + length_size, size
        if len(view) > self._head:
            self._input[0] = view[self._head :]
        else:
            self._input.popleft()
        return True

    def _feed_unpacker(self) -> None:
        view = self._input.popleft()
        try:
            self._unpacker.feed(view)
        except msgpack.BufferFull:
            raise RemoteProtocolError("message exceeds the size limit") from None
        self._unpacker_fed += len(view)

    def _unpack(self) -> Message | None:
        try:
            obj = self._unpacker.unpack()
        except msgpack.OutOfData:
            return None
        except Exception as exc:  # msgpack raises many types for malformed input
            raise RemoteProtocolError(f"malformed message: {exc}") from None
        # tell() also moves past a partial object when unpack() runs out of data, so it is read
        # only here, after a whole message.
        told = int(self._unpacker.tell())
        self._consumed += told - self._unpacker_told
        self._unpacker_told = told
        return decode_object(obj)


# ---- the connection machine ---------------------------------------------------------------------


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """Where one role is. Client and server states are distinct members of one enum, as
    in h11, so that a table row names its role's states only."""

    # client
    IDLE = "idle"  # nothing sent yet
    CALLED = "called"  # a Call sent; Start (the caller is live) not yet
    SENDING_STDIN = "sending-stdin"
    STDIN_DONE = "stdin-done"
    CANCELLED = "cancelled"
    ASKED = "asked"  # a list, status, peers, deposit or balance request sent: nothing more to say
    PROBED = "probed"  # a status request answered: the caller may close, or call this node
    # server
    WAITING = "waiting"  # no request yet
    MUST_ANSWER_CALL = "must-answer-call"
    MUST_LIST = "must-list"
    MUST_STATUS = "must-status"
    MUST_PEERS = "must-peers"
    MUST_DEPOSIT = "must-deposit"
    MUST_BALANCE = "must-balance"
    RUNNING = "running"  # accepted: output flows, stdin credit is granted
    EXITED = "exited"  # Exit sent; a Receipt may follow
    DONE = "done"  # the last word said
    # both
    CLOSED = "closed"  # this role's stream ended
    ERROR = "error"  # a violation was seen: every later step is refused


MessageType = type[Message] | type[ConnectionClosed]

# (role, state) -> {what that role may do next: the state it moves to}. Everything not
# listed is a protocol violation. A client may always walk away (the node then ends its
# job as "disconnected"); a node may only close once it has said its last word.
TRANSITIONS: dict[Role, dict[State, dict[MessageType, State]]] = {
    Role.CLIENT: {
        State.IDLE: {
            Call: State.CALLED,
            ListServices: State.ASKED,
            GetStatus: State.ASKED,
            GetPeers: State.ASKED,
            Deposit: State.ASKED,
            GetBalance: State.ASKED,
            ConnectionClosed: State.CLOSED,
        },
        State.CALLED: {Start: State.SENDING_STDIN, Cancel: State.CANCELLED, ConnectionClosed: State.CLOSED},
        State.SENDING_STDIN: {
            Stdin: State.SENDING_STDIN,
            StdinEnd: State.STDIN_DONE,
            Cancel: State.CANCELLED,
            ConnectionClosed: State.CLOSED,
        },
        State.STDIN_DONE: {Cancel: State.CANCELLED, ConnectionClosed: State.CLOSED},
        State.CANCELLED: {ConnectionClosed: State.CLOSED},
        State.ASKED: {ConnectionClosed: State.CLOSED},
        State.PROBED: {Call: State.CALLED, ConnectionClosed: State.CLOSED},
        State.CLOSED: {},
        State.ERROR: {},
    },
    Role.SERVER: {
        State.WAITING: {},
        State.MUST_ANSWER_CALL: {Accept: State.RUNNING, Reject: State.DONE},
        State.MUST_LIST: {Services: State.DONE},
        State.MUST_STATUS: {StatusReply: State.DONE},
        State.MUST_PEERS: {Peers: State.DONE},
        State.MUST_DEPOSIT: {Receipt: State.DONE, Reject: State.DONE},
        State.MUST_BALANCE: {BalanceReply: State.DONE},
        State.RUNNING: {
            Stdout: State.RUNNING,
            Stderr: State.RUNNING,
            Credit: State.RUNNING,
            Exit: State.EXITED,
        },
        State.EXITED: {Receipt: State.DONE, ConnectionClosed: State.CLOSED},
        State.DONE: {ConnectionClosed: State.CLOSED},
        State.CLOSED: {},
        State.ERROR: {},
    },
}

# A client's request moves the server to the state in which it owes that request's answer.
SERVER_OWES: dict[MessageType, State] = {
    Call: State.MUST_ANSWER_CALL,
    ListServices: State.MUST_LIST,
    GetStatus: State.MUST_STATUS,
    GetPeers: State.MUST_PEERS,
    Deposit: State.MUST_DEPOSIT,
    GetBalance: State.MUST_BALANCE,
}
INITIAL = {Role.CLIENT: State.IDLE, Role.SERVER: State.WAITING}


class JobConnection(PeerMachine[Role, State, Message]):
    """One connection's job protocol for one role (h11-style, no I/O; `node.machine`).

    `send` checks that *we* follow the protocol (LocalProtocolError otherwise);
    `next_event` checks that the *peer* does (RemoteProtocolError; TransportError when
    the node closed before its last word). After either, the connection is in ERROR and
    refuses everything. `receive_data(b"")` says the peer closed its stream.
    """

    def __init__(self, role: Role, max_message: int = MAX_MESSAGE) -> None:
        super().__init__(
            role,
            answerer=Role.SERVER,
            asker=Role.CLIENT,
            initial=INITIAL,
            transitions=TRANSITIONS,
            closed=State.CLOSED,
            error=State.ERROR,
        )
        self.request: Request | None = None
        # Stdin bytes the client may still send before the node grants more (`Credit`), and
        # the most that credit may take it to (set by Start).
        self.stdin_window = STDIN_WINDOW
        self.stdin_cap = STDIN_WINDOW
        self._decoder = MessageDecoder(max_message)

    @property
    def buffered(self) -> int:
        return self._decoder.buffered

    def _encode_parts(self, message: Message) -> tuple[bytes, ...]:
        parts = encode_parts(message)
        _check_peer_accepts(message, parts)
        return parts

    def _feed(self, data: bytes | bytearray) -> None:
        self._decoder.feed(data)

    def _next_message(self) -> Message | None:
        return self._decoder.next_message()

    def _partial(self) -> bool:
        return bool(self._decoder.buffered)

    def _moved(self, role: Role, event: Event, error: type[HubnetError]) -> None:
        if isinstance(event, Stdin):
            if len(event.data) > self.stdin_window:
                raise error(f"stdin beyond the window the node granted ({self.stdin_window} bytes left)")
            self.stdin_window -= len(event.data)
        elif isinstance(event, Credit):
            if self.stdin_window + event.size > self.stdin_cap:
                raise error(f"credit beyond the stdin window of {self.stdin_cap} bytes")
            self.stdin_window += event.size
        elif isinstance(event, Start):
            self.stdin_cap = max(STDIN_WINDOW, min(event.window, MAX_STDIN_WINDOW))
        if isinstance(event, Request):
            self.request = event
            self.states[Role.SERVER] = SERVER_OWES[type(event)]
        elif isinstance(event, StatusReply) and self.states[Role.CLIENT] is State.ASKED:
            # A prober may call the node it chose on the same connection: the node, now DONE,
            # then owes that call an answer (its machine has no other way back from DONE).
            self.states[Role.CLIENT] = State.PROBED


def _check_peer_accepts(message: Message, parts: tuple[bytes, ...]) -> None:
    """Refuse to send what the peer's decoder would refuse: that would look like garbage to it."""
    if isinstance(message, Stdin | Stdout | Stderr):
        # Data is checked by size alone: decoding every chunk again would double the cost of streaming.
        if len(message.data) > MAX_DATA:
            raise LocalProtocolError("data chunk larger than MAX_DATA")
        return
    try:
        decode(b"".join(parts))
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"{type(message).__name__} breaks the protocol's limits: {exc}") from None
