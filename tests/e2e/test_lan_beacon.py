"""LAN discovery end to end: real DhtNodes with `run_beacon` and no bootstrap find each other.

Every node is its own Python process inside a network namespace this module creates (and
deletes again, pass or fail), so the host's interfaces, routes and beacon port are never
touched: one namespace with only `lo` up (several nodes on one host), three namespaces on a
bridge that lives in a fourth (a LAN), and one with no interface up (no multicast at all).
This needs root and `ip`; without them the tests skip, saying why (or fail under
HUBNET_REQUIRE_ALL=1). Every wait is bounded: a node gives up after NODE_TIMEOUT seconds.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hubnet.dht.beacon import BEACON_GROUP, BEACON_PORT
from tests.helpers import REQUIRE_ALL_VARIABLE, require_all, require_program

ROOT = Path(__file__).resolve().parents[2]
NODE_TIMEOUT = 15.0  # seconds a node waits for its peers before reporting what it has
PROCESS_TIMEOUT = NODE_TIMEOUT + 20.0  # plus interpreter start-up on a slow, loaded machine
BEACON_EVERY = 1.0  # a short interval, so a beacon missed during start-up is repeated soon
IP_TIMEOUT = 10.0

# One node: bind the DHT, serve, run the beacon (if deaf, never act on one), wait until it
# knows `expect` peers (or the beacon gave up, or the time is over), print that as JSON, exit.
NODE_SCRIPT = """
import json, logging, sys
import trio
from hubnet.dht.beacon import run_beacon
from hubnet.dht.node import DhtNode
from hubnet.dht.transport import UdpTransport
from hubnet.identity.keys import Identity

async def main(host, port, expect, timeout, interval, deaf):
    if deaf:
        # Stands in for a node whose beacon goes out but whose pings never do (a one-way
        # firewall, say): the others must reach it by themselves.
        import hubnet.dht.beacon
        hubnet.dht.beacon.BeaconState.receive = lambda self, data, source_ip, *, now: None
    node = DhtNode(Identity.generate(), await UdpTransport.bind(host, port))
    stopped = trio.Event()

    async def beacon(task_status=trio.TASK_STATUS_IGNORED):
        await run_beacon(node, interval=interval, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        await nursery.start(beacon)
        with trio.move_on_after(timeout):
            while len(node.protocol.table) < expect and not stopped.is_set():
                await trio.sleep(0.05)
        # Keep answering a little longer: a peer that heard from us without a token proves
        # our address by pinging us back, and needs our answer after we have all we need.
        await trio.sleep(2.0)
        print(json.dumps({
            "key": node.identity.public_key.hex(),
            "address": list(node.transport.local_address),
            "peers": [[c.public_key.hex(), c.ip, c.port] for c in node.protocol.table.contacts()],
            "beacon_stopped": stopped.is_set(),
        }), flush=True)
        nursery.cancel_scope.cancel()

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
trio.run(main, *json.loads(sys.argv[1]))
"""

# Hostile neighbour: multicast junk to the beacon group on lo, 20 times a second, for at most
# `seconds` (the test kills it sooner); says so once the first round is out.
SPRAY_SCRIPT = """
import json, socket, sys, time
from hubnet.dht.beacon import BEACON_MAGIC, BEACON_VERSION, MAX_BEACON_LEN
group, port, seconds = json.loads(sys.argv[1])
junk = [
    b"", b"garbage", BEACON_MAGIC, BEACON_MAGIC + bytes([BEACON_VERSION]) + b"\\xc1" * 40,
    BEACON_MAGIC + bytes([99]) + b"x" * 100, b"\\xff" * (MAX_BEACON_LEN + 1), b"\\x00" * 9000,
]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
sprayed = False
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for datagram in junk:
        sock.sendto(datagram, (group, port))
    if not sprayed:
        print("spraying", flush=True)
        sprayed = True
    time.sleep(0.05)
"""


def _unavailable(reason: str) -> None:
    if require_all():
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


def ip(*args: str) -> None:
    """Run `ip ARGS`, failing the test with ip's own message if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"ip {' '.join(args)}: {done.stderr.strip()}", pytrace=False)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """A factory of fresh network namespaces, every one deleted again after the test."""
    require_program("ip")
    if os.geteuid() != 0:
        _unavailable(f"network namespaces need root (running as uid {os.geteuid()})")
    created: list[str] = []

    def make(label: str) -> str:
        name = f"hubnet-{os.getpid()}-{label}"
        done = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
        if done.returncode != 0:
            _unavailable(f"cannot create a network namespace: {done.stderr.strip()}")
        created.append(name)
        return name

    try:
        yield make
    finally:
        # Deleting a namespace also deletes the bridge and veth ends inside it.
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_TIMEOUT, check=False)


@dataclass(frozen=True)
class Spec:
    """One node to run: where, what it binds, the IP others should reach it at, and whether it is deaf."""

    namespace: str
    host: str
    port: int
    reached_at: str
    deaf: bool = False


def run_in(namespace: str, script: str, *args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c", script, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def run_nodes(specs: list[Spec], expect: int) -> list[tuple[dict[str, Any], str]]:
    """Start every node at once; each one's JSON report and stderr, in the order of `specs`."""
    processes = [
        run_in(s.namespace, NODE_SCRIPT, s.host, s.port, expect, NODE_TIMEOUT, BEACON_EVERY, s.deaf)
        for s in specs
    ]
    try:
        results = []
        for process in processes:
            out, err = process.communicate(timeout=PROCESS_TIMEOUT)
            assert process.returncode == 0, f"node exited with {process.returncode}:\n{err}"
            results.append((json.loads(out.strip().splitlines()[-1]), err))
        return results
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=IP_TIMEOUT)


def assert_everyone_found_everyone(specs: list[Spec], expect: int) -> None:
    """Each node's table holds exactly the others, at their `reached_at` IP and DHT port."""
    reports = [report for report, _ in run_nodes(specs, expect)]
    assert [r["address"][0] for r in reports] == [s.host for s in specs]
    everyone = {(r["key"], s.reached_at, r["address"][1]) for r, s in zip(reports, specs, strict=True)}
    assert len(everyone) == len(specs) == expect + 1
    for report in reports:
        others = {peer for peer in everyone if peer[0] != report["key"]}
        assert {tuple(peer) for peer in report["peers"]} == others, report


def test_nodes_on_one_host_find_each_other_over_loopback(netns: Callable[[str], str]) -> None:
    host = netns("lo")
    ip("-n", host, "link", "set", "lo", "up")
    spray = run_in(host, SPRAY_SCRIPT, BEACON_GROUP, BEACON_PORT, PROCESS_TIMEOUT)
    try:
        assert spray.stdout is not None
        ready, _, _ = select.select([spray.stdout], [], [], PROCESS_TIMEOUT)
        assert ready and spray.stdout.readline() == "spraying\n", "the junk sprayer did not start"
        # Three nodes on 127.0.0.1 share the beacon port (SO_REUSEADDR) and must shrug off
        # the junk sprayed at them all along.
        assert_everyone_found_everyone([Spec(host, "127.0.0.1", 0, "127.0.0.1")] * 3, expect=2)
        assert spray.poll() is None, "the junk sprayer stopped before the nodes were done"
    finally:
        if spray.poll() is None:
            spray.kill()
            spray.wait(timeout=IP_TIMEOUT)


def test_nodes_in_three_namespaces_find_each_other_over_a_bridge(netns: Callable[[str], str]) -> None:
    lan = netns("lan")
    ip("-n", lan, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    ip("-n", lan, "link", "set", "br0", "up")
    hosts = []
    for i in (1, 2, 3):
        ns = netns(f"n{i}")
        ip("-n", lan, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", lan, "link", "set", f"port{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"10.77.0.{i}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")  # traffic between two nodes of one host goes via lo
        hosts.append(ns)
    # A node on 0.0.0.0 joins the group on whatever interface the route names.
    ip("-n", hosts[2], "route", "add", "224.0.0.0/4", "dev", "eth0")
    specs = [
        # Two nodes on one host on a real interface: they hear each other only through
        # IP_MULTICAST_LOOP, since nothing else tells them about each other.
        Spec(hosts[0], "10.77.0.1", 7070, "10.77.0.1"),
        Spec(hosts[0], "10.77.0.1", 7072, "10.77.0.1"),
        Spec(hosts[1], "10.77.0.2", 7070, "10.77.0.2"),
        # On 0.0.0.0, and deaf: it announces ("0.0.0.0", 7070) and pings nobody, so the
        # others find it only by pinging the beacon's source address with the record's port.
        Spec(hosts[2], "0.0.0.0", 7070, "10.77.0.3", deaf=True),
    ]
    assert_everyone_found_everyone(specs, expect=3)


def test_without_multicast_the_beacon_warns_and_returns_without_harming_the_node(
    netns: Callable[[str], str],
) -> None:
    isolated = netns("dark")  # not even lo is up: no route, so joining the group fails
    [(report, err)] = run_nodes([Spec(isolated, "0.0.0.0", 0, "")], expect=1)
    assert report["beacon_stopped"] and report["peers"] == []
    assert "LAN discovery off" in err and "WARNING" in err
