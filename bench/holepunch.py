#!/usr/bin/env python
"""What hole punching changes for a relayed `hubnode call`: when it works, and when it fails.

In the network namespaces of tests/netns.py (root only): a relay on relay1, the desktop
behind router1 (a cone NAT) serving `cat` through it (forced private, the relay pinned);
callers the Pi behind router2 (a cone NAT: the punch gets through) and the laptop behind
router3 (a symmetric NAT: it fails and the call stays on the relay). Each caller calls the
desktop's relayed address with `punch = false` (relayed) and with `punch = true`; the
laptop's record of failed punches is removed before each of its calls, so that every one
of them tries (as a first call to a target does). Interleaved, medians:

  latency      a call of `cat` with empty stdin, process start to exit
  throughput   N MiB of random bytes through `cat` and back (count and CRC-32 checked)

so the Pi's punched-relayed difference is what a punch adds to a call (its exchange over
the relay and the simultaneous open) and gains (no relay in the path), and the laptop's is
what a failed punch costs a call.

    .venv/bin/python bench/holepunch.py [--mib 64] [--runs 2] [--calls 7]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import HUBNODE, BenchError, bytecode_cache, median  # noqa: E402
from relay import (  # noqa: E402
    Setup,
    call,
    random_input,
    relayed_desktop,
    wait_until_callable,
)

from hubnet.punching import PUNCH_FILE  # noqa: E402

MiB = 1024 * 1024
# (caller, punch): the four ways a call goes, by name
WAYS = {
    "pi relayed": ("pi", False),
    "pi punched": ("pi", True),
    "laptop relayed": ("laptop", False),
    "laptop failed punch": ("laptop", True),
}


@contextlib.contextmanager
def in_namespaces(env: dict[str, str], work: Path) -> Iterator[dict[str, Setup]]:
    """The topology of the module docstring: a Setup per way (its caller's home and netns)."""
    with relayed_desktop(env, work, {}) as served:
        setups = {}
        for way, (caller, punch) in WAYS.items():
            home = work / way.replace(" ", "-")
            home.mkdir()
            (home / "client.toml").write_text(f"punch = {str(punch).lower()}\n", encoding="utf-8")
            ways = {way: served.relayed_desktop}
            setups[way] = Setup(way, served.net[caller].argv([]), home, ways, served.relay_pid)
        yield setups


def check_the_ways(setups: dict[str, Setup], env: dict[str, str]) -> None:
    """Each way does what it is named for (`-v` says how a punch went), else BenchError."""
    said = {"pi punched": "the call is direct", "laptop failed punch": "the call stays on relay"}
    for way, setup in setups.items():
        (setup.home / PUNCH_FILE).unlink(missing_ok=True)
        server = setup.ways[way]
        argv = [*setup.prefix, HUBNODE, "--home", str(setup.home), "-v", "call", "--server", server, "cat"]
        result = subprocess.run(argv, input=b"", capture_output=True, env=env, check=False)
        stderr = result.stderr.decode()
        expected = said.get(way)
        as_named = expected in stderr if expected is not None else "hole punch" not in stderr
        if result.returncode != 0 or not as_named:
            raise BenchError(f"{way}: not as named: {stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=64, help="MiB through cat per throughput run")
    parser.add_argument("--runs", type=int, default=2, help="throughput runs of each way")
    parser.add_argument("--calls", type=int, default=7, help="latency calls of each way")
    options = parser.parse_args()
    if os.geteuid() != 0:  # said, not failed: `make bench` runs the others as any user
        print("bench/holepunch.py: skipped: network namespaces and NAT need root")
        return
    size = options.mib * MiB
    with (
        bytecode_cache() as env,
        tempfile.TemporaryDirectory(prefix="hubnet-bench-punch-") as work,
        in_namespaces(env, Path(work)) as setups,
    ):
        for setup in setups.values():
            wait_until_callable(setup, env)
        check_the_ways(setups, env)
        source = Path(work) / "input"
        crc = random_input(source, options.mib)
        latency: dict[str, list[float]] = {way: [] for way in WAYS}
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        for turn in range(max(options.calls, options.runs)):
            for way, setup in setups.items():
                if turn < options.calls:
                    (setup.home / PUNCH_FILE).unlink(missing_ok=True)  # every call tries, as a first one does
                    latency[way].append(call(setup, setup.ways[way], None, env)[0])
                if turn < options.runs:
                    (setup.home / PUNCH_FILE).unlink(missing_ok=True)
                    elapsed, got, got_crc = call(setup, setup.ways[way], source, env)
                    if (got, got_crc) != (size, crc):
                        raise BenchError(
                            f"{way}: {got} bytes with CRC {got_crc:08x}, sent {size} with {crc:08x}"
                        )
                    seconds[way].append(elapsed)

    print(f"bench/holepunch.py: namespaces, the desktop's relayed address; {options.mib} MiB through cat")
    print(f"{'way':<20} {'call latency ms (median)':>25} {'MiB/s (median)':>15}")
    for way in WAYS:
        print(f"{way:<20} {median(latency[way]) * 1000:>25.1f} {options.mib / median(seconds[way]):>15.1f}")
    for caller, what in (("pi", "punched"), ("laptop", "failed punch")):
        extra = (median(latency[f"{caller} {what}"]) - median(latency[f"{caller} relayed"])) * 1000
        ratio = median(seconds[f"{caller} relayed"]) / median(seconds[f"{caller} {what}"])
        print(f"{caller}: {what} - relayed: latency {extra:+.1f} ms, throughput {ratio:.2f}x")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"bench/holepunch.py: {exc}")
