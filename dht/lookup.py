"""Kademlia's iterative lookup as a sans-IO state machine, paging included.

The driver asks `next_queries()` what to send now: `Query`s, each a contact and the request
to send it. It reports each outcome with the query it answers, `replied(query, reply)` or
`failed(query)`, and stops when `finished`. The machine reads the replies itself: it takes
the closer contacts they name, gathers the records they carry, and asks a node that holds
more provider records than one reply carries for the next page. The shortlist is the
`kademlia` package's `NodeHeap`. The machine never sees a socket or a clock, so the Trio
node, the blocking client and the simulator all drive the same code.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from kademlia.node import Node, NodeHeap

from hubnet.dht.ids import K, node_id
from hubnet.dht.messages import (
    Contact,
    FindNode,
    GetNode,
    GetProviders,
    NodeFound,
    Nodes,
    Providers,
    Reply,
    Request,
)
from hubnet.dht.records import Address, NodeRecord, ProviderResults
from hubnet.identity.frozen import frozen
from hubnet.identity.records import InvalidRecord

ALPHA = 3
# A hostile node can keep naming ever-closer fake contacts; no honest lookup needs this many.
MAX_QUERIES = 200
RPC_TIMEOUT = 1.0  # seconds a node has to answer one request
MAX_PAGES = 12  # pages of provider records read from one node (64 per key / 6 per page)


@frozen
class Seed:
    """A node to join through: its address and, if known, its key (then it is pinned)."""

    address: Address
    public_key: bytes | None = None


@frozen
class Query:
    """Send `request` to `contact`; report the outcome with this same object."""

    contact: Contact
    request: Request


class Lookup:
    """Find the k contacts closest to `target` that answer `FindNode`.

    Subclasses ask another question on the way (`request`) and read its answers (`_read`).
    """

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
        self._in_flight: set[Query] = set()
        self._replied: dict[bytes, Contact] = {}
        self._failed: set[bytes] = set()
        # Further requests to contacts that have answered the walk's request (pages).
        self._follow_ups: deque[Query] = deque()
        self.queries = 0  # the walk's requests, one per contact asked
        self.follow_ups = 0
        self.failures = 0  # queries of either kind that went unanswered or were answered uselessly
        self._shortlist.push(list(seeds))

    @property
    def request(self) -> Request:
        """What the walk asks every contact."""
        return FindNode(self.target)

    def next_queries(self) -> list[Query]:
        """Queries to send now (marked in flight); empty when waiting or finished.

        Follow-ups share the alpha in-flight slots with the walk, which has the first pick:
        alpha bounds what we ask of the network at once (and what a small device keeps
        outstanding), and a page is a datagram like any other; taking the walk first lets
        pages fill the slots the walk leaves idle while it waits to hear of closer
        contacts. Follow-ups are not charged to the walk's budget: that budget bounds how
        many contacts a liar can send us to, while each contact's follow-ups have their
        own bound (MAX_PAGES), and an honest key with 64 providers on k nodes needs more
        pages than the whole budget.
        """
        chosen: list[Query] = []
        for contact in self._shortlist.get_uncontacted():
            if len(self._in_flight) >= self.alpha or self.queries >= self.max_queries:
                break
            self._shortlist.mark_contacted(contact)
            self.queries += 1
            chosen.append(Query(contact, self.request))
            self._in_flight.add(chosen[-1])
        while self._follow_ups and len(self._in_flight) < self.alpha:
            self.follow_ups += 1
            chosen.append(self._follow_ups.popleft())
            self._in_flight.add(chosen[-1])
        return chosen

    def replied(self, query: Query, reply: Reply) -> None:
        """`query` was answered with `reply` (of any kind: the machine checks it)."""
        self._in_flight.remove(query)
        closer = self._read(query, reply)
        if closer is None:
            self._give_up(query)
            return
        if query.request == self.request:
            self._replied[query.contact.id] = query.contact
        # Named contacts are unverified until they answer too. A follow-up's are as good as
        # the walk's: a node that cut its first reply to our request's size named fewer.
        self._shortlist.push([c for c in closer if c.id not in self._replied and c.id not in self._failed])

    def failed(self, query: Query) -> None:
        """`query` went unanswered."""
        self._in_flight.remove(query)
        self._give_up(query)

    def _give_up(self, query: Query) -> None:
        self.failures += 1
        if query.request == self.request:
            # The contact is no use to this lookup: forget it. A failed follow-up only ends
            # that contact's follow-ups; its answer to the walk still stands.
            self._failed.add(query.contact.id)
            self._shortlist.remove([query.contact.id])

    def _read(self, query: Query, reply: Reply) -> Iterable[Contact] | None:
        """The closer contacts `reply` names, or None if it is no answer to `query`."""
        return reply.contacts if isinstance(reply, Nodes) else None

    @property
    def finished(self) -> bool:
        """Every one of the k closest known contacts has been asked and has answered or failed
        (or the query budget is spent), and no follow-up is owed or in flight."""
        if self._in_flight or self._follow_ups:
            return False
        return self.queries >= self.max_queries or self._shortlist.have_contacted_all()

    def closest(self) -> list[Contact]:
        """The contacts that answered, closest first, at most k."""
        return [c for c in self._shortlist if c.id in self._replied]


class ProviderLookup(Lookup):
    """Every provider record under `key` that the nodes closest to it hold, page by page."""

    def __init__(
        self,
        key: bytes,
        seeds: Iterable[Contact],
        *,
        now: int,
        k: int = K,
        alpha: int = ALPHA,
        max_queries: int = MAX_QUERIES,
        max_pages: int = MAX_PAGES,
    ) -> None:
        super().__init__(key, seeds, k=k, alpha=alpha, max_queries=max_queries)
        self.results = ProviderResults(key, now=now)
        self.max_pages = max_pages
        self._pages: dict[bytes, int] = {}  # by contact id: pages read

    @property
    def request(self) -> GetProviders:
        return GetProviders(self.target)

    def _read(self, query: Query, reply: Reply) -> Iterable[Contact] | None:
        if not isinstance(reply, Providers):
            return None
        assert isinstance(query.request, GetProviders)  # the only request this lookup sends
        self.results.add(reply.records)
        seen = query.request.skip + len(reply.records)
        pages = self._pages[query.contact.id] = self._pages.get(query.contact.id, 0) + 1
        # An empty page means the node has no more, whatever its total says, except a first
        # one: a node that had no token from us cut its reply to our request's size (which a
        # record of ours fits, unless a peer that does not pad asked), and a second request,
        # token in hand, gets them. MAX_PAGES stops one that keeps claiming more.
        if (reply.records or pages == 1) and seen < reply.total and pages < self.max_pages:
            self._follow_ups.append(Query(query.contact, GetProviders(self.target, seen)))
        return reply.contacts


class NodeRecordLookup(Lookup):
    """The newest node record of `public_key` held by the nodes closest to its id."""

    def __init__(
        self,
        public_key: bytes,
        seeds: Iterable[Contact],
        *,
        now: int,
        k: int = K,
        alpha: int = ALPHA,
        max_queries: int = MAX_QUERIES,
    ) -> None:
        super().__init__(node_id(public_key), seeds, k=k, alpha=alpha, max_queries=max_queries)
        self.results = NodeRecordResults(public_key, now=now)

    @property
    def request(self) -> GetNode:
        return GetNode(self.results.public_key)

    def _read(self, query: Query, reply: Reply) -> Iterable[Contact] | None:
        if not isinstance(reply, NodeFound):
            return None
        self.results.add(reply.record)
        return reply.contacts


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
