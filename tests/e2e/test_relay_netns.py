"""Issue 11's story in the simulated internet (tests/netns.py): a desktop behind a NAT serves
through relays it finds in the DHT, and a Pi behind another NAT calls it by name.

The seed and both relays are public and relay (`[relay]`); the desktop finds by dial-backs
that it is private, looks the relays up in the DHT, holds reservations with two of them
and publishes its offer with those relayed addresses only. The Pi's `hubnode call cat`
goes through a relay to the desktop, 10 MiB come back bit-exact, and when a relay the
desktop holds is stopped, the desktop moves to the third and the next call succeeds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.netns import Internet, Nodes, node, start_relays

PORT = 4200
RESERVED_TIMEOUT = 60.0  # dial-backs (settling private), a relay lookup, two reservations
MOVE_TIMEOUT = 30.0  # the story's bound
_RESERVED = re.compile(r"reserved at relay ([a-z2-7]{8})@")
RELAYS = ("seed", "relay1", "relay2")


DESKTOP = f'listen = "0.0.0.0:{PORT}"\n\n[services.cat]\ncommand = ["cat"]\n'


class World(Nodes):
    def call_from_pi(self, data: bytes) -> subprocess.CompletedProcess[bytes]:
        return self.internet.pi.hubnode(self.root / "pi", "call", "-b", self.seed, "cat", input=data)

    def held(self) -> list[str]:
        """The roles of the relays the desktop holds now, by its log (newest state)."""
        held: dict[str, bool] = {}
        fingerprints = {self.servers[role].peer_id[:8]: role for role in RELAYS}
        for line in self.servers["desktop"].log.splitlines():
            if match := _RESERVED.search(line):
                held[fingerprints[match[1]]] = True
            for fp, role in fingerprints.items():
                if f"relay {fp}@" in line and "trying another" in line:
                    held[role] = False
        return [role for role, holding in held.items() if holding]


@pytest.fixture(scope="module")
def world(internet: Internet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("relay-netns")
    world = World(internet, root, PORT)
    servers = world.servers
    try:
        start_relays(internet, root, RELAYS, PORT, servers)
        joined = ["--bootstrap", world.seed]
        servers["desktop"] = node(internet.desktop, root / "desktop", DESKTOP, *joined).start()
        # The Pi's calls stay on the relay (punching is tests/e2e/test_punch_calls_netns.py's).
        (root / "pi").mkdir()
        (root / "pi" / "client.toml").write_text("punch = false\n")
        deadline = time.monotonic() + RESERVED_TIMEOUT
        while len(world.held()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(world.held()) == 2, servers["desktop"].log
        yield world
    finally:
        problems = world.stop()
    assert not problems, (problems, world.logs())


def _call_until_it_works(world: World, data: bytes, timeout: float) -> subprocess.CompletedProcess[bytes]:
    deadline = time.monotonic() + timeout
    result = world.call_from_pi(data)
    while result.returncode != 0 and time.monotonic() < deadline:  # its offer is on its way
        time.sleep(1.0)
        result = world.call_from_pi(data)
    return result


def test_the_desktop_says_it_is_private_and_which_relays_it_holds(world: World) -> None:
    result = world.internet.desktop.hubnode(world.root / "desktop", "status", "--json", input=None)
    assert result.returncode == 0, result.stderr.decode()
    status = json.loads(result.stdout)
    assert status["reachability"] == "private"
    held = {world.servers[role].peer_id for role in world.held()}
    assert {relay.partition("@")[0] for relay in status["relays"]} == held


def test_the_pi_reaches_the_desktop_by_name_through_a_relay_10_mib_bit_exact(world: World) -> None:
    data = os.urandom(10 * 1024 * 1024)
    result = _call_until_it_works(world, data, MOVE_TIMEOUT)
    assert result.returncode == 0, (result.stderr.decode(), world.servers["desktop"].log)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()
    assert "job" in world.servers["desktop"].log  # it ran on the desktop


def test_stopping_a_relay_in_use_moves_the_desktop_and_the_next_call_succeeds(world: World) -> None:
    in_use = [role for role in world.held() if role != "seed"]  # the seed holds the DHT together
    stopped = in_use[0]
    assert not world.servers[stopped].stop()
    deadline = time.monotonic() + MOVE_TIMEOUT
    while (len(world.held()) < 2 or stopped in world.held()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(world.held()) == 2 and stopped not in world.held(), world.servers["desktop"].log
    result = _call_until_it_works(world, b"after the relay stopped", MOVE_TIMEOUT)
    assert (result.returncode, result.stdout) == (0, b"after the relay stopped"), result.stderr.decode()
