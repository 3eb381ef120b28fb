#!/usr/bin/env python
"""What a hostile internet gets out of a node now, beside what it got before (issue 15).

Everything runs on real processes and sockets on 127.0.0.1 (and 127.0.0.2, a second source
address: Linux routes all of 127.0.0.0/8 to `lo`), started and stopped by this script:

  DHT datagrams     a DHT of 3 `hubnode serve`s and 24 more DHT nodes in this process (so
                    that routing tables are full, k = 20), holding the fake offers below and
                    the honest one under one key. To a real node's UDP port, from a fresh key
                    and a fresh socket the node never saw, one signed request of each kind, as
                    small as it can be and without a token: the reply's size against the
                    request's, and the ping the node sends to check a new address; beside it,
                    what the same request with a token gets. Then 20 requests in a row from
                    one fresh socket (all that came back against all that was sent), one
                    datagram replayed 5 times, and 60 keys pinging from one socket (with a
                    token: the strongest case) to get into the routing table.
  fake offers       63 offers of `who` signed by throw-away keys, cheaper than the honest
                    one, published as tests/e2e/test_fake_offers.py does (each from the UDP
                    port it names: 50 dead ports, 13 a victim port that counts connections);
                    `hubnode -v call -b SEED who` from fresh homes and from one home (whose
                    backoff file remembers failed providers): how many found the honest node,
                    in how long against no fakes, how many dials each discovery made (as -v
                    says), and what the victim port got.
  connection flood  300 connections from 127.0.0.2 that send nothing, each opened again as
                    soon as the node drops it (as tests/trio/test_connection_limits.py
                    floods), while `hubnode call --server PEER@127.0.0.1:PORT true` is timed
                    from 127.0.0.1, against the same calls without the flood.
  sandbox           per-job cost as a caller sees it: a `true` service and the same with
                    `sandbox = false` on one node, called alternately by the Trio client
                    in this process (no process start in the figure);
                    and bench/sandbox.py's runner-only figures where that file is present.
  500 jobs          500 calls of a `sleep 1` service on one node (max_jobs and
                    max_concurrent 500) from one process, the Trio client, all at once:
                    errors, wall time, the node's RSS (/proc/PID/status: idle, the most
                    sampled every 50 ms, VmHWM); the same with `sandbox = false` (what the
                    sandbox adds to the wall time), and sandboxed with the client keeping at
                    most 192 calls in flight (3/4 of the node's 256 connections).

The "before" figures are quoted from the text of issue 15 (measured on main before the
work); where the issue gives none, it says so.

    .venv/bin/python bench/abuse.py [--calls 10] [--jobs 500] [--sandbox-runs 40]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HUBNODE, BenchError, Server, bytecode_cache, hubnode_server, median

from hubnet.dht.addresses import DirectAddress
from hubnet.dht.client import DhtClient
from hubnet.dht.ids import K, node_id, service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.messages import (
    MAX_DATAGRAM,
    TXID_LEN,
    AddProvider,
    Contact,
    FindNode,
    GetNode,
    GetProviders,
    InvalidMessage,
    Message,
    NodeFound,
    Nodes,
    Ping,
    Providers,
    PutNode,
    Request,
    Stored,
    decode,
    encode,
)
from hubnet.dht.node import DhtNode
from hubnet.dht.protocol import DhtProtocol
from hubnet.dht.records import NodeRecord, ProviderRecord
from hubnet.dht.transport import UdpTransport
from hubnet.identity.keys import Identity, decode_peer_id
from hubnet.node.connections import MAX_CONNECTIONS, PRESSURE
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.offers import Load, Offer, Price
from hubnet.node.protocol import Call
from hubnet.trio_client import Client

# --- before: quoted from the text of issue 15 ---------------------------------------------

BEFORE = "before (issue 15 text)"
BEFORE_DATAGRAMS = {
    "GetProviders": "153 B in, 7168 B out (x47)",
    "FindNode": "x7 on a full table",
}
BEFORE_REPLAY = "one signed datagram replayed 5 times got 5 full replies"
BEFORE_ROUTING = "60 pings from one UDP socket under 60 new keys put 61 routing contacts at that one address"
BEFORE_FAKES_STORED = (
    "63 fake offers stored in 0.09 s; an honest new provider then got `key has too many providers`"
)
BEFORE_FAKE_CALLS = (
    "`hubnode call SERVICE` failed 9 times in 10 (`every provider failed before accepting`), "
    "since only 3 of 64 equal offers are probed and 5 tried"
)
BEFORE_DIALS = "no cap: a thread and two dials per offer"
BEFORE_VICTIM = (
    "63 fake offers at a victim port: one `hubnode services SERVICE` opened 126 TCP connections "
    "to the victim in 0.74 s"
)
BEFORE_FLOOD = (
    "while 300 silent connections were held, a normal call failed at once (`Connection reset "
    "by peer`); about 4 slow connections a second keep the node full"
)
BEFORE_SANDBOX = (
    "no sandbox (limits per process, set after the start); the issue measured a sandboxed start at about 9 ms"
)
BEFORE_JOBS = "no figure in the issue"

# --- what the bench sets up ------------------------------------------------------------------

WHO = "who"
WHO_ID = service_id_for_name(WHO)
HONEST_TOML = (
    'listen = "127.0.0.1:0"\n[services.who]\ncommand = ["echo", "honest"]\nprice = { per_call = 10 }\n'
)
PLAIN_TOML = 'listen = "127.0.0.1:0"\n'
TRUE_TOML = 'listen = "127.0.0.1:0"\n[services.true]\ncommand = ["true"]\ntimeout = 10\n'
SANDBOX_TOML = TRUE_TOML + '\n[services.true-bare]\ncommand = ["true"]\ntimeout = 10\nsandbox = false\n'
SLEEP_TOML = """listen = "127.0.0.1:0"
max_jobs = {jobs}
max_queued = {jobs}

[services.sleep]
command = ["sleep", "1"]
timeout = 60
max_concurrent = {jobs}
{sandbox}"""
DHT_HELPERS = 24  # DHT nodes in this process besides the 3 `hubnode serve`s: full tables
FAKES = 63
AT_VICTIM = 13  # of the fakes (as tests/e2e/test_fake_offers.py); the others name a dead port each
FLOOD = 300
FLOOD_SOURCE = "127.0.0.2"
REPLAYS = 5
BURST = 20
SYBIL_KEYS = 60
_WAIT = 1.5  # seconds to collect what a node sends back to one datagram
_RUN_TIMEOUT = 60.0
_SETUP_TIMEOUT = 60.0


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _ratio(out: float, base: float) -> str:
    return f"x{out / base:.2f}" if base else "x-"


# --- a Trio loop in a thread, for what must run beside blocking subprocess calls --------------


class BackgroundTrio:
    """Runs `setup(nursery)` in a Trio loop of its own thread; its tasks run until __exit__."""

    def __init__(self, setup: Callable[[trio.Nursery], Awaitable[object]], timeout: float = _SETUP_TIMEOUT):
        self._setup = setup
        self._timeout = timeout
        self._ready = threading.Event()
        self._scope: trio.CancelScope | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            with trio.CancelScope() as scope:
                self._scope, self._token = scope, trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    with trio.fail_after(self._timeout):
                        await self._setup(nursery)
                    self._ready.set()
                    await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:  # reported by __enter__ or ignored on the way out
            self._error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> BackgroundTrio:
        self._thread.start()
        self._ready.wait(self._timeout + 10)
        if self._error is not None or not self._thread.is_alive():
            raise BenchError(f"background setup failed: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(15)


# --- DHT: a node's UDP port, spoken to by hand ---------------------------------------------------


def _port(server: Server) -> int:
    return int(server.target.rsplit(":", 1)[1])


def _key(server: Server) -> bytes:
    return decode_peer_id(server.target.split("@", 1)[0])


@dataclass(frozen=True)
class Exchange:
    sent: int  # bytes
    reply: Message | None
    reply_bytes: int
    other: int  # datagrams that were not the reply (the node checking our address)
    other_bytes: int

    @property
    def back(self) -> int:
        return self.reply_bytes + self.other_bytes


class Source:
    """One UDP socket on 127.0.0.1 with a DhtProtocol for the tokens it is given."""

    def __init__(self, identity: Identity | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.identity = identity or Identity.generate()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.protocol = DhtProtocol(self.identity, serving=False)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exchange(self, data: bytes, to: tuple[str, int], txid: bytes, wait: float = _WAIT) -> Exchange:
        """Send `data`; collect everything that comes back within `wait` seconds (or until the
        reply if `wait` is 0, with a 2 s bound)."""
        self.sock.sendto(data, to)
        reply: Message | None = None
        reply_bytes = other = other_bytes = 0
        deadline = time.monotonic() + (wait or 2.0)
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got, _ = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except TimeoutError:
                break
            try:
                datagram = decode(got)
            except InvalidMessage:
                other, other_bytes = other + 1, other_bytes + len(got)
                continue
            if datagram.txid == txid and reply is None:
                reply, reply_bytes = datagram.message, len(got)
                # Keep the token it carries, for requests with one.
                self.protocol._keep_token(to, datagram.token, int(time.time()))
                if not wait:
                    break
            else:
                other, other_bytes = other + 1, other_bytes + len(got)
        return Exchange(len(data), reply, reply_bytes, other, other_bytes)

    def bare(self, message: Request, to: tuple[str, int], *, serving: bool = True) -> Exchange:
        """`message` as small as it can be sent: no token, no padding."""
        txid = os.urandom(TXID_LEN)
        return self.exchange(encode(self.identity, txid, message, serving=serving), to, txid)

    def proper(self, message: Request, to: tuple[str, int]) -> Exchange:
        """`message` as the real client sends it: with the token `to` gave us, else padded."""
        now = int(time.time())
        txid, data = self.protocol.request(message, to, now=now)
        self.protocol.forget(txid)
        return self.exchange(data, to, txid, wait=0)

    def token(self, to: tuple[str, int]) -> None:
        """Get a token from `to` (a padded Ping's Pong carries it)."""
        self.proper(Ping(), to)
        if not self.protocol.token_from(to, now=int(time.time())):
            raise BenchError(f"{to} gave no token to a padded Ping")


def _describe(message: Message | None) -> str:
    match message:
        case None:
            return "no reply"
        case Providers(records, total, contacts):
            return f"{len(records)} of {total} records, {len(contacts)} contacts"
        case Nodes(contacts):
            return f"{len(contacts)} contacts"
        case NodeFound(record, contacts):
            return f"{'a' if record else 'no'} record, {len(contacts)} contacts"
        case Stored(ok, reason):
            return "stored" if ok else f"refused ({reason.split(':')[0][:22]})"
    return type(message).__name__


@contextlib.contextmanager
def dht_helpers(count: int, seed: Server) -> Iterator[None]:
    """`count` DHT nodes on real UDP sockets in a Trio thread of this process, joined through
    `seed`, so that the real nodes' routing tables fill up."""
    seeds = [Seed(("127.0.0.1", _port(seed)), _key(seed))]

    async def setup(nursery: trio.Nursery) -> None:
        nodes = []
        for _ in range(count):
            transport = await UdpTransport.bind("127.0.0.1", 0)
            node = DhtNode(Identity.generate(), transport)
            await nursery.start(node.serve)
            nodes.append(node)
        async with trio.open_nursery() as joining:
            for node in nodes:
                joining.start_soon(node.bootstrap, seeds)

    with BackgroundTrio(setup):
        yield


def _table_contacts(node: tuple[str, int]) -> int:
    """How many contacts a FindNode with a token gets back from `node` (k when its table is full)."""
    with Source() as source:
        source.token(node)
        return len(getattr(source.proper(FindNode(os.urandom(20)), node).reply, "contacts", ()))


def _wait_for_full_table(node: tuple[str, int]) -> int:
    deadline = time.monotonic() + _SETUP_TIMEOUT
    while (have := _table_contacts(node)) < K and time.monotonic() < deadline:
        time.sleep(0.5)
    return have


def _requests(honest: Server) -> dict[str, Callable[[], Request]]:
    """One request of each kind, each made afresh (records signed by a fresh key)."""
    key = service_key(WHO_ID)

    def add_provider() -> Request:
        identity, now = Identity.generate(), int(time.time())
        offer = _offer(identity.public_key, DirectAddress("127.0.0.1", _dead_port()), 0)
        record = ProviderRecord.create(identity, key, offer.payload(), sequence=now, issued_at=now, ttl=300)
        return AddProvider(record.raw)

    def put_node() -> Request:
        identity, now = Identity.generate(), int(time.time())
        address = DirectAddress("127.0.0.1", _dead_port())
        return PutNode(NodeRecord.create(identity, (address,), sequence=now, issued_at=now, ttl=300).raw)

    return {
        "Ping": Ping,
        "FindNode": lambda: FindNode(os.urandom(20)),
        "GetProviders": lambda: GetProviders(key),
        "GetNode": lambda: GetNode(_key(honest)),
        "AddProvider": add_provider,
        "PutNode": put_node,
    }


def _holder(servers: list[Server]) -> tuple[Server, int]:
    """The real node holding the most records of `who`, and how many."""
    best: tuple[Server, int] | None = None
    for server in servers:
        address = ("127.0.0.1", _port(server))
        with Source() as source:
            source.token(address)
            reply = source.proper(GetProviders(service_key(WHO_ID)), address).reply
        total = reply.total if isinstance(reply, Providers) else 0
        if best is None or total > best[1]:
            best = (server, total)
    assert best is not None
    return best


def measure_datagrams(servers: list[Server], honest: Server) -> None:
    holder, total = _holder(servers)
    address = ("127.0.0.1", _port(holder))
    print(
        f"  to one real node's UDP port ({total} records of `{WHO}`, "
        f"{_table_contacts(address)} contacts to a FindNode), from a fresh key and socket each,"
    )
    print("  the request as small as it can be (no token, no padding, marked serving):")
    print(
        f"    {'kind':<13} {'in B':>5} {'reply B':>7} {'ratio':>6}  {'the reply':<31} "
        f"{'check ping':<11} {'with a token: reply':<33} {BEFORE}"
    )
    checks = []
    for kind, make in _requests(honest).items():
        with Source() as source:
            bare = source.bare(make(), address)
            source.token(address)
            full = source.proper(make(), address)
        checks.append(bare.other_bytes)
        ping = f"{bare.other} ({bare.other_bytes} B)"
        proven = f"{full.reply_bytes} B ({_describe(full.reply)})"
        print(
            f"    {kind:<13} {bare.sent:>5} {bare.reply_bytes:>7} {_ratio(bare.reply_bytes, bare.sent):>6}  "
            f"{_describe(bare.reply):<31} {ping:<11} {proven:<33} {BEFORE_DATAGRAMS.get(kind, 'no figure')}"
        )
    burst = _burst(address)
    print(
        f"  a new address that says it serves is also pinged once to check it ({max(checks)} B), one check "
        f"per address at a time: {BURST} FindNodes in a row from one fresh socket got back "
        f"{burst[1]} B for {burst[0]} B sent ({_ratio(burst[1], burst[0])})"
    )
    with Source() as source:
        source.token(address)
        now = int(time.time())
        txid, data = source.protocol.request(GetProviders(service_key(WHO_ID)), address, now=now)
        replies = [source.exchange(data, address, txid, wait=0) for _ in range(REPLAYS)]
    answered = [r for r in replies if r.reply is not None]
    print(
        f"  one signed GetProviders (with a token) sent {REPLAYS} times: {len(answered)} repl"
        f"{'y' if len(answered) == 1 else 'ies'} ({', '.join(str(r.reply_bytes) for r in answered)} B)"
    )
    print(f"    {BEFORE}: {BEFORE_REPLAY}")
    print(
        f"  {SYBIL_KEYS} keys pinging with a token from one UDP socket: "
        f"{_sybil_contacts(address)} routing contact(s) at that address"
    )
    print(f"    {BEFORE}: {BEFORE_ROUTING}")


def _burst(address: tuple[str, int]) -> tuple[int, int]:
    """BURST bare FindNodes from one fresh socket: (bytes sent, bytes that came back in _WAIT s)."""
    with Source() as source:
        sent = 0
        for _ in range(BURST):
            data = encode(source.identity, os.urandom(TXID_LEN), FindNode(os.urandom(20)), serving=True)
            source.sock.sendto(data, address)
            sent += len(data)
        back = 0
        deadline = time.monotonic() + _WAIT
        while (left := deadline - time.monotonic()) > 0:
            source.sock.settimeout(left)
            try:
                back += len(source.sock.recvfrom(MAX_DATAGRAM + 1)[0])
            except TimeoutError:
                break
    return sent, back


def _sybil_contacts(address: tuple[str, int]) -> int:
    """Ping `address` from one socket under SYBIL_KEYS keys (as serving nodes, with the token
    the socket was given), then count the contacts at that socket that FindNodes return."""
    with Source() as attacker, Source() as counter:
        attacker.token(address)
        token = attacker.protocol.token_from(address, now=int(time.time()))
        keys = [Identity.generate() for _ in range(SYBIL_KEYS)]
        for identity in keys:
            txid = os.urandom(TXID_LEN)
            data = encode(identity, txid, Ping(), serving=True, token=token)
            attacker.exchange(data, address, txid, wait=0)
        time.sleep(0.3)
        mine = attacker.sock.getsockname()[:2]
        counter.token(address)
        seen: set[bytes] = set()
        for identity in keys:
            reply = counter.proper(FindNode(node_id(identity.public_key)), address).reply
            contacts: tuple[Contact, ...] = getattr(reply, "contacts", ())
            seen.update(c.public_key for c in contacts if c.address == mine)
        return len(seen)


# --- fake offers ------------------------------------------------------------------------------


class Victim:
    """A TCP port that counts the connections it accepts and holds them, never saying a word."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _offer(publisher: bytes, address: DirectAddress, per_call: int) -> Offer:
    now = int(time.time())
    return Offer(
        publisher, WHO_ID, WHO, (address,), Price(per_call=per_call), Load(0, 0, 1), 1, now, now + 300
    )


def _publish(identity: Identity, offer: Offer, seed: Server) -> int:
    """Publish `offer` from a UDP socket at the port it names, as its publisher would were it
    real (the approach of tests/e2e/test_fake_offers.py); how many nodes kept it."""
    now = int(time.time())
    record = ProviderRecord.create(
        identity, service_key(WHO_ID), offer.payload(), sequence=now, issued_at=now, ttl=300
    )
    address = offer.addresses[0]
    assert isinstance(address, DirectAddress)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address.host, address.port))
    with DhtClient(identity, [Seed(("127.0.0.1", _port(seed)), _key(seed))]) as client:
        client._sock.close()
        client._sock = sock
        return client.publish_provider(record)


@dataclass(frozen=True)
class Discovered:
    ok: bool
    took: float
    dials: int | None
    stderr: str


def _discovered_call(home: Path, seed: Server, env: dict[str, str]) -> Discovered:
    started = time.perf_counter()
    done = subprocess.run(
        [HUBNODE, "--home", str(home), "-v", "call", "-b", seed.target, WHO],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_RUN_TIMEOUT,
        check=False,
        env=env,
    )
    took = time.perf_counter() - started
    dials = re.search(rb"this discovery dialled (\d+) time", done.stderr)
    stderr = done.stderr.decode(errors="replace")
    return Discovered(done.stdout == b"honest\n", took, int(dials[1]) if dials else None, stderr)


def _listed(seed: Server, home: Path, env: dict[str, str]) -> list[str]:
    """The peer ids `hubnode services --json -b SEED who` lists (it probes each address once)."""
    done = subprocess.run(
        [HUBNODE, "--home", str(home), "services", "--json", "-b", seed.target, WHO],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_RUN_TIMEOUT,
        check=False,
        env=env,
    )
    return [row["peer"] for row in json.loads(done.stdout)] if done.returncode == 0 else []


def _summary(runs: list[Discovered]) -> str:
    took = [r.took for r in runs]
    found = f"{sum(r.ok for r in runs)}/{len(runs)} found the honest node"
    return f"{found}, median {_ms(median(took))}, max {_ms(max(took))}"


def measure_fakes(servers: list[Server], honest: Server, calls: int, env: dict[str, str], work: Path) -> None:
    seed = servers[0]
    deadline = time.monotonic() + _SETUP_TIMEOUT
    while not _listed(seed, work / "lister", env):
        if time.monotonic() > deadline:
            raise BenchError(f"the honest offer of `{WHO}` was not discoverable in {_SETUP_TIMEOUT:.0f} s")
        time.sleep(0.2)
    baseline = [_discovered_call(work / f"clean{i}", seed, env) for i in range(calls)]
    victim = Victim()
    try:
        fakes = []
        for i in range(FAKES):
            address = DirectAddress("127.0.0.1", victim.port if i < AT_VICTIM else _dead_port())
            identity = Identity.generate()
            fakes.append((identity, _offer(identity.public_key, address, 0)))
        started = time.perf_counter()
        kept = [_publish(identity, offer, seed) for identity, offer in fakes]
        published = time.perf_counter() - started
        listing_before = victim.accepted
        listed = _listed(seed, work / "lister", env)
        listing_victim = victim.accepted - listing_before
        calls_before = victim.accepted
        fresh = [_discovered_call(work / f"fresh{i}", seed, env) for i in range(calls)]
        one_home = [_discovered_call(work / "one-home", seed, env) for _ in range(calls)]
        call_victim = victim.accepted - calls_before
        _, total = _holder(servers)
    finally:
        victim.close()
    print(
        f"  {sum(k > 0 for k in kept)} of {FAKES} fake offers stored (by {min(kept)}-{max(kept)} nodes each) "
        f"in {published:.2f} s ({sum(k > 0 for k in kept[:AT_VICTIM])} of the {AT_VICTIM} sent from the "
        f"victim's one port: a key takes 8 from one source host)"
    )
    print(
        f"  the honest provider's offer listed beside them: "
        f"{'yes' if honest.target.split('@')[0] in listed else 'NO'} ({len(listed)} offers listed by "
        f"`hubnode services`; the fullest real node holds {total})"
    )
    print(f"    {BEFORE}: {BEFORE_FAKES_STORED}")
    print(f"  hubnode call {WHO}, no fakes, fresh homes:        {_summary(baseline)}")
    print(f"  hubnode call {WHO}, 63 fakes, fresh homes:        {_summary(fresh)}")
    print(f"  hubnode call {WHO}, 63 fakes, one home (backoff): {_summary(one_home)}")
    print(f"    {BEFORE}: {BEFORE_FAKE_CALLS}")
    print(
        f"  latency with fakes against none (medians): fresh homes "
        f"{_ratio(median([r.took for r in fresh]), median([r.took for r in baseline]))}, "
        f"one home {_ratio(median([r.took for r in one_home]), median([r.took for r in baseline]))}"
    )
    for name, runs in (
        ("no fakes", baseline),
        ("63 fakes, fresh homes", fresh),
        ("63 fakes, one home", one_home),
    ):
        print(f"  dials per discovery, {name}: {[r.dials for r in runs]}")
    print(f"    {BEFORE}: {BEFORE_DIALS}")
    print(
        f"  victim port (named by {AT_VICTIM} of the fakes): {listing_victim} connection(s) from one "
        f"`hubnode services {WHO}`, {call_victim} from the {2 * calls} calls"
    )
    print(f"    {BEFORE}: {BEFORE_VICTIM}")
    failed = [r for r in fresh + one_home if not r.ok]
    if failed:
        print(f"  first failure's stderr: {failed[0].stderr.strip().splitlines()[-1:]}")


# --- a connection flood from 127.0.0.2 ------------------------------------------------------------


class Flood:
    """`count` connections from `source` that send nothing, each opened again as soon as the
    node drops it (tests/trio/test_connection_limits.py's flood)."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.port, self.source, self.count = port, source, count
        self.opened = 0
        self.dropped = 0

    @property
    def held(self) -> int:
        return self.opened - self.dropped

    async def start(self, nursery: trio.Nursery) -> None:
        for _ in range(self.count):
            nursery.start_soon(self._keep_one)
        while self.opened < self.count:
            await trio.sleep(0.01)

    async def _keep_one(self) -> None:
        while True:
            sock = trio.socket.socket()
            with sock:
                await sock.bind((self.source, 0))
                try:
                    await sock.connect(("127.0.0.1", self.port))
                except OSError:
                    await trio.sleep(0.05)
                    continue
                self.opened += 1
                with contextlib.suppress(OSError):
                    while await sock.recv(4096):
                        pass
            self.dropped += 1


def _timed_calls(server: Server, runs: int, env: dict[str, str]) -> list[tuple[bool, float, str]]:
    argv = [HUBNODE, "--home", str(server.client_home), "call", "--server", server.target, "true"]
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_RUN_TIMEOUT, check=False, env=env
        )
        out.append(
            (done.returncode == 0, time.perf_counter() - started, done.stderr.decode(errors="replace"))
        )
    return out


def measure_flood(calls: int, env: dict[str, str]) -> None:
    with hubnode_server(TRUE_TOML, env) as server:
        _timed_calls(server, 2, env)  # the client's key, known_hosts, bytecode
        calm = _timed_calls(server, calls, env)
        flood = Flood(_port(server), FLOOD_SOURCE, FLOOD)
        with BackgroundTrio(flood.start):
            time.sleep(1.0)  # the node full, shedding and the flood reopening
            flooded = _timed_calls(server, calls, env)
            held, dropped = flood.held, flood.dropped
    for name, runs in (("no flood", calm), (f"{FLOOD} idle from {FLOOD_SOURCE}", flooded)):
        took = [t for _, t, _ in runs]
        print(
            f"  hubnode call --server ... true, {name + ':':<26} {sum(ok for ok, _, _ in runs)}/{len(runs)} "
            f"succeeded, median {_ms(median(took))}, max {_ms(max(took))}"
        )
    ratio = _ratio(median([t for _, t, _ in flooded]), median([t for _, t, _ in calm]))
    print(
        f"  latency under the flood against none (medians): {ratio}; the flood held {held} "
        f"connections at the end, {dropped} of its connections were dropped by the node"
    )
    print(f"    {BEFORE}: {BEFORE_FLOOD}")
    failed = [err for ok, _, err in flooded if not ok]
    if failed:
        print(f"  first failure's stderr: {failed[0].strip().splitlines()[-1:]}")


# --- the sandbox's cost per job --------------------------------------------------------------------


def _target(server: Server) -> Target:
    return Target(DirectAddress("127.0.0.1", _port(server)), _key(server))


def measure_sandbox(runs: int, env: dict[str, str]) -> None:
    if importlib.util.find_spec("hubnet.node.sandbox") is None:
        print(f"  sandbox not built yet   {BEFORE}: {BEFORE_SANDBOX}")
        return
    with hubnode_server(SANDBOX_TOML, env) as server:
        isolation = [
            line for line in server.log.read_text(errors="replace").splitlines() if "isolation" in line
        ]
        target = _target(server)
        client = Client(Identity.generate())
        sandboxed, bare = Call(service_id_for_name("true")), Call(service_id_for_name("true-bare"))

        async def measure() -> dict[str, list[float]]:
            times: dict[str, list[float]] = {"sandboxed": [], "sandbox = false": []}
            for i in range(runs + 3):  # interleaved, after 3 warm-ups
                for name, call in (("sandboxed", sandboxed), ("sandbox = false", bare)):
                    started = time.perf_counter()
                    output = await client.call(target, call, timeout=30)
                    took = time.perf_counter() - started
                    if output.result.exit.exit_code != 0:
                        raise BenchError(f"{name} `true` exited {output.result.exit}")
                    if i >= 3:
                        times[name].append(took)
            return times

        times = trio.run(measure)
    for line in isolation[:1]:
        print(f"  node: {line.split('hubnode: ', 1)[-1].strip()}")
    for name, values in times.items():
        print(
            f"  call of `true`, {name + ':':<16} median {median(values) * 1000:6.1f} ms, "
            f"fastest {min(values) * 1000:6.1f} ms ({runs} calls, Trio client, one process)"
        )
    added = median(times["sandboxed"]) - median(times["sandbox = false"])
    fastest = min(times["sandboxed"]) - min(times["sandbox = false"])
    pairs = median([a - b for a, b in zip(times["sandboxed"], times["sandbox = false"], strict=True)])
    print(
        f"  the sandbox adds {pairs * 1000:.1f} ms per job as a caller sees it (median of the {runs} "
        f"back-to-back pairs; {added * 1000:.1f} ms median to median, {fastest * 1000:.1f} ms fastest "
        f"to fastest)"
    )
    try:
        from sandbox import sandbox_cost  # bench/sandbox.py: the runner alone, in this process
    except ImportError:
        print("  (bench/sandbox.py not present: no runner-only figures)")
    else:
        costs = sandbox_cost(runs)
        print(
            "  the runner alone (bench/sandbox.py, medians): "
            + ", ".join(f"{way} {cost[0]:.1f} ms" for way, cost in costs.items())
            + f"; sandboxed minus unsandboxed {costs['sandboxed'][0] - costs['unsandboxed'][0]:.1f} ms"
        )
    print(f"    {BEFORE}: {BEFORE_SANDBOX}")


# --- 500 concurrent jobs ------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid` in KiB (empty once it is gone)."""
    fields: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


@dataclass(frozen=True)
class JobRun:
    failures: Counter[str]
    wall: float
    idle_kib: int
    most_kib: int
    hwm_kib: int


def _jobs_run(jobs: int, toml: str, in_flight: int | None, env: dict[str, str]) -> JobRun:
    """`jobs` calls of `sleep` on a fresh node, all at once or at most `in_flight` at a time."""
    with hubnode_server(toml, env) as server:
        target = _target(server)
        idle = _status(server.pid).get("VmRSS", 0)
        most = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                most[0] = max(most[0], _status(server.pid).get("VmRSS", 0))

        failures: Counter[str] = Counter()

        async def one(client: Client, limit: trio.CapacityLimiter | None) -> None:
            async with limit or contextlib.nullcontext():
                try:
                    output = await client.call(target, Call(service_id_for_name("sleep")), timeout=120)
                except Exception as exc:  # every failure counts, whatever its kind
                    failures[f"{type(exc).__name__}: {str(exc).split(': ', 1)[-1][:70]}"] += 1
                    return
            exit_ = output.result.exit
            if exit_.exit_code != 0:
                failures[f"exit {exit_.exit_code} signal {exit_.signal} {exit_.error or ''}".strip()] += 1

        async def run_all() -> float:
            client = Client(Identity.generate(), connect_timeout=30.0)
            limit = trio.CapacityLimiter(in_flight) if in_flight else None
            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for _ in range(jobs):
                    nursery.start_soon(one, client, limit)
            return time.perf_counter() - started

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            wall = trio.run(run_all)
        finally:
            stop.set()
            sampler.join(5)
        after = _status(server.pid)
    return JobRun(failures, wall, idle, max(most[0], after.get("VmRSS", 0)), after.get("VmHWM", 0))


def measure_jobs(jobs: int, env: dict[str, str]) -> None:
    sandboxed = SLEEP_TOML.format(jobs=jobs, sandbox="")
    bare = SLEEP_TOML.format(jobs=jobs, sandbox="sandbox = false\n")
    pressed = int(MAX_CONNECTIONS * PRESSURE)
    ways = [
        ("all at once, sandboxed (the default)", sandboxed, None),
        ("all at once, sandbox = false", bare, None),
        (f"at most {pressed} in flight, sandboxed", sandboxed, pressed),
    ]
    if importlib.util.find_spec("hubnet.node.sandbox") is None:
        ways = [("all at once (sandbox not built yet)", sandboxed, None), ways[2]]
    print(
        f"  {jobs} calls of a `sleep 1` service on one node (max_jobs and max_concurrent {jobs}) from "
        f"one process, the Trio client; the node holds at most {MAX_CONNECTIONS} connections:"
    )
    print(f"    {'':<40} {'errors':>6} {'wall s':>7} {'RSS MiB: idle':>14} {'most':>6} {'VmHWM':>6}")
    for name, toml, in_flight in ways:
        run = _jobs_run(jobs, toml, in_flight, env)
        print(
            f"    {name:<40} {sum(run.failures.values()):>6} {run.wall:>7.2f} {run.idle_kib / 1024:>14.1f} "
            f"{run.most_kib / 1024:>6.1f} {run.hwm_kib / 1024:>6.1f}"
        )
        for what, count in run.failures.most_common(4):
            print(f"      {count} x {what}")
    print("    (target: 0 errors; RSS of the `hubnode serve` process, sampled every 50 ms)")
    print(f"    {BEFORE}: {BEFORE_JOBS}")


# --- main ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=10, help="timed calls of each kind (default 10)")
    parser.add_argument("--jobs", type=int, default=500, help="concurrent jobs (default 500)")
    parser.add_argument("--sandbox-runs", type=int, default=40, help="calls of each way (default 40)")
    args = parser.parse_args()
    if min(args.calls, args.jobs, args.sandbox_runs) < 1:
        parser.error("every count must be at least 1")

    print(
        f"abuse: what a hostile sender gets from a node, on 127.0.0.1 (interpreter {sys.version.split()[0]})"
    )
    try:
        with bytecode_cache() as env:
            work = Path(tempfile.mkdtemp(prefix="hubnet-bench-abuse-"))
            with contextlib.ExitStack() as stack:
                stack.callback(shutil.rmtree, work, ignore_errors=True)
                seed = stack.enter_context(hubnode_server(PLAIN_TOML, env))
                honest = stack.enter_context(hubnode_server(HONEST_TOML, env, ["--bootstrap", seed.target]))
                third = stack.enter_context(hubnode_server(PLAIN_TOML, env, ["--bootstrap", honest.target]))
                servers = [seed, honest, third]
                stack.enter_context(dht_helpers(DHT_HELPERS, seed))
                full = _wait_for_full_table(("127.0.0.1", _port(seed)))
                print(
                    f"\nfake offers (DHT of 3 `hubnode serve`s and {DHT_HELPERS} more nodes; "
                    f"a FindNode gets {full} contacts):"
                )
                measure_fakes(servers, honest, args.calls, env, work)
                print("\nDHT datagrams from an unverified source (reply/request bytes):")
                measure_datagrams(servers, honest)
            print(f"\nconnection flood ({FLOOD} idle connections from {FLOOD_SOURCE}):")
            measure_flood(args.calls, env)
            print("\nsandbox, per job:")
            measure_sandbox(args.sandbox_runs, env)
            print(f"\n{args.jobs} concurrent jobs:")
            measure_jobs(args.jobs, env)
    except BenchError as exc:
        print(f"abuse: FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
