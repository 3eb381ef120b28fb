"""What the DHT stores: signed provider records and signed node records.

A provider record says "the publisher provides the thing named by `key`" and carries an
opaque payload (for hubnet, an offer: `node.offers`). A node record says "the publisher can
be reached at these addresses" (typed, `dht.addresses`: a direct one is its DHT's UDP port
and its job port's TCP, a relayed one reaches its job port only). Both are `SignedRecord`
envelopes with a sequence number and a short lifetime, because what they describe (load,
addresses) goes stale in minutes. Every parse checks signature, domain, size and times; a
store checks again before keeping anything and a reader checks again before believing
anything.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgpack

from hubnet.dht.addresses import MAX_HOST_CHARS, InvalidAddress, decode_address, encode_address
from hubnet.dht.addresses import Address as NodeAddress
from hubnet.dht.ids import ID_LEN
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord, SignedRecord

PROVIDER_DOMAIN = "hubnet/provider/1"
NODE_DOMAIN = "hubnet/node/1"
MAX_PROVIDER_RECORD_LEN = 1024
MAX_NODE_RECORD_LEN = 512
MAX_TTL = 3600  # seconds: a record may not claim to stay true for longer than this
MAX_CLOCK_SKEW = 60  # seconds a publisher's clock may run ahead of ours
MAX_SEQUENCE = 2**63 - 1
MAX_NODE_ADDRESSES = 4

# A UDP socket address, as the DHT's datagrams and contacts carry it. What a node record
# lists is a NodeAddress (typed, `dht.addresses`), which may also name a relay.
Address = tuple[str, int]


def _unpack_body(body: bytes, length: int, what: str) -> list[object]:
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise InvalidRecord(f"{what} body is not msgpack") from exc
    if not (isinstance(fields, list) and len(fields) == length):
        raise InvalidRecord(f"{what} body must be a {length}-element array")
    return fields


def _check_times(sequence: object, issued_at: object, expires_at: object, now: int) -> tuple[int, int, int]:
    """Sequence and validity window, refusing expired, future-dated and too-long-lived records."""
    for value in (sequence, issued_at, expires_at):
        if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQUENCE):
            raise InvalidRecord("record sequence and times must be non-negative integers")
    assert isinstance(sequence, int) and isinstance(issued_at, int) and isinstance(expires_at, int)
    if expires_at <= now:
        raise InvalidRecord("record has expired")
    if issued_at > now + MAX_CLOCK_SKEW:
        raise InvalidRecord("record is dated in the future")
    if not issued_at < expires_at <= issued_at + MAX_TTL:
        raise InvalidRecord(f"record lifetime must be 1..{MAX_TTL} seconds")
    return sequence, issued_at, expires_at


def check_address(value: object) -> Address:
    """A (host, port) pair from the wire; raise InvalidRecord unless it is plausible."""
    if not (isinstance(value, list | tuple) and len(value) == 2):
        raise InvalidRecord("an address must be [host, port]")
    host, port = value
    if not (isinstance(host, str) and 0 < len(host) <= MAX_HOST_CHARS and host.isprintable()):
        raise InvalidRecord("an address host must be a short printable string")
    if " " in host or not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        raise InvalidRecord("an address must have a host without spaces and a port in 1..65535")
    return host, port


def _node_address(value: object) -> NodeAddress:
    try:
        return decode_address(value)
    except InvalidAddress as exc:
        raise InvalidRecord(f"node record address: {exc}") from None


@frozen
class ProviderRecord:
    """`publisher` provides `key` until `expires_at` (unix seconds); newest `sequence` wins."""

    key: bytes
    publisher: bytes
    sequence: int
    issued_at: int
    expires_at: int
    payload: bytes
    raw: bytes

    @classmethod
    def create(
        cls, identity: Identity, key: bytes, payload: bytes, *, sequence: int, issued_at: int, ttl: int
    ) -> ProviderRecord:
        body = msgpack.packb([key, sequence, issued_at, issued_at + ttl, payload])
        raw = SignedRecord.sign(identity, PROVIDER_DOMAIN, bytes(body)).encode()
        if len(raw) > MAX_PROVIDER_RECORD_LEN:
            raise ValueError(f"provider record of {len(raw)} bytes exceeds {MAX_PROVIDER_RECORD_LEN}")
        return cls(key, identity.public_key, sequence, issued_at, issued_at + ttl, payload, raw)

    @classmethod
    def parse(cls, raw: bytes, *, now: int) -> ProviderRecord:
        """Verify and parse; raise InvalidRecord unless it is valid at `now`."""
        if len(raw) > MAX_PROVIDER_RECORD_LEN:
            raise InvalidRecord("provider record too large")
        signed = SignedRecord.decode(raw, domain=PROVIDER_DOMAIN)
        key, sequence, issued_at, expires_at, payload = _unpack_body(signed.body, 5, "provider record")
        if not (isinstance(key, bytes) and len(key) == ID_LEN and isinstance(payload, bytes)):
            raise InvalidRecord("provider record key or payload has the wrong type")
        seq, issued, expires = _check_times(sequence, issued_at, expires_at, now)
        return cls(key, signed.public_key, seq, issued, expires, payload, raw)


@frozen
class NodeRecord:
    """`publisher` can be reached at `addresses`: a direct one for the DHT (UDP) and jobs
    (TCP) on the same port, a relayed one for jobs."""

    publisher: bytes
    addresses: tuple[NodeAddress, ...]
    sequence: int
    issued_at: int
    expires_at: int
    raw: bytes

    @classmethod
    def create(
        cls,
        identity: Identity,
        addresses: tuple[NodeAddress, ...],
        *,
        sequence: int,
        issued_at: int,
        ttl: int,
    ) -> NodeRecord:
        if not 1 <= len(addresses) <= MAX_NODE_ADDRESSES:
            raise ValueError(f"a node record lists 1..{MAX_NODE_ADDRESSES} addresses, not {len(addresses)}")
        body = msgpack.packb([[encode_address(a) for a in addresses], sequence, issued_at, issued_at + ttl])
        raw = SignedRecord.sign(identity, NODE_DOMAIN, bytes(body)).encode()
        if len(raw) > MAX_NODE_RECORD_LEN:
            raise ValueError(f"node record of {len(raw)} bytes exceeds {MAX_NODE_RECORD_LEN}")
        return cls(identity.public_key, addresses, sequence, issued_at, issued_at + ttl, raw)

    @classmethod
    def parse(cls, raw: bytes, *, now: int) -> NodeRecord:
        """Verify and parse; raise InvalidRecord unless it is valid at `now`."""
        if len(raw) > MAX_NODE_RECORD_LEN:
            raise InvalidRecord("node record too large")
        signed = SignedRecord.decode(raw, domain=NODE_DOMAIN)
        addresses, sequence, issued_at, expires_at = _unpack_body(signed.body, 4, "node record")
        if not (isinstance(addresses, list) and 1 <= len(addresses) <= MAX_NODE_ADDRESSES):
            raise InvalidRecord(f"node record must list 1..{MAX_NODE_ADDRESSES} addresses")
        seq, issued, expires = _check_times(sequence, issued_at, expires_at, now)
        return cls(signed.public_key, tuple(_node_address(a) for a in addresses), seq, issued, expires, raw)


class ProviderResults:
    """Provider records gathered during a lookup (or kept from one, `hubnet.offer_cache`):
    verified at `now`, newest per publisher.

    Every node near a popular key holds the same signed records, so a lookup hears each one
    from many nodes (98 copies of 12 records at 12 providers): each distinct record is
    parsed and its signature checked once, and a copy counts as what its first one was.
    """

    def __init__(self, key: bytes, *, now: int) -> None:
        self.key = key
        self.now = now
        self._newest: dict[bytes, ProviderRecord] = {}
        self._checked: dict[bytes, ProviderRecord | None] = {}  # by raw bytes: None if refused
        self.refused = 0

    def add(self, raw_records: Iterable[bytes]) -> None:
        for raw in raw_records:
            if raw in self._checked:
                record = self._checked[raw]
            else:
                record = self._checked[raw] = self._check(raw)
            if record is None:
                self.refused += 1
                continue
            old = self._newest.get(record.publisher)
            if old is None or record.sequence > old.sequence:
                self._newest[record.publisher] = record

    def _check(self, raw: bytes) -> ProviderRecord | None:
        try:
            record = ProviderRecord.parse(raw, now=self.now)
        except InvalidRecord:
            return None
        return record if record.key == self.key else None

    def records(self) -> list[ProviderRecord]:
        return sorted(self._newest.values(), key=lambda r: r.publisher)
