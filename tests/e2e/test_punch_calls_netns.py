"""Relayed calls that hole-punch (node.holepunch) in the simulated internet of tests/netns.py.

The seed and relay1 are public relays; the desktop (behind router1, a cone NAT) serves
`cat`, and the laptop (behind router3, a symmetric NAT) serves `laptop-cat` with `punch =
false`; both are private and hold reservations with the two relays. Real `hubnode call`s,
by name through the DHT:

- the Pi (behind router2, a cone NAT) calls `cat`: the relay links it to the desktop, the
  two punch, and the call runs over the direct connection (the desktop logs where the
  caller came from, `-v` says so, and the relay carried only the exchange's few bytes);
- the laptop calls `cat`: its NAT gives the punch's SYN a new port, the punch fails, and
  the call carries on over the same relayed circuit; the next call does not try again;
- the Pi calls `laptop-cat`, which does not punch, and a Pi whose client.toml says `punch =
  false` calls `cat`: neither tries;
- a Trio program on the Pi (`hubnet.trio_client`) calls the desktop's relayed address and
  goes direct, then the laptop's, which does not punch.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hubnet.identity.keys import decode_peer_id
from tests.netns import Host, Internet, Nodes, node, start_relays

PORT = 4300
RESERVED_TIMEOUT = 60.0  # two reservations each, the offers published
CALL_TIMEOUT = 30.0  # until a fresh offer is found
RELAYS = ("seed", "relay1")
_CIRCUIT = re.compile(r"a circuit to ([a-z2-7]{8}) closed after (\d+) bytes")


def _private_toml(relays: list[str], service: str, *extra: str) -> str:
    pinned = ", ".join(f'"{relay}"' for relay in relays)
    lines = [f'listen = "0.0.0.0:{PORT}"', 'reachability = "private"', f"relays = [{pinned}]", *extra]
    return "\n".join(lines) + f'\n\n[services.{service}]\ncommand = ["cat"]\n'


class World(Nodes):
    def call(self, host: Host, home: str, service: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
        """`hubnode -v call SERVICE` from `host` with home `home`, retried while the offer is on
        its way (bounded)."""
        deadline = time.monotonic() + CALL_TIMEOUT
        while True:
            result = host.hubnode(self.root / home, "-v", "call", "-b", self.seed, service, input=data)
            if result.returncode == 0 or time.monotonic() > deadline:
                return result
            time.sleep(1.0)

    def circuits_to(self, role: str) -> list[int]:
        """The bytes of each circuit to `role` that the relays closed, in order per relay."""
        fingerprint = self.servers[role].peer_id[:8]
        return [
            int(match[2])
            for relay in RELAYS
            for match in _CIRCUIT.finditer(self.servers[relay].log)
            if match[1] == fingerprint
        ]


@pytest.fixture(scope="module")
def world(internet: Internet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("punch-netns")
    world = World(internet, root, PORT)
    servers = world.servers
    try:
        start_relays(internet, root, RELAYS, PORT, servers)
        relays = [f"{servers[role].peer_id}@{internet[role].address}:{PORT}" for role in RELAYS]
        joined = ["--bootstrap", relays[0]]
        servers["desktop"] = node(internet.desktop, root / "desktop", _private_toml(relays, "cat"), *joined)
        laptop_toml = _private_toml(relays, "laptop-cat", "punch = false")
        servers["laptop"] = node(internet.laptop, root / "laptop", laptop_toml, *joined)
        for role in ("desktop", "laptop"):
            servers[role].start()
        for role in ("desktop", "laptop"):
            deadline = time.monotonic() + RESERVED_TIMEOUT
            while servers[role].log.count("reserved at relay") < 2 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert servers[role].log.count("reserved at relay") >= 2, servers[role].log
        (root / "pi-no-punch").mkdir()
        (root / "pi-no-punch" / "client.toml").write_text("punch = false\n")
        yield world
    finally:
        problems = world.stop()
    assert not problems, (problems, world.logs())


# argv: the desktop's relayed address, the laptop's. Prints, per call, its stdout's SHA-256
# and what the dialer said of the punch.
TRIO_CALLER = """
import hashlib, os, sys, trio
from hubnet.identity.keys import Identity
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call
from hubnet.punching import Punching
from hubnet.trio_client import Client, TcpStreamDialer

said = []
client = Client(Identity.generate(), dialer=TcpStreamDialer(Punching(announce=said.append)))

async def main():
    for address, service in zip(sys.argv[1:], ("cat", "laptop-cat")):
        data = os.urandom(1 << 20)
        output = await client.call(Target.parse(address), Call(service_id_for_name(service)), stdin=data)
        assert output.stdout == data and output.result.exit.exit_code == 0
        print(service, said[-1] if said else "no punch")
        said.clear()

trio.run(main)
"""


def _bit_exact(result: subprocess.CompletedProcess[bytes], data: bytes, world: World) -> None:
    assert result.returncode == 0, (result.stderr.decode(), world.servers["desktop"].log)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


def test_a_pi_behind_a_cone_nat_calls_a_desktop_behind_another_directly(world: World) -> None:
    data = os.urandom(4 * 1024 * 1024)
    result = world.call(world.internet.pi, "pi", "cat", data)
    _bit_exact(result, data, world)
    assert "hole punched to" in result.stderr.decode() and "the call is direct" in result.stderr.decode()
    pi_router = world.internet.router("pi").address
    assert world.servers["desktop"].wait_for_log(
        lambda line: f"hole punched: a caller at {pi_router}:" in line, timeout=5.0
    ), world.servers["desktop"].log
    # The relay carried the exchange only (a few dozen bytes), not the 8 MiB of the call.
    deadline = time.monotonic() + 10.0
    while not world.circuits_to("desktop") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert world.circuits_to("desktop") and max(world.circuits_to("desktop")) < 1024


def test_a_laptop_behind_a_symmetric_nat_falls_back_to_the_relay_and_then_does_not_try(
    world: World,
) -> None:
    before = len(world.circuits_to("desktop"))
    data = os.urandom(1024 * 1024)
    result = world.call(world.internet.laptop, "laptop-caller", "cat", data)
    _bit_exact(result, data, world)
    assert "hole punch to" in result.stderr.decode() and "failed: the call stays on relay" in (
        result.stderr.decode()
    )
    assert world.servers["desktop"].wait_for_log(lambda line: "the call stays relayed" in line, timeout=5.0)
    # The call's 2 MiB went through the relay, on the circuit the punch was tried on.
    deadline = time.monotonic() + 10.0
    while len(world.circuits_to("desktop")) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert world.circuits_to("desktop")[before:] and max(world.circuits_to("desktop")[before:]) > 2 * len(
        data
    )
    desktop_key = world.servers["desktop"].peer_id
    rests = (world.root / "laptop-caller" / "punch-failed").read_text()
    assert any(line.split()[0] == decode_peer_id(desktop_key).hex() for line in rests.splitlines()[1:]), rests
    again = world.call(world.internet.laptop, "laptop-caller", "cat", b"again")
    assert (again.returncode, again.stdout) == (0, b"again"), again.stderr.decode()
    assert "hole punch" not in again.stderr.decode()


def test_a_target_that_does_not_punch_is_never_punched_to(world: World) -> None:
    result = world.call(world.internet.pi, "pi", "laptop-cat", b"to the laptop")
    assert (result.returncode, result.stdout) == (0, b"to the laptop"), result.stderr.decode()
    assert "hole punch" not in result.stderr.decode()
    assert "hole punch" not in world.servers["laptop"].log


def test_a_caller_that_does_not_punch_never_asks(world: World) -> None:
    punched = world.servers["desktop"].log.count("hole punch")
    result = world.call(world.internet.pi, "pi-no-punch", "cat", b"relayed, as asked")
    assert (result.returncode, result.stdout) == (0, b"relayed, as asked"), result.stderr.decode()
    assert "hole punch" not in result.stderr.decode()
    assert world.servers["desktop"].log.count("hole punch") == punched


def test_the_trio_client_punches_too(world: World) -> None:
    def relayed(role: str) -> str:
        return f"{world.seed}/circuit/{world.servers[role].peer_id}"

    argv = [sys.executable, "-c", TRIO_CALLER, relayed("desktop"), relayed("laptop")]
    result = world.internet.pi.run(argv, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    desktop, laptop = result.stdout.decode().splitlines()
    assert desktop.startswith("cat hubnode: hole punched to") and "the call is direct" in desktop
    assert laptop == "laptop-cat no punch"
