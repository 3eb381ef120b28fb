"""Discovery among fake offers, over real sockets: what one client dials, and whom it finds.

One real `hubnode serve` offers `who`. Beside its offer, 63 signed offers from throw-away
keys, all cheaper, name dead ports on 127.0.0.1 and a victim port (a listener that counts
the connections it gets and holds them, as a server that does not speak hubnet would).
The discovery code runs in this process on those offers (what the DHT would hand it; the
DHT's own defences are tested elsewhere), with the real dialling, probing and backoff.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hubnet import discover
from hubnet.dht.addresses import Address, DirectAddress
from hubnet.dht.client import DhtClient
from hubnet.dht.ids import service_key
from hubnet.dht.lookup import Seed
from hubnet.dht.records import ProviderRecord
from hubnet.dialer import TcpDialer
from hubnet.discover import Backoff, DialLedger, Found, open_discovered_call, probe
from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity, decode_peer_id
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import Load, Offer, Price
from hubnet.node.protocol import Call
from hubnet.select import SelectionRules
from tests.e2e.harness import Client, Server, wait_until

SID = service_id_for_name("who")
WHO = Call(SID)
FAKES = 63
AT_VICTIM = 13  # of the fakes; the others each name a dead port of their own
CALLS = 10
CLIENT = Identity.generate()


class Listener:
    """A TCP port that counts the connections it accepts (and the most open at once).

    It holds each until the client gives up, never saying a word; or, given `answer`, says
    that and closes, as a web server does with a request it cannot read.
    """

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.open = 0
        self.most_open = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> DirectAddress:
        return DirectAddress("127.0.0.1", self.port)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        conn.settimeout(30.0)
        with conn:
            try:
                while conn.recv(4096) and self.answer is None:
                    pass
                if self.answer is not None:
                    conn.sendall(self.answer)
            except OSError:
                pass
        with self._lock:
            self.open -= 1

    def close(self) -> None:
        self.sock.close()


class _Gauge:
    """How many threads are inside a `with` block now, and the most there ever were."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _offer(key: bytes, address: DirectAddress, per_call: int) -> Offer:
    now = int(time.time())
    return Offer(key, SID, "who", (address,), Price(per_call=per_call), Load(0, 0, 1), 1, now, now + 300)


class Recorder:
    """Swaps discover.DialLedger for one that keeps every ledger and counts dials per address."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ledgers: list[DialLedger] = []
        self.per_address: list[dict[str, int]] = []
        recorder = self

        class Counting(TcpDialer):
            def __init__(self, counts: dict[str, int]) -> None:
                self.counts = counts

            def dial(self, address: Address, timeout: float) -> socket.socket:
                self.counts[str(address)] = self.counts.get(str(address), 0) + 1
                return super().dial(address, timeout)

        class Ledger(DialLedger):
            def __init__(self) -> None:
                counts: dict[str, int] = {}
                super().__init__(inner=Counting(counts))
                recorder.ledgers.append(self)
                recorder.per_address.append(counts)

        monkeypatch.setattr(discover, "DialLedger", Ledger)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    toml = 'listen = "127.0.0.1:0"\n[services.who]\ncommand = ["echo", "honest"]\nprice = { per_call = 10 }\n'
    server = Server(tmp_path_factory.mktemp("honest"), toml).start()
    try:
        _credit(server, CLIENT.peer_id)
        yield server
    finally:
        problems = server.stop()
    assert not problems, problems


@pytest.fixture
def victim() -> Iterator[Listener]:
    listener = Listener()
    yield listener
    listener.close()


@pytest.fixture
def web_server() -> Iterator[Listener]:
    listener = Listener(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    yield listener
    listener.close()


def _honest_offer(server: Server) -> Offer:
    return _offer(decode_peer_id(server.peer_id), DirectAddress("127.0.0.1", server.port), 10)


def _signed_fakes(victim: Listener) -> list[tuple[Identity, Offer]]:
    """FAKES cheap offers under throw-away keys: AT_VICTIM name the victim, the others a dead port each."""
    fakes = []
    for i in range(FAKES):
        address = victim.address if i < AT_VICTIM else DirectAddress("127.0.0.1", _dead_port())
        identity = Identity.generate()
        fakes.append((identity, _offer(identity.public_key, address, 0)))
    return fakes


def _fakes(victim: Listener) -> list[Offer]:
    return [offer for _, offer in _signed_fakes(victim)]


def _call(found: Found, backoff_file: Path | None = None) -> bool:
    try:
        opened = open_discovered_call(
            CLIENT, found, SelectionRules(), WHO, timeout=5.0, verbose=False, backoff=Backoff(backoff_file)
        )
    except TransportError:
        return False
    opened.secure.close()
    return opened.target.peer == found.offers[0].publisher


def test_fakes_cost_one_dial_per_address_and_the_honest_provider_is_found(
    honest: Server, victim: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    found = Found([_honest_offer(honest), *_fakes(victim)])
    addresses = len({str(o.addresses[0]) for o in found.offers})
    # No backoff file: every call meets all the fakes afresh, as a first call does.
    successes = sum(_call(found) for _ in range(CALLS))
    assert successes == CALLS
    honest_address = f"127.0.0.1:{honest.port}"
    for ledger, counts in zip(recorder.ledgers, recorder.per_address, strict=True):
        assert ledger.addresses <= addresses
        assert ledger.dials <= ledger.addresses  # the call goes on its probe's connection
        assert all(n == 1 for where, n in counts.items()), counts
        assert counts[honest_address] == 1  # the probe, whose connection then carries the call
    # 13 offers name the victim: one connection per discovery, and never two.
    assert victim.accepted <= CALLS
    assert victim.most_open <= CALLS


def test_the_backoff_file_spares_providers_that_failed(
    honest: Server, web_server: Listener, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    victim = web_server  # a victim that answers at once: its probe fails before the call is made
    recorder = Recorder(monkeypatch)
    found = Found([_honest_offer(honest), *_fakes(victim)])
    path = tmp_path / discover.BACKOFF_FILE
    assert _call(found, path)
    first = recorder.ledgers[-1].dials
    lines = [line.split() for line in path.read_text().splitlines() if not line.startswith("#")]
    rest_ends = [float(until) for _, until, _ in lines]
    now = time.time()
    assert all(now + 10 < until <= now + discover.BACKOFF_FIRST + 1 for until in rest_ends)
    assert {failures for _, _, failures in lines} == {"1"}
    # Whatever the first call reached of the fakes now rests; its victim connection is its last.
    before = victim.accepted
    for _ in range(3):
        assert _call(found, path)
    resting = {str(o.addresses[0]) for o in found.offers[1:]} & {key for key, _, _ in lines}
    for counts in recorder.per_address[1:]:
        assert not set(counts) & resting, counts
    # The fakes are cheaper, so the first call dials the addresses they name (as many as its
    # probing reaches in its time: on a loaded machine one may be left), then the honest node
    # once (its probe's connection carries the call); the others dial only what the first left
    # out, and the honest node.
    assert first <= FAKES - AT_VICTIM + 2
    assert victim.accepted == before <= 1
    fake_addresses = {str(o.addresses[0]) for o in found.offers[1:]}
    unreached = fake_addresses - set(recorder.per_address[0])
    assert len(unreached) <= 1
    assert all(ledger.dials <= 1 + len(unreached) for ledger in recorder.ledgers[1:])
    assert recorder.ledgers[-1].dials == 1  # by the last call, every fake rests


def test_a_resting_provider_is_left_alone_while_another_answers(
    honest: Server, victim: Listener, tmp_path: Path
) -> None:
    # The victim's offer is cheaper: without a backoff it is probed first, every time.
    stranger = _offer(Identity.generate().public_key, victim.address, 0)
    found = Found([_honest_offer(honest), stranger])
    assert _call(found)
    assert victim.accepted == 1
    path = tmp_path / discover.BACKOFF_FILE
    path.write_text(f"{victim.address} {time.time() + 60:.0f} 1\n")
    for _ in range(3):
        assert _call(found, path)
    assert victim.accepted == 1


def test_a_lone_provider_is_called_without_a_probe(honest: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing to choose between: a probe would only cost the call a connection more.
    recorder = Recorder(monkeypatch)
    assert _call(Found([_honest_offer(honest)]))
    assert recorder.ledgers[-1].dials == 1
    assert recorder.per_address[-1] == {f"127.0.0.1:{honest.port}": 1}


def test_a_resting_provider_is_still_tried_when_nobody_else_answers(honest: Server, tmp_path: Path) -> None:
    path = tmp_path / discover.BACKOFF_FILE
    offer = _honest_offer(honest)
    address, key_at_address = Backoff.keys(offer)
    path.write_text(f"{address} {time.time() + 60:.0f} 3\n{key_at_address} {time.time() + 60:.0f} 3\n")
    assert _call(Found([offer]), path)
    assert path.read_text().splitlines()[1:] == []  # the answer cleared its rest


def test_offers_that_claim_the_honest_address_under_other_keys_do_not_hide_it(
    honest: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    address = DirectAddress("127.0.0.1", honest.port)
    impostors = [_offer(Identity.generate().public_key, address, 0) for _ in range(20)]
    path = tmp_path / discover.BACKOFF_FILE
    for _ in range(3):
        assert _call(Found([_honest_offer(honest), *impostors]), path)
    # One probe (XX: the key that answers says who is really there), whose connection then
    # carries the call.
    assert [ledger.dials for ledger in recorder.ledgers] == [1, 1, 1]
    # The impostors rest, each at that address; the honest node does not.
    keys = {line.split()[0] for line in path.read_text().splitlines()[1:]}
    assert keys == {Backoff.keys(o)[1] for o in impostors}


def test_listing_providers_probes_each_address_once(
    honest: Server, victim: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder(monkeypatch)
    offers = [_honest_offer(honest), *_fakes(victim)]
    answers = probe(CLIENT, offers)
    assert answers[offers[0].publisher] is not None
    assert victim.accepted == 1
    assert all(n == 1 for n in recorder.per_address[0].values())


def test_dialling_stays_within_its_bounds_when_every_fake_holds_the_connection(
    honest: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tarpits: each accepts and never answers, so every probe of them lasts its whole timeout.
    monkeypatch.setattr(discover, "MAX_CONCURRENT_PROBES", 4)
    monkeypatch.setattr(discover, "PROBE_TIMEOUT", 0.5)
    # Counted at the dialling end: a probe's socket lives inside _ask_status (dialled there,
    # closed there, even on failure). A listener's thread would notice a close only later, and
    # count a probe that has given up beside the next one.
    held = _Gauge()
    ask_status = discover._ask_status

    def counted(*args: Any, **kwargs: Any) -> Any:
        with held:
            return ask_status(*args, **kwargs)

    monkeypatch.setattr(discover, "_ask_status", counted)
    tarpits = [Listener() for _ in range(12)]
    try:
        found = Found(
            [
                _honest_offer(honest),
                *(_offer(Identity.generate().public_key, t.address, 0) for t in tarpits),
            ]
        )
        for _ in range(2):
            results: list[bool] = []
            called = threading.Thread(target=lambda out=results: out.append(_call(found)))
            called.start()
            called.join(timeout=60)
            assert results == [True]
            # The next discovery starts once the tarpits have seen this one's probes give up.
            deadline = time.monotonic() + 5.0
            while any(t.open for t in tarpits) and time.monotonic() < deadline:
                time.sleep(0.02)
        # The stagger ramps up to the cap, never beyond: never more connections held than it
        # (the honest node's probe among them).
        assert 0 < held.most <= 4
        assert all(t.accepted <= 2 for t in tarpits)  # once per discovery
    finally:
        for tarpit in tarpits:
            tarpit.close()


def test_backoff_doubles_from_15_seconds_and_an_answer_clears_it(tmp_path: Path) -> None:
    now = [1_000_000.0]
    path = tmp_path / discover.BACKOFF_FILE
    offer = _offer(Identity.generate().public_key, DirectAddress("127.0.0.1", 9), 0)
    address, _ = Backoff.keys(offer)
    for failures, rest in [(1, 15), (2, 30), (3, 60), (4, 120)]:
        backoff = Backoff(path, clock=lambda: now[0])
        backoff.failed(address)
        backoff.save()
        assert Backoff(path, clock=lambda: now[0]).resting_until(offer) == now[0] + rest
        assert path.read_text().splitlines()[1] == f"{address} {now[0] + rest:.0f} {failures}"
        now[0] += rest + 1  # the rest is over, but the count goes on
        assert Backoff(path, clock=lambda: now[0]).resting_until(offer) is None
    for _ in range(20):
        backoff.failed(address)
    assert backoff.resting_until(offer) == now[0] + discover.BACKOFF_MAX
    backoff.answered(offer)
    backoff.save()
    assert path.read_text().splitlines()[1:] == []
    # Garbage in the file is skipped, never an error.
    path.write_text("x\n\0\0\n1 2\nkey notanumber 3\n")
    assert Backoff(path).resting_until(offer) is None


# --- the same through a real DHT and the real `hubnode call` ------------------------------------


class Dht:
    """Three `hubnode serve` nodes in a chain; the second is the honest provider of `who`."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers

    @property
    def seed(self) -> str:
        return self.servers[0].target

    @property
    def honest(self) -> Server:
        return self.servers[1]

    def offers(self, client: Client) -> list[dict[str, object]]:
        result = client.run("services", "--json", "-b", self.seed, "who", input=None)
        assert result.returncode == 0, result.stderr.decode()
        rows: list[dict[str, object]] = json.loads(result.stdout)
        return rows


@pytest.fixture(scope="module")
def dht(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dht]:
    root = tmp_path_factory.mktemp("dht")
    who = '[services.who]\ncommand = ["echo", "honest"]\nprice = { per_call = 10 }\n'
    servers: list[Server] = []
    try:
        for i in range(3):
            toml = 'listen = "127.0.0.1:0"\n' + (who if i == 1 else "")
            args = ["--no-lan"] + (["--bootstrap", servers[-1].target] if servers else [])
            servers.append(Server(root / f"node{i}", toml, serve_args=args).start())
        network = Dht(servers)
        probe_client = Client(root / "lister")
        assert wait_until(lambda: len(network.offers(probe_client)) >= 1, 30.0, interval=0.2)
        yield network
    finally:
        problems = [p for server in servers for p in server.stop()]
    assert not problems, problems


def _publish(offer: Offer, identity: Identity, seed: Server) -> int:
    """Publish `offer` into the DHT from a UDP socket at the port the offer names (as its
    publisher would, were it real); how many nodes kept it."""
    now = int(time.time())
    record = ProviderRecord.create(
        identity, service_key(SID), offer.payload(), sequence=now, issued_at=now, ttl=300
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    address = offer.addresses[0]
    assert isinstance(address, DirectAddress)
    sock.bind((address.host, address.port))
    with DhtClient(identity, [Seed(("127.0.0.1", seed.port), decode_peer_id(seed.peer_id))]) as client:
        client._sock.close()
        client._sock = sock
        return client.publish_provider(record)


def _credit(server: Server, peer_id: str) -> None:
    """The honest node's operator credits a caller, to pay for its calls of `who`."""
    credited = Client(server.home).run("ledger", "credit", peer_id, "1000000")
    assert credited.returncode == 0, credited.stderr.decode()


def _timed_call(client: Client, dht: Dht) -> tuple[bool, float, int | None]:
    """`hubnode -v call -b SEED who`: whether the honest node answered, in how long, and how
    many times the discovery dialled (as it says)."""
    _credit(dht.servers[1], client.peer_id)  # the node that offers `who`
    started = time.monotonic()
    result = client.run("-v", "call", "-b", dht.seed, "who", input=None)
    took = time.monotonic() - started
    dials = re.search(rb"this discovery dialled (\d+) time", result.stderr)
    return result.stdout == b"honest\n", took, int(dials[1]) if dials else None


def test_hubnode_call_finds_the_honest_provider_among_63_fake_offers_in_the_dht(
    dht: Dht, victim: Listener, tmp_path: Path
) -> None:
    baseline = sorted(_timed_call(Client(tmp_path / f"before{i}"), dht)[1] for i in range(3))
    print(f"no fakes: median {baseline[1]:.2f}s")
    stored = sum(_publish(offer, identity, dht.servers[0]) > 0 for identity, offer in _signed_fakes(victim))
    listed = dht.offers(Client(tmp_path / "lister"))
    print(f"fake offers stored: {stored} of {FAKES}; offers listed: {len(listed)}")
    before = victim.accepted
    clean = Client(tmp_path / "clean")
    outcomes = {"fresh": [_timed_call(Client(tmp_path / f"fresh{i}"), dht) for i in range(CALLS)]}
    outcomes["one home"] = [_timed_call(clean, dht) for _ in range(CALLS)]
    for name, runs in outcomes.items():
        latencies = sorted(took for _, took, _ in runs)
        print(
            f"{name}: {sum(ok for ok, _, _ in runs)}/{CALLS} found the honest node; "
            f"dials {[dials for _, _, dials in runs]}; median {latencies[CALLS // 2]:.2f}s"
        )
        assert sum(ok for ok, _, _ in runs) >= CALLS - 1
        assert all(dials is not None and dials <= len(listed) + 1 for _, _, dials in runs)
    # One connection per discovery at most, whatever number of offers name it.
    assert victim.accepted - before <= 2 * CALLS
