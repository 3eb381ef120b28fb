"""A simulated internet in network namespaces: public hosts on one bridge, homes behind NAT routers.

What it builds (role: namespace `hnt<pid>-<role>`, addresses):

    public  a bridge `br0` in a namespace of its own: the internet's one link (198.18.0.0/15)
      seed     198.18.1.10      relay1   198.18.2.11      relay2   198.18.3.12
      router1  WAN 198.18.11.1  LAN 192.168.1.1/24  -> desktop 192.168.1.10
      router2  WAN 198.18.12.1  LAN 192.168.2.1/24  -> pi      192.168.2.10
      router3  WAN 198.18.13.1  LAN 10.3.0.1/24     -> laptop  10.3.0.10   (symmetric NAT)

The public addresses are in 198.18.0.0/15 (benchmarking, never routed on the internet), each
host in a /24 of its own so that the DHT's per-network quotas see five networks, as on the
real internet; the DHT counts 198.18.0.0/15 as public, 192.168/16 and 10/8 as private.

Each router masquerades its LAN behind its WAN address and, as a home router does, drops
every packet from the WAN side that belongs to no connection its LAN opened (INPUT and
FORWARD): accepting them would let a hole-punching peer's first packet create a conntrack
entry that makes MASQUERADE move the port. Plain MASQUERADE keeps the source port when free
and maps endpoint-independently (a port-restricted cone NAT); router3 adds `--random-fully`,
a new port per destination (a symmetric NAT), where hole punching must fail.

Every veth and the bridge is created inside the namespaces, so nothing touches the host's
own network. The topology is removed by `Internet.close`, which the session fixture and an
atexit hook both call (a test that fails, a Ctrl-C); namespaces left by a test run that was
killed outright are removed by the next one (their creator's pid is in their names).
Needs root and `ip` and `iptables`: `require_internet` skips with the reason otherwise, or
fails under HUBNET_REQUIRE_ALL=1.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.harness import CALL_TIMEOUT, HUBNODE, Server, base_env
from tests.helpers import REQUIRE_ALL_VARIABLE, require_all, require_program

PUBLIC_PREFIX = 15  # 198.18.0.0/15: the one public link
LAN_PREFIX = 24
_PREFIX = "hnt"
_OURS = re.compile(rf"^{_PREFIX}(\d+)-")
COMMAND_TIMEOUT = 20.0


@dataclass(frozen=True)
class Host:
    """A machine: one network namespace with one interface, `eth0`, at `address`."""

    role: str
    netns: str
    address: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(
        self, argv: Sequence[str], *, input: bytes | None = b"", timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` inside this host's namespace to completion; never raises on a bad status."""
        return subprocess.run(
            self.argv(argv), input=input, capture_output=True, timeout=timeout, env=base_env(), check=False
        )

    def hubnode(
        self, home: Path, *args: str, input: bytes | None = b"", timeout: float = CALL_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """`hubnode --home HOME ARGS...` run to completion inside this host's namespace."""
        return self.run([*HUBNODE, "--home", str(home), *args], input=input, timeout=timeout)

    def popen(self, argv: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start `argv` inside this host's namespace (`ip netns exec` execs it: the pid is its own)."""
        return subprocess.Popen(
            self.argv(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=base_env(),
        )


@dataclass(frozen=True)
class Router(Host):
    """A home router: `address` is its WAN (public) side, `lan` its address on the LAN."""

    lan: str = ""
    symmetric: bool = False


@dataclass
class Internet:
    """The topology of the module docstring; `hosts` by role, `close` removes it all."""

    session: str
    hosts: dict[str, Host] = field(default_factory=dict)
    _closed: bool = False

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    @property
    def seed(self) -> Host:
        return self.hosts["seed"]

    @property
    def relay1(self) -> Host:
        return self.hosts["relay1"]

    @property
    def relay2(self) -> Host:
        return self.hosts["relay2"]

    @property
    def desktop(self) -> Host:
        return self.hosts["desktop"]

    @property
    def pi(self) -> Host:
        return self.hosts["pi"]

    @property
    def laptop(self) -> Host:
        return self.hosts["laptop"]

    def router(self, role: str) -> Router:
        """The router in front of `role` ("desktop" → router1), or the router named `role`."""
        name = {"desktop": "router1", "pi": "router2", "laptop": "router3"}.get(role, role)
        router = self.hosts[name]
        assert isinstance(router, Router)
        return router

    def netns(self, role: str) -> str:
        return f"{self.session}-{role}"

    def close(self) -> None:
        """Kill whatever still runs in the namespaces, then remove them; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _remove(self.netns(role) for role in [*self.hosts, "public"])


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _run(argv: Sequence[str], input: bytes | None = None) -> None:
    result = subprocess.run(
        list(argv), input=input, capture_output=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.decode().strip()}")


def _pids_in(netns: str) -> list[int]:
    result = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
    )
    return [int(word) for word in result.stdout.split()]


def _remove(names: Iterator[str] | Sequence[str]) -> None:
    """Kill the processes inside each namespace (a namespace lives as long as one does), delete it."""
    for netns in names:
        for pid in _pids_in(netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(
            ["ip", "netns", "delete", netns], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
        )


def remove_stale() -> None:
    """Remove the namespaces of test runs that died without cleaning up (their pid is gone)."""
    result = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, timeout=COMMAND_TIMEOUT, check=False
    )
    stale = []
    for line in result.stdout.decode().splitlines():
        name = line.split(" ", 1)[0]
        match = _OURS.match(name)
        if match and not Path(f"/proc/{match[1]}").exists():  # its creator is gone
            stale.append(name)
    _remove(stale)


def _add_netns(name: str) -> None:
    _ip("netns", "add", name)
    _ip("-n", name, "link", "set", "lo", "up")


def _firewall(wan: str, *, symmetric: bool) -> bytes:
    """iptables-restore input for a home router whose WAN interface is `wan`."""
    masquerade = "-j MASQUERADE --random-fully" if symmetric else "-j MASQUERADE"
    return f"""*nat
-A POSTROUTING -o {wan} {masquerade}
COMMIT
*filter
-A INPUT -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i {wan} -j DROP
-A FORWARD -i {wan} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i {wan} -j DROP
COMMIT
""".encode()


_PUBLIC_HOSTS = {"seed": "198.18.1.10", "relay1": "198.18.2.11", "relay2": "198.18.3.12"}
# router: (WAN, LAN gateway, host behind it, its address, symmetric)
_HOMES = {
    "router1": ("198.18.11.1", "192.168.1.1", "desktop", "192.168.1.10", False),
    "router2": ("198.18.12.1", "192.168.2.1", "pi", "192.168.2.10", False),
    "router3": ("198.18.13.1", "10.3.0.1", "laptop", "10.3.0.10", True),
}


def build(session: str | None = None) -> Internet:
    """Build the topology of the module docstring; on any failure, remove what was built."""
    internet = Internet(session or f"{_PREFIX}{os.getpid()}")
    public = internet.netns("public")
    try:
        _add_netns(public)
        _ip("-n", public, "link", "add", "br0", "type", "bridge")
        _ip("-n", public, "link", "set", "br0", "up")

        def plug(role: str, interface: str, address: str) -> None:
            """Connect namespace `role` to the bridge through its `interface` at `address`."""
            _ip(
                "-n",
                public,
                "link",
                "add",
                role,
                "type",
                "veth",
                "peer",
                "name",
                interface,
                "netns",
                internet.netns(role),
            )
            _ip("-n", public, "link", "set", role, "master", "br0", "up")
            _ip("-n", internet.netns(role), "addr", "add", f"{address}/{PUBLIC_PREFIX}", "dev", interface)
            _ip("-n", internet.netns(role), "link", "set", interface, "up")

        for role, address in _PUBLIC_HOSTS.items():
            internet.hosts[role] = Host(role, internet.netns(role), address)
            _add_netns(internet.netns(role))
            plug(role, "eth0", address)
        for role, (wan, gateway, behind, address, symmetric) in _HOMES.items():
            router_ns, home_ns = internet.netns(role), internet.netns(behind)
            internet.hosts[role] = Router(role, router_ns, wan, lan=gateway, symmetric=symmetric)
            internet.hosts[behind] = Host(behind, home_ns, address)
            _add_netns(router_ns)
            _add_netns(home_ns)
            plug(role, "wan", wan)
            _ip(
                "-n",
                router_ns,
                "link",
                "add",
                "lan",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                home_ns,
            )
            _ip("-n", router_ns, "addr", "add", f"{gateway}/{LAN_PREFIX}", "dev", "lan")
            _ip("-n", router_ns, "link", "set", "lan", "up")
            _ip("-n", home_ns, "addr", "add", f"{address}/{LAN_PREFIX}", "dev", "eth0")
            _ip("-n", home_ns, "link", "set", "eth0", "up")
            _ip("-n", home_ns, "route", "add", "default", "via", gateway)
            _run(["ip", "netns", "exec", router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            _run(
                ["ip", "netns", "exec", router_ns, "iptables-restore"], _firewall("wan", symmetric=symmetric)
            )
    except BaseException:
        internet.close()
        raise
    return internet


def require_internet() -> None:
    """Skip (or fail under HUBNET_REQUIRE_ALL=1) unless this process can build namespaces."""
    require_program("ip")
    require_program("iptables")
    if os.geteuid() != 0:
        reason = "network namespaces and NAT need root (run the tests as root)"
        if require_all():
            pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
        pytest.skip(reason)


@contextlib.contextmanager
def internet() -> Iterator[Internet]:
    """The topology, built and then removed also on failure, Ctrl-C or an exit that skips
    the `finally` (atexit)."""
    require_internet()
    remove_stale()
    started = time.monotonic()
    try:
        net = build()
    except RuntimeError as exc:  # root, yet no namespaces: a container without CAP_SYS_ADMIN, say
        reason = f"cannot build network namespaces here: {exc}"
        if require_all():
            pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
        pytest.skip(reason)
    atexit.register(net.close)
    try:
        print(f"\nnetns: built {len(net.hosts) + 1} namespaces in {time.monotonic() - started:.2f}s")
        yield net
    finally:
        net.close()
        atexit.unregister(net.close)


def node(host: Host, home: Path, services_toml: str, *serve_args: str) -> Server:
    """A `hubnode serve` inside `host`'s namespace with its own HUBNET home `home`, not yet
    started: use it as a context manager; `kill()` ends it as a crash would."""
    return Server(home, services_toml, serve_args=("--no-lan", *serve_args), prefix=host.argv([]))


@dataclass
class Nodes:
    """The `hubnode serve`s a namespace test runs: the internet they are in, the root of their
    homes, the port every one of them listens on, and each by role (`seed` among them)."""

    internet: Internet
    root: Path
    port: int
    servers: dict[str, Server] = field(default_factory=dict)

    @property
    def seed(self) -> str:
        """The seed node, as PEER_ID@HOST:PORT."""
        return f"{self.servers['seed'].peer_id}@{self.internet.seed.address}:{self.port}"

    def stop(self) -> list[str]:
        """Stop every node; the problems their logs show, each named by its role."""
        return [f"{role}: {p}" for role, server in self.servers.items() for p in server.stop()]

    def logs(self) -> dict[str, str]:
        return {role: server.log for role, server in self.servers.items()}


def start_relays(
    internet: Internet, root: Path, roles: Sequence[str], port: int, servers: dict[str, Server]
) -> None:
    """Start a public node that relays (`[relay]`) on `port` in each host of `roles`, with its
    home in `root`, into `servers` (by role, so that the caller stops what started): the
    first the DHT's seed, the others joined through it."""
    for role in roles:
        host = internet[role]
        toml = (
            f'listen = "0.0.0.0:{port}"\nadvertise = ["{host.address}:{port}"]\n\n[relay]\nenabled = true\n'
        )
        first = servers.get(roles[0])
        joined = (
            [] if first is None else ["--bootstrap", f"{first.peer_id}@{internet[roles[0]].address}:{port}"]
        )
        servers[role] = node(host, root / role, toml, *joined).start()
