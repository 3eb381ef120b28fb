"""`hubnode call SERVICE` without a server: find offers in the DHT, choose, call, fail over.

The steps are those of ARCHITECTURE.md: ask the DHT for the service's offers (each one's
signature, expiry and payload checked), filter and rank them by the client's rules,
probe a few live (a status request: round trip and current load) and try them in the
order `hubnet.select.choose` gives. A node that fails before accepting the call is
skipped; once it has accepted, stdin flows and a failure is reported, never retried.

Offers are anyone's to publish, so the dialling is bounded (`DialLedger`: addresses in all
and at once, each dialled once), providers that failed rest for a while (`Backoff`, kept in
the client's home), and probing goes on past dead offers until enough answered.
"""

from __future__ import annotations

import _thread
import contextlib
import ipaddress
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from hubnet.call_machine import Timeouts
from hubnet.client import OpenCall, PaymentRequired, open_call, open_call_on
from hubnet.dht.addresses import Address, DirectAddress
from hubnet.dht.ids import service_key
from hubnet.dht.records import ProviderRecord, ProviderResults
from hubnet.dht.sources import parse_ip
from hubnet.dialer import Dialer, TcpDialer, dial_first, resolvable
from hubnet.identity.blocking import SecureSocket, connect_secure_socket
from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import (
    ClosedEarly,
    ConfigError,
    HostKeyMismatch,
    HubnetError,
    NotOffered,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from hubnet.identity.frozen import frozen, replace
from hubnet.identity.keys import Identity, encode_peer_id
from hubnet.identity.records import InvalidRecord
from hubnet.node.naming import Target
from hubnet.node.offers import InvalidOffer, Load, Offer, offer_from_record
from hubnet.node.protocol import Call, GetStatus, JobConnection, Role, StatusReply
from hubnet.rests import Rests
from hubnet.select import (
    Probe,
    SelectionRules,
    UrandomDraw,
    acceptable,
    choose,
    probe_targets,
    proven_memberships,
    rank,
    relayed_addresses,
    with_trusted_orgs,
)
from hubnet.trust import PinnedKeys

if TYPE_CHECKING:
    from hubnet.dht.client import DhtClient
    from hubnet.dht.lookup import Seed
    from hubnet.identity.orgs import Profile, RevocationList

MAX_ATTEMPTS = 5  # providers a call is tried on
PROBE_TIMEOUT = 2.0  # one probe's connect, and each of its reads
# What one discovery may dial (see DialLedger): distinct addresses in all, each once (plus
# the call to a node whose probe answered), and probes in flight at once.
MAX_DIALLED_ADDRESSES = 64
MAX_CONCURRENT_PROBES = 16
PROBE_STAGGER = 0.25  # a call's probing adds one probe in flight for each this long without an answer
# After a call's first probe answered, how long the others may take: twice its round trip,
# within these bounds.
PROBE_GRACE_MIN = 0.1
PROBE_GRACE = 0.5
PROBE_PHASE = 10.0  # a probing phase ends after this long, whatever is still in flight
# The backoff of providers that failed (see Backoff): as Petals, 15 s doubling.
BACKOFF_FILE = "failed-providers"  # in the home's data folder
BACKOFF_FIRST = 15.0
BACKOFF_MAX = 3600.0
BACKOFF_HEADER = "# providers that failed lately: ADDRESS or PEER@ADDRESS, until (Unix s), failures\n"
# `hubnode services` looks up the profile and revocation list of at most this many of the
# organisations that offers name (two DHT lookups each); the rest are shown by id alone.
MAX_DESCRIBED_ORGS = 16


def seeds(targets: Sequence[str]) -> list[Seed]:
    from hubnet.dht.lookup import Seed

    parsed = [Target.parse(t) for t in targets]
    return [Seed((t.direct.host, t.direct.port), t.peer) for t in parsed]


# `hubnet.commands.NO_SERVER` is how it starts (that module must not import this one).
NO_WHERE_TO_LOOK = (
    "no server given and no DHT to find one in: give --server PEER_ID@HOST:PORT or "
    "--bootstrap PEER_ID@HOST:PORT before SERVICE, or set server or bootstrap in client.toml"
)


@frozen
class Found:
    """What the DHT holds for a call: the service's valid offers, and the newest revocation
    lists of the organisations the client's rules name. For `hubnode services`, also those
    of the organisations the offers name, and their profiles."""

    offers: list[Offer]
    revocations: Mapping[bytes, RevocationList] = MappingProxyType({})
    profiles: Mapping[bytes, Profile] = MappingProxyType({})


def find_offers(
    identity: Identity,
    bootstrap: Sequence[str],
    service_id: bytes,
    orgs: Collection[bytes] = (),
    *,
    describe_orgs: bool = False,
    tokens_file: Path | None = None,
    keep_in: Path | None = None,
) -> Found:
    """Every valid offer for `service_id` that the DHT holds, and the lists of `orgs`.

    With `describe_orgs` (for `hubnode services`, never on `hubnode call`'s path), also the
    lists and profiles of the organisations that the offers' attestations and free_orgs name
    (the first `MAX_DESCRIBED_ORGS` of them). The DHT nodes' tokens are kept in
    `tokens_file` for the next discovery (`DhtClient`), and the service's records in
    `keep_in` for the next calls (`hubnet.offer_cache`). ConfigError (a usage error)
    without bootstrap nodes; TransportError if none answers.
    """
    if not bootstrap:
        raise ConfigError(NO_WHERE_TO_LOOK)
    # Here, not above: a call that starts from kept offers (`cached_offers`) never loads the
    # DHT client, its protocol and the kademlia package.
    from hubnet.dht.client import DhtClient

    given = seeds(bootstrap)
    with DhtClient(identity, given, tokens_file=tokens_file) as dht:
        records = dht.find_providers(service_key(service_id))
        if not records and not dht.seen:
            # Seeds given with their keys are queried without a first question, so a dead one
            # looks like an empty DHT: say it is the network, not "nobody offers it".
            where = ", ".join(f"{host}:{port}" for host, port in (seed.address for seed in given))
            raise TransportError(
                f"no DHT node answered at {where}: check --bootstrap or `bootstrap` in client.toml"
            )
        offers = _valid_offers(records, service_id)
        if keep_in is not None and offers:
            from hubnet.offer_cache import keep_records

            keep_records(keep_in, [record.raw for record in records], now=time.time())
        named = orgs_named(offers)[:MAX_DESCRIBED_ORGS] if describe_orgs else []
        revocations = _revocation_lists(dht, {*orgs, *named})
        profiles = _profiles(dht, named)
    return Found(offers, revocations, profiles)


def cached_offers(path: Path, service_id: bytes, max_age: float) -> tuple[Found, float] | None:
    """The offers of `service_id` that a discovery kept at `path` less than `max_age` seconds
    ago, and their age: each record checked again as the DHT's are (signature, expiry, key;
    the newest per publisher). None if there are none."""
    from hubnet.offer_cache import read_records

    now = time.time()
    kept = read_records(path, now=now, max_age=max_age)
    if kept is None:
        return None
    raws, age = kept
    results = ProviderResults(service_key(service_id), now=int(now))
    results.add(raws)
    offers = _valid_offers(results.records(), service_id)
    return (Found(offers), age) if offers else None


def _valid_offers(records: Sequence[ProviderRecord], service_id: bytes) -> list[Offer]:
    offers = []
    for record in records:
        try:
            offer = offer_from_record(record)
        except (InvalidOffer, InvalidRecord):
            continue
        if offer.service_id == service_id:
            offers.append(offer)
    return offers


def orgs_named(offers: Sequence[Offer]) -> list[bytes]:
    """The organisations `offers` name (the issuers of their attestations, valid or not, and
    their free_orgs), each once, those named by the most offers first."""
    from hubnet.identity.orgs import Attestation

    counts: dict[bytes, int] = {}
    for offer in offers:
        named = set(offer.free_orgs)
        for raw in offer.attestations:
            try:
                named.add(Attestation.decode(raw).org)
            except InvalidRecord:
                continue
        for org in named:
            counts[org] = counts.get(org, 0) + 1
    return sorted(counts, key=lambda org: (-counts[org], org))


def _revocation_lists(dht: DhtClient, orgs: Collection[bytes]) -> dict[bytes, RevocationList]:
    if not orgs:
        return {}
    # Only a client whose rules name organisations pays for these imports and lookups.
    from hubnet.node.org_records import newest_revocations, revocations_key

    lists = {org: newest_revocations(dht.find_providers(revocations_key(org)), org) for org in orgs}
    return {org: found for org, found in lists.items() if found is not None}


def _profiles(dht: DhtClient, orgs: Collection[bytes]) -> dict[bytes, Profile]:
    if not orgs:
        return {}
    from hubnet.node.org_records import newest_profile, profile_key

    profiles = {org: newest_profile(dht.find_providers(profile_key(org)), org) for org in orgs}
    return {org: found for org, found in profiles.items() if found is not None}


def nobody_offers(name: str) -> NotOffered:
    """The DHT answered and holds no valid offer for the service `name` (as the user typed it)."""
    return NotOffered(
        f"nobody in the DHT offers {name}: check the name, or ask a node you know what it offers "
        "with hubnode services --server PEER_ID@HOST:PORT"
    )


def none_acceptable(name: str, found: int, rules_source: str) -> NotOffered:
    """Offers for `name` were found, but the client's [select] rules refuse every one."""
    return NotOffered(
        f"{found} offer(s) of {name} found, none acceptable under [select] in {rules_source} "
        "(price, only, exclude, max_utilisation, or no address this client can dial): "
        "relax those rules, or call one node with --server"
    )


def target_of(offer: Offer) -> Target:
    """Where to call the offer's publisher: its first direct address; else its relayed
    addresses, each tried in turn (`hubnet.select` drops offers with neither)."""
    direct = [a for a in offer.addresses if isinstance(a, DirectAddress)]
    if direct:
        return Target(direct[0], offer.publisher)
    first, *others = relayed_addresses(offer)
    return Target(first, offer.publisher, tuple(others))


def _near(address: Address) -> DirectAddress:
    """The host a dial to `address` goes to first: itself, or its relay."""
    return address if isinstance(address, DirectAddress) else address.relay


# --- bounded dialling ----------------------------------------------------------------------------
#
# Offers are anyone's to publish: a thousand of them, under throw-away keys, may name dead
# ports or a third party's. So one discovery dials a bounded number of addresses, each once
# (resolved, so two names of one host count once), a bounded number at a time; the one
# exception is the call to a node whose probe just answered. Providers that failed are left
# alone for a while (`Backoff`), and which addresses go first is spread over hosts, so that
# offers from one host cannot crowd out the others.


class DialLedger:
    """The dialer of one discovery: every probe and every call attempt dials through it.

    At most `max_addresses` distinct addresses (IP and port, after resolving), each dialled
    once, plus one call dial per `grant` (a probe that answered); at most `max_concurrent`
    probes in flight, those abandoned by an earlier phase included. Thread-safe.
    """

    def __init__(
        self,
        max_addresses: int | None = None,
        max_concurrent: int | None = None,
        inner: Dialer | None = None,
    ) -> None:
        self.max_addresses = MAX_DIALLED_ADDRESSES if max_addresses is None else max_addresses
        self._free_slots = MAX_CONCURRENT_PROBES if max_concurrent is None else max_concurrent
        self._inner = inner or TcpDialer()
        # `_thread`'s lock, not `threading`'s: a call that probes nobody (one provider) then
        # never imports threading and queue, about 2 ms of a Pi's call.
        self._lock = _thread.allocate_lock()
        self._keys: dict[str, tuple[str, int]] = {}  # an address as offered -> its IP and port
        self._dialled: set[tuple[str, int]] = set()
        self._grants: set[tuple[str, int]] = set()
        self._dead: set[str] = set()  # addresses (as offered) where no TCP connection was made
        self.dials = 0  # connections attempted, the granted ones included

    @property
    def addresses(self) -> int:
        """How many distinct addresses were dialled."""
        return len(self._dialled)

    def start_probe(self) -> bool:
        """Take a probe slot if one is free; `end_probe` gives it back."""
        with self._lock:
            if self._free_slots <= 0:
                return False
            self._free_slots -= 1
            return True

    def end_probe(self) -> None:
        with self._lock:
            self._free_slots += 1

    def may_dial(self, address: Address) -> bool:
        """Whether a dial to `address` would be allowed now (without resolving it)."""
        with self._lock:
            key = self._keys.get(str(address))
            if key is None:
                return str(address) not in self._dead and len(self._dialled) < self.max_addresses
            fresh = key not in self._dialled and len(self._dialled) < self.max_addresses
            return key in self._grants or fresh

    def grant(self, address: Address) -> None:
        """Allow one more dial to `address` (dialled already): the call after its probe answered."""
        with self._lock:
            key = self._keys.get(str(address))
            if key is not None:
                self._grants.add(key)

    def dead(self, address: Address) -> bool:
        """Whether no TCP connection could be made to `address`: nothing there accepts any key."""
        with self._lock:
            return str(address) in self._dead

    def dial(self, address: Address, timeout: float) -> socket.socket:
        return self.dial_with(self._inner, address, timeout)

    def through(self, inner: Dialer) -> Dialer:
        """This ledger's bounds, dialling with `inner` (calls punch, probes do not)."""
        return _Through(self, inner)

    def dial_with(self, inner: Dialer, address: Address, timeout: float) -> socket.socket:
        text = str(address)
        with self._lock:
            key = self._keys.get(text)
        if key is None:
            try:
                # A relayed address counts as itself: a relay serves many targets, each once.
                key = _resolve(address) if isinstance(address, DirectAddress) else (text, 0)
            except TransportError:
                with self._lock:
                    self._dead.add(text)
                raise
        with self._lock:
            self._keys[text] = key
            if key in self._grants:
                self._grants.discard(key)
            elif key in self._dialled:
                raise TransportError(f"{address}: already dialled in this discovery")
            elif len(self._dialled) >= self.max_addresses:
                raise TransportError(f"{address}: this discovery dialled {len(self._dialled)} addresses")
            self._dialled.add(key)
            self.dials += 1
        try:
            return inner.dial(DirectAddress(*key) if isinstance(address, DirectAddress) else address, timeout)
        except TransportError:
            with self._lock:
                self._dead.add(text)
            raise


class _Through:
    """A DialLedger's bounds around another dialer (`DialLedger.through`)."""

    def __init__(self, ledger: DialLedger, inner: Dialer) -> None:
        self.ledger = ledger
        self.inner = inner

    def dial(self, address: Address, timeout: float) -> socket.socket:
        return self.ledger.dial_with(self.inner, address, timeout)


def _resolve(address: DirectAddress) -> tuple[str, int]:
    """The IP (canonical text) and port that dialling `address` reaches first."""
    try:
        infos = socket.getaddrinfo(resolvable(address.host), address.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TransportError(f"cannot resolve {address.host}: {exc}") from exc
    if not infos:
        raise TransportError(f"cannot resolve {address.host}")
    ip = parse_ip(str(infos[0][4][0]))
    assert ip is not None, "getaddrinfo gives IPs"
    return str(ip), address.port


def _host_group(address: DirectAddress) -> str:
    """What offers from one host share: an IPv4 /24, an IPv6 /48, else the name."""
    ip = parse_ip(address.host)
    if ip is None:
        return address.host.lower()
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def spread_over_hosts(offers: Sequence[Offer]) -> list[Offer]:
    """`offers` reordered so that each host's first offer comes before any host's second, and
    so on (within a host, and among hosts, the given order is kept)."""
    rounds: dict[str, int] = {}
    keyed = []
    for index, offer in enumerate(offers):
        group = _host_group(_near(target_of(offer).address))
        rounds[group] = rounds.get(group, -1) + 1
        keyed.append((rounds[group], index, offer))
    return [offer for _, _, offer in sorted(keyed, key=lambda item: item[:2])]


# --- remembering providers that failed ------------------------------------------------------------


class Backoff(Rests):
    """Providers that failed lately, and until when to leave them alone.

    As Petals does: 15 s after a first failure, doubling with each failure in a row (at most
    an hour); an answer clears it. A failure to connect at all marks the address (no key
    answers there); any other failure marks the key at that address only, so that a fake
    offer naming an honest node's address never sends the honest node to rest. Kept in a
    small text file in the client's home (`path`, None for nowhere), read once per discovery
    (`hubnet.rests`).
    """

    def __init__(self, path: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(path, first=BACKOFF_FIRST, most=BACKOFF_MAX, header=BACKOFF_HEADER, clock=clock)

    @staticmethod
    def keys(offer: Offer) -> tuple[str, str]:
        """The address key and the key-at-address key of `offer`."""
        address = str(target_of(offer).address)
        return address, f"{encode_peer_id(offer.publisher)}@{address}"

    def resting_until(self, offer: Offer) -> float | None:
        """Until when (Unix time) `offer` rests, or None if it may be dialled."""
        if self.empty:
            return None  # the usual case, spared a peer id's base32 per offer
        return max((u for k in self.keys(offer) if (u := self.until(k)) is not None), default=None)

    def answered(self, offer: Offer) -> None:
        if self.empty:
            return
        for key in self.keys(offer):
            self.cleared(key)


# --- probing -------------------------------------------------------------------------------------


@frozen
class _Group:
    """One address to probe and the offers that name it (two keys cannot both be there)."""

    address: Address
    offers: tuple[Offer, ...]
    fallbacks: tuple[Address, ...] = ()  # a relayed node's other relays


def _groups(offers: Sequence[Offer]) -> list[_Group]:
    by_address: dict[str, list[Offer]] = {}
    for offer in offers:
        by_address.setdefault(str(target_of(offer).address), []).append(offer)
    groups = []
    for group in by_address.values():
        target = target_of(group[0])
        groups.append(_Group(target.address, tuple(group), target.fallbacks))
    return groups


@frozen
class _Held:
    """A probe's connection, open after the node's status reply, which said the node takes
    a call on it: the call to the node a discovery chooses need not connect again."""

    secure: SecureSocket
    probed: JobConnection  # in PROBED

    def close(self) -> None:
        self.secure.close()


def _ask_status(
    identity: Identity, group: _Group, claimants: Sequence[bytes], dialer: Dialer, timeout: float
) -> tuple[bytes, StatusReply, _Held | None]:
    """The key that answers at `address`, its status, and the connection if it may be kept.

    One claimant: IK to its key (the request rides in the first message). Several: XX, and
    the key the handshake authenticates says which of them, if any, is really there. The
    connection is kept for a call when the node says it takes one there and the address is
    direct (a relayed node's call dials on its own, to punch a hole past the relay).
    """
    job = JobConnection(Role.CLIENT)
    data = job.send(GetStatus())
    expected = claimants[0] if len(claimants) == 1 else None
    address = group.address
    sock = dial_first(dialer, [address, *group.fallbacks], timeout)
    try:
        secure = connect_secure_socket(sock, identity, expected, data if expected is not None else b"")
    except BaseException:
        sock.close()
        raise
    held = None
    try:
        if expected is None:
            secure.send_all(data)
        while (event := job.next_event()) is None:
            job.receive_data(secure.receive_some())
        if not isinstance(event, StatusReply):
            raise RemoteProtocolError(f"{address} answered a status request with {type(event).__name__}")
        if event.calls and isinstance(address, DirectAddress):
            held = _Held(secure, job)
    finally:
        if held is None:
            secure.close()
    return secure.remote_identity, event, held


@frozen
class _Outcome:
    group: _Group
    answer: tuple[bytes, Probe] | None  # the key that answered, and how
    held: _Held | None = None  # its connection, kept for a call


class _Outcomes:
    """Outcomes handed from the probes' threads to the discovery's, in the order they came.

    Built on `_thread` as `DialLedger` is: `queue` and `threading` would cost a Pi's call
    about 1.5 ms to import, and `threading.Thread.start` waits for each thread to run.
    """

    def __init__(self) -> None:
        self._outcomes: deque[_Outcome] = deque()  # append and popleft are atomic
        self._signal = _thread.allocate_lock()  # released when an outcome may be waiting
        self._signal.acquire()

    def put(self, outcome: _Outcome) -> None:
        self._outcomes.append(outcome)
        with contextlib.suppress(RuntimeError):  # released already: the taker will look
            self._signal.release()

    def take(self, timeout: float = 0.0) -> _Outcome | None:
        """The next outcome, waiting at most `timeout` seconds for one; None if none came."""
        deadline = time.monotonic() + timeout
        while not self._outcomes:
            # A signal may be left from an outcome taken already: the loop looks again.
            if not self._signal.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                return None
        return self._outcomes.popleft()


class _Prober:
    """Probes addresses on threads, within the ledger's bounds, recording in the backoff."""

    def __init__(self, identity: Identity, ledger: DialLedger, backoff: Backoff, timeout: float) -> None:
        self.identity = identity
        self.ledger = ledger
        self.backoff = backoff
        self.timeout = timeout
        self.results: dict[bytes, Probe | None] = {}
        self._outcomes = _Outcomes()
        self._in_flight: dict[str, tuple[_Group, float]] = {}  # by address: the group, when started
        self._held: dict[bytes, _Held] = {}  # by publisher: connections kept for a call
        self._settled = False  # after `settle`, a probe that ends closes its connection itself
        self._settling = _thread.allocate_lock()

    def _ask(self, group: _Group) -> None:
        started = time.monotonic()
        claimants = [offer.publisher for offer in group.offers]
        answer = held = None
        try:
            key, reply, held = _ask_status(self.identity, group, claimants, self.ledger, self.timeout)
            load = Load(reply.running, reply.queued, reply.capacity)
            answer = (key, Probe(time.monotonic() - started, load))
        except (HubnetError, OSError, ValueError):
            pass
        finally:
            self.ledger.end_probe()
            with self._settling:
                if held is not None and self._settled:
                    held.close()  # no call will come for it
                    held = None
                self._outcomes.put(_Outcome(group, answer, held))

    def _record(self, outcome: _Outcome) -> Probe | None:
        """Note `outcome`; the answer if one of its offers gave it."""
        group, answer, held = outcome.group, outcome.answer, outcome.held
        if answer is None and self.ledger.dead(group.address):
            self.backoff.failed(str(group.address))
        live = None
        for offer in group.offers:
            if answer is not None and answer[0] == offer.publisher:
                if held is not None:
                    self._held[offer.publisher] = held
                    held = None
                self.results[offer.publisher] = answer[1]
                self.backoff.answered(offer)
                for address in (group.address, *group.fallbacks):  # the call may take another relay
                    self.ledger.grant(address)
                live = answer[1]
            else:
                self.results[offer.publisher] = None
                if answer is not None or not self.ledger.dead(group.address):
                    self.backoff.failed(Backoff.keys(offer)[1])
        if held is not None:
            held.close()  # the key that answered is none of the offers' (XX): nobody to call
        return live

    def run(self, groups: Sequence[_Group], *, want: int, early: bool) -> None:
        """Probe `groups` in order until the ledger's budget is spent or PROBE_PHASE passed.

        With `early` (a call): `want` probes at first, one more for each failure and for
        each PROBE_STAGGER without an answer; once one answered, at most `want` more, and
        twice its round trip (within PROBE_GRACE_MIN and PROBE_GRACE) for their answers.
        Without (a listing): as many at once as the ledger allows.
        Probes still in flight at the end go on, on their own (see `settle`), and count
        towards the bounds of the next run.
        """
        in_flight = self._in_flight
        pending = deque(groups)
        end = time.monotonic() + PROBE_PHASE
        live = extra = after_live = 0
        grace_end: float | None = None  # set by the first answer
        while True:
            slots_busy = False
            while pending:
                if early and (live >= want or (grace_end is not None and after_live >= want)):
                    break
                limit = MAX_CONCURRENT_PROBES
                if early:
                    limit = min(limit, max(want - live, 1) + extra)
                if len(in_flight) >= limit:
                    break
                if not self.ledger.may_dial(pending[0].address):
                    pending.popleft()  # dialled already in this discovery, or the budget is spent
                    continue
                if not self.ledger.start_probe():
                    slots_busy = True  # probes abandoned by an earlier phase still hold them
                    break
                group = pending.popleft()
                _thread.start_new_thread(self._ask, (group,))
                in_flight[str(group.address)] = (group, time.monotonic())
                after_live += grace_end is not None
            now = time.monotonic()
            if now >= end or (early and live >= want):
                return
            if not in_flight:
                if not slots_busy:
                    return
                time.sleep(min(PROBE_STAGGER, end - now))
                continue
            wait = min(end - now, PROBE_STAGGER)
            if early and grace_end is not None:
                if grace_end <= now:
                    return
                wait = min(wait, grace_end - now)
            outcome = self._outcomes.take(wait)
            if outcome is None:
                extra += grace_end is None
                continue
            in_flight.pop(str(outcome.group.address), None)
            if (answered := self._record(outcome)) is not None:
                live += 1
                if grace_end is None:
                    grace = min(max(2 * answered.rtt, PROBE_GRACE_MIN), PROBE_GRACE)
                    grace_end = time.monotonic() + grace

    def take_held(self, publisher: bytes) -> _Held | None:
        """The connection of `publisher`'s probe, if it was kept for a call (now the caller's)."""
        return self._held.pop(publisher, None)

    def settle(self) -> None:
        """Note the probes that ended since the last run; those still going after PROBE_GRACE
        count as failed (a node that holds a connection without a word). Close the connections
        kept for a call that none made: their nodes then stop waiting for one."""
        with self._settling:
            self._settled = True
        while (outcome := self._outcomes.take()) is not None:
            self._in_flight.pop(str(outcome.group.address), None)
            self._record(outcome)
        for held in self._held.values():
            held.close()
        self._held.clear()
        now = time.monotonic()
        for group, started in self._in_flight.values():
            if now - started >= PROBE_GRACE:
                for offer in group.offers:
                    self.backoff.failed(Backoff.keys(offer)[1])
        self._in_flight.clear()  # noted once; their threads end within their timeouts


def probe(
    identity: Identity, offers: Sequence[Offer], timeout: float = PROBE_TIMEOUT
) -> dict[bytes, Probe | None]:
    """Ask the nodes of `offers` for their status (the round trip includes the handshake).

    Within a `DialLedger`'s bounds: offers beyond them, or at an address a probe reached
    already, are not in the answer (a publisher that is, with None, did not answer).
    """
    prober = _Prober(identity, DialLedger(), Backoff(), timeout)
    prober.run(_groups(offers), want=len(offers), early=False)
    prober.settle()  # and close the connections the nodes kept open for a call
    return prober.results


def ranked_offers(
    found: Found, rules: SelectionRules, *, verbose: bool = False
) -> tuple[list[Offer], SelectionRules]:
    """The acceptable offers best first, and the rules with trusted organisations resolved.

    With `verbose`, says on stderr why an offer's attestation proves nothing."""
    now = int(time.time())
    proven, refused = proven_memberships(found.offers, now, found.revocations) if rules.orgs else ({}, [])
    if verbose:
        from hubnet.safe_text import printable

        for why in refused:  # they quote what offers and attestations say
            print(f"hubnode: {printable(why)}", file=sys.stderr)
    allowed = acceptable(found.offers, rules, now=now, proven=proven)
    resolved = with_trusted_orgs(rules, allowed, proven)
    return rank(allowed, resolved), resolved


def _plan(
    identity: Identity,
    found: Found,
    rules: SelectionRules,
    ledger: DialLedger,
    backoff: Backoff,
    *,
    verbose: bool,
) -> tuple[list[Offer], _Prober]:
    """The offers to try, in order, and the prober (its results: what their probes said).

    Filtered and ranked by the rules; the providers resting after a recent failure set
    aside; the rest probed (a random sample of the price band first, spread over hosts)
    until `probe_count` answered; then power-of-two-choices. Only when none of them answered
    are the resting ones probed too, those whose rest ends first first.
    """
    ranked, resolved = ranked_offers(found, rules, verbose=verbose)
    fresh = [o for o in ranked if backoff.resting_until(o) is None]
    resting = sorted(
        (o for o in ranked if backoff.resting_until(o) is not None),
        key=lambda o: backoff.resting_until(o) or 0.0,
    )
    prober = _Prober(identity, ledger, backoff, PROBE_TIMEOUT)
    if len(fresh) <= 1 and not resting:
        # A probe chooses between providers: with one, and none resting to fall back to, it
        # would only cost the call a connection and a handshake more (a busy or dead node
        # says so to the call itself); nor is there anything to draw at random.
        _say_probed(ranked, resting, prober, verbose=verbose)
        return fresh, prober
    rng = UrandomDraw()
    order = spread_over_hosts(probe_targets(fresh, replace(resolved, probe_count=max(len(fresh), 1)), rng))
    prober.run(_groups(order), want=resolved.probe_count, early=True)
    pool = fresh
    if resting and not any(prober.results.values()):
        prober.run(_groups(resting), want=resolved.probe_count, early=True)
        pool = ranked
    _say_probed(ranked, resting, prober, verbose=verbose)
    return choose(pool, prober.results, resolved, rng), prober


def _say_probed(ranked: Sequence[Offer], resting: Sequence[Offer], prober: _Prober, *, verbose: bool) -> None:
    if verbose:
        answered = sum(p is not None for p in prober.results.values())
        print(
            f"hubnode: {len(ranked)} acceptable offer(s), {len(resting)} resting after a recent failure; "
            f"probed {prober.ledger.addresses} address(es), {answered} answered",
            file=sys.stderr,
        )


def candidates(
    identity: Identity,
    found: Found,
    rules: SelectionRules,
    *,
    verbose: bool = False,
    ledger: DialLedger | None = None,
    backoff: Backoff | None = None,
) -> list[Offer]:
    """The offers to try, in order: filtered, ranked, probed (within `ledger`'s bounds, the
    providers resting in `backoff` last), power-of-two-choices."""
    ordered, prober = _plan(
        identity, found, rules, ledger or DialLedger(), backoff or Backoff(), verbose=verbose
    )
    prober.settle()
    return ordered


def asked_by_provider(name: str, asked: PaymentRequired) -> PaymentRequired:
    """`asked`, saying which provider of `name` asked: the caller may pay or deposit there."""
    return PaymentRequired(f"{name} at {asked.provider}: {asked.reason}", asked.needed, asked.target)


def _open_on_probe(
    target: Target, held: _Held | None, call: Call, timeout: float, timeouts: Timeouts, *, verbose: bool
) -> OpenCall | None:
    """The call opened on the connection its node's probe kept, or None to dial afresh: there
    was none, or the connection ended before the node answered (the node may have closed it
    after the probe, or shed it), which says nothing of the node. Anything else is final, as
    on a new connection: the node's refusal, its silence past the accept timeout."""
    if held is None:
        return None
    try:
        return open_call_on(target, held.secure, held.probed, call, timeout=timeout, timeouts=timeouts)
    except (ClosedEarly, OSError) as exc:
        if verbose:
            print(f"hubnode: the probe's connection failed ({exc}); dialling again", file=sys.stderr)
        return None


def open_discovered_call(
    identity: Identity,
    found: Found,
    rules: SelectionRules,
    call: Call,
    *,
    timeout: float,
    verbose: bool,
    name: str = "the service",
    rules_source: str = "client.toml",
    backoff: Backoff | None = None,
    timeouts: Timeouts | None = None,
    call_dialer: Dialer | None = None,
) -> OpenCall:
    """Open the call on the first candidate that accepts it within `timeout` (or
    `timeouts.accept` if that is shorter: a node slow to accept is passed over for the next).

    At most MAX_ATTEMPTS providers are tried, never one whose probe failed, and every dial
    (probes included) stays within one `DialLedger`. Failures and answers go into
    `backoff`, which is saved at the end (None keeps them for this discovery only). Probes dial
    with a plain TcpDialer, the calls with `call_dialer` (one that hole-punches past relays,
    which a probe's one round trip would not repay), both within the ledger's bounds.

    NotOffered if the rules accept none of `offers`; PaymentRequired from the first
    provider that asked for money, if none took the call (so that a caller with an
    account elsewhere pays nothing, and one that pays as it calls knows whom to pay);
    Rejected if every provider tried refused the call for one reason (say, all busy);
    else TransportError if none took it.
    """
    given = timeouts or Timeouts()
    timeouts = Timeouts(min(given.accept, timeout), given.idle)
    ledger = DialLedger()
    backoff = backoff or Backoff()
    asked_for_money: PaymentRequired | None = None
    prober = None
    try:
        ordered, prober = _plan(identity, found, rules, ledger, backoff, verbose=verbose)
        probes = prober.results
        if not ordered:
            raise none_acceptable(name, len(found.offers), rules_source)
        failures: list[str] = []
        refusals: set[str] = set()
        for offer in ordered:
            if len(failures) >= MAX_ATTEMPTS:
                break
            target = target_of(offer)
            if (offer.publisher in probes and probes[offer.publisher] is None) or not ledger.may_dial(
                target.address
            ):
                continue  # its probe failed, or its address was dialled (or the budget spent)
            held = prober.take_held(offer.publisher)
            if verbose:
                how = " on its probe's connection" if held is not None else ""
                print(
                    f"hubnode: trying {encode_peer_id(offer.publisher)}@{target.address}{how}",
                    file=sys.stderr,
                )
            try:
                opened = _open_on_probe(target, held, call, timeout, timeouts, verbose=verbose)
                if opened is None:
                    opened = open_call(
                        target,
                        identity,
                        PinnedKeys(),
                        call,
                        timeout=timeout,
                        wait_for_accept=True,
                        dialer=ledger if call_dialer is None else ledger.through(call_dialer),
                        timeouts=timeouts,
                    )
            except (TransportError, RemoteProtocolError, HostKeyMismatch, Rejected, OSError) as exc:
                failures.append(f"{target.address}: {exc}")
                refusals.add(exc.code if isinstance(exc, Rejected) else "")
                if isinstance(exc, PaymentRequired) and asked_for_money is None:
                    asked_for_money = asked_by_provider(name, exc)
                if not isinstance(exc, Rejected):
                    address_key, key_at_address = Backoff.keys(offer)
                    backoff.failed(address_key if ledger.dead(target.address) else key_at_address)
                continue
            backoff.answered(offer)
            return opened
    finally:
        if prober is not None:
            prober.settle()
        backoff.save()
        if verbose:
            print(f"hubnode: this discovery dialled {ledger.dials} time(s)", file=sys.stderr)
    if not failures:
        raise TransportError(
            f"no provider of {name} answered: {len(ordered)} offer(s), no answer from the "
            f"{ledger.addresses} address(es) probed"
        )
    if asked_for_money is not None:
        raise asked_for_money
    if len(refusals) == 1 and "" not in refusals:
        # Every node answered and refused for the same reason: that reason, and its exit status.
        raise Rejected(refusals.pop(), f"every provider of {name} refused the call: {'; '.join(failures)}")
    raise TransportError(f"every provider of {name} failed before accepting: {'; '.join(failures)}")
