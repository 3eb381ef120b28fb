"""A private node's side of relaying: reservations kept, circuits claimed, one more listener.

A node that callers cannot dial (behind a NAT) keeps reservations with `want` relays
(two by default) over connections it opens itself, renews them, and publishes the relayed
addresses (`on_change`). Each Incoming notice is claimed on a fresh outbound connection,
which, once Linked, is a circuit: `RelayListener.accept` hands it to the node's server
like any TCP connection, and the end-to-end Noise handshake runs over it (node.server
does not know the difference). When a relay fails (its connection ends, a renewal goes
unanswered) its address is withdrawn at once, the relay rests for a while, and another
takes its place within a second or two.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import trio

from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.dht.ids import service_key
from hubnet.dht.node import DhtNode
from hubnet.identity.errors import ClosedEarly, HubnetError, TransportError
from hubnet.identity.keys import Identity, fingerprint
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node import holepunch
from hubnet.node.holepunch_trio import punch
from hubnet.node.naming import Target
from hubnet.node.offers import InvalidOffer, Offer, offer_from_record
from hubnet.node.relay import RELAY_SERVICE_ID, RawStream, next_relay_event
from hubnet.node.relay_protocol import (
    Claim,
    ConnectionClosed,
    Incoming,
    Linked,
    Refused,
    RelayConnection,
    Reserve,
    Reserved,
    Role,
)

log = logging.getLogger("hubnet.node.relay")

WANT_RELAYS = 2
CONNECT_TIMEOUT = 10.0  # to reach a relay and finish the handshake and the request
ANSWER_TIMEOUT = 10.0  # for a relay to answer a renewal
CHECK_INTERVAL = 1.0  # how often the node looks for a relay when it holds fewer than it wants
REST = 30.0  # a relay that failed is not tried again for this long
MAX_WAITING_CIRCUITS = 64  # claimed circuits the server has not accepted yet
MAX_CLAIMS = 32  # claims in flight at one relay (a relay's own limit is 16 circuits per target)

LOOKUP_INTERVAL = 30.0  # how often the DHT is asked for relays, at most
LOOKUP_RETRY = 5.0  # ... or, while it has found none, this often

Candidates = Callable[[], Awaitable[Sequence[Target]]]


def cheapest_relays(offers: Sequence[Offer], me: bytes) -> list[Target]:
    """The relays `offers` (of the relay service) name, at their first direct address, the
    cheapest per MiB relayed first and in random order among equals; never `me`, nor a relay
    that gives no direct address (a relay must be dialled directly)."""
    found = []
    for offer in offers:
        direct = [a for a in offer.addresses if isinstance(a, DirectAddress)]
        if offer.publisher != me and direct:
            found.append((offer.price.per_mib, Target(direct[0], offer.publisher)))
    random.shuffle(found)
    return [target for _, target in sorted(found, key=lambda priced: priced[0])]


class RelayFinder:
    """The relays to try, best first: the pinned ones (`relays` in services.toml), then
    those whose offers the DHT holds (looked up at most every LOOKUP_INTERVAL), the cheapest
    first (their offers' price per MiB relayed), in random order among equals so that
    private nodes spread over them."""

    def __init__(self, pinned: Sequence[Target], dht: DhtNode | None, me: bytes) -> None:
        self.pinned = list(pinned)
        self.dht = dht
        self.me = me
        self._found: list[Target] = []
        self._looked = -math.inf

    async def __call__(self) -> Sequence[Target]:
        interval = LOOKUP_INTERVAL if self._found else LOOKUP_RETRY
        if self.dht is not None and trio.current_time() - self._looked >= interval:
            self._looked = trio.current_time()
            offers = []
            for record in await self.dht.find_providers(service_key(RELAY_SERVICE_ID)):
                with contextlib.suppress(InvalidOffer):
                    offers.append(offer_from_record(record))
            self._found = cheapest_relays(offers, self.me)
        pinned = {t.peer for t in self.pinned}
        return [*self.pinned, *(t for t in self._found if t.peer not in pinned)]


class RelayListener(trio.abc.Listener[trio.abc.Stream]):
    """Reservations at relays, as a listener: `accept` returns each claimed circuit."""

    def __init__(
        self,
        identity: Identity,
        *,
        on_change: Callable[[tuple[RelayAddress, ...]], None],
        want: int = WANT_RELAYS,
        punch: bool = True,
    ) -> None:
        """`punch`: agree when a caller asks to hole-punch a direct connection (services.toml's
        `punch`)."""
        self.identity = identity
        self.on_change = on_change
        self.want = want
        self.punch = punch
        self.holding: dict[bytes, RelayAddress] = {}  # by relay peer id
        self.prices: dict[bytes, int] = {}  # msat per MiB each relay held charges us, by its peer id
        self._trying: set[bytes] = set()
        self._resting: dict[bytes, float] = {}  # relay peer id -> trio time its rest ends
        self._scopes: dict[bytes, trio.CancelScope] = {}  # by relay peer id: ends its reservation
        self._circuits, self._accepted = trio.open_memory_channel[trio.abc.Stream](MAX_WAITING_CIRCUITS)

    async def accept(self) -> trio.abc.Stream:
        return await self._accepted.receive()

    async def aclose(self) -> None:
        await self._accepted.aclose()

    async def run(
        self,
        candidates: Candidates,
        *,
        active: Callable[[], bool] = lambda: True,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep `want` reservations among the relays `candidates()` names (best first), for as
        long as `active()` says (the node is private); when it stops saying so, drop them."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                if not active():
                    for scope in self._scopes.values():
                        scope.cancel()
                elif len(self.holding) + len(self._trying) < self.want:
                    now = trio.current_time()
                    for relay in await candidates():
                        if len(self.holding) + len(self._trying) >= self.want:
                            break
                        assert relay.peer is not None, "relays are pinned by their peer id"
                        if relay.peer in self._trying or relay.peer in self.holding:
                            continue
                        if self._resting.get(relay.peer, -math.inf) > now:
                            continue
                        self._trying.add(relay.peer)
                        nursery.start_soon(self._hold, relay, relay.peer)
                await trio.sleep(CHECK_INTERVAL)

    async def _hold(self, relay: Target, peer: bytes) -> None:
        """One reservation, for as long as the relay keeps it."""
        where = f"{fingerprint(peer)}@{relay.direct}"
        self._scopes[peer] = scope = trio.CancelScope()
        try:
            with scope:
                await self._reserve(relay, peer, where)
            if scope.cancelled_caught:
                log.info("reservation at relay %s dropped: this node is no longer private", where)
        finally:
            del self._scopes[peer]
            self.prices.pop(peer, None)
            self._trying.discard(peer)
            if self.holding.pop(peer, None) is not None:
                self.on_change(tuple(self.holding.values()))

    async def _reserve(self, relay: Target, peer: bytes, where: str) -> None:
        try:
            async with trio.open_nursery() as claims:
                with trio.fail_after(CONNECT_TIMEOUT):
                    stream, conn = await self._request(relay, peer, Reserve())
                async with stream:
                    with trio.fail_after(ANSWER_TIMEOUT):
                        reserved = await _answer(stream, conn, Reserved)
                    self.holding[peer] = RelayAddress(peer, relay.direct, self.identity.public_key)
                    self.prices[peer] = reserved.price_per_mib
                    self._trying.discard(peer)
                    log.info(
                        "reserved at relay %s for %d s at %d msat per MiB relayed",
                        where,
                        reserved.expires_in,
                        reserved.price_per_mib,
                    )
                    self.on_change(tuple(self.holding.values()))
                    await self._keep(stream, conn, relay, reserved, claims)
        except* (HubnetError, OSError, trio.TooSlowError, trio.BrokenResourceError) as group:
            self._resting[peer] = trio.current_time() + REST
            why = "; ".join(str(e) or type(e).__name__ for e in group.exceptions)
            log.warning("relay %s: %s; trying another", where, why)

    async def _keep(
        self,
        stream: SecureStream,
        conn: RelayConnection,
        relay: Target,
        reserved: Reserved,
        claims: trio.Nursery,
    ) -> None:
        """Claim what comes in, renew a third of the way into each reservation, and fail
        when the relay closes or does not answer a renewal in time."""
        renew_every = max(1.0, reserved.expires_in / 3)
        renew_at, answer_due = trio.current_time() + renew_every, math.inf
        while True:
            with trio.move_on_at(min(renew_at, answer_due)):
                event = await next_relay_event(stream, conn)
                if isinstance(event, Incoming):
                    # A relay that floods notices must not make us open connections without
                    # bound: past MAX_CLAIMS claims in flight at one relay, a notice is dropped
                    # (its caller is refused target-unavailable).
                    if len(claims.child_tasks) < MAX_CLAIMS:
                        claims.start_soon(self._claim, relay, event.circuit)
                    else:
                        log.warning("relay %s: too many circuits waiting to be claimed", relay.direct)
                elif isinstance(event, Reserved):
                    answer_due = math.inf
                    self.prices[self._peer_of(relay)] = event.price_per_mib  # a relay may change it
                elif isinstance(event, Refused):
                    raise TransportError(f"the relay ended the reservation: {event.code}: {event.reason}")
                elif isinstance(event, ConnectionClosed):
                    raise ClosedEarly("the relay closed the reservation")
                continue
            if trio.current_time() >= answer_due:
                raise TransportError(f"the relay did not answer a renewal within {ANSWER_TIMEOUT:.0f} s")
            await stream.send_all(conn.send(Reserve()))
            renew_at = trio.current_time() + renew_every
            answer_due = trio.current_time() + ANSWER_TIMEOUT

    @staticmethod
    def _peer_of(relay: Target) -> bytes:
        assert relay.peer is not None, "relays are pinned by their peer id"
        return relay.peer

    async def _claim(self, relay: Target, circuit: bytes) -> None:
        """Take one circuit on a fresh connection and hand it to the server (or, when the
        caller and we both asked to and the punch succeeds, the direct connection instead)."""
        assert relay.peer is not None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream, conn = await self._request(relay, relay.peer, Claim(circuit, self.punch))
                try:
                    linked = await _answer(stream, conn, Linked)
                except BaseException:
                    await stream.aclose()
                    raise
            relayed = RawStream(stream.transport, stream.detach())
            await self._circuits.send(await _punched(relayed, linked) if linked.punch else relayed)
        except (HubnetError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.info("could not claim a circuit at %s: %s", fingerprint(relay.peer), exc)

    async def _request(
        self, relay: Target, peer: bytes, request: Reserve | Claim
    ) -> tuple[SecureStream, RelayConnection]:
        """A secure connection to the relay, carrying `request` (after the handshake: a
        relay takes no request that rides in the replayable first message)."""
        address: DirectAddress = relay.direct
        transport = await trio.open_tcp_stream(address.host, address.port)
        try:
            stream = await connect_secure(transport, self.identity, peer)
            conn = RelayConnection(Role.REQUESTER)
            await stream.send_all(conn.send(request))
        except BaseException:
            await transport.aclose()
            raise
        return stream, conn


async def _punched(relayed: RawStream, linked: Linked) -> trio.abc.Stream:
    """The circuit's caller, directly if a hole punch gets through, else still over `relayed`.
    PunchFailed (and `relayed` closed) when the punch broke off: the caller dials again."""
    try:
        direct, leftover = await punch(relayed, holepunch.Role.RESPONDER, linked.observed, linked.peer)
    except holepunch.PunchFailed:
        await relayed.aclose()
        raise
    if direct is None:
        log.info("hole punch with a caller at %s failed: the call stays relayed", linked.peer)
        return RawStream(relayed, leftover)
    await relayed.aclose()
    host, port = direct.socket.getpeername()[:2]
    log.info("hole punched: a caller at %s:%d reached this node directly", host, port)
    return direct


AnswerT = TypeVar("AnswerT", Reserved, Linked)


async def _answer(stream: SecureStream, conn: RelayConnection, wanted: type[AnswerT]) -> AnswerT:
    event = await next_relay_event(stream, conn)
    if isinstance(event, Refused):
        raise TransportError(f"refused: {event.code}: {event.reason}")
    if not isinstance(event, wanted):
        raise TransportError(f"the relay answered {type(event).__name__}")
    return event
