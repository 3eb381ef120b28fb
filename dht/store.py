"""The records a DHT node holds for others, with quotas so that no one can fill it.

Records arrive already parsed (signature, size and times checked at `now`); the store adds
the rules that need state: the newest sequence per (key, publisher) wins and an older one
is refused; and quotas. Keys are free, so quotas per publisher stop nobody: the store also
counts what each *source* holds (the address a record came from, counted as a host and a
network by `dht.sources`: a public IPv4 address and its /24, an IPv6 /64 and its /48, a
loopback or private `ip:port` alone). A record stored by this node itself (no source)
counts against no source and is never evicted.

Per key: at most `max_per_key` publishers, of which at most `max_per_key_per_host` from one
host and `max_per_key_per_network` from one network. A key that is full still takes a
record from a network holding fewer of its records than the network holding most: one of
the latter's (the one expiring first) makes room. So hosts in G networks share a key
fairly, and an honest provider is not locked out by throw-away keys from a few networks.

In all: at most `max_per_host` records from one host, `max_per_network` from one network,
`max_per_publisher` from one publisher, `max_records` in the store. Every check is O(1) or
O(max_per_key) (a scan of one key's records), never O(store): counts are kept as records
come and go. Reads drop what has expired since it was stored; `expire` forgets it.

Memory: a provider record is held as its raw bytes plus a `_Held` with slots (the
publisher key, three integers, the source), and is parsed again, without its signature
(checked on arrival), when read; a node record is kept parsed (at most 512 bytes raw).
Measured with tracemalloc (everything the store keeps, raw bytes included): a 1 KiB
record takes about 1.3 KiB among 64 under one key, 1.8 KiB alone under its key (2.3 and
2.5 KiB when the store kept parsed records). `max_records` = 32,768 bounds a full store
at about 58 MiB; adding a record takes 5 to 10 microseconds, at 1,000 records as at 50,000.
"""

from __future__ import annotations

import msgpack

from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.sources import Source, classify
from hubnet.identity.cheap_typing import TypeVar
from hubnet.identity.frozen import frozen
from hubnet.identity.records import InvalidRecord

N = TypeVar("N", str, bytes)


class RecordRefused(InvalidRecord):
    """A valid record that the store will not keep (stale sequence, quota)."""


@frozen
class StoreLimits:
    max_per_key: int = 64
    max_per_key_per_host: int = 8
    max_per_key_per_network: int = 16
    max_per_publisher: int = 256
    max_per_host: int = 256
    max_per_network: int = 1024
    max_records: int = 32_768


class _Held:
    """A provider record as the store keeps it: raw, with what the rules need."""

    __slots__ = ("expires_at", "issued_at", "publisher", "raw", "sequence", "source")

    def __init__(self, record: ProviderRecord, source: Source | None) -> None:
        self.raw = record.raw
        self.publisher = record.publisher
        self.sequence = record.sequence
        self.issued_at = record.issued_at
        self.expires_at = record.expires_at
        self.source = source

    def record(self, key: bytes) -> ProviderRecord:
        """The record again, parsed without checking its signature (checked on arrival)."""
        body = msgpack.unpackb(msgpack.unpackb(self.raw)[1])
        return ProviderRecord(
            key, self.publisher, self.sequence, self.issued_at, self.expires_at, body[4], self.raw
        )


class RecordStore:
    """Provider records by key, then publisher; node records by publisher."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._providers: dict[bytes, dict[bytes, _Held]] = {}
        self._nodes: dict[bytes, tuple[NodeRecord, Source | None]] = {}
        self._per_publisher: dict[bytes, int] = {}
        self._per_host: dict[str, int] = {}
        self._per_network: dict[str, int] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def held_from(self, address: Address) -> tuple[int, int]:
        """How many records the host and the network of `address` hold here."""
        source = classify(address)
        return self._per_host.get(source.host, 0), self._per_network.get(source.network, 0)

    # -- counting -------------------------------------------------------------------------

    @staticmethod
    def _bump(counts: dict[N, int], name: N, delta: int) -> None:
        count = counts.get(name, 0) + delta
        if count:
            counts[name] = count
        else:
            del counts[name]

    def _count(self, publisher: bytes, source: Source | None, delta: int) -> None:
        self._size += delta
        self._bump(self._per_publisher, publisher, delta)
        if source is not None:
            self._bump(self._per_host, source.host, delta)
            self._bump(self._per_network, source.network, delta)

    def _check_room(self, publisher: bytes, source: Source | None, *, new: bool, grows: bool) -> None:
        """Raise unless a record from `publisher` (one more of its records if `new`) via `source`
        (one more of its records) fits, in a store that `grows` by one record."""
        if new and self._per_publisher.get(publisher, 0) >= self.limits.max_per_publisher:
            raise RecordRefused("publisher has too many records here")
        if source is not None:
            if self._per_host.get(source.host, 0) >= self.limits.max_per_host:
                raise RecordRefused("your address has too many records here")
            if self._per_network.get(source.network, 0) >= self.limits.max_per_network:
                raise RecordRefused("your network has too many records here")
        if grows and self._size >= self.limits.max_records:
            raise RecordRefused("store is full")

    @staticmethod
    def _check_newer(old_sequence: int | None, new: ProviderRecord | NodeRecord) -> None:
        if old_sequence is not None and new.sequence <= old_sequence:
            raise RecordRefused(f"sequence {new.sequence} is not newer than the stored {old_sequence}")

    # -- provider records -----------------------------------------------------------------

    def add_provider(self, record: ProviderRecord, *, source: Address | None = None) -> None:
        """Keep `record`, which came from `source` (None: this node's own), replacing an older
        one from its publisher; raise RecordRefused.

        An expired record still counts against its publisher's sequence until `expire` runs,
        so a replayed older record is refused even after the newer one has lapsed.
        """
        sender = classify(source) if source is not None else None
        by_publisher = self._providers.get(record.key, {})
        old = by_publisher.get(record.publisher)
        self._check_newer(old.sequence if old is not None else None, record)
        moved = old is not None and old.source != sender
        evict: _Held | None = None
        if old is None:
            evict = self._key_room(by_publisher, sender)
        if old is None or moved:
            self._check_room(record.publisher, sender, new=old is None, grows=old is None and evict is None)
        if evict is not None:
            del by_publisher[evict.publisher]
            self._count(evict.publisher, evict.source, -1)
        if old is not None:
            self._count(old.publisher, old.source, -1)
        by_publisher[record.publisher] = _Held(record, sender)
        self._count(record.publisher, sender, +1)
        self._providers[record.key] = by_publisher

    def _key_room(self, by_publisher: dict[bytes, _Held], sender: Source | None) -> _Held | None:
        """Raise unless a new publisher from `sender` may join this key; the record to evict
        to make room for it, if the key is full."""
        limits = self.limits
        if sender is not None:
            hosts = sum(1 for h in by_publisher.values() if h.source and h.source.host == sender.host)
            if hosts >= limits.max_per_key_per_host:
                raise RecordRefused("your address has too many providers under this key")
        networks: dict[str, list[_Held]] = {}
        own = 0  # records of this node's own (no source): a network of their own, never evicted
        for held in by_publisher.values():
            if held.source is not None:
                networks.setdefault(held.source.network, []).append(held)
            else:
                own += 1
        mine = len(networks.get(sender.network, ())) if sender is not None else own
        if sender is not None and mine >= limits.max_per_key_per_network:
            raise RecordRefused("your network has too many providers under this key")
        if len(by_publisher) < limits.max_per_key:
            return None
        # Full: a network holding at least two more of this key's records than the newcomer's
        # gives up the one of them that expires first.
        largest = max(networks.values(), key=len, default=[])
        if len(largest) < mine + 2:
            raise RecordRefused("key has too many providers")
        return min(largest, key=lambda h: (h.expires_at, h.publisher))

    def _live(self, key: bytes, now: int) -> list[_Held]:
        held = [h for h in self._providers.get(key, {}).values() if h.expires_at > now]
        return sorted(held, key=lambda h: (-h.issued_at, h.publisher))

    def providers(self, key: bytes, *, now: int) -> list[ProviderRecord]:
        """The live records under `key`, newest issue first."""
        return [h.record(key) for h in self._live(key, now)]

    def provider_page(self, key: bytes, *, now: int, skip: int, count: int) -> tuple[list[bytes], int]:
        """The raw live records under `key` from the `skip`-th on (at most `count`), in the order
        of `providers`, and how many are live in all."""
        live = self._live(key, now)
        return [h.raw for h in live[skip : skip + count]], len(live)

    # -- node records ---------------------------------------------------------------------

    def put_node(self, record: NodeRecord, *, source: Address | None = None) -> None:
        """Keep a node record that came from `source` (None: our own); raise RecordRefused."""
        sender = classify(source) if source is not None else None
        old = self._nodes.get(record.publisher)
        self._check_newer(old[0].sequence if old is not None else None, record)
        if old is None or old[1] != sender:
            self._check_room(record.publisher, sender, new=old is None, grows=old is None)
        if old is not None:
            self._count(record.publisher, old[1], -1)
        self._nodes[record.publisher] = (record, sender)
        self._count(record.publisher, sender, +1)

    def node(self, public_key: bytes, *, now: int) -> NodeRecord | None:
        held = self._nodes.get(public_key)
        return held[0] if held is not None and held[0].expires_at > now else None

    # -- expiry -----------------------------------------------------------------------------

    def expire(self, *, now: int) -> int:
        """Drop expired records; return how many. O(store): run it now and then (every minute)."""
        dropped = 0
        for key in list(self._providers):
            by_publisher = self._providers[key]
            for held in [h for h in by_publisher.values() if h.expires_at <= now]:
                del by_publisher[held.publisher]
                self._count(held.publisher, held.source, -1)
                dropped += 1
            if not by_publisher:
                del self._providers[key]
        for publisher, (record, source) in list(self._nodes.items()):
            if record.expires_at <= now:
                del self._nodes[publisher]
                self._count(publisher, source, -1)
                dropped += 1
        return dropped
