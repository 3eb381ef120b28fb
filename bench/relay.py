#!/usr/bin/env python
"""A call through a relay beside the same call made directly, on 127.0.0.1 (loopback).

Two real `hubnode serve` processes: a relay (`[relay]`) and a target that is forced
private (`reachability = "private"`, the relay pinned), so it holds a reservation there
and is reached through a circuit; it also listens on 127.0.0.1, so the same `cat` can be
called directly. Interleaved runs (direct, relayed, direct, relayed, ...), medians:

  throughput   N MiB of random bytes through `cat` and back, one `hubnode call` process
               from start to exit (count and CRC-32 checked); the target: relayed >= 0.7x direct
  latency      a call of `cat` with empty stdin, process start to exit
  relay CPU    the relay process's CPU seconds (from /proc) over the relayed throughput
               runs, per MiB it carried (both directions of the circuit counted)

This runs on loopback, not in network namespaces: no NAT, no link latency, so the ratios
show what relaying costs in CPU and copies, not in round trips across the internet.

    .venv/bin/python bench/relay.py [--mib 256] [--runs 2] [--calls 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HUBNODE, BenchError, Server, bytecode_cache, hubnode_server, median, process_cpu

MiB = 1024 * 1024
READY_TIMEOUT = 30.0
RELAY = 'listen = "127.0.0.1:0"\n\n[relay]\nenabled = true\nmax_circuit_bytes = "64G"\n'


def target_toml(relay: Server) -> str:
    return (
        f'listen = "127.0.0.1:0"\nreachability = "private"\nrelays = ["{relay.target}"]\n\n'
        '[services.cat]\ncommand = ["cat"]\nmax_output = "64G"\ntimeout = 3600\n'
    )


def call(home: Path, server: str, source: Path | None, env: dict[str, str]) -> tuple[float, int, int]:
    """One `hubnode call --server SERVER cat` with `source` as stdin: seconds, bytes and CRC-32 out."""
    started = time.perf_counter()
    with open(source or os.devnull, "rb") as stdin:
        proc = subprocess.Popen(
            [HUBNODE, "--home", str(home), "call", "--server", server, "cat"],
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


def wait_relayed(home: Path, relayed: str, env: dict[str, str]) -> None:
    """Until the target holds its reservation: a relayed call succeeds (bounded in time)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            call(home, relayed, None, env)
            return
        except BenchError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB through cat per throughput run")
    parser.add_argument("--runs", type=int, default=2, help="throughput runs of each way")
    parser.add_argument("--calls", type=int, default=10, help="latency calls of each way")
    options = parser.parse_args()
    size = options.mib * MiB
    with (
        bytecode_cache() as env,
        tempfile.TemporaryDirectory(prefix="hubnet-bench-relay-") as work,
        hubnode_server(RELAY, env) as relay,
        hubnode_server(target_toml(relay), env) as target,
    ):
        peer = target.target.partition("@")[0]
        ways = {"direct": target.target, "relayed": f"{relay.target}/circuit/{peer}"}
        home = target.client_home
        wait_relayed(home, ways["relayed"], env)
        source = Path(work) / "input"
        crc = 0
        with source.open("wb") as out:
            for _ in range(options.mib):
                block = os.urandom(MiB)
                crc = zlib.crc32(block, crc)
                out.write(block)

        print(f"bench/relay.py: loopback (127.0.0.1, no namespaces), {options.mib} MiB through cat")
        seconds: dict[str, list[float]] = {way: [] for way in ways}
        relay_cpu = 0.0
        for _ in range(options.runs):
            for way, server in ways.items():
                cpu_before = process_cpu(relay.pid)
                elapsed, got, got_crc = call(home, server, source, env)
                if way == "relayed":
                    relay_cpu += process_cpu(relay.pid) - cpu_before
                if (got, got_crc) != (size, crc):
                    raise BenchError(f"{way}: {got} bytes with CRC {got_crc:08x}, sent {size} with {crc:08x}")
                seconds[way].append(elapsed)
        latency: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(options.calls):
            for way, server in ways.items():
                latency[way].append(call(home, server, None, env)[0])

    rate = {way: options.mib / median(times) for way, times in seconds.items()}
    print(f"{'way':<10} {'MiB/s (median)':>15} {'call latency ms (median)':>26}")
    for way in ways:
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
