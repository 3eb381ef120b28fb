"""Offers: what a node tells the network about one service it serves.

An offer travels as the payload of a DHT provider record (`dht.records.ProviderRecord`),
which carries the publisher's signature, the sequence number and the expiry; this module
only adds the service-level fields (name, addresses, price, load) and their codec. The
payload is parsed strictly because it arrives from anyone on the network.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

from hubnet.dht.addresses import Address, InvalidAddress, decode_address, encode_address
from hubnet.dht.ids import service_key
from hubnet.dht.records import ProviderRecord
from hubnet.identity.errors import RemoteProtocolError
from hubnet.node.naming import SERVICE_ID_LEN, is_service_name

MAX_ADDRESSES = 8
MAX_PRICE = 2**53  # millisatoshi; far above any sane price, small enough for a float ranking
MAX_LOAD = 2**20


class InvalidOffer(RemoteProtocolError):
    """An offer's payload is malformed, or does not match the record that carries it."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Load:
    """Jobs running and queued on the node when the offer was signed, and its job slots."""

    running: int
    queued: int
    capacity: int

    @property
    def utilisation(self) -> float:
        """(running + queued) / capacity: 0 is idle, 1 is full, above 1 means a queue."""
        return (self.running + self.queued) / max(self.capacity, 1)


@dataclass(frozen=True)
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

    def payload(self) -> bytes:
        """The bytes that go into the provider record."""
        if not 1 <= len(self.addresses) <= MAX_ADDRESSES:
            raise ValueError(f"an offer lists 1..{MAX_ADDRESSES} addresses, not {len(self.addresses)}")
        return bytes(
            msgpack.packb(
                [
                    self.service_id,
                    self.name,
                    [encode_address(a) for a in self.addresses],
                    [self.price.per_call, self.price.per_second, self.price.per_mib],
                    [self.load.running, self.load.queued, self.load.capacity],
                ]
            )
        )


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
    if not (isinstance(fields, list) and len(fields) == 5):
        raise InvalidOffer("offer payload must be a 5-element array")
    service_id, name, addresses, price, load = fields
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
    )
