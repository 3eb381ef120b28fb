"""Offers: what a node tells the network about one service it serves.

An offer travels as the payload of a DHT provider record (`dht.records.ProviderRecord`),
which carries the publisher's signature, the sequence number and the expiry; this module
only adds the service-level fields (name, addresses, price, load) and their codec. The
payload is parsed strictly because it arrives from anyone on the network.
"""

from __future__ import annotations

import msgpack

from hubnet.dht.addresses import Address, InvalidAddress, decode_address, encode_address
from hubnet.dht.ids import service_key
from hubnet.dht.records import ProviderRecord
from hubnet.identity.attest_text import MAX_ATTESTATION_LEN
from hubnet.identity.errors import RemoteProtocolError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN
from hubnet.node.naming import SERVICE_ID_LEN, is_service_name
from hubnet.node.protocol import MAX_MULTIPLIER

MAX_ADDRESSES = 8
MAX_PRICE = 2**53  # millisatoshi; far above any sane price, small enough for a float ranking
MAX_LOAD = 2**20
# A provider record holds at most 1024 bytes: room for two attestations beside the rest.
MAX_OFFER_ATTESTATIONS = 2
MAX_FREE_ORGS = 4


class InvalidOffer(RemoteProtocolError):
    """An offer's payload is malformed, or does not match the record that carries it."""


@frozen
class Price:
    """Integers in millisatoshi: per call, per second of wall time, per MiB moved (in plus out)."""

    per_call: int = 0
    per_second: int = 0
    per_mib: int = 0

    def estimate(self, seconds: float, mib: float) -> float:
        """The cost of one job of the given length and size, for ranking offers."""
        return self.per_call + self.per_second * seconds + self.per_mib * mib

    @property
    def is_free(self) -> bool:
        return self.per_call == self.per_second == self.per_mib == 0


@frozen
class Load:
    """Jobs running and queued on the node when the offer was signed, and its job slots."""

    running: int
    queued: int
    capacity: int

    @property
    def utilisation(self) -> float:
        """(running + queued) / capacity: 0 is idle, 1 is full, above 1 means a queue."""
        return (self.running + self.queued) / max(self.capacity, 1)


@frozen
class Offer:
    """One provider of one service, as signed by `publisher` (an Ed25519 public key)."""

    publisher: bytes
    service_id: bytes
    name: str
    addresses: tuple[Address, ...]  # direct and/or via relays, the preferred first
    price: Price
    load: Load
    sequence: int
    issued_at: int
    expires_at: int
    # The publisher's organisation attestations (encoded; unverified here: hubnet.select
    # checks them against the publisher and the organisations' revocation lists), and the
    # organisations whose members this service serves free.
    attestations: tuple[bytes, ...] = ()
    free_orgs: tuple[bytes, ...] = ()
    # The demand multiplier already in `price` (node.pricing), for people to see: 1 is the
    # listed price, 2 a busy node's double.
    multiplier: float = 1.0

    def payload(self) -> bytes:
        """The bytes that go into the provider record."""
        if not 1 <= len(self.addresses) <= MAX_ADDRESSES:
            raise ValueError(f"an offer lists 1..{MAX_ADDRESSES} addresses, not {len(self.addresses)}")
        if len(self.attestations) > MAX_OFFER_ATTESTATIONS or len(self.free_orgs) > MAX_FREE_ORGS:
            raise ValueError(
                f"an offer carries at most {MAX_OFFER_ATTESTATIONS} attestations "
                f"and {MAX_FREE_ORGS} free_orgs"
            )
        fields: list[object] = [
            self.service_id,
            self.name,
            [encode_address(a) for a in self.addresses],
            [self.price.per_call, self.price.per_second, self.price.per_mib],
            [self.load.running, self.load.queued, self.load.capacity],
        ]
        if not 0 < self.multiplier <= MAX_MULTIPLIER:
            raise ValueError(f"an offer's multiplier is above 0 and at most {MAX_MULTIPLIER:g}")
        # Optional, each needing those before it: an offer without them keeps its size.
        if self.attestations or self.free_orgs or self.multiplier != 1.0:
            fields += [list(self.attestations), list(self.free_orgs)]
        if self.multiplier != 1.0:
            fields.append(float(self.multiplier))
        return bytes(msgpack.packb(fields))


def _bounded_int(value: object, limit: int, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit):
        raise InvalidOffer(f"offer {what} must be an integer in 0..{limit}")
    return value


def _int_triple(value: object, limit: int, what: str) -> tuple[int, int, int]:
    if not (isinstance(value, list) and len(value) == 3):
        raise InvalidOffer(f"offer {what} must be three integers")
    a, b, c = (_bounded_int(v, limit, what) for v in value)
    return a, b, c


def _addresses(value: object) -> tuple[Address, ...]:
    if not (isinstance(value, list) and 1 <= len(value) <= MAX_ADDRESSES):
        raise InvalidOffer(f"offer must list 1..{MAX_ADDRESSES} addresses")
    try:
        return tuple(decode_address(address) for address in value)
    except InvalidAddress as exc:
        raise InvalidOffer(f"offer address: {exc}") from None


def offer_from_record(record: ProviderRecord) -> Offer:
    """Parse the offer in a (signature-checked) provider record; raise InvalidOffer."""
    try:
        fields = msgpack.unpackb(record.payload, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise InvalidOffer("offer payload is not msgpack") from exc
    if not (isinstance(fields, list) and len(fields) >= 5):
        raise InvalidOffer("offer payload must be an array of at least 5 elements")
    # Fields past the 8th are a newer node's additions (the versioning rule of docs/protocol.md).
    service_id, name, addresses, price, load, *optional = fields[:8]
    attestations, free_orgs = _optional_lists(optional[:2])
    multiplier = optional[2] if len(optional) > 2 else 1.0
    if not (isinstance(multiplier, float) and 0 < multiplier <= MAX_MULTIPLIER):
        raise InvalidOffer(f"an offer's multiplier is a float above 0 and at most {MAX_MULTIPLIER:g}")
    if not (isinstance(service_id, bytes) and len(service_id) == SERVICE_ID_LEN):
        raise InvalidOffer("offer service id must be 16 bytes")
    if service_key(service_id) != record.key:
        raise InvalidOffer("offer is stored under another service's key")
    if not (isinstance(name, str) and is_service_name(name)):
        raise InvalidOffer("offer service name is not a valid name")
    running, queued, capacity = _int_triple(load, MAX_LOAD, "load")
    return Offer(
        publisher=record.publisher,
        service_id=service_id,
        name=name,
        addresses=_addresses(addresses),
        price=Price(*_int_triple(price, MAX_PRICE, "price")),
        load=Load(running, queued, capacity),
        sequence=record.sequence,
        issued_at=record.issued_at,
        expires_at=record.expires_at,
        attestations=attestations,
        free_orgs=free_orgs,
        multiplier=multiplier,
    )


def _optional_lists(optional: list[object]) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    attestations, free_orgs = [*optional, [], []][:2]
    if not (
        isinstance(attestations, list)
        and len(attestations) <= MAX_OFFER_ATTESTATIONS
        and all(isinstance(a, bytes) and len(a) <= MAX_ATTESTATION_LEN for a in attestations)
    ):
        raise InvalidOffer(f"an offer carries at most {MAX_OFFER_ATTESTATIONS} attestations")
    if not (
        isinstance(free_orgs, list)
        and len(free_orgs) <= MAX_FREE_ORGS
        and all(isinstance(o, bytes) and len(o) == PUBLIC_KEY_LEN for o in free_orgs)
    ):
        raise InvalidOffer(f"an offer names at most {MAX_FREE_ORGS} free_orgs, each a 32-byte id")
    return tuple(attestations), tuple(free_orgs)
