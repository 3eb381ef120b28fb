"""node.runner with real processes. Nothing here depends on machine speed: real-clock tests use
timeouts that never fire, and the one MockClock test keeps the clock still until the job is set up."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from hubnet.node.runner import Job, JobLimits, JobOutcome, SpawnError

ROOMY = JobLimits(timeout=60, max_output=64 << 20)  # never fires in these tests
SH = shutil.which("sh") or "/bin/sh"
# Prints "<leader pid> <background grandchild pid>", then both sleep: the group to be killed.
SLEEPERS = [SH, "-c", "sleep 1000 & echo $$ $!; wait"]
BASE_ENV = {"PATH": "/usr/bin:/bin"}


class Collect:
    """A JobOutput that keeps everything; `first` is set once any stdout arrived."""

    def __init__(self) -> None:
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.first = trio.Event()

    async def send_stdout(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.stdout += data
        self.first.set()

    async def send_stderr(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.stderr += data

    def pids(self) -> list[int]:
        return [int(p) for p in self.stdout.split()]


def no_stdin() -> trio.MemoryReceiveChannel[bytes]:
    send, receive = trio.open_memory_channel[bytes](0)
    send.close()
    return receive


async def run(
    argv: list[str], limits: JobLimits = ROOMY, *, env: dict[str, str] | None = None, cwd: str = "/"
) -> tuple[JobOutcome, Collect]:
    out = Collect()
    with trio.fail_after(60):
        outcome = await Job(argv, env=BASE_ENV if env is None else env, cwd=cwd, limits=limits).run(
            no_stdin(), out
        )
    return outcome, out


def gone(pid: int) -> bool:
    """Whether `pid` has exited: no such process, or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def assert_gone(*pids: int) -> None:
    """Every pid has exited. SIGKILL is delivered asynchronously and orphans are reaped by init
    (which may never reap in a container), so allow a moment and count zombies as gone."""
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not gone(p)]}"
        time.sleep(0.01)


async def test_cat_round_trips_5_mib_through_a_slow_output() -> None:
    data = random.Random(1).randbytes(5 << 20)
    send, receive = trio.open_memory_channel[bytes](0)

    class Slow(Collect):
        calls = 0

        async def send_stdout(self, chunk: bytes) -> None:
            self.calls += 1
            if self.calls % 4 == 0:
                await trio.sleep(0.001)
            await super().send_stdout(chunk)

    async def produce() -> None:
        async with send:
            rng = random.Random(2)
            i = 0
            while i < len(data):
                n = rng.randint(1, 200_000)
                await send.send(data[i : i + n])
                i += n

    out = Slow()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            outcome = await Job(["cat"], env=BASE_ENV, cwd="/", limits=ROOMY).run(receive, out)
    assert hashlib.sha256(out.stdout).digest() == hashlib.sha256(data).digest()
    assert (outcome.exit_code, outcome.signal, outcome.error) == (0, None, None)
    assert outcome.stdin_bytes == outcome.stdout_bytes == len(data)
    assert outcome.stderr_bytes == 0


async def test_a_stalled_output_stalls_the_process() -> None:
    """Back-pressure: while the client reads nothing, only pipe-sized amounts get through."""
    total = 8 << 20
    send, receive = trio.open_memory_channel[bytes](0)
    release = trio.Event()
    sent = 0

    class Stalled(Collect):
        async def send_stdout(self, chunk: bytes) -> None:
            await release.wait()
            await super().send_stdout(chunk)

    async def produce() -> None:
        nonlocal sent
        async with send:
            for _ in range(total // 65536):
                await send.send(b"x" * 65536)
                sent += 65536

    out = Stalled()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            nursery.start_soon(lambda: Job(["cat"], env=BASE_ENV, cwd="/", limits=ROOMY).run(receive, out))
            await trio.sleep(0.5)
            # Two 1 MiB pipe buffers, cat's own buffer and one chunk in hand: far less than the
            # total. (Timing can only make this pass more easily, never fail.)
            assert sent < 3 << 20
            release.set()
    assert len(out.stdout) == total


async def test_exit_code_passes_through() -> None:
    outcome, _ = await run([SH, "-c", "exit 3"])
    assert (outcome.exit_code, outcome.signal, outcome.error) == (3, None, None)


async def test_death_by_own_signal_is_reported() -> None:
    outcome, _ = await run([SH, "-c", "kill -TERM $$"])
    assert (outcome.exit_code, outcome.signal, outcome.error) == (None, signal.SIGTERM, None)


async def test_stderr_is_streamed_separately() -> None:
    outcome, out = await run([SH, "-c", "printf out; printf err >&2"])
    assert (bytes(out.stdout), bytes(out.stderr)) == (b"out", b"err")
    assert (outcome.stdout_bytes, outcome.stderr_bytes) == (3, 3)


async def test_timeout_kills_the_whole_group(autojump_clock: trio.testing.MockClock) -> None:
    out = Collect()
    job = Job(SLEEPERS, env=BASE_ENV, cwd="/", limits=JobLimits(timeout=30, max_output=1000))
    result: list[JobOutcome] = []

    async def hold_the_clock() -> None:
        # The mock clock jumps only when every task is blocked; stay runnable until the job has
        # printed its pids, so the timeout cannot fire before the grandchild exists.
        while not out.first.is_set():
            time.sleep(0.001)
            await trio.lowlevel.checkpoint()

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_clock)
        result.append(await job.run(no_stdin(), out))
    (outcome,) = result
    assert (outcome.error, outcome.signal, outcome.exit_code) == ("timeout", signal.SIGKILL, None)
    assert outcome.wall_seconds >= 30
    assert time.monotonic() - started < 30  # mock time, not real time
    assert len(out.pids()) == 2
    assert_gone(*out.pids())


async def test_a_client_that_never_reads_cannot_pin_the_job(autojump_clock: trio.testing.MockClock) -> None:
    class Stuck(Collect):
        async def send_stdout(self, data: bytes) -> None:
            await trio.sleep_forever()

    # More than the 1 MiB pipe holds, so the program is still blocked writing when the clock runs out.
    job = Job(["head", "-c", "10000000", "/dev/zero"], env=BASE_ENV, cwd="/", limits=JobLimits(30, 1 << 30))
    outcome = await job.run(no_stdin(), Stuck())
    assert (outcome.error, outcome.signal) == ("timeout", signal.SIGKILL)


async def test_cancel_before_run() -> None:
    job = Job(SLEEPERS, env=BASE_ENV, cwd="/", limits=ROOMY)
    job.cancel("shutdown")
    with trio.fail_after(60):
        outcome = await job.run(no_stdin(), Collect())
    assert (outcome.error, outcome.signal) == ("shutdown", signal.SIGKILL)


async def test_output_limit_kills_and_caps_delivery() -> None:
    # More than the 1 MiB pipe holds, so the program cannot finish before it is killed.
    outcome, out = await run(["head", "-c", "10000000", "/dev/zero"], JobLimits(timeout=60, max_output=1000))
    assert (outcome.error, outcome.signal) == ("output-limit", signal.SIGKILL)
    assert len(out.stdout) <= 1000
    assert outcome.stdout_bytes == len(out.stdout)


async def test_output_exactly_at_the_limit_is_fine() -> None:
    outcome, out = await run(["head", "-c", "1000", "/dev/zero"], JobLimits(timeout=60, max_output=1000))
    assert (outcome.exit_code, outcome.error, len(out.stdout)) == (0, None, 1000)


async def test_cancel_from_another_task() -> None:
    out = Collect()
    job = Job(SLEEPERS, env=BASE_ENV, cwd="/", limits=ROOMY)

    async def cancel_when_started() -> None:
        await out.first.wait()
        job.cancel()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_when_started)
            outcome = await job.run(no_stdin(), out)
    assert (outcome.error, outcome.signal, outcome.exit_code) == ("cancelled", signal.SIGKILL, None)
    assert_gone(*out.pids())


async def test_failing_output_kills_the_job_and_propagates() -> None:
    pids: list[int] = []

    class Gone(Collect):
        async def send_stdout(self, data: bytes) -> None:
            pids.extend(int(p) for p in data.split())
            raise trio.BrokenResourceError("client went away")

    with trio.fail_after(60), pytest.raises(trio.BrokenResourceError, match="client went away"):
        await Job(SLEEPERS, env=BASE_ENV, cwd="/", limits=ROOMY).run(no_stdin(), Gone())
    assert len(pids) == 2
    assert_gone(*pids)


async def test_outside_cancellation_kills_the_job() -> None:
    out = Collect()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def cancel_when_started() -> None:
                await out.first.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(cancel_when_started)
            await Job(SLEEPERS, env=BASE_ENV, cwd="/", limits=ROOMY).run(no_stdin(), out)
            pytest.fail("run() returned although cancelled")
    assert nursery.cancel_scope.cancelled_caught
    assert_gone(*out.pids())


async def test_missing_program_is_a_spawn_error() -> None:
    with pytest.raises(SpawnError):
        await run(["/nonexistent/hubnet-test-program"])


async def test_missing_cwd_is_a_spawn_error(tmp_path: Path) -> None:
    with pytest.raises(SpawnError):
        await run(["true"], cwd=str(tmp_path / "missing"))


async def test_env_is_passed_exactly() -> None:
    env = {"A": "1", "SPACED": "x y", "EMPTY": ""}
    _, out = await run([shutil.which("env") or "/usr/bin/env"], env=env)
    assert sorted(out.stdout.decode().splitlines()) == sorted(f"{k}={v}" for k, v in env.items())


async def test_cwd_is_honoured(tmp_path: Path) -> None:
    _, out = await run([shutil.which("pwd") or "/bin/pwd"], cwd=str(tmp_path))
    assert out.stdout.decode().strip() == str(tmp_path.resolve())


async def test_binary_stdin_and_stdin_closed_early() -> None:
    """A process that stops reading ends the feeding without an error; bytes are not decoded."""
    send, receive = trio.open_memory_channel[bytes](10)
    for _ in range(10):
        send.send_nowait(bytes(range(256)) * 1024)  # leave the channel open: head must not need EOF
    out = Collect()
    with trio.fail_after(60):
        outcome = await Job(["head", "-c", "300"], env=BASE_ENV, cwd="/", limits=ROOMY).run(receive, out)
    assert outcome.exit_code == 0
    assert bytes(out.stdout) == (bytes(range(256)) * 2)[:300]


# The limited program waits for one byte of stdin, which the runner only feeds after prlimit:
# so the limits are in place before it does anything, however slow the machine.
async def run_limited(code: str, limits: JobLimits) -> tuple[JobOutcome, Collect]:
    send, receive = trio.open_memory_channel[bytes](1)
    send.send_nowait(b"go")
    send.close()
    out = Collect()
    argv = [sys.executable, "-c", f"import sys; sys.stdin.read(1)\n{code}"]
    with trio.fail_after(60):
        outcome = await Job(argv, env=BASE_ENV, cwd="/", limits=limits).run(receive, out)
    return outcome, out


async def test_memory_limit() -> None:
    outcome, out = await run_limited(
        "bytearray(1 << 30)", JobLimits(timeout=60, max_output=1 << 20, memory_bytes=200 << 20)
    )
    assert outcome.exit_code not in (0, None)
    assert b"MemoryError" in out.stderr


async def test_cpu_limit() -> None:
    outcome, _ = await run_limited("while True: pass", JobLimits(timeout=60, max_output=1000, cpu_seconds=1))
    assert outcome.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert outcome.error is None  # the kernel ended it, not hubnet
    # It ran on the CPU until the kernel's limit (CPU time: it holds at any machine speed). The kernel
    # counts the scheduler's exact runtime; /proc's utime+stime, which the runner reads, are sampled
    # at clock ticks and read 0.76-0.89 s on a loaded 2-core machine: so half the limit, not 0.9 of it.
    assert outcome.cpu_seconds >= 0.5


async def test_a_stray_holding_the_pipes_cannot_turn_an_exit_into_a_timeout() -> None:
    """Outside any sandbox or cgroup a `setsid` child escapes the group kill and keeps the
    output pipes open: the job still ends soon after its program, with the program's status."""
    started = time.monotonic()
    outcome, out = await run(
        [SH, "-c", "setsid sleep 30 & echo $!; sleep 0.3; echo done"], JobLimits(20, 1000)
    )
    elapsed = time.monotonic() - started
    stray, done = out.stdout.split()
    os.kill(int(stray), signal.SIGKILL)
    assert (outcome.exit_code, outcome.error, done) == (0, None, b"done")
    assert elapsed < 10, elapsed  # the exit grace, not the 20 s timeout
