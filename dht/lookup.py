"""Kademlia's iterative lookup as a sans-IO state machine.

The driver asks `next_queries()` for up to alpha contacts to query, reports each outcome with
`replied` or `failed`, and stops when `finished`. The shortlist is the `kademlia`
package's `NodeHeap`. The machine never sees a socket or a clock, so the Trio node, the
blocking client and the simulator all drive the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kademlia.node import Node, NodeHeap

from dht.ids import K
from dht.messages import Contact
from dht.records import Address, NodeRecord, ProviderRecord
from identity.records import InvalidRecord

ALPHA = 3
# A hostile node can keep naming ever-closer fake contacts; no honest lookup needs this many.
MAX_QUERIES = 200
RPC_TIMEOUT = 1.0  # seconds a node has to answer one request
MAX_PAGES = 12  # pages of provider records read from one node (64 per key / 6 per page)


@dataclass(frozen=True)
class Seed:
    """A node to join through: its address and, if known, its key (then it is pinned)."""

    address: Address
    public_key: bytes | None = None


class Lookup:
    """Find the k contacts closest to `target` that answer."""

    def __init__(
        self,
        target: bytes,
        seeds: Iterable[Contact],
        *,
        k: int = K,
        alpha: int = ALPHA,
        max_queries: int = MAX_QUERIES,
    ) -> None:
        self.target = target
        self.alpha = alpha
        self.max_queries = max_queries
        self._shortlist = NodeHeap(Node(target), k)
        self._in_flight: set[bytes] = set()
        self._replied: dict[bytes, Contact] = {}
        self._failed: set[bytes] = set()
        self.queries = 0
        self._shortlist.push(list(seeds))

    def next_queries(self) -> list[Contact]:
        """Contacts to query now (marks them in flight); empty when waiting or finished."""
        chosen: list[Contact] = []
        for contact in self._shortlist.get_uncontacted():
            if len(self._in_flight) >= self.alpha or self.queries + len(chosen) >= self.max_queries:
                break
            self._shortlist.mark_contacted(contact)
            self._in_flight.add(contact.id)
            chosen.append(contact)
        self.queries += len(chosen)
        return chosen

    def replied(self, contact: Contact, closer: Iterable[Contact]) -> None:
        """`contact` answered, naming `closer` contacts (unverified until they answer too)."""
        self._in_flight.discard(contact.id)
        self._replied[contact.id] = contact
        self._shortlist.push([c for c in closer if c.id not in self._replied and c.id not in self._failed])

    def failed(self, contact: Contact) -> None:
        """`contact` did not answer, or answered nonsense: forget it."""
        self._in_flight.discard(contact.id)
        self._failed.add(contact.id)
        self._shortlist.remove([contact.id])

    @property
    def finished(self) -> bool:
        """Every one of the k closest known contacts has been asked and has answered or failed
        (or the query budget is spent)."""
        if self._in_flight:
            return False
        return self.queries >= self.max_queries or self._shortlist.have_contacted_all()

    def closest(self) -> list[Contact]:
        """The contacts that answered, closest first, at most k."""
        return [c for c in self._shortlist if c.id in self._replied]


class ProviderResults:
    """Provider records gathered during a lookup: verified at `now`, newest per publisher."""

    def __init__(self, key: bytes, *, now: int) -> None:
        self.key = key
        self.now = now
        self._newest: dict[bytes, ProviderRecord] = {}
        self.refused = 0

    def add(self, raw_records: Iterable[bytes]) -> None:
        for raw in raw_records:
            try:
                record = ProviderRecord.parse(raw, now=self.now)
            except InvalidRecord:
                self.refused += 1
                continue
            if record.key != self.key:
                self.refused += 1
                continue
            old = self._newest.get(record.publisher)
            if old is None or record.sequence > old.sequence:
                self._newest[record.publisher] = record

    def records(self) -> list[ProviderRecord]:
        return sorted(self._newest.values(), key=lambda r: r.publisher)


class NodeRecordResults:
    """The node records of `public_key` seen during a lookup: verified at `now`, newest kept."""

    def __init__(self, public_key: bytes, *, now: int) -> None:
        self.public_key = public_key
        self.now = now
        self.newest: NodeRecord | None = None

    def add(self, raw: bytes | None) -> None:
        if raw is None:
            return
        try:
            record = NodeRecord.parse(raw, now=self.now)
        except InvalidRecord:
            return
        if record.publisher == self.public_key and (
            self.newest is None or record.sequence > self.newest.sequence
        ):
            self.newest = record
