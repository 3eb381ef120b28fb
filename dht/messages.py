"""The DHT's wire format: one signed msgpack datagram per request or reply.

A datagram is a `SignedRecord` of domain `hubnet/dht/2` whose body is
`[txid, kind, fields, serving, sent_at, token, padding]`. The signature proves the sender
holds the Ed25519 key its node id is derived from, so a node id seen in a reply cannot be
claimed by someone else; `serving` says whether the sender answers requests on the port it
sent from (a one-shot client does not, and must not be put in anyone's routing table).

Version 2 added the last three fields, for a DHT that cannot be used to reflect traffic
or replay requests (see `dht/protocol.py`): `sent_at` (the sender's unix seconds) bounds
how long a receiver must remember a request's txid to drop its replays; `token` is, in a
request, the return-routability token the receiver gave the sender earlier (empty if
none), and in a reply a fresh token for the requester's address; `padding` lets a
requester without a token make its request as large as the reply it wants, since a node
answers an unproven address with no more bytes than it received. Records inside messages
stay raw bytes here: they are verified against the clock where they are used.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

import msgpack
from kademlia.node import Node

from hubnet.dht.ids import ID_LEN, node_id
from hubnet.dht.records import Address, check_address
from hubnet.identity.errors import RemoteProtocolError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN, Identity
from hubnet.identity.records import InvalidRecord, SignedRecord

DATAGRAM_DOMAIN = "hubnet/dht/2"
MAX_DATAGRAM = 8192
TXID_LEN = 8
TOKEN_LEN = 8
MAX_TIME = 2**63 - 1
MAX_CONTACTS = 20
MAX_RECORDS_PER_REPLY = 6  # 6 x 1 KiB records plus 20 contacts stay under MAX_DATAGRAM
MAX_REASON_CHARS = 200
NONCE_LEN = 16


class InvalidMessage(RemoteProtocolError):
    """A datagram is malformed, oversized or not signed by the key it names."""


def _address(host: object, port: object) -> Address:
    try:
        return check_address([host, port])
    except InvalidRecord as exc:
        raise InvalidMessage(str(exc)) from exc


class Contact(Node):  # type: ignore[misc]  # kademlia is untyped
    """A DHT node: its Ed25519 key (from which its id derives) and its UDP address."""

    def __init__(self, public_key: bytes, host: str, port: int) -> None:
        super().__init__(node_id(public_key), host, port)
        self.public_key = public_key

    @property
    def address(self) -> Address:
        return (self.ip, self.port)

    def to_wire(self) -> list[object]:
        return [self.public_key, self.ip, self.port]

    @classmethod
    def from_wire(cls, value: object) -> Contact:
        if not (isinstance(value, list) and len(value) == 3):
            raise InvalidMessage("a contact must be [key, host, port]")
        public_key, host, port = value
        if not (isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_LEN):
            raise InvalidMessage("a contact key must be 32 bytes")
        return cls(public_key, *_address(host, port))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Contact) and (self.public_key, self.address) == (
            other.public_key,
            other.address,
        )

    def __hash__(self) -> int:
        return hash((self.public_key, self.address))


# --- messages: requests ----------------------------------------------------------------


@frozen
class Ping:
    pass


@frozen
class FindNode:
    target: bytes


@frozen
class GetProviders:
    """Ask for the provider records under `key`, starting at the `skip`-th (paging)."""

    key: bytes
    skip: int = 0


@frozen
class AddProvider:
    record: bytes


@frozen
class PutNode:
    record: bytes


@frozen
class GetNode:
    public_key: bytes


@frozen
class DialMe:
    """Ask the receiver to dial us back (`dht.reachability`): over TCP at `tcp_port`, and with a
    `DialBack` datagram carrying `nonce` to the UDP port this request came from, both at the
    IP it came from and from a socket other than the one that answers."""

    nonce: bytes
    tcp_port: int


@frozen
class DialBack:
    """The UDP dial-back: sent from a fresh socket, never answered."""

    nonce: bytes


# --- messages: replies -----------------------------------------------------------------


@frozen
class Pong:
    pass


@frozen
class Nodes:
    contacts: tuple[Contact, ...]


@frozen
class Providers:
    """Some of the records under the key (`total` in all) and the closest contacts we know."""

    records: tuple[bytes, ...]
    total: int
    contacts: tuple[Contact, ...]


@frozen
class Stored:
    ok: bool
    reason: str = ""


@frozen
class NodeFound:
    record: bytes | None
    contacts: tuple[Contact, ...]


class DialOutcome(enum.IntEnum):
    """What came of a `DialMe`'s TCP dial-back."""

    REFUSED = 0  # not attempted: no token yet, or too many dial-backs asked for
    REACHED = 1  # the requester's key answered a Noise handshake at its IP and port
    UNREACHED = 2  # no connection, or not the requester's key behind it


@frozen
class Dialed:
    """The reply to `DialMe`: the address the request came from (the requester's observed
    UDP address) and what the TCP dial-back found; sent once it is done."""

    host: str
    port: int
    outcome: DialOutcome


Request = Ping | FindNode | GetProviders | AddProvider | PutNode | GetNode | DialMe | DialBack
Reply = Pong | Nodes | Providers | Stored | NodeFound | Dialed
Message = Request | Reply

_KINDS: dict[type, int] = {
    Ping: 1,
    Pong: 2,
    FindNode: 3,
    Nodes: 4,
    GetProviders: 5,
    Providers: 6,
    AddProvider: 7,
    Stored: 8,
    PutNode: 9,
    GetNode: 10,
    NodeFound: 11,
    DialMe: 12,
    Dialed: 13,
    DialBack: 14,
}
REQUEST_TYPES = (Ping, FindNode, GetProviders, AddProvider, PutNode, GetNode, DialMe, DialBack)


@frozen
class Datagram:
    """A decoded, signature-checked datagram."""

    txid: bytes
    message: Message
    sender: bytes
    serving: bool
    sent_at: int  # the sender's unix seconds
    token: bytes  # empty, or TOKEN_LEN bytes (see the module docstring)

    @property
    def is_request(self) -> bool:
        return isinstance(self.message, REQUEST_TYPES)


def _contacts(contacts: Sequence[Contact]) -> list[object]:
    return [c.to_wire() for c in contacts]


def _fields(message: Message) -> list[object]:
    match message:
        case Ping() | Pong():
            return []
        case FindNode(target):
            return [target]
        case GetProviders(key, skip):
            return [key, skip]
        case AddProvider(record) | PutNode(record):
            return [record]
        case GetNode(public_key):
            return [public_key]
        case Nodes(contacts):
            return [_contacts(contacts)]
        case Providers(records, total, contacts):
            return [list(records), total, _contacts(contacts)]
        case Stored(ok, reason):
            return [ok, reason]
        case NodeFound(record, contacts):
            return [record, _contacts(contacts)]
        case DialMe(nonce, tcp_port):
            return [nonce, tcp_port]
        case Dialed(host, port, outcome):
            return [host, port, int(outcome)]
        case DialBack(nonce):
            return [nonce]
    raise TypeError(f"not a DHT message: {message!r}")


# The signed envelope around a body of n bytes: a fixarray of 4, the domain as a fixstr,
# the body as a bin, the key and the signature as bin8.
_ENVELOPE_OVERHEAD = 1 + (1 + len(DATAGRAM_DOMAIN)) + (2 + PUBLIC_KEY_LEN) + (2 + 64)


def _envelope_len(body_len: int) -> int:
    return _ENVELOPE_OVERHEAD + body_len + (2 if body_len < 256 else 3)


def _body(txid: bytes, message: Message, serving: bool, sent_at: int, token: bytes, padding: int) -> bytes:
    fields = [txid, _KINDS[type(message)], _fields(message), serving, sent_at, token, bytes(padding)]
    return bytes(msgpack.packb(fields))


def encoded_size(
    message: Message, *, serving: bool, sent_at: int, token: bytes = b"", padding: int = 0
) -> int:
    """len(encode(...)) of the same arguments, without signing."""
    return _envelope_len(len(_body(bytes(TXID_LEN), message, serving, sent_at, token, padding)))


def padding_for(message: Message, size: int, *, serving: bool, sent_at: int, token: bytes = b"") -> int:
    """The padding that makes the datagram of `message` at least `size` bytes (0 if it is)."""
    padding = 0
    while True:
        have = encoded_size(message, serving=serving, sent_at=sent_at, token=token, padding=padding)
        if have >= size:
            return padding
        padding += size - have  # a length header may grow by a byte: at most one more round


def encode(
    identity: Identity,
    txid: bytes,
    message: Message,
    *,
    serving: bool,
    sent_at: int | None = None,
    token: bytes = b"",
    padding: int = 0,
) -> bytes:
    """Sign and encode; raise ValueError if it would exceed MAX_DATAGRAM (a local bug).

    `sent_at` defaults to the system clock (callers with a clock of their own pass it).
    """
    if sent_at is None:
        sent_at = int(time.time())
    if len(token) not in (0, TOKEN_LEN):
        raise ValueError(f"a token is empty or {TOKEN_LEN} bytes")
    body = _body(txid, message, serving, sent_at, token, padding)
    data = SignedRecord.sign(identity, DATAGRAM_DOMAIN, body).encode()
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"DHT datagram of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def _id(value: object, what: str, length: int = ID_LEN) -> bytes:
    if not (isinstance(value, bytes) and len(value) == length):
        raise InvalidMessage(f"{what} must be {length} bytes")
    return value


def _count(value: object, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32):
        raise InvalidMessage(f"{what} must be a small non-negative integer")
    return value


_OUTCOMES = frozenset(int(o) for o in DialOutcome)


def _port(value: object) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536):
        raise InvalidMessage("a port must be an integer from 1 to 65535")
    return value


def _contact_list(value: object) -> tuple[Contact, ...]:
    if not (isinstance(value, list) and len(value) <= MAX_CONTACTS):
        raise InvalidMessage(f"contacts must be a list of at most {MAX_CONTACTS}")
    return tuple(Contact.from_wire(c) for c in value)


def _record(value: object) -> bytes:
    # The records' own parsers bound their sizes; the datagram limit bounds the sum.
    if not isinstance(value, bytes):
        raise InvalidMessage("a record must be bytes")
    return value


def _message(kind: object, fields: list[object]) -> Message:
    match kind, fields:
        case 1, []:
            return Ping()
        case 2, []:
            return Pong()
        case 3, [target]:
            return FindNode(_id(target, "target"))
        case 4, [contacts]:
            return Nodes(_contact_list(contacts))
        case 5, [key, skip]:
            return GetProviders(_id(key, "key"), _count(skip, "skip"))
        case 6, [list() as records, total, contacts] if len(records) <= MAX_RECORDS_PER_REPLY:
            return Providers(
                tuple(_record(r) for r in records), _count(total, "total"), _contact_list(contacts)
            )
        case 7, [record]:
            return AddProvider(_record(record))
        case 8, [bool() as ok, str() as reason] if len(reason) <= MAX_REASON_CHARS:
            return Stored(ok, reason)
        case 9, [record]:
            return PutNode(_record(record))
        case 10, [public_key]:
            return GetNode(_id(public_key, "node key", PUBLIC_KEY_LEN))
        case 11, [record, contacts] if record is None or isinstance(record, bytes):
            return NodeFound(record, _contact_list(contacts))
        case 12, [nonce, tcp_port]:
            return DialMe(_id(nonce, "nonce", NONCE_LEN), _port(tcp_port))
        case 13, [host, port, outcome] if type(outcome) is int and outcome in _OUTCOMES:
            return Dialed(*_address(host, port), DialOutcome(outcome))
        case 14, [nonce]:
            return DialBack(_id(nonce, "nonce", NONCE_LEN))
    raise InvalidMessage(f"unknown or malformed DHT message of kind {kind!r}")


def decode(data: bytes) -> Datagram:
    """Verify and parse a datagram from the network; raise InvalidMessage on anything wrong."""
    if len(data) > MAX_DATAGRAM:
        raise InvalidMessage("datagram too large")
    try:
        signed = SignedRecord.decode(data, domain=DATAGRAM_DOMAIN)
        fields = msgpack.unpackb(signed.body, raw=False, strict_map_key=True, use_list=True)
    except InvalidRecord as exc:
        raise InvalidMessage(str(exc)) from exc
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise InvalidMessage("datagram body is not msgpack") from exc
    if not (isinstance(fields, list) and len(fields) == 7):
        raise InvalidMessage("datagram body must be [txid, kind, fields, serving, sent_at, token, padding]")
    txid, kind, message_fields, serving, sent_at, token, padding = fields
    if not (isinstance(message_fields, list) and isinstance(serving, bool)):
        raise InvalidMessage("datagram fields must be a list and serving a bool")
    if not (isinstance(sent_at, int) and not isinstance(sent_at, bool) and 0 <= sent_at <= MAX_TIME):
        raise InvalidMessage("datagram sent_at must be a non-negative integer")
    if not (isinstance(token, bytes) and len(token) in (0, TOKEN_LEN) and isinstance(padding, bytes)):
        raise InvalidMessage(f"datagram token must be empty or {TOKEN_LEN} bytes, padding bytes")
    return Datagram(
        _id(txid, "txid", TXID_LEN),
        _message(kind, message_fields),
        signed.public_key,
        serving,
        sent_at,
        token,
    )
