"""A one-shot DHT client over a blocking UDP socket, for `hubnode call` on a small device.

It drives the same sans-IO `DhtProtocol` and `Lookup` as a serving node, without an event
loop (Trio alone costs a Pi about 100 ms to import): one socket, `select` for timeouts,
up to alpha queries in flight. It does not serve, so no node ever adds it to a table.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dht.ids import K, node_id
from dht.lookup import ALPHA, MAX_PAGES, RPC_TIMEOUT, Lookup, NodeRecordResults, ProviderResults, Seed
from dht.messages import (
    MAX_DATAGRAM,
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
from dht.protocol import DhtProtocol, ReplyReceived
from dht.records import NodeRecord, ProviderRecord
from identity.errors import TransportError
from identity.keys import Identity


@dataclass
class _InFlight:
    contact: Contact
    deadline: float


class DhtClient:
    """Lookups from a short-lived process; every method returns within its time budget."""

    def __init__(
        self,
        identity: Identity,
        seeds: Sequence[Seed],
        *,
        rpc_timeout: float = RPC_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.protocol = DhtProtocol(identity, serving=False)
        self.seeds = list(seeds)
        self.rpc_timeout = rpc_timeout
        self.clock = clock
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("0.0.0.0", 0))
        self.seen: dict[bytes, Contact] = {}

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> DhtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _seed_contacts(self, target: bytes) -> list[Contact]:
        """Contacts to start from: the seeds, whose keys we learn by asking if not given."""
        known = [Contact(s.public_key, *s.address) for s in self.seeds if s.public_key is not None]
        unknown = [s for s in self.seeds if s.public_key is None]
        if unknown:
            # Ask the key-less seeds the lookup's first question; their signed replies name them.
            pending = {}
            for seed in unknown:
                txid, data = self.protocol.request(FindNode(target), seed.address)
                self._send(data, seed.address)
                pending[txid] = seed
            for reply in self._collect(set(pending), time.monotonic() + self.rpc_timeout):
                known.append(reply.sender)
        if not known:
            raise TransportError("no DHT node answered: check --bootstrap or `bootstrap` in client.toml")
        return known

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # as good as lost; the timeout will say so
            self._sock.sendto(data, address)

    def _collect(self, txids: set[bytes], deadline: float) -> Iterable[ReplyReceived]:
        """Replies to `txids` until all came or `deadline` (monotonic) passed."""
        while txids:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._sock], [], [], remaining)[0]:
                break
            reply = self._receive()
            if reply is not None and reply.txid in txids:
                txids.discard(reply.txid)
                yield reply
        for txid in txids:
            self.protocol.forget(txid)

    def _receive(self) -> ReplyReceived | None:
        try:
            data, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
        except OSError:
            return None
        now = int(self.clock())
        for event in self.protocol.receive(data, (str(source[0]), int(source[1])), now=now):
            if isinstance(event, ReplyReceived):
                return event
        return None

    def _run(self, lookup: Lookup, request: Request, take: Callable[[Contact, Reply], bool]) -> None:
        in_flight: dict[bytes, _InFlight] = {}
        while True:
            for contact in lookup.next_queries():
                txid, data = self.protocol.request(request, contact.address, contact.public_key)
                self._send(data, contact.address)
                in_flight[txid] = _InFlight(contact, time.monotonic() + self.rpc_timeout)
            if lookup.finished:
                return
            deadline = min(f.deadline for f in in_flight.values())
            for reply in self._collect_one(in_flight, deadline):
                flight = in_flight.pop(reply.txid)
                self.seen[flight.contact.id] = flight.contact
                if take(flight.contact, reply.message):
                    lookup.replied(flight.contact, getattr(reply.message, "contacts", ()))
                else:
                    lookup.failed(flight.contact)
            now = time.monotonic()
            for txid in [t for t, f in in_flight.items() if f.deadline <= now]:
                lookup.failed(in_flight.pop(txid).contact)
                self.protocol.forget(txid)

    def _collect_one(self, in_flight: dict[bytes, _InFlight], deadline: float) -> list[ReplyReceived]:
        remaining = deadline - time.monotonic()
        if remaining > 0 and select.select([self._sock], [], [], remaining)[0]:
            reply = self._receive()
            if reply is not None and reply.txid in in_flight:
                return [reply]
        return []

    def find_providers(self, key: bytes) -> list[ProviderRecord]:
        """Every valid provider record under `key` that the nodes closest to it hold."""
        results = ProviderResults(key, now=int(self.clock()))

        def take(contact: Contact, message: Reply) -> bool:
            if not isinstance(message, Providers):
                return False
            results.add(message.records)
            self._more_pages(contact, key, message, results)
            return True

        self._run(Lookup(key, self._seed_contacts(key), k=K, alpha=ALPHA), GetProviders(key), take)
        return results.records()

    def _more_pages(self, contact: Contact, key: bytes, first: Providers, results: ProviderResults) -> None:
        skip = len(first.records)
        for _ in range(MAX_PAGES):
            if skip >= first.total:
                return
            txid, data = self.protocol.request(GetProviders(key, skip), contact.address, contact.public_key)
            self._send(data, contact.address)
            replies = list(self._collect({txid}, time.monotonic() + self.rpc_timeout))
            if not replies or not isinstance(replies[0].message, Providers) or not replies[0].message.records:
                return
            results.add(replies[0].message.records)
            skip += len(replies[0].message.records)

    def find_node_record(self, public_key: bytes) -> NodeRecord | None:
        """The newest valid node record that `public_key` published, or None."""
        target = node_id(public_key)
        results = NodeRecordResults(public_key, now=int(self.clock()))

        def take(contact: Contact, message: Reply) -> bool:
            if not isinstance(message, NodeFound):
                return False
            results.add(message.record)
            return True

        self._run(Lookup(target, self._seed_contacts(target)), GetNode(public_key), take)
        return results.newest

    def find_nodes(self, target: bytes) -> list[Contact]:
        """The k live nodes closest to `target`."""
        lookup = Lookup(target, self._seed_contacts(target))
        self._run(lookup, FindNode(target), lambda c, m: isinstance(m, Nodes))
        return lookup.closest()
