"""Reachability and client mode on real `hubnode` processes in the simulated internet (tests/netns.py).

A seed and two relays (plain nodes here) on the public bridge, a desktop behind router1 and
a Pi behind router2, all joined to the seed. Each asks its DHT peers to dial it back: the
public ones find they are `public`, the two behind NAT that they are `private`, seen at
their router's WAN address, and go into DHT client mode: nobody keeps them in a routing
table, yet they still find offers, and the desktop still calls out through its NAT.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.harness import wait_until
from tests.netns import Host, Internet, Nodes, node

PORT = 4100
SETTLE_TIMEOUT = 40.0  # seconds for every node to reach a verdict (dial-backs time out in 3 s)


def services_toml(host: Host, *, service: str) -> str:
    return f"""
listen = "0.0.0.0:{PORT}"
advertise = ["{host.address}:{PORT}"]

[services.{service}]
description = "says which node answered"
command = ["echo", "{service} on {host.role}"]
"""


class Reach(Nodes):
    def status(self, role: str) -> dict[str, object]:
        """`hubnode status --json` run in `role`'s namespace against its own node."""
        result = self.internet[role].hubnode(self.root / role, "status", "--json", input=None)
        assert result.returncode == 0, result.stderr.decode()
        shown: dict[str, object] = json.loads(result.stdout)
        return shown


@pytest.fixture(scope="module")
def nodes(internet: Internet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reach]:
    root = tmp_path_factory.mktemp("reach")
    found = Reach(internet, root, PORT)
    servers = found.servers
    try:
        for role in ("seed", "relay1", "relay2", "desktop", "pi"):
            host = internet[role]
            seed = ["--bootstrap", found.seed] if servers else []
            server = node(host, root / role, services_toml(host, service=f"{role}-echo"), *seed)
            servers[role] = server.start()
        settled = wait_until(
            lambda: all(found.status(role)["reachability"] != "unknown" for role in servers),
            SETTLE_TIMEOUT,
            0.5,
        )
        assert settled, {role: found.status(role) for role in servers}
        yield found
    finally:
        problems = found.stop()
    assert not problems, (problems, found.logs())


def test_public_nodes_find_they_are_public(nodes: Reach) -> None:
    for role in ("seed", "relay1", "relay2"):
        status = nodes.status(role)
        assert status["reachability"] == "public", (role, status)
        assert status["dht_mode"] == "server"
        assert status["observed"] == f"{nodes.internet[role].address}:{PORT}"


@pytest.mark.parametrize("role", ["desktop", "pi"])
def test_a_node_behind_nat_finds_it_is_private_at_its_routers_address(nodes: Nodes, role: str) -> None:
    status = nodes.status(role)
    assert status["reachability"] == "private", status
    assert status["dht_mode"] == "client"
    # MASQUERADE kept the node's UDP port: the observed address is the router's WAN side.
    assert status["observed"] == f"{nodes.internet.router(role).address}:{PORT}"
    assert isinstance(status["peers"], int) and status["peers"] >= 2  # it keeps a table of its own


def test_nobody_keeps_a_private_node_in_its_routing_table(nodes: Reach) -> None:
    private = {nodes.servers["desktop"].peer_id, nodes.servers["pi"].peer_id}
    for role in ("seed", "relay1", "relay2"):
        result = nodes.internet[role].hubnode(
            nodes.root / role, "peers", "--json", "--server", nodes.servers[role].target
        )
        assert result.returncode == 0, result.stderr.decode()
        peers = {row["peer"] for row in json.loads(result.stdout)}
        assert peers and not peers & private, (role, peers)


def test_a_private_node_finds_offers_in_the_dht(nodes: Reach) -> None:
    """The Pi, in client mode, finds the seed's offer by name and calls it."""
    seed = f"{nodes.servers['seed'].peer_id}@{nodes.internet.seed.address}:{PORT}"
    result = nodes.internet.pi.hubnode(nodes.root / "pi", "call", "-b", seed, "seed-echo", input=None)
    assert (result.returncode, result.stdout) == (0, b"seed-echo on seed\n"), result.stderr.decode()


def test_a_node_behind_nat_calls_out_to_a_public_node(nodes: Reach) -> None:
    relay = nodes.servers["relay1"]
    target = f"{relay.peer_id}@{nodes.internet.relay1.address}:{PORT}"
    result = nodes.internet.desktop.hubnode(nodes.root / "desktop", "call", "--server", target, "relay1-echo")
    assert (result.returncode, result.stdout) == (0, b"relay1-echo on relay1\n"), result.stderr.decode()
