"""One DHT node's protocol logic, sans-IO: datagrams in, datagrams and events out.

`DhtProtocol` answers requests from its routing table and record store, matches replies
to the requests it sent (by txid, source address and, where known, the sender's key), and
keeps the routing table up to date with every peer that proves its key by signing a
datagram. It reads no clock (callers pass `now`, unix seconds) and opens no socket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hubnet.dht.ids import K, node_id
from hubnet.dht.messages import (
    MAX_RECORDS_PER_REPLY,
    REQUEST_TYPES,
    TXID_LEN,
    AddProvider,
    Contact,
    FindNode,
    GetNode,
    GetProviders,
    InvalidMessage,
    NodeFound,
    Nodes,
    Ping,
    Pong,
    Providers,
    PutNode,
    Reply,
    Request,
    Stored,
    decode,
    encode,
)
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.store import RecordStore
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord

if TYPE_CHECKING:
    from hubnet.dht.routing import RoutingTable


@dataclass(frozen=True)
class Send:
    """Send `data` to `address` (a reply to a request)."""

    data: bytes
    address: Address


@dataclass(frozen=True)
class ReplyReceived:
    """The reply to our request `txid`, from `sender`."""

    txid: bytes
    sender: Contact
    message: Reply


@dataclass(frozen=True)
class PingNeeded:
    """A bucket is full: ping its oldest contact, and `evict` it if it does not answer."""

    contact: Contact


Event = Send | ReplyReceived | PingNeeded


@dataclass
class _Pending:
    address: Address
    expected_key: bytes | None


class DhtProtocol:
    """The protocol state of one node (`serving`) or one short-lived client (not serving)."""

    def __init__(self, identity: Identity, *, serving: bool, store: RecordStore | None = None, k: int = K):
        self.identity = identity
        self.serving = serving
        self.k = k
        self.store = store if store is not None else RecordStore()
        if serving:
            # Only a serving node keeps a table; a one-shot client is spared importing the
            # `kademlia` package's routing module (and the asyncio it pulls in).
            from hubnet.dht.routing import RoutingTable

            self.table: RoutingTable = RoutingTable(Contact(identity.public_key, "0.0.0.0", 1), k=k)
        self._pending: dict[bytes, _Pending] = {}
        self.dropped = 0

    # -- requests we send ---------------------------------------------------------------

    def request(
        self, message: Request, address: Address, expected_key: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """A new request to `address`: its txid and datagram. Call `forget` if it times out."""
        txid = os.urandom(TXID_LEN)
        self._pending[txid] = _Pending(address, expected_key)
        return txid, encode(self.identity, txid, message, serving=self.serving)

    def forget(self, txid: bytes) -> None:
        """Stop waiting for `txid` (it timed out or its caller gave up)."""
        self._pending.pop(txid, None)

    def evict(self, contact: Contact) -> None:
        """`contact` did not answer: drop it from the routing table."""
        self.table.evict(contact)

    # -- datagrams we receive -----------------------------------------------------------

    def receive(self, data: bytes, source: Address, *, now: int) -> list[Event]:
        """Handle one datagram from `source`. Garbage is counted in `dropped`, never raised."""
        try:
            datagram = decode(data)
        except InvalidMessage:
            self.dropped += 1
            return []
        sender = Contact(datagram.sender, source[0], source[1])
        events: list[Event] = []
        message = datagram.message
        if isinstance(message, REQUEST_TYPES):
            if not self.serving:
                self.dropped += 1
                return []
            reply = self._answer(message, sender, now)
            events.append(Send(encode(self.identity, datagram.txid, reply, serving=True), source))
        else:
            pending = self._pending.get(datagram.txid)
            if pending is None or pending.address != source:
                self.dropped += 1
                return []
            if pending.expected_key is not None and pending.expected_key != datagram.sender:
                self.dropped += 1
                return []
            del self._pending[datagram.txid]
            events.append(ReplyReceived(datagram.txid, sender, message))
        if datagram.serving and self.serving:
            head = self.table.add_contact(sender)
            if head is not None:
                events.append(PingNeeded(head))
        return events

    def _closest(self, target: bytes, requester: Contact) -> tuple[Contact, ...]:
        return tuple(c for c in self.table.closest(target, self.k + 1) if c.id != requester.id)[: self.k]

    def _answer(self, message: Request, requester: Contact, now: int) -> Reply:
        match message:
            case Ping():
                return Pong()
            case FindNode(target):
                return Nodes(self._closest(target, requester))
            case GetProviders(key, skip):
                records = self.store.providers(key, now=now)
                page = tuple(r.raw for r in records[skip : skip + MAX_RECORDS_PER_REPLY])
                return Providers(page, len(records), self._closest(key, requester))
            case AddProvider(raw):
                return self._store(lambda: self.store.add_provider(ProviderRecord.parse(raw, now=now)))
            case PutNode(raw):
                return self._store(lambda: self.store.put_node(NodeRecord.parse(raw, now=now)))
            case GetNode(public_key):
                found = self.store.node(public_key, now=now)
                return NodeFound(found.raw if found else None, self._closest(node_id(public_key), requester))
        raise AssertionError(f"not a request: {message!r}")

    @staticmethod
    def _store(keep: Callable[[], None]) -> Stored:
        try:
            keep()
        except InvalidRecord as exc:
            return Stored(False, str(exc)[:200])
        return Stored(True)
