"""The simulated internet of tests/netns.py behaves as the internet does for a home behind NAT.

Each check runs small real programs in the namespaces: a listener that answers with the
address it saw the connection or datagram come from, and a client that prints the answer.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.netns import Host, Internet, node

PORT = 9000
NODE_PORT = 4100
UDP_SOURCE_PORT = 5000
UNREACHABLE_TIMEOUT = 1.0  # a dropped SYN is never answered: the dial gives up after this

# Answers every TCP connection and UDP datagram on PORT (and PORT + 1, + 2 for UDP) with
# "HOST PORT" of its source, after saying "ready" on stdout.
REPORTER = f"""
import selectors, socket, sys
selector = selectors.DefaultSelector()
tcp = socket.create_server(("0.0.0.0", {PORT}))
selector.register(tcp, selectors.EVENT_READ)
for port in ({PORT}, {PORT} + 1, {PORT} + 2):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("0.0.0.0", port))
    selector.register(udp, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in selector.select():
        sock = key.fileobj
        if sock is tcp:
            conn, (host, port) = tcp.accept()
            conn.sendall(f"{{host}} {{port}}".encode())
            conn.close()
        else:
            _, (host, port) = sock.recvfrom(100)
            sock.sendto(f"{{host}} {{port}}".encode(), (host, port))
"""

TCP_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        print(s.recv(100).decode())
except OSError as exc:
    print(f"unreachable: {exc}", file=sys.stderr)
    sys.exit(1)
"""

# From one UDP socket bound to argv[2], to each port named after it on host argv[1]: a line each.
UDP_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.settimeout(5)
for port in sys.argv[3:]:
    s.sendto(b"?", (sys.argv[1], int(port)))
    print(s.recvfrom(100)[0].decode())
"""


@pytest.fixture(scope="module")
def reporters(internet: Internet) -> Iterator[dict[str, Host]]:
    """REPORTER running on the seed and on the desktop, by role."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for host in (internet.seed, internet.desktop):
            process = host.popen([sys.executable, "-c", REPORTER])
            processes.append(process)
            assert process.stdout is not None
            assert process.stdout.readline() == b"ready\n", process.stderr.read() if process.stderr else ""
        yield {"seed": internet.seed, "desktop": internet.desktop}
    finally:
        for process in processes:
            process.kill()
            process.wait()


def tcp(source: Host, host: str, timeout: float = 5.0) -> subprocess.CompletedProcess[bytes]:
    return source.run([sys.executable, "-c", TCP_CLIENT, host, str(PORT), str(timeout)], timeout=timeout + 10)


def udp(source: Host, host: str, ports: Sequence[int]) -> list[str]:
    result = source.run([sys.executable, "-c", UDP_CLIENT, host, str(UDP_SOURCE_PORT), *map(str, ports)])
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode().splitlines()


def test_a_home_reaches_the_internet_as_its_router(internet: Internet, reporters: dict[str, Host]) -> None:
    """The desktop dials the seed; the seed sees router1's WAN address, not 192.168.1.10."""
    result = tcp(internet.desktop, internet.seed.address)
    assert result.returncode == 0, result.stderr.decode()
    host, _port = result.stdout.decode().split()
    assert host == internet.router("desktop").address != internet.desktop.address


def test_the_internet_cannot_dial_into_a_home(internet: Internet, reporters: dict[str, Host]) -> None:
    """The seed cannot reach the desktop: not at its LAN address even with a route to it
    through router1 (the router drops what nobody inside asked for), nor at router1's WAN
    address (no port is forwarded)."""
    router = internet.router("desktop")
    lan = f"{internet.desktop.address.rsplit('.', 1)[0]}.0/24"
    route = ["ip", "route", "add", lan, "via", router.address]
    added = internet.seed.run(route)
    assert added.returncode == 0, added.stderr.decode()
    try:
        into_lan = tcp(internet.seed, internet.desktop.address, UNREACHABLE_TIMEOUT)
        assert into_lan.returncode == 1 and b"unreachable" in into_lan.stderr, into_lan
    finally:
        internet.seed.run(["ip", "route", "del", lan])
    at_router = tcp(internet.seed, router.address, UNREACHABLE_TIMEOUT)
    assert at_router.returncode == 1 and b"unreachable" in at_router.stderr, at_router
    # Inside the home the same listener is reachable: it was the router that refused.
    assert tcp(internet.router("desktop"), internet.desktop.address).returncode == 0


def test_a_cone_nat_keeps_one_mapping_for_every_destination(
    internet: Internet, reporters: dict[str, Host]
) -> None:
    """router1 (plain MASQUERADE) maps one UDP socket to one public port, the source port
    kept, whichever port it sends to: what hole punching needs."""
    seen = udp(internet.desktop, internet.seed.address, [PORT, PORT + 1, PORT + 2])
    assert seen == [f"{internet.router('desktop').address} {UDP_SOURCE_PORT}"] * 3


def test_a_symmetric_nat_maps_each_destination_apart(internet: Internet, reporters: dict[str, Host]) -> None:
    """router3 (`--random-fully`) gives the laptop's one socket a different public port for
    each destination port: what no hole punching gets through."""
    seen = udp(internet.laptop, internet.seed.address, [PORT, PORT + 1, PORT + 2])
    hosts = {line.split()[0] for line in seen}
    ports = [int(line.split()[1]) for line in seen]
    assert hosts == {internet.router("laptop").address}
    # Three independent random ports: equal by chance about once in 10^9 runs.
    assert len(set(ports)) > 1


def test_a_node_in_a_namespace_serves_a_caller_behind_nat(internet: Internet, tmp_path: Path) -> None:
    """`node` runs a real `hubnode serve` on the seed; the desktop calls it through router1."""
    toml = f'listen = "{internet.seed.address}:{NODE_PORT}"\n[services.cat]\ncommand = ["cat"]\n'
    with node(internet.seed, tmp_path / "seed", toml) as seed:
        assert seed.address == f"{internet.seed.address}:{NODE_PORT}"
        result = internet.desktop.hubnode(
            tmp_path / "desktop", "call", "--server", seed.target, "cat", input=b"hi"
        )
        assert (result.returncode, result.stdout) == (0, b"hi"), result.stderr.decode()
