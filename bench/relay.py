#!/usr/bin/env python
"""A call through a relay beside a call made directly: in the namespaces, else on loopback.

In the network namespaces of tests/netns.py (as root): a relay on relay1 (`[relay]`), the
desktop behind router1 serving `cat` and holding a reservation at it (forced private, the
relay pinned), and the same `cat` served directly by relay2, a public host; the caller is
the Pi, behind router2. Relayed: Pi -> its NAT -> relay1 -> the desktop's NAT -> desktop;
direct: Pi -> its NAT -> relay2. Without root: two `hubnode serve` on 127.0.0.1, the
target forced private behind the relay and also called on its own port, so the two ways
reach the very same node (no NAT, no links: what relaying costs in CPU and copies alone).
Interleaved runs (direct, relayed, direct, relayed, ...), medians:

  throughput   N MiB of random bytes through `cat` and back, one `hubnode call` process
               from start to exit (count and CRC-32 checked); the target: relayed >= 0.7x direct
  latency      a call of `cat` with empty stdin, process start to exit
  relay CPU    the relay process's CPU seconds (from /proc) over the relayed throughput
               runs, per MiB it carried (both directions of the circuit counted)

    .venv/bin/python bench/relay.py [--mib 256] [--runs 2] [--calls 10] [--loopback]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import HUBNODE, BenchError, bytecode_cache, hubnode_server, median, process_cpu  # noqa: E402

from tests import netns  # noqa: E402

MiB = 1024 * 1024
READY_TIMEOUT = 60.0
PORT = 4300  # in the namespaces
CAT = '[services.cat]\ncommand = ["cat"]\nmax_output = "64G"\ntimeout = 3600\n'
RELAY = '[relay]\nenabled = true\nmax_circuit_bytes = "64G"\n'


@dataclass
class Setup:
    """Where the bench calls from (`prefix`, `home`), the two ways, and the relay's pid."""

    where: str
    prefix: Sequence[str]
    home: Path
    ways: dict[str, str]  # way -> the --server argument
    relay_pid: int


def call(setup: Setup, server: str, source: Path | None, env: dict[str, str]) -> tuple[float, int, int]:
    """One `hubnode call --server SERVER cat` with `source` as stdin: seconds, bytes and CRC-32 out."""
    started = time.perf_counter()
    with open(source or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(
            [*setup.prefix, HUBNODE, "--home", str(setup.home), "call", "--server", server, "cat"],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None and proc.stderr is not None
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()))  # type: ignore[union-attr]
        reader.start()
        size, crc = 0, 0
        while chunk := proc.stdout.read(MiB):
            size += len(chunk)
            crc = zlib.crc32(chunk, crc)
        proc.wait()
        reader.join()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(
            f"hubnode call --server {server} exited {proc.returncode}: {b''.join(errors).decode()}"
        )
    return elapsed, size, crc


def wait_until_callable(setup: Setup, env: dict[str, str]) -> None:
    """Until both ways answer (the target holds its reservation), bounded in time."""
    deadline = time.monotonic() + READY_TIMEOUT
    for server in setup.ways.values():
        while True:
            try:
                call(setup, server, None, env)
                break
            except BenchError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


@contextlib.contextmanager
def on_loopback(env: dict[str, str]) -> Iterator[Setup]:
    listen = 'listen = "127.0.0.1:0"\n'
    with hubnode_server(listen + RELAY, env) as relay:
        private = f'{listen}reachability = "private"\nrelays = ["{relay.target}"]\n\n{CAT}'
        with hubnode_server(private, env) as target:
            peer = target.target.partition("@")[0]
            ways = {"direct": target.target, "relayed": f"{relay.target}/circuit/{peer}"}
            yield Setup(
                "loopback (127.0.0.1, no namespaces; both ways reach the same node)",
                (),
                target.client_home,
                ways,
                relay.pid,
            )


def peer_id(home: Path, env: dict[str, str]) -> str:
    result = subprocess.run([HUBNODE, "--home", str(home), "id"], capture_output=True, env=env, check=True)
    return result.stdout.decode().strip()


@dataclass
class Served:
    """The namespaces of tests/netns.py with hubnode nodes serving in them."""

    net: netns.Internet
    ids: dict[str, str]  # peer id by role
    relay_pid: int  # relay1's

    def direct(self, role: str) -> str:
        return f"{self.ids[role]}@{self.net[role].address}:{PORT}"

    @property
    def relayed_desktop(self) -> str:
        """The desktop's address through relay1."""
        return f"{self.direct('relay1')}/circuit/{self.ids['desktop']}"


@contextlib.contextmanager
def relayed_desktop(env: dict[str, str], work: Path, public: dict[str, str]) -> Iterator[Served]:
    """In the namespaces (homes in `work`): relay1 relaying, the desktop behind router1
    serving `cat` through it (forced private, relay1 pinned), and each public host of
    `public` serving that services.toml body; all stopped and removed at the end."""
    roles = ("relay1", "desktop", *public)
    ids = {}
    for role in roles:
        (work / role).mkdir()
        ids[role] = peer_id(work / role, env)
    netns.remove_stale()
    net = netns.build()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        served = Served(net, ids, 0)
        listen = f'listen = "0.0.0.0:{PORT}"\n'
        bodies = {"relay1": RELAY, **public}
        tomls = {
            role: f'{listen}advertise = ["{net[role].address}:{PORT}"]\n{bodies[role]}' for role in bodies
        }
        tomls["desktop"] = (
            f'{listen}reachability = "private"\nrelays = ["{served.direct("relay1")}"]\n\n{CAT}'
        )
        for role in roles:
            (work / role / "services.toml").write_text(tomls[role], encoding="utf-8")
            argv = [HUBNODE, "--home", str(work / role), "serve", "--no-lan"]
            procs.append(
                subprocess.Popen(
                    net[role].argv(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                )
            )
        served.relay_pid = procs[0].pid
        yield served
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        net.close()


@contextlib.contextmanager
def in_namespaces(env: dict[str, str], work: Path) -> Iterator[Setup]:
    with relayed_desktop(env, work, {"relay2": CAT}) as served:
        (work / "pi").mkdir()
        ways = {"direct": served.direct("relay2"), "relayed": served.relayed_desktop}
        where = "namespaces: Pi (NAT) -> relay1 -> desktop (NAT), against Pi (NAT) -> relay2"
        yield Setup(where, served.net.pi.argv([]), work / "pi", ways, served.relay_pid)


def random_input(path: Path, mib: int) -> int:
    """`mib` MiB of random bytes written to `path`: their CRC-32."""
    crc = 0
    with path.open("wb") as out:
        for _ in range(mib):
            block = os.urandom(MiB)
            crc = zlib.crc32(block, crc)
            out.write(block)
    return crc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB through cat per throughput run")
    parser.add_argument("--runs", type=int, default=2, help="throughput runs of each way")
    parser.add_argument("--calls", type=int, default=10, help="latency calls of each way")
    parser.add_argument("--loopback", action="store_true", help="on 127.0.0.1 even as root")
    options = parser.parse_args()
    size = options.mib * MiB
    namespaces = os.geteuid() == 0 and not options.loopback
    with (
        bytecode_cache() as env,
        tempfile.TemporaryDirectory(prefix="hubnet-bench-relay-") as work,
        in_namespaces(env, Path(work)) if namespaces else on_loopback(env) as setup,
    ):
        wait_until_callable(setup, env)
        source = Path(work) / "input"
        crc = random_input(source, options.mib)

        print(f"bench/relay.py: {setup.where}; {options.mib} MiB through cat")
        seconds: dict[str, list[float]] = {way: [] for way in setup.ways}
        relay_cpu = 0.0
        for _ in range(options.runs):
            for way, server in setup.ways.items():
                cpu_before = process_cpu(setup.relay_pid)
                elapsed, got, got_crc = call(setup, server, source, env)
                if way == "relayed":
                    relay_cpu += process_cpu(setup.relay_pid) - cpu_before
                if (got, got_crc) != (size, crc):
                    raise BenchError(f"{way}: {got} bytes with CRC {got_crc:08x}, sent {size} with {crc:08x}")
                seconds[way].append(elapsed)
        latency: dict[str, list[float]] = {way: [] for way in setup.ways}
        for _ in range(options.calls):
            for way, server in setup.ways.items():
                latency[way].append(call(setup, server, None, env)[0])

    rate = {way: options.mib / median(times) for way, times in seconds.items()}
    print(f"{'way':<10} {'MiB/s (median)':>15} {'call latency ms (median)':>26}")
    for way in setup.ways:
        print(f"{way:<10} {rate[way]:>15.1f} {median(latency[way]) * 1000:>26.1f}")
    ratio = rate["relayed"] / rate["direct"]
    print(f"throughput relayed/direct: {ratio:.2f} (target >= 0.70)")
    extra = (median(latency["relayed"]) - median(latency["direct"])) * 1000
    print(f"latency relayed - direct: {extra:+.1f} ms")
    carried = 2 * options.mib * options.runs  # stdin up and stdout down through the circuit
    per_mib = relay_cpu * 1000 / carried
    print(f"relay CPU: {per_mib:.2f} ms per MiB carried ({relay_cpu:.2f} s for {carried} MiB)")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench/relay.py: {exc}")
