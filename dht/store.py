"""The records a DHT node holds for others, with quotas so nobody can fill it.

Records arrive already parsed (signature, size and times checked at `now`); the store adds
the rules that need state: the newest sequence per (key, publisher) wins and an older one
is refused, a key holds at most `max_per_key` publishers, a publisher at most
`max_per_publisher` records, the whole store at most `max_records`. Reads drop what has
expired since it was stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.identity.records import InvalidRecord


class RecordRefused(InvalidRecord):
    """A valid record that the store will not keep (stale sequence, quota)."""


@dataclass(frozen=True)
class StoreLimits:
    max_per_key: int = 64
    max_per_publisher: int = 256
    max_records: int = 100_000


class RecordStore:
    """Provider records by key, then publisher; node records by publisher."""

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._providers: dict[bytes, dict[bytes, ProviderRecord]] = {}
        self._nodes: dict[bytes, NodeRecord] = {}
        self._per_publisher: dict[bytes, int] = {}

    def __len__(self) -> int:
        return sum(len(by_publisher) for by_publisher in self._providers.values()) + len(self._nodes)

    def _count(self, publisher: bytes, delta: int) -> None:
        count = self._per_publisher.get(publisher, 0) + delta
        if count:
            self._per_publisher[publisher] = count
        else:
            del self._per_publisher[publisher]

    def _check_room(self, publisher: bytes) -> None:
        if self._per_publisher.get(publisher, 0) >= self.limits.max_per_publisher:
            raise RecordRefused("publisher has too many records here")
        if len(self) >= self.limits.max_records:
            raise RecordRefused("store is full")

    @staticmethod
    def _check_newer(old: ProviderRecord | NodeRecord | None, new: ProviderRecord | NodeRecord) -> None:
        if old is not None and new.sequence <= old.sequence:
            raise RecordRefused(f"sequence {new.sequence} is not newer than the stored {old.sequence}")

    def add_provider(self, record: ProviderRecord) -> None:
        """Keep `record`, replacing an older one from its publisher; raise RecordRefused.

        An expired record still counts against its publisher's sequence until `expire` runs,
        so a replayed older record is refused even after the newer one has lapsed.
        """
        by_publisher = self._providers.get(record.key, {})
        old = by_publisher.get(record.publisher)
        self._check_newer(old, record)
        if old is None:
            if len(by_publisher) >= self.limits.max_per_key:
                raise RecordRefused("key has too many providers")
            self._check_room(record.publisher)
            self._count(record.publisher, +1)
        by_publisher[record.publisher] = record
        self._providers[record.key] = by_publisher

    def providers(self, key: bytes, *, now: int) -> list[ProviderRecord]:
        """The live records under `key`, newest issue first."""
        records = [r for r in self._providers.get(key, {}).values() if r.expires_at > now]
        return sorted(records, key=lambda r: (-r.issued_at, r.publisher))

    def put_node(self, record: NodeRecord) -> None:
        """Keep a node record; raise RecordRefused."""
        old = self._nodes.get(record.publisher)
        self._check_newer(old, record)
        if old is None:
            self._check_room(record.publisher)
            self._count(record.publisher, +1)
        self._nodes[record.publisher] = record

    def node(self, public_key: bytes, *, now: int) -> NodeRecord | None:
        record = self._nodes.get(public_key)
        return record if record is not None and record.expires_at > now else None

    def expire(self, *, now: int) -> int:
        """Drop expired records; return how many."""
        dropped = 0
        for key in list(self._providers):
            by_publisher = self._providers[key]
            for publisher in [p for p, r in by_publisher.items() if r.expires_at <= now]:
                del by_publisher[publisher]
                self._count(publisher, -1)
                dropped += 1
            if not by_publisher:
                del self._providers[key]
        for publisher in [p for p, r in self._nodes.items() if r.expires_at <= now]:
            del self._nodes[publisher]
            self._count(publisher, -1)
            dropped += 1
        return dropped
