"""The Trio driver of a DHT node: owns the transport, the timeouts and the tasks.

All protocol decisions are in `DhtProtocol` and `Lookup`; this module moves datagrams
between them and a `DatagramTransport`, runs up to alpha queries of a lookup at once in
a nursery, pings the oldest contact of a full bucket, and keeps buckets and the store
fresh. Record times are unix seconds from `clock` (a virtual one in simulations).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import trio

from hubnet.dht.ids import K, distance, node_id
from hubnet.dht.lookup import ALPHA, RPC_TIMEOUT, Lookup, NodeRecordLookup, ProviderLookup, Query, Seed
from hubnet.dht.messages import (
    NONCE_LEN,
    AddProvider,
    Contact,
    Dialed,
    DialMe,
    DialOutcome,
    Ping,
    PutNode,
    Reply,
    Request,
    Stored,
)
from hubnet.dht.protocol import (
    AcceptRecord,
    DhtProtocol,
    DialBackNeeded,
    DialBackReceived,
    Event,
    PingNeeded,
    ReplyReceived,
    Send,
    VerifyNeeded,
)
from hubnet.dht.reachability import ReachabilityVotes, Vote, peers_to_ask
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.store import RecordStore
from hubnet.dht.transport import DatagramTransport
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord

L = TypeVar("L", bound=Lookup)

REFRESH_INTERVAL = 600.0
EXPIRE_INTERVAL = 60.0
MAX_VERIFYING = 64  # newcomers being proven at once; more wait until they ask us again
VERIFY_DELAY = 1.0  # seconds before pinging a newcomer: by then its next request may have proven it
DIAL_BACK_TIMEOUT = 3.0  # seconds a dial-back (the TCP handshake) may take
DIAL_ME_TIMEOUT = DIAL_BACK_TIMEOUT + 2.0  # seconds a requester waits for the answer to DialMe
PROBE_GRACE = 0.5  # seconds the UDP dial-back may trail the answer (they take different paths)
MAX_DIALING = 16  # dial-backs under way at once; more are refused

# Dials a requester back (`DialBackNeeded`): connects to `requester.ip` at `tcp_port`, where
# `requester.public_key` must complete a Noise handshake, and sends `probe` from a socket
# other than the DHT's to `requester.address`; whether the handshake succeeded. The node
# layer supplies it (TCP and Noise are its business); without one, dial-backs are refused.
DialBack = Callable[[Contact, int, bytes], Awaitable[bool]]


class DhtNode:
    """A serving DHT node on one transport."""

    def __init__(
        self,
        identity: Identity,
        transport: DatagramTransport,
        *,
        store: RecordStore | None = None,
        k: int = K,
        alpha: int = ALPHA,
        clock: Callable[[], float] = time.time,
        rpc_timeout: float = RPC_TIMEOUT,
        accept_record: AcceptRecord | None = None,
        dial_back: DialBack | None = None,
    ) -> None:
        """`accept_record(record, source_address)`: see `DhtProtocol`; `dial_back`: see `DialBack`."""
        self.identity = identity
        self.transport = transport
        self.protocol = DhtProtocol(identity, serving=True, store=store, k=k, accept_record=accept_record)
        self.k = k
        self.alpha = alpha
        self.clock = clock
        self.rpc_timeout = rpc_timeout
        self._waiters: dict[bytes, trio.MemorySendChannel[ReplyReceived]] = {}
        self._checking: set[bytes] = set()
        self._verifying: set[Address] = set()
        self._nursery: trio.Nursery | None = None
        self.dial_back = dial_back
        self._dialing = 0
        self._probes: dict[bytes, tuple[bytes, trio.Event]] = {}  # our nonces: (the peer's key, arrived)

    @property
    def contact(self) -> Contact:
        host, port = self.transport.local_address
        return Contact(self.identity.public_key, host, port)

    def now(self) -> int:
        return int(self.clock())

    # -- the receive loop ---------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer requests and route replies until cancelled or the transport closes."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._maintain)
            task_status.started()
            try:
                while True:
                    data, source = await self.transport.receive_from()
                    for event in self.protocol.receive(data, source, now=self.now()):
                        await self._handle(event)
            except (trio.EndOfChannel, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()

    async def _handle(self, event: Event) -> None:
        match event:
            case Send(data, address):
                await self.transport.send_to(data, address)
            case ReplyReceived(txid):
                waiter = self._waiters.get(txid)
                if waiter is not None:
                    waiter.send_nowait(event)
            case PingNeeded(contact) if contact.id not in self._checking and self._nursery is not None:
                self._checking.add(contact.id)
                self._nursery.start_soon(self._check, contact)
            case VerifyNeeded(contact) if (
                contact.address not in self._verifying
                and len(self._verifying) < MAX_VERIFYING
                and self._nursery is not None
            ):
                self._verifying.add(contact.address)
                self._nursery.start_soon(self._verify, contact)
            case DialBackNeeded(txid, requester) if self._nursery is not None:
                if self.dial_back is None or self._dialing >= MAX_DIALING:
                    refused = self.protocol.dialed(
                        txid, requester.address, DialOutcome.REFUSED, now=self.now()
                    )
                    await self.transport.send_to(refused, requester.address)
                else:
                    self._dialing += 1
                    self._nursery.start_soon(self._dial_back, event)
            case DialBackReceived(nonce, sender):
                expected = self._probes.get(nonce)
                if expected is not None and expected[0] == sender:
                    expected[1].set()

    async def _dial_back(self, event: DialBackNeeded) -> None:
        """Dial a requester back (`DialBack`) and answer its DialMe with the outcome."""
        assert self.dial_back is not None
        try:
            reached = False
            with trio.move_on_after(DIAL_BACK_TIMEOUT):
                reached = await self.dial_back(event.requester, event.tcp_port, event.probe)
            outcome = DialOutcome.REACHED if reached else DialOutcome.UNREACHED
            address = event.requester.address
            await self.transport.send_to(
                self.protocol.dialed(event.txid, address, outcome, now=self.now()), address
            )
        finally:
            self._dialing -= 1

    async def _check(self, contact: Contact) -> None:
        """Ping the oldest contact of a full bucket; evict it (promoting a newcomer) if silent."""
        try:
            if await self.rpc(contact.address, Ping(), contact.public_key) is None:
                self.protocol.evict(contact)
        finally:
            self._checking.discard(contact.id)

    async def _verify(self, contact: Contact) -> None:
        """Ping a newcomer that asked without a token, unless it has come back with one meanwhile
        (a joining node asks most nodes again within its join); its reply adds it to the table."""
        try:
            await trio.sleep(VERIFY_DELAY)
            if self.protocol.table.find(contact) != contact:
                await self.rpc(contact.address, Ping(), contact.public_key)
        finally:
            self._verifying.discard(contact.address)

    async def _maintain(self) -> None:
        last_expire = trio.current_time()
        while True:
            await trio.sleep(EXPIRE_INTERVAL)
            self.protocol.store.expire(now=self.now())
            if trio.current_time() - last_expire >= REFRESH_INTERVAL:
                last_expire = trio.current_time()
                await self.refresh()

    async def refresh(self) -> None:
        """Look up a target in every bucket not looked up for REFRESH_INTERVAL seconds."""
        for target in self.protocol.table.stale_buckets(trio.current_time(), REFRESH_INTERVAL):
            await self.lookup(target)

    # -- requests -----------------------------------------------------------------------

    async def rpc(
        self,
        address: Address,
        message: Request,
        expected_key: bytes | None = None,
        *,
        timeout: float | None = None,
    ) -> Reply | None:
        """Send one request and wait for its reply (up to `timeout`, else `rpc_timeout`); None
        on timeout."""
        txid, data = self.protocol.request(message, address, expected_key, now=self.now())
        send, receive = trio.open_memory_channel[ReplyReceived](1)
        self._waiters[txid] = send
        try:
            await self.transport.send_to(data, address)
            with trio.move_on_after(self.rpc_timeout if timeout is None else timeout):
                return (await receive.receive()).message
            return None
        finally:
            del self._waiters[txid]
            self.protocol.forget(txid)

    async def _run(self, lookup: L) -> L:
        """Drive `lookup` to its end, each of its queries an `rpc` in a task of its own."""
        done_send, done_receive = trio.open_memory_channel[None](math.inf)

        async def ask(query: Query) -> None:
            reply = await self.rpc(query.contact.address, query.request, query.contact.public_key)
            if reply is None:
                lookup.failed(query)
                # Silent, not merely unhelpful: drop it (promoting a parked newcomer), or
                # every later lookup would wait out its timeout again.
                self.protocol.evict(query.contact)
            else:
                lookup.replied(query, reply)
            done_send.send_nowait(None)

        async with trio.open_nursery() as nursery:
            while True:
                for query in lookup.next_queries():
                    nursery.start_soon(ask, query)
                if lookup.finished:
                    break
                await done_receive.receive()
        self.protocol.table.mark_refreshed(lookup.target, trio.current_time())
        return lookup

    async def lookup(self, target: bytes) -> list[Contact]:
        """The k live nodes closest to `target`."""
        lookup = Lookup(target, self.protocol.table.closest(target), k=self.k, alpha=self.alpha)
        return (await self._run(lookup)).closest()

    async def find_providers(self, key: bytes) -> list[ProviderRecord]:
        """Every live, valid provider record under `key` held by the nodes closest to it."""
        lookup = ProviderLookup(
            key, self.protocol.table.closest(key), now=self.now(), k=self.k, alpha=self.alpha
        )
        # We may be one of the closest nodes ourselves, and a lookup never asks itself.
        lookup.results.add(r.raw for r in self.protocol.store.providers(key, now=lookup.results.now))
        return (await self._run(lookup)).results.records()

    async def _store_at_closest(self, target: bytes, message: Request, keep: Callable[[], None]) -> int:
        closest = await self.lookup(target)
        stored = 0
        own = self.protocol.table.node
        near = len(closest) < self.k or distance(own.id, target) < distance(closest[-1].id, target)
        if near and not self.protocol.client_mode:
            # We are one of the k closest ourselves, and nobody else will store it here
            # (unless we are in client mode: nobody can ask us for it).
            with contextlib.suppress(InvalidRecord):
                keep()
                stored += 1
            closest = closest[: self.k - 1]

        async def store(contact: Contact) -> None:
            nonlocal stored
            reply = await self.rpc(contact.address, message, contact.public_key)
            if isinstance(reply, Stored) and reply.ok:
                stored += 1

        async with trio.open_nursery() as nursery:
            for contact in closest:
                nursery.start_soon(store, contact)
        return stored

    async def publish_provider(self, record: ProviderRecord) -> int:
        """Store `record` at the k nodes closest to its key; return how many kept it."""
        keep = functools.partial(self.protocol.store.add_provider, record)
        return await self._store_at_closest(record.key, AddProvider(record.raw), keep)

    async def publish_node_record(self, record: NodeRecord) -> int:
        """Store our node record at the k nodes closest to our id; return how many kept it."""
        keep = functools.partial(self.protocol.store.put_node, record)
        return await self._store_at_closest(node_id(record.publisher), PutNode(record.raw), keep)

    async def find_node_record(self, public_key: bytes) -> NodeRecord | None:
        """The newest valid node record of `public_key`, or None."""
        seeds = self.protocol.table.closest(node_id(public_key))
        lookup = NodeRecordLookup(public_key, seeds, now=self.now(), k=self.k, alpha=self.alpha)
        own = self.protocol.store.node(public_key, now=lookup.results.now)
        lookup.results.add(own.raw if own is not None else None)
        return (await self._run(lookup)).results.newest

    async def bootstrap(self, seeds: Iterable[Seed]) -> int:
        """Join through `seeds`: ping them, look up our own id, refresh; return how many answered."""
        answered = 0

        async def ping(seed: Seed) -> None:
            nonlocal answered
            if await self.rpc(seed.address, Ping(), seed.public_key) is not None:
                answered += 1

        async with trio.open_nursery() as nursery:
            for seed in seeds:
                nursery.start_soon(ping, seed)
        await self.lookup(self.protocol.table.node.id)
        await self.refresh()
        return answered

    # -- reachability (dht.reachability) ----------------------------------------------

    async def dial_me(self, contact: Contact, tcp_port: int) -> Vote | None:
        """Ask `contact` to dial us back at `tcp_port` and our DHT port; its vote, or None if it
        refused or did not answer."""
        nonce = os.urandom(NONCE_LEN)
        arrived = trio.Event()
        self._probes[nonce] = (contact.public_key, arrived)
        try:
            if not self.protocol.token_from(contact.address, now=self.now()):
                # Dial-backs are only for proven addresses: get a token first.
                await self.rpc(contact.address, Ping(), contact.public_key)
            request = DialMe(nonce, tcp_port)
            reply = await self.rpc(contact.address, request, contact.public_key, timeout=DIAL_ME_TIMEOUT)
            if not isinstance(reply, Dialed) or reply.outcome is DialOutcome.REFUSED:
                return None
            with trio.move_on_after(PROBE_GRACE):
                await arrived.wait()
            reached = reply.outcome is DialOutcome.REACHED
            return Vote(contact.public_key, (reply.host, reply.port), reached, arrived.is_set(), self.clock())
        finally:
            del self._probes[nonce]

    async def check_reachability(self, tcp_port: int, votes: ReachabilityVotes, rng: random.Random) -> int:
        """One round: ask a few peers of our table to dial us back, count their votes into
        `votes`; how many answered."""
        contacts = self.protocol.table.contacts()
        answered = 0

        async def ask(contact: Contact) -> None:
            nonlocal answered
            vote = await self.dial_me(contact, tcp_port)
            if vote is not None:
                votes.add(vote)
                answered += 1

        async with trio.open_nursery() as nursery:
            for contact in peers_to_ask(contacts, rng):
                nursery.start_soon(ask, contact)
        votes.round_done(self.clock(), len(contacts))
        return answered

    async def tell_contacts(self) -> None:
        """Ping every contact of our table, so that each learns our mode from the datagram: in
        client mode it says we do not serve, and each drops us from its table at once."""
        async with trio.open_nursery() as nursery:
            for contact in self.protocol.table.contacts():
                nursery.start_soon(self.rpc, contact.address, Ping(), contact.public_key)
