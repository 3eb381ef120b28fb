"""One DHT node's protocol logic, sans-IO: datagrams in, datagrams and events out.

`DhtProtocol` answers requests from its routing table and record store, matches replies
to the requests it sent (by txid, source address and, where known, the sender's key), and
keeps the routing table up to date with every peer that proves its key by signing a
datagram. It reads no clock (callers pass `now`, unix seconds) and opens no socket.

Nobody can use a node to reflect traffic at a third party, nor store through it or enter
its routing table under an address that is not theirs (the source address of a UDP
datagram is whatever the sender wrote):

- **Return-routability tokens** (as BEP 5 and dht-rpc): every reply carries a token, a MAC
  of the requester's address under this node's secret and the current five-minute window
  (`TOKEN_ROTATION`); a request that carries it back within that window or the next proves
  that its sender receives at its source address. A requester keeps the tokens it was given
  per address and sends them back for `TOKEN_REUSE` seconds; a short-lived requester may
  carry them into its next run, from the same UDP port (`inherit_tokens`, `fresh_tokens`).
- **No amplification**: a request without a valid token is answered with no more bytes
  than it had (contacts left out, farthest first, then records, last first:
  `Providers.total` still tells the full count, so the requester asks again, token in
  hand, for the rest).
  A requester without a token pads its request (`FIRST_CONTACT_SIZE` for the lookups'
  requests, which fits a full reply of k IPv4 contacts) so that a first contact costs no
  extra round trip.
- **Stores need a token**: AddProvider and PutNode without one are refused, and a record
  is kept only for a key this node is among the closest to (k + k/2, `STORE_SLACK`), subject to the
  store's per-source quotas (`dht.store`) and to `accept_record`, the serving node's own
  policy (`node.offer_check`: an offer's direct addresses must be its publisher's).
- **The routing table** takes a requester only once its address is proven: by a token, or
  (a `VerifyNeeded` event) by answering a ping from us; a replier proved it by replying.
- **Replays are dropped**: a request whose `sent_at` is more than `REPLAY_WINDOW` seconds
  from our clock is refused, and within it each txid is answered once (remembered per
  minute of `sent_at`, at most `MAX_SEEN_PER_MINUTE` in all and `MAX_SEEN_PER_NETWORK`
  per source network, so a flood from one network cannot crowd others out).
"""

from __future__ import annotations

import os

# hashlib's BLAKE2b and hmac's comparison without loading OpenSSL (see identity.noise).
from _blake2 import blake2b
from _operator import _compare_digest as compare_digest
from collections.abc import Callable, Iterable

from hubnet.dht.ids import K, distance, node_id
from hubnet.dht.messages import (
    MAX_DATAGRAM,
    MAX_RECORDS_PER_REPLY,
    REQUEST_TYPES,
    TOKEN_LEN,
    TXID_LEN,
    AddProvider,
    Contact,
    DialBack,
    Dialed,
    DialMe,
    DialOutcome,
    FindNode,
    GetNode,
    GetProviders,
    InvalidMessage,
    Message,
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
    encoded_size,
    padding_for,
)
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.dht.sources import classify
from hubnet.dht.store import RecordRefused, RecordStore
from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.frozen import frozen, replace
from hubnet.identity.keys import Identity
from hubnet.identity.records import InvalidRecord

if TYPE_CHECKING:
    from hubnet.dht.routing import RoutingTable

TOKEN_ROTATION = 300  # seconds: a token is good in the window it was made in and the next
TOKEN_REUSE = 240  # seconds a requester sends back a token it got (under its shortest life)
MAX_TOKENS_KEPT = 4096  # tokens a requester keeps (by address, the oldest forgotten first)
FIRST_CONTACT_SIZE = 1232  # a lookup request without a token: one IPv6 minimum-MTU datagram
REPLAY_WINDOW = 120  # seconds a request's sent_at may be from our clock, either way
MAX_SEEN_PER_MINUTE = 16384  # txids remembered per minute of sent_at...
MAX_SEEN_PER_NETWORK = 2048  # ...of which from one source network
DIAL_BACK_WINDOW = 60  # seconds over which dial-backs are counted...
DIAL_BACKS_PER_HOST = 4  # ...per requesting host (one check asks each peer once)...
DIAL_BACKS_PER_WINDOW = 256  # ...and in all
MAX_DIAL_BACK_HOSTS = 1024  # requesting hosts remembered (the oldest forgotten first)
STORE_SLACK = 0.5  # a node stores for keys it is among the k + k/2 closest to, as far as it knows
NOT_VERIFIED = "no valid token: ask this node anything first, and store with the token it gives"

AcceptRecord = Callable[[ProviderRecord | NodeRecord, Address], bool]


@frozen
class Send:
    """Send `data` to `address` (a reply to a request)."""

    data: bytes
    address: Address


@frozen
class ReplyReceived:
    """The reply to our request `txid`, from `sender`."""

    txid: bytes
    sender: Contact
    message: Reply


@frozen
class PingNeeded:
    """A bucket is full: ping its oldest contact, and `evict` it if it does not answer."""

    contact: Contact


@frozen
class VerifyNeeded:
    """A serving peer we would add asked us something without a token: ping it (expecting its
    key); its reply proves its address and adds it."""

    contact: Contact


@frozen
class DialBackNeeded:
    """A proven requester asked to be dialled back (`DialMe`): dial `requester.ip` at
    `tcp_port` (its key must answer) and send `probe` there to its UDP port from another
    socket, then send `dialed(txid, ...)` as the reply."""

    txid: bytes
    requester: Contact
    tcp_port: int
    probe: bytes


@frozen
class DialBackReceived:
    """A `DialBack` datagram arrived: the peer `sender` (a key) reached our UDP port with
    `nonce`, from `source` (not its DHT port)."""

    nonce: bytes
    sender: bytes
    source: Address


Event = Send | ReplyReceived | PingNeeded | VerifyNeeded | DialBackNeeded | DialBackReceived


@frozen
class _Pending:
    address: Address
    expected_key: bytes | None


class DhtProtocol:
    """The protocol state of one node (`serving`) or one short-lived client (not serving).

    `accept_record(record, source_address)`, if given, is asked before a record from the
    network is stored (after its signature, its times, the sender's token and the key's
    distance were checked, before the store's quotas): False refuses it ("refused by this
    node's policy"); raising InvalidRecord refuses it with the exception's text.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        serving: bool,
        store: RecordStore | None = None,
        k: int = K,
        accept_record: AcceptRecord | None = None,
    ):
        self.identity = identity
        self.serving = serving
        # Client mode (a node that cannot be reached, `dht.reachability`): it keeps its table
        # and asks as usual, but its datagrams say it does not serve, so nobody adds it, and
        # it answers nothing, so it stores nothing for others.
        self.client_mode = False
        self.k = k
        self.store = store if store is not None else RecordStore()
        self.accept_record = accept_record
        if serving:
            # Only a serving node keeps a table; a one-shot client is spared importing the
            # `kademlia` package's routing module (and the asyncio it pulls in).
            from hubnet.dht.routing import RoutingTable

            self.table: RoutingTable = RoutingTable(Contact(identity.public_key, "0.0.0.0", 1), k=k)
        self._pending: dict[bytes, _Pending] = {}
        self._secret = os.urandom(32)
        self._tokens: dict[Address, tuple[bytes, int]] = {}  # given to us, by address: (token, when)
        # Of those, the ones an earlier run was given, until their node answers this one.
        self._inherited: set[Address] = set()
        self._seen: dict[int, set[bytes]] = {}  # by minute of sent_at: txids answered
        self._seen_networks: dict[int, dict[str, int]] = {}
        self.dropped = 0  # every datagram not acted on, for whatever reason
        self.replayed = 0  # of which requests seen before, out of their window, or over quota
        self.cut = 0  # replies to unproven addresses cut to their request's size
        self._dial_backs: dict[str, list[int]] = {}  # by requesting host: when each was granted
        self.dial_backs_refused = 0

    def set_client_mode(self, on: bool) -> None:
        """Enter or leave client mode; entering drops every record held, others' and our own:
        nobody can ask a node in client mode for them (its publisher stores them elsewhere)."""
        if on and not self.client_mode:
            self.store = RecordStore(self.store.limits)
        self.client_mode = on

    @property
    def answers(self) -> bool:
        """Whether this node answers requests (and says so in its datagrams)."""
        return self.serving and not self.client_mode

    # -- requests we send ---------------------------------------------------------------

    def request(
        self, message: Request, address: Address, expected_key: bytes | None = None, *, now: int
    ) -> tuple[bytes, bytes]:
        """A new request to `address`: its txid and datagram. Call `forget` if it times out.

        It carries the token `address` gave us, if we have a fresh one; if not, or if an
        earlier run was given it, it is padded so that the reply it asks for fits in its
        size (see the module docstring).
        """
        txid = os.urandom(TXID_LEN)
        self._pending[txid] = _Pending(address, expected_key)
        token = self.token_from(address, now=now)
        padding = 0
        if not token or address in self._inherited:
            # An inherited token is sent padded too: the node may have drawn a new secret, or
            # our address be another since; refused, it must not cost the request its answer.
            wanted = encoded_size(message, serving=self.answers, sent_at=now) + TOKEN_LEN
            if isinstance(message, FindNode | GetProviders | GetNode):
                wanted = max(wanted, FIRST_CONTACT_SIZE)
            padding = padding_for(message, wanted, serving=self.answers, sent_at=now, token=token)
        data = encode(
            self.identity, txid, message, serving=self.answers, sent_at=now, token=token, padding=padding
        )
        return txid, data

    def forget(self, txid: bytes) -> None:
        """Stop waiting for `txid` (it timed out or its caller gave up)."""
        self._pending.pop(txid, None)

    def evict(self, contact: Contact) -> None:
        """`contact` did not answer: drop it from the routing table."""
        self.table.evict(contact)

    # -- tokens -------------------------------------------------------------------------

    def _mac(self, address: Address, window: int) -> bytes:
        text = f"{address[0]}\x00{address[1]}\x00{window}".encode()
        return blake2b(text, key=self._secret, digest_size=TOKEN_LEN).digest()

    def token_for(self, address: Address, *, now: int) -> bytes:
        """The token we give the sender at `address` now."""
        return self._mac(address, now // TOKEN_ROTATION)

    def token_valid(self, token: bytes, address: Address, *, now: int) -> bool:
        """Whether `token` is one we gave `address` in this window or the last."""
        window = now // TOKEN_ROTATION
        return len(token) == TOKEN_LEN and any(
            compare_digest(token, self._mac(address, w)) for w in (window, window - 1)
        )

    def token_from(self, address: Address, *, now: int) -> bytes:
        """The token `address` gave us, if it is fresh enough to send back; else empty."""
        kept = self._tokens.get(address)
        return kept[0] if kept is not None and 0 <= now - kept[1] < TOKEN_REUSE else b""

    def _keep_token(self, address: Address, token: bytes, now: int) -> None:
        if not token:
            return
        self._tokens.pop(address, None)
        self._tokens[address] = (token, now)
        self._inherited.discard(address)
        while len(self._tokens) > MAX_TOKENS_KEPT:
            self._inherited.discard(forgotten := next(iter(self._tokens)))
            del self._tokens[forgotten]

    def fresh_tokens(self, *, now: int) -> list[tuple[Address, bytes, int]]:
        """The tokens still fresh enough to send back: (address, token, when given), oldest
        first, for a requester that ends now and asks again from the same port later."""
        return [
            (a, token, when) for a, (token, when) in self._tokens.items() if 0 <= now - when < TOKEN_REUSE
        ]

    def inherit_tokens(self, tokens: Iterable[tuple[Address, bytes, int]], *, now: int) -> None:
        """Take the `fresh_tokens` of an earlier run from the same UDP port, so that a node
        answers this run's first request in full (a whole page of records, not what fits the
        request's size). Each is sent with padding until its node answers this run."""
        for address, token, when in tokens:
            if len(token) == TOKEN_LEN and 0 <= now - when < TOKEN_REUSE:
                self._keep_token(address, token, when)
                self._inherited.add(address)

    # -- replays ------------------------------------------------------------------------

    def _first_time(self, txid: bytes, sent_at: int, source: Address, now: int) -> bool:
        """Remember a request's txid; False if it is a replay, out of the window, or over quota."""
        if abs(sent_at - now) > REPLAY_WINDOW:
            return False
        oldest = (now - REPLAY_WINDOW) // 60
        for minute in [m for m in self._seen if m < oldest]:
            del self._seen[minute], self._seen_networks[minute]
        minute = sent_at // 60
        seen = self._seen.setdefault(minute, set())
        networks = self._seen_networks.setdefault(minute, {})
        network = classify(source).network
        if txid in seen or len(seen) >= MAX_SEEN_PER_MINUTE:
            return False
        if networks.get(network, 0) >= MAX_SEEN_PER_NETWORK:
            return False
        seen.add(txid)
        networks[network] = networks.get(network, 0) + 1
        return True

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
        if isinstance(message, DialBack):
            # From a socket that answers nothing: no reply, and no routing-table business.
            if not self.serving or not self._first_time(datagram.txid, datagram.sent_at, source, now):
                self.dropped += 1
                return []
            return [DialBackReceived(message.nonce, datagram.sender, source)]
        if isinstance(message, REQUEST_TYPES):
            if not self.answers:
                self.dropped += 1
                return []
            if not self._first_time(datagram.txid, datagram.sent_at, source, now):
                self.dropped += 1
                self.replayed += 1
                return []
            proven = self.token_valid(datagram.token, source, now=now)
            if isinstance(message, DialMe) and proven and self._grant_dial_back(source, now):
                probe = self.dial_back_datagram(message.nonce, now=now)
                events.append(DialBackNeeded(datagram.txid, sender, message.tcp_port, probe))
                return events + self._update_table(datagram.serving, sender, source, proven=True)
            reply = self._answer(message, sender, now, proven=proven)
            budget = MAX_DATAGRAM if proven else len(data)
            sent = self._encode_reply(datagram.txid, reply, source, now, budget)
            if sent is not None:
                events.append(Send(sent, source))
        else:
            pending = self._pending.get(datagram.txid)
            if pending is None or pending.address != source:
                self.dropped += 1
                return []
            if pending.expected_key is not None and pending.expected_key != datagram.sender:
                self.dropped += 1
                return []
            del self._pending[datagram.txid]
            self._keep_token(source, datagram.token, now)
            events.append(ReplyReceived(datagram.txid, sender, message))
            proven = True  # it answered at the address we asked
        return events + self._update_table(datagram.serving, sender, source, proven=proven)

    def _update_table(self, serving: bool, sender: Contact, source: Address, *, proven: bool) -> list[Event]:
        """Add a serving sender whose address is proven (or ask to verify it); drop one that
        says it no longer serves (it went into client mode) from where we had it."""
        if not self.serving:
            return []
        known = self.table.find(sender)
        if not serving:
            if known is not None and known.address == source:
                self.table.evict(known)
            return []
        if proven or (known is not None and known.address == source):
            head = self.table.add_contact(sender)
            return [PingNeeded(head)] if head is not None else []
        if self.table.wants(sender):
            return [VerifyNeeded(sender)]
        return []

    # -- dial-backs (dht.reachability) ---------------------------------------------------

    def _grant_dial_back(self, source: Address, now: int) -> bool:
        """Whether a proven requester at `source` may have a dial-back now (the rate limits)."""
        for host in [h for h, times in self._dial_backs.items() if times[-1] <= now - DIAL_BACK_WINDOW]:
            del self._dial_backs[host]
        host = classify(source).host
        times = [t for t in self._dial_backs.pop(host, []) if t > now - DIAL_BACK_WINDOW]
        in_all = sum(len(t) for t in self._dial_backs.values()) + len(times)
        granted = len(times) < DIAL_BACKS_PER_HOST and in_all < DIAL_BACKS_PER_WINDOW
        if granted:
            times.append(now)
        else:
            self.dial_backs_refused += 1
        if times:
            self._dial_backs[host] = times  # re-inserted: the dict is ordered by last grant
        while len(self._dial_backs) > MAX_DIAL_BACK_HOSTS:
            del self._dial_backs[next(iter(self._dial_backs))]
        return granted

    def dial_back_datagram(self, nonce: bytes, *, now: int) -> bytes:
        """The `DialBack` datagram for `nonce`: it says it does not serve (it comes from a
        socket that answers nothing)."""
        return encode(self.identity, os.urandom(TXID_LEN), DialBack(nonce), serving=False, sent_at=now)

    def dialed(self, txid: bytes, address: Address, outcome: DialOutcome, *, now: int) -> bytes:
        """The reply to the `DialMe` of `DialBackNeeded(txid)` from `address`, once dialled."""
        reply = self._encode_reply(txid, Dialed(address[0], address[1], outcome), address, now, MAX_DATAGRAM)
        assert reply is not None  # a few dozen bytes always fit
        return reply

    def _encode_reply(
        self, txid: bytes, reply: Reply, source: Address, now: int, budget: int
    ) -> bytes | None:
        """The signed reply, cut to `budget` bytes if need be; None if not even a bare one fits."""
        token = self.token_for(source, now=now)
        message: Message | None = reply
        while message is not None and encoded_size(message, serving=True, sent_at=now, token=token) > budget:
            message = _smaller(message)
            if message is None and token:
                message, token = reply, b""  # a foreign requester that did not pad: no token then
        if message is None:
            self.dropped += 1
            return None
        if message != reply:
            self.cut += 1
        return encode(self.identity, txid, message, serving=True, sent_at=now, token=token)

    def _closest(self, target: bytes, requester: Contact) -> tuple[Contact, ...]:
        return tuple(c for c in self.table.closest(target, self.k + 1) if c.id != requester.id)[: self.k]

    def is_near(self, key: bytes) -> bool:
        """Whether fewer than k + k/2 (STORE_SLACK) of the contacts we know are closer to `key`."""
        count = self.k + int(self.k * STORE_SLACK)
        closest = self.table.closest(key, count)
        own = distance(self.table.node.id, key)
        return len(closest) < count or distance(closest[-1].id, key) > own

    def _answer(self, message: Request, requester: Contact, now: int, *, proven: bool) -> Reply:
        match message:
            case Ping():
                return Pong()
            case FindNode(target):
                return Nodes(self._closest(target, requester))
            case GetProviders(key, skip):
                raws, total = self.store.provider_page(key, now=now, skip=skip, count=MAX_RECORDS_PER_REPLY)
                return Providers(tuple(raws), total, self._closest(key, requester))
            case AddProvider(raw) if proven:
                return self._store(lambda: self._keep_provider(ProviderRecord.parse(raw, now=now), requester))
            case PutNode(raw) if proven:
                return self._store(lambda: self._keep_node(NodeRecord.parse(raw, now=now), requester))
            case AddProvider() | PutNode():
                return Stored(False, NOT_VERIFIED)
            case GetNode(public_key):
                found = self.store.node(public_key, now=now)
                return NodeFound(found.raw if found else None, self._closest(node_id(public_key), requester))
            case DialMe():  # no token yet, or over the rate limits: say where it came from, no more
                return Dialed(requester.ip, requester.port, DialOutcome.REFUSED)
        raise AssertionError(f"not a request: {message!r}")

    def _check(self, record: ProviderRecord | NodeRecord, key: bytes, source: Address) -> None:
        if not self.is_near(key):
            raise RecordRefused("not among the closest nodes to this key")
        if self.accept_record is not None and not self.accept_record(record, source):
            raise RecordRefused("refused by this node's policy")

    def _keep_provider(self, record: ProviderRecord, requester: Contact) -> None:
        self._check(record, record.key, requester.address)
        self.store.add_provider(record, source=requester.address)

    def _keep_node(self, record: NodeRecord, requester: Contact) -> None:
        self._check(record, node_id(record.publisher), requester.address)
        self.store.put_node(record, source=requester.address)

    @staticmethod
    def _store(keep: Callable[[], None]) -> Stored:
        try:
            keep()
        except InvalidRecord as exc:
            return Stored(False, str(exc)[:200])
        return Stored(True)


def _smaller(message: Message) -> Message | None:
    """`message` with one thing less, or None if nothing is left to leave out: the farthest
    contact (records are what a provider lookup is after, and the nodes that hold them are
    near the end of its walk), then the last record; a NodeFound's record last of all; then
    half a Stored's reason."""
    match message:
        case Providers(_, _, contacts) | Nodes(contacts) | NodeFound(_, contacts) if contacts:
            return replace(message, contacts=contacts[:-1])
        case Providers(records, _, _) if records:
            return replace(message, records=records[:-1])
        case NodeFound(record, _) if record is not None:
            return replace(message, record=None)
        case Stored(_, reason) if reason:
            return replace(message, reason=reason[: len(reason) // 2])
    return None
