#!/usr/bin/env python
"""Many jobs and many connections on one node at once: errors, wall time, the node's memory.

Starts a real `hubnode serve` (temporary home, sandbox as the node has it) with a `sleep`
service (`sleep 1`) and room for the load (`max_jobs`, `max_queued`, the service's
`max_concurrent`, `max_connections`), then, from this one process, with the Trio client
API (`hubnet.trio_client.Client`, one task per call, all started at once):

  idle   M connections (default 1000) that finish the Noise handshake and then say nothing,
         all held at once: how many the node really holds (its open descriptors), its
         resident memory before and while they are held, and the difference per connection
  jobs   N concurrent calls of `sleep` (default 500): how many failed (target 0), the wall
         time from the first call to the last exit (a job alone takes 1 s), and the node's
         resident memory at rest, at its peak (VmHWM) and after

The node's memory comes from /proc/PID/status, its CPU (with the jobs it reaped) from
/proc/PID/stat: on a machine shared with other work, the wall time says less than the CPU
each call costs. The idle connections come first, on the fresh node: after the jobs its
heap has room to spare and they would seem to cost nothing. The peak (VmHWM) covers the
idle connections too, which cost less than the jobs. Each loop is bounded in count and time.

    .venv/bin/python bench/concurrency.py [--jobs 500] [--idle 1000]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BenchError, Server, bytecode_cache, hubnode_server, median, process_cpu

from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call
from hubnet.trio_client import Client

_CALL_TIMEOUT = 120.0  # seconds for any one call, queueing included
_HOLD_TIMEOUT = 120.0  # seconds to open every idle connection
_SETTLE = 1.0  # seconds for the node to finish with the jobs before "after" is read


def services_toml(jobs: int, idle: int) -> str:
    return f"""listen = "127.0.0.1:0"
max_jobs = {jobs}
max_queued = {jobs}
max_connections = {max(jobs, idle) * 2}

[services.sleep]
command = ["sleep", "1"]
description = "sleeps for a second"
timeout = 60
max_concurrent = {jobs}
"""


def open_files(pid: int) -> int:
    """How many file descriptors process `pid` holds (each connection one socket)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of process `pid`, in KiB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


async def run_jobs(server: Server, client: Client, count: int) -> tuple[float, list[str], list[float]]:
    """(wall seconds, one line per failed call, each call's seconds) of `count` calls at once."""
    target = Target.parse(server.target)
    call = Call(service_id_for_name("sleep"), ())
    errors: list[str] = []
    seconds: list[float] = []

    async def one() -> None:
        start = trio.current_time()
        try:
            done = await client.call(target, call, timeout=_CALL_TIMEOUT)
            if done.result.exit.exit_code != 0:
                errors.append(f"exit {done.result.exit.exit_code} {done.result.exit.signal}")
        except Exception as exc:  # every failure is counted and shown, none stops the others
            errors.append(f"{type(exc).__name__}: {exc}")
        seconds.append(trio.current_time() - start)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return trio.current_time() - start, errors, seconds


async def hold_idle(server: Server, identity: Identity, count: int) -> tuple[int, int, int, list[str]]:
    """Open `count` connections that finish the handshake and say nothing; with all of them
    open: (the node's VmRSS in KiB, how many are open here, how many the node holds (its
    descriptors beyond those it held before), the failures)."""
    files_before = open_files(server.pid)
    target = Target.parse(server.target)
    assert target.peer is not None
    address = target.direct
    streams: list[SecureStream] = []
    errors: list[str] = []
    limit = trio.CapacityLimiter(64)  # handshakes in flight at once, as a busy caller would

    async def one() -> None:
        async with limit:
            try:
                transport = await trio.open_tcp_stream(address.host, address.port)
                streams.append(await connect_secure(transport, identity, target.peer))
            except (OSError, trio.BrokenResourceError, Exception) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    with trio.fail_after(_HOLD_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    await trio.sleep(0.5)  # the node has read what it will: every connection now waits for a request
    rss = memory_kib(server.pid)["VmRSS"]
    held, node_held = len(streams), open_files(server.pid) - files_before
    for stream in streams:
        await stream.aclose()
    return rss, held, node_held, errors


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise BenchError(f"needs {needed} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=500, help="concurrent calls of `sleep 1` (default 500)")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections held at once (default 1000)")
    args = parser.parse_args()
    if args.jobs < 1 or args.idle < 1:
        parser.error("--jobs and --idle must be at least 1")

    identity = Identity.generate()
    try:
        _raise_open_files(2 * max(args.jobs, args.idle) + 256)
        with bytecode_cache() as env, hubnode_server(services_toml(args.jobs, args.idle), env) as server:
            time.sleep(1.0)  # the node's start-up work (DHT, offers) settles
            # Idle connections first, on the fresh node: after 500 jobs its heap has room to
            # spare, and connections held then cost it no new memory at all.
            fresh = memory_kib(server.pid)
            held_rss, held, node_held, idle_errors = trio.run(hold_idle, server, identity, args.idle)
            time.sleep(_SETTLE)
            rest = memory_kib(server.pid)
            client = Client(identity, connect_timeout=_CALL_TIMEOUT)
            node_cpu, own_cpu = process_cpu(server.pid), time.process_time()
            wall, errors, seconds = trio.run(run_jobs, server, client, args.jobs)
            time.sleep(_SETTLE)
            node_cpu, own_cpu = process_cpu(server.pid) - node_cpu, time.process_time() - own_cpu
            after_jobs = memory_kib(server.pid)
    except BenchError as exc:
        print(f"concurrency: FAILED: {exc}", file=sys.stderr)
        return 1

    mib = 1024
    print(f"concurrency: one `hubnode serve` on 127.0.0.1, one client process ({sys.executable})")
    print()
    print(f"{args.jobs} concurrent calls of `sleep 1` (Trio client, one task per call):")
    print(f"  errors                {len(errors)} of {args.jobs}   (target 0)")
    for line in sorted(set(errors))[:5]:
        print(f"    {errors.count(line)} x {line}")
    print(f"  wall, all calls       {wall:.2f} s   (one job alone: 1 s; ratio {wall:.2f}x)")
    print(f"  per call              median {median(seconds):.2f} s, slowest {max(seconds):.2f} s")
    print(
        f"  CPU per call          node {node_cpu / args.jobs * 1000:.1f} ms (its jobs and sandboxes "
        f"included), client {own_cpu / args.jobs * 1000:.1f} ms"
    )
    print(f"  node RSS at rest      {rest['VmRSS'] / mib:.1f} MiB")
    print(f"  node RSS peak         {after_jobs['VmHWM'] / mib:.1f} MiB   (VmHWM, the jobs included)")
    print(f"  node RSS after        {after_jobs['VmRSS'] / mib:.1f} MiB")
    per_job = (after_jobs["VmHWM"] - rest["VmRSS"]) / args.jobs
    print(f"  peak over rest, per job  {per_job:.1f} KiB")
    print()
    print(f"{args.idle} idle connections (handshake done, then silence), held at once:")
    print(f"  opened                {held} of {args.idle}; failures {len(idle_errors)}")
    print(f"  held by the node      {node_held} (its open descriptors beyond those before)")
    for line in sorted(set(idle_errors))[:5]:
        print(f"    {idle_errors.count(line)} x {line}")
    print(f"  node RSS before       {fresh['VmRSS'] / mib:.1f} MiB   (a fresh node, before the jobs above)")
    print(f"  node RSS while held   {held_rss / mib:.1f} MiB")
    per = (held_rss - fresh["VmRSS"]) / max(node_held, 1)
    print(f"  RSS per idle connection  {per:.1f} KiB")
    print(f"  node RSS after close  {rest['VmRSS'] / mib:.1f} MiB")
    ok = not errors and held == node_held == args.idle and math.isfinite(per)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
