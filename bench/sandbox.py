#!/usr/bin/env python
"""What the sandbox costs per job: the node's own runner, starting `true` to the end, N times.

Four ways, each timed from `Job.run` to its outcome (spawn, wait, reap, cgroup removed):

  bare          prlimit only (the runner with no confinement: the floor of any job)
  unsandboxed   a `sandbox = false` service: prlimit, and the job's cgroup where there are any
  sandboxed     every service by default: cgexec, bwrap (setpriv and unshare as root), prlimit
  no-cgroup     sandboxed, without the cgroup (what a node that cannot make cgroups pays)

    .venv/bin/python bench/sandbox.py [RUNS]

`sandbox_cost(runs)` returns the medians, for other benches (bench/abuse.py) to print.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import sys
import tempfile
import time

import trio

from hubnet.node.runner import Job, JobLimits
from hubnet.node.sandbox import Confinement, Host, Isolation, probe_host

LIMITS = JobLimits(timeout=30, max_output=1 << 20, cpu_seconds=10, memory_bytes=256 << 20)
TRUE = shutil.which("true") or "/bin/true"


class _Discard:
    async def send_stdout(self, data: bytes) -> None:
        pass

    async def send_stderr(self, data: bytes) -> None:
        pass


async def _one(host: Host | None, isolation: Isolation, name: str) -> float:
    workdir = tempfile.mkdtemp(prefix="hubnet-bench-")
    try:
        send, receive = trio.open_memory_channel[bytes](0)
        send.close()
        confinement = Confinement(host, isolation, workdir=workdir, name=name) if host else None
        started = time.perf_counter()
        outcome = await Job(
            [TRUE], env={"PATH": "/usr/bin:/bin"}, cwd=workdir, limits=LIMITS, confinement=confinement
        ).run(receive, _Discard())
        elapsed = time.perf_counter() - started
        if outcome.exit_code != 0:
            raise RuntimeError(f"{name}: {outcome}")
        return elapsed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def sandbox_cost(runs: int = 50) -> dict[str, tuple[float, float]]:
    """(median, fastest) milliseconds per job of `true`, by way of running it (see the module
    doc). The fastest is what the machine can do; the median what it did, busy as it was."""
    host = probe_host()
    ways: dict[str, tuple[Host | None, Isolation]] = {
        "bare": (None, Isolation(sandbox=False)),
        "unsandboxed": (host, Isolation(sandbox=False)),
        "sandboxed": (host, Isolation()),
        "no-cgroup": (dataclasses.replace(host, cgroups=None), Isolation()),
    }

    async def measure() -> dict[str, tuple[float, float]]:
        times: dict[str, list[float]] = {way: [] for way in ways}
        for i in range(runs):  # interleaved, so that a busy moment of the machine hits every way
            for way, (way_host, isolation) in ways.items():
                times[way].append(await _one(way_host, isolation, f"bench-{i}-{way}"))
        return {way: (statistics.median(t) * 1000, min(t) * 1000) for way, t in times.items()}

    return trio.run(measure)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    host = probe_host()
    user = host.job_user(Isolation())
    print(host.describe([user] if user else []))
    costs = sandbox_cost(runs)
    for way, (median, fastest) in costs.items():
        print(f"{way:<12} {median:6.1f} ms per job (median of {runs}), fastest {fastest:5.1f} ms")
    added = [costs["sandboxed"][i] - costs["unsandboxed"][i] for i in (0, 1)]
    print(f"the sandbox adds {added[0]:.1f} ms per job (median; {added[1]:.1f} ms fastest to fastest)")


if __name__ == "__main__":
    main()
