"""A node that callers cannot dial serves through relays: real hubnode processes on loopback.

The "private" node is forced so (`reachability = "private"`): it publishes only relayed
addresses and is reached only through circuits of the relays it holds reservations with
(R1 and R2 of the three it pins; R3 when one of them goes). A seed that relays nothing
holds the DHT together, so that killing a relay does not take the DHT with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.harness import HUBNODE, Client, Server, base_env, one_line

OFFERS_TIMEOUT = 30.0
MOVE_TIMEOUT = 30.0  # the story's bound: a node whose relay died is reachable again within this
PUBLIC = 'listen = "127.0.0.1:0"\n'


def _relay(extra: str = "") -> str:
    return f"{PUBLIC}\n[relay]\nenabled = true\n{extra}"


@dataclass
class Network:
    seed: Server
    relays: list[Server]  # R1 (one circuit per peer), R2, R3
    private: Server
    client: Client

    def circuit(self, relay: Server) -> str:
        """The relayed address of the private node through `relay`."""
        return f"{relay.target}/circuit/{self.private.peer_id}"

    def call_by_name(self, data: bytes) -> subprocess.CompletedProcess[bytes]:
        return self.client.run("call", "-b", self.seed.target, "cat", input=data)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    root = tmp_path_factory.mktemp("relay")
    servers: list[Server] = []
    try:
        seed = Server(root / "seed", PUBLIC).start()
        servers.append(seed)
        joined = ("--no-lan", "--bootstrap", seed.target)
        relays = [
            Server(root / "r1", _relay("max_circuits_per_peer = 1\n"), serve_args=joined).start(),
            Server(root / "r2", _relay(), serve_args=joined).start(),
            Server(root / "r3", _relay(), serve_args=joined).start(),
        ]
        servers.extend(relays)
        pins = ", ".join(f'"{relay.target}"' for relay in relays)
        private_toml = (
            f'{PUBLIC}reachability = "private"\nrelays = [{pins}]\n\n'
            '[services.cat]\ncommand = ["cat"]\nmax_concurrent = 8\n\n'
            '[services.fail]\ncommand = ["sh", "-c", "echo \\"$0\\" >&2; exit 3"]\n'
            "arguments = { positional = 1 }\n"
        )
        private = Server(root / "private", private_toml, serve_args=joined).start()
        servers.append(private)
        network = Network(seed, relays, private, Client(root / "client"))
        for relay in relays[:2]:
            assert private.wait_for_log(_reserved_at(relay), 20.0), private.log
        yield network
    finally:
        problems = [p for server in servers for p in server.stop()]
    assert not problems, problems


def _reserved_at(relay: Server) -> Callable[[str], object]:
    return re.compile(rf"reserved at relay {relay.peer_id[:8]}").search


def test_a_call_through_each_relay_reaches_the_private_node(network: Network) -> None:
    for relay in network.relays[:2]:
        data = b"through " + relay.peer_id.encode()
        result = network.client.call(network.circuit(relay), "cat", input=data)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == data


def test_arguments_stderr_and_the_exit_code_come_through_a_relay(network: Network) -> None:
    result = network.client.call(network.circuit(network.relays[0]), "fail", "an argument", input=None)
    assert result.returncode == 3, result.stderr.decode()
    assert result.stderr == b"an argument\n"


def test_the_private_node_is_found_by_name_and_10_mib_pass_bit_exact(network: Network) -> None:
    data = os.urandom(10 * 1024 * 1024)
    deadline = time.monotonic() + OFFERS_TIMEOUT
    result = network.call_by_name(data)
    while result.returncode != 0 and time.monotonic() < deadline:  # until its offer is in the DHT
        time.sleep(0.5)
        result = network.call_by_name(data)
    assert result.returncode == 0, result.stderr.decode()
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_a_relay_at_its_limit_refuses_clearly_and_the_caller_takes_the_other(network: Network) -> None:
    r1 = network.relays[0]
    # One call holds R1's only circuit for 127.0.0.1 open, its stdin never ending.
    holder = subprocess.Popen(
        [*HUBNODE, "--home", str(network.client.home), "call", "--server", network.circuit(r1), "cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base_env(),
    )
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(b"held\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == b"held\n"  # the circuit is open
        refused = network.client.call(network.circuit(r1), "cat", input=b"x")
        assert refused.returncode != 0
        assert "circuits-full" in one_line(refused)
        assert r1.peer_id in one_line(refused) or "127.0.0.1" in one_line(refused)
        # The offer names both relays: whichever comes first, the call gets through. Once it
        # names both, that is: a node that reserved at R1 first may have published (and this
        # client kept) an offer naming R1 alone, and republishes the two within a second, or
        # more under load. A caller that never moved on from a refusing relay never passes.
        deadline = time.monotonic() + OFFERS_TIMEOUT
        result = network.call_by_name(b"around the full relay")
        while result.returncode != 0 and "circuits-full" in one_line(result) and time.monotonic() < deadline:
            time.sleep(0.5)
            result = network.call_by_name(b"around the full relay")
        assert result.returncode == 0, (
            result.stderr.decode() + "\nthe private node's log:\n" + network.private.log
        )
        assert result.stdout == b"around the full relay"
    finally:
        holder.kill()
        holder.wait(10)


def test_killing_a_relay_moves_the_node_to_another_within_seconds(network: Network) -> None:
    r2, r3 = network.relays[1], network.relays[2]
    r2.kill()
    assert network.private.wait_for_log(_reserved_at(r3), MOVE_TIMEOUT), network.private.log
    deadline = time.monotonic() + MOVE_TIMEOUT
    result = network.call_by_name(b"after the relay died")
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        result = network.call_by_name(b"after the relay died")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"after the relay died"
    through_r3 = network.client.call(network.circuit(r3), "cat", input=b"via r3")
    assert through_r3.stdout == b"via r3", through_r3.stderr.decode()


def test_a_node_that_relays_nothing_refuses_relay_requests(network: Network) -> None:
    result = network.client.call(f"{network.seed.target}/circuit/{network.private.peer_id}", "cat", input=b"")
    assert result.returncode != 0
    assert "not-a-relay" in one_line(result)
