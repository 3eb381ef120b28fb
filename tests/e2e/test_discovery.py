"""Discovery end to end: a dozen real `hubnode serve` processes joined in a chain on 127.0.0.1.

Two of them offer a service `who` (one prints provider-a at 10 msat a call, one prints
provider-b at 20). A fresh client that knows only the first node finds both offers, calls
the cheaper, ignores forged offers, survives a cheaper offer that leads nowhere, and
reaches the dearer provider once the cheaper one is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hubnet.dht.addresses import parse_address
from hubnet.dht.client import read_tokens
from hubnet.dht.ids import service_key
from hubnet.dht.messages import AddProvider, Ping, decode, encode
from hubnet.dht.records import ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.identity.records import SignedRecord
from hubnet.node.naming import service_id_for_name
from hubnet.node.offers import Load, Offer, Price
from hubnet.offer_cache import cache_name, keep_records, read_records
from tests.e2e.harness import Client, Server, wait_until

NODES = 12
PROVIDER_A, PROVIDER_B = 4, 8  # indexes in the chain
OFFERS_TIMEOUT = 30.0

LISTEN = 'listen = "127.0.0.1:0"\n'


def _who(text: str, per_call: int) -> str:
    return f"""{LISTEN}
[services.who]
command = ["echo", "{text}"]
description = "Says which provider answered"
price = {{ per_call = {per_call} }}
"""


class Network:
    def __init__(self, servers: list[Server], client: Client) -> None:
        self.servers = servers
        self.client = client

    @property
    def seed(self) -> str:
        return self.servers[0].target

    def offers(self) -> list[dict[str, object]]:
        result = self.client.run("services", "--json", "-b", self.seed, "who", input=None)
        assert result.returncode == 0, result.stderr.decode()
        rows: list[dict[str, object]] = json.loads(result.stdout)
        return rows

    def call_who(self) -> str:
        result = self.client.run("call", "-b", self.seed, "who", input=None)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout.decode().strip()


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("dht")
    servers: list[Server] = []
    try:
        for i in range(NODES):
            toml = {PROVIDER_A: _who("provider-a", 10), PROVIDER_B: _who("provider-b", 20)}.get(i, LISTEN)
            args = ["--no-lan"] + (["--bootstrap", servers[-1].target] if servers else [])
            servers.append(Server(root / f"node{i}", toml, serve_args=args).start())
        client = Client(root / "client")
        # Every call asks the DHT, as these tests expect: the offers kept between calls have
        # tests of their own, from a home of the same identity (`_keeping_client`).
        (client.home / "client.toml").write_text("[select]\noffer_cache = 0\n", encoding="utf-8")
        network = Network(servers, client)
        for provider in (PROVIDER_A, PROVIDER_B):  # their operators credit the client to pay for `who`
            credited = Client(servers[provider].home).run(
                "ledger", "credit", network.client.peer_id, "1000000"
            )
            assert credited.returncode == 0, credited.stderr.decode()
        deadline = time.monotonic() + OFFERS_TIMEOUT
        while len(network.offers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield network
    finally:
        problems = [p for server in servers for p in server.stop()]
    assert not problems, problems


def test_every_offer_is_found_with_its_price(network: Network) -> None:
    offers = network.offers()
    by_peer = {row["peer"]: row for row in offers}
    a, b = network.servers[PROVIDER_A], network.servers[PROVIDER_B]
    assert set(by_peer) == {a.peer_id, b.peer_id}
    assert by_peer[a.peer_id]["price"] == {"per_call": 10, "per_second": 0, "per_mib": 0}
    assert by_peer[b.peer_id]["address"] == b.address
    assert all(row["rtt_ms"] is not None for row in offers)  # both answered the live probe


def test_services_with_a_server_asks_that_server_only(network: Network) -> None:
    b = network.servers[PROVIDER_B]
    for service, expected, status in [("who", ["who"], 0), ("nothing-here", [], 127)]:
        result = network.client.run("services", "--json", "--server", b.target, service, input=None)
        assert result.returncode == status, result.stderr.decode()
        assert [row["name"] for row in json.loads(result.stdout)] == expected


def test_peers_sees_the_whole_chain(network: Network) -> None:
    result = network.client.run("peers", "--json", "-b", network.seed, input=None)
    assert result.returncode == 0, result.stderr.decode()
    seen = {row["peer"] for row in json.loads(result.stdout)}
    assert seen == {s.peer_id for s in network.servers}


def test_peers_with_a_server_shows_its_routing_table(network: Network) -> None:
    seed = network.servers[0]
    result = network.client.run("peers", "--json", "--server", seed.target, input=None)
    assert result.returncode == 0, result.stderr.decode()
    rows = json.loads(result.stdout)
    everyone = {s.peer_id for s in network.servers} - {seed.peer_id}
    # Twelve nodes fit in the buckets of one table (k = 20): the seed knows all the others.
    assert {row["peer"] for row in rows} == everyone
    assert all(0 <= row["shared_bits"] <= 160 for row in rows)


def test_call_reaches_the_cheaper_provider(network: Network) -> None:
    assert [network.call_who() for _ in range(3)] == ["provider-a"] * 3


# `hubnode ARGS` in a fresh interpreter, as the console script runs it, then which of the
# modules that cost a Pi's call most to import it loaded on the way.
_LOADED_BY = """
import atexit, sys
COSTLY = ("threading", "queue", "random", "typing", "hubnet.identity.orgs")
atexit.register(lambda: print(",".join(m for m in COSTLY if m in sys.modules)))
sys.argv = ["hubnode", *sys.argv[1:]]
from hubnet.main import main
main()
"""


def test_a_call_that_probes_its_offers_imports_no_threading_and_keeps_its_tokens(network: Network) -> None:
    home = network.client.home
    argv = [sys.executable, "-c", _LOADED_BY, "--home", str(home), "call", "-b", network.seed, "who"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    # Two offers: both probed, on threads of `_thread`, and one drawn at random (from os.urandom).
    assert done.stdout.split() == ["provider-a"]
    kept = read_tokens(home / "dht-tokens")
    assert kept is not None and {address for address, _, _ in kept.tokens} <= {
        ("127.0.0.1", server.port) for server in network.servers
    }
    assert len(kept.tokens) == len(network.servers)  # the lookup asked them all (fewer than k)


def _keeping_client(network: Network, name: str) -> Client:
    """A home of the network client's identity (which the providers credited) that keeps
    offers between calls, as client.toml's default has it."""
    client = Client(network.client.home.parent / name)
    shutil.copy(network.client.home / "identity.key", client.home / "identity.key")
    return client


def test_a_second_call_starts_from_the_offers_the_first_found(network: Network) -> None:
    client = _keeping_client(network, "keeping")
    said = []
    for _ in range(2):
        result = client.run("-v", "call", "-b", network.seed, "who", input=None)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout.decode().strip() == "provider-a"
        said.append(result.stderr.decode())
    assert "kept from a discovery" not in said[0]
    assert "2 offer(s) kept from a discovery" in said[1]
    assert "asking the DHT" not in said[1]
    # Another bootstrap list is another DHT as far as kept offers go.
    other = client.run("-v", "call", "-b", network.servers[1].target, "who", input=None)
    assert other.returncode == 0 and "kept from a discovery" not in other.stderr.decode()


def test_kept_offers_that_none_takes_the_call_on_send_the_call_to_the_dht(network: Network) -> None:
    client = _keeping_client(network, "stale")
    # Kept: one offer, valid and signed, of a provider that has gone (nothing listens there).
    gone = _offer_record(
        Identity.generate(), service_id_for_name("who"), price=1, address=f"127.0.0.1:{_free_port()}"
    )
    kept = client.home / "offers" / cache_name(service_id_for_name("who"), [network.seed])
    keep_records(kept, [gone.raw], now=time.time())
    result = client.run("-v", "call", "-b", network.seed, "who", input=None)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == "provider-a"
    said = result.stderr.decode()
    assert "1 offer(s) kept from a discovery" in said and "asking the DHT" in said
    assert read_records(kept, now=time.time(), max_age=30) is not None  # what the DHT said, now kept


def _send_provider(record: bytes, server: Server, sender: Identity) -> bool:
    """AddProvider straight to one node's UDP port, with the token a ping got (padded, so that
    the node's reply may be larger than the ping); whether it said it stored the record."""
    address = ("127.0.0.1", server.port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(encode(sender, os.urandom(8), Ping(), serving=False, padding=16), address)
        token = decode(sock.recv(8192)).token
        sock.sendto(encode(sender, os.urandom(8), AddProvider(record), serving=False, token=token), address)
        reply = decode(sock.recv(8192))
    return bool(getattr(reply.message, "ok", False))


def test_forged_offers_change_nothing(network: Network) -> None:
    rogue = Identity.generate()
    sid = service_id_for_name("who")
    a = network.servers[PROVIDER_A]
    # Forged: an offer presented under provider-a's key but signed by the rogue.
    signed = SignedRecord.decode(_offer_record(rogue, sid, price=0).raw, domain="hubnet/provider/1")
    forged = SignedRecord("hubnet/provider/1", signed.body, bytes.fromhex(_peer_hex(a)), signed.signature)
    stored = [_send_provider(forged.encode(), server, rogue) for server in network.servers]
    assert not any(stored), "a node stored an offer whose signature does not verify"
    # Valid but useless: the rogue's own offer, cheapest of all, at an address where nobody listens.
    dead = _offer_record(rogue, sid, price=0, address=f"127.0.0.1:{_free_port()}")
    assert any(_send_provider(dead.raw, server, rogue) for server in network.servers)
    assert len(network.offers()) == 3
    # The client tries the cheapest, fails before anything was sent, and falls back.
    assert network.call_who() == "provider-a"


def test_stopping_the_cheaper_provider_moves_calls_to_the_other(network: Network) -> None:
    a = network.servers[PROVIDER_A]
    assert not a.stop()
    assert wait_until(lambda: not a.running, 5.0)
    assert network.call_who() == "provider-b"


def _peer_hex(server: Server) -> str:
    from hubnet.identity.keys import decode_peer_id

    return decode_peer_id(server.peer_id).hex()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _offer_record(
    identity: Identity, sid: bytes, *, price: int, address: str = "127.0.0.1:9"
) -> ProviderRecord:
    now = int(time.time())
    offer = Offer(
        identity.public_key,
        sid,
        "who",
        (parse_address(address),),
        Price(per_call=price),
        Load(0, 0, 1),
        1,
        now,
        now + 300,
    )
    return ProviderRecord.create(
        identity, service_key(sid), offer.payload(), sequence=now, issued_at=now, ttl=300
    )
