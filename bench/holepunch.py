#!/usr/bin/env python
"""What hole punching buys: a relayed stream against the direct one it was upgraded to (issue 11).

In the network namespaces of tests/netns.py (root only): the seed runs a splice that joins
two TCP connections byte for byte, standing in for a relay (a Python thread pair, as cheap
as a relay gets in this language); the desktop (behind router1) and the Pi (behind
router2, both cone NATs) connect to it and punch a direct connection with
`node.holepunch.punch`. Over the relayed stream and then over the direct one, interleaved
in rounds, the desktop measures:

  round trip   the median of ROUND_TRIPS 1-byte ping-pongs
  throughput   MIB MiB sent and acknowledged

and it times the punch itself (Connect, Connect, Sync and the simultaneous open), and the
fallback between the desktop and the laptop (behind router3, a symmetric NAT): one attempt
that fails, after which the relayed stream carries on. The relayed figures are the
baseline: the ratios say what the upgrade changes.

Usage: python bench/holepunch.py [--rounds N] [--mib M]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import netns  # noqa: E402
from tests.e2e.test_holepunch import SPLICE, SPLICE_PORT  # noqa: E402

ROUND_TRIPS = 200

# argv: role, splice host, observed IP, mib, rounds, attempts. The initiator prints one JSON
# line of its figures; the responder echoes pings and acknowledges bulk data.
PEER = """
import json, sys, time, trio
from hubnet.node.holepunch import Role, punch

role, splice, observed, mib, rounds, attempts = sys.argv[1:]
MIB, ROUNDS, PINGS = int(mib), int(rounds), ROUND_TRIPS
CHUNK = bytes(65536)

async def exactly(stream, n):
    got = 0
    while got < n:
        data = await stream.receive_some(min(65536, n - got))
        if not data:
            raise EOFError
        got += len(data)

async def measure(stream):
    times = []
    for _ in range(PINGS):
        start = time.perf_counter()
        await stream.send_all(b"p")
        await exactly(stream, 1)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(MIB * 16):
        await stream.send_all(CHUNK)
    await exactly(stream, 1)
    return sorted(times)[PINGS // 2], MIB / (time.perf_counter() - start)

async def serve(stream):
    for _ in range(PINGS):
        await exactly(stream, 1)
        await stream.send_all(b"p")
    await exactly(stream, MIB << 20)
    await stream.send_all(b"k")

async def main():
    relayed = await trio.open_tcp_stream(splice, SPLICE_PORT)
    start = time.perf_counter()
    direct = await punch(relayed, Role(role), observed, attempts=int(attempts))
    punched = time.perf_counter() - start
    if role == "responder":
        for _ in range(ROUNDS):
            await serve(relayed)
            if direct is not None:
                await serve(direct)
        return
    figures = {"punch_s": punched, "direct": direct is not None, "relayed": [], "punched": []}
    for _ in range(ROUNDS):
        figures["relayed"].append(await measure(relayed))
        if direct is not None:
            figures["punched"].append(await measure(direct))
    print(json.dumps(figures))

trio.run(main)
""".replace("SPLICE_PORT", str(SPLICE_PORT)).replace("ROUND_TRIPS", str(ROUND_TRIPS))


def run_pair(
    net: netns.Internet, initiator: str, responder: str, *, mib: int, rounds: int, attempts: int
) -> dict:
    processes = []
    for role, me in (("initiator", initiator), ("responder", responder)):
        argv = [
            sys.executable,
            "-c",
            PEER,
            role,
            net.seed.address,
            net.router(me).address,
            str(mib),
            str(rounds),
            str(attempts),
        ]
        processes.append(net[me].popen(argv))
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise SystemExit(f"a peer failed: {err.decode()}")
        outputs.append(out.decode())
    figures: dict = json.loads(outputs[0])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--mib", type=int, default=64, help="MiB per throughput run (default 64)")
    options = parser.parse_args()
    if os.geteuid() != 0:  # said, not failed: `make bench` runs the others as any user
        print("bench/holepunch.py: skipped: network namespaces and NAT need root")
        return
    netns.remove_stale()
    net = netns.build()
    splice = net.seed.popen([sys.executable, "-c", SPLICE])
    try:
        assert splice.stdout is not None and splice.stdout.readline() == b"ready\n"
        cone = run_pair(net, "desktop", "pi", mib=options.mib, rounds=options.rounds, attempts=3)
        symmetric = run_pair(net, "desktop", "laptop", mib=1, rounds=1, attempts=1)
    finally:
        splice.kill()
        splice.wait()
        net.close()
    if not cone["direct"]:
        raise SystemExit("the punch between two cone NATs failed")
    if symmetric["direct"]:
        raise SystemExit("a punch through a symmetric NAT succeeded: the topology is not what it claims")
    relayed_rtt = statistics.median(r[0] for r in cone["relayed"]) * 1e3
    direct_rtt = statistics.median(r[0] for r in cone["punched"]) * 1e3
    relayed_mibs = statistics.median(r[1] for r in cone["relayed"])
    direct_mibs = statistics.median(r[1] for r in cone["punched"])
    rounds, mib = options.rounds, options.mib
    print(f"hole punching in namespaces, {rounds} interleaved rounds, {mib} MiB, {ROUND_TRIPS} pings")
    print(f"  punch, two cone NATs:       {cone['punch_s'] * 1e3:8.1f} ms to a direct connection")
    print(f"  fallback, symmetric NAT:    {symmetric['punch_s'] * 1e3:8.1f} ms (1 attempt) then relayed")
    print(
        f"  round trip   relayed {relayed_rtt:7.3f} ms   direct {direct_rtt:7.3f} ms   "
        f"direct/relayed {direct_rtt / relayed_rtt:5.2f}x"
    )
    print(
        f"  throughput   relayed {relayed_mibs:7.1f} MiB/s direct {direct_mibs:7.1f} MiB/s "
        f"direct/relayed {direct_mibs / relayed_mibs:5.2f}x"
    )


if __name__ == "__main__":
    main()
