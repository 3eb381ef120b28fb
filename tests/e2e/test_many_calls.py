"""200 concurrent calls from one Trio process to 4 real nodes; one node is killed midway.

The acceptance criterion: every call to the three nodes that stay up returns exactly its
input with exit code 0; every call to the killed node ends with a clear hubnet error that
names the node, before its deadline; no call hangs.

Nothing here depends on timing. Each call's stdin sends a first part, then waits until the
kill has happened before it sends the rest. The node is killed (SIGKILL, as a crash would)
only once every one of the 200 calls has had its first part echoed back, so all 200 jobs
are provably running when it dies: the killed node's 50 calls lose their node mid-call, and
the other 150 carry on beside them in the same process, most of their input (up to 1.5 MiB,
more than the node's 1 MiB stdin credit window) still to send.

A node that goes silent without closing its connections (a frozen process, a pulled cable)
is not tested here: its kernel closes nothing, so only the calls' deadlines can end them.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from hubnet.identity.errors import HubnetError
from hubnet.identity.keys import Identity
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import STDIN_WINDOW, Call
from hubnet.trio_client import CallOutput, Client
from tests.e2e.harness import Server
from tests.helpers import require_program

NODES = 4
CALLS_PER_NODE = 50
KILLED = NODES - 1  # the node killed midway
CALL_TIMEOUT = 60.0  # each call's deadline
WHOLE_TEST = 120.0  # everything from the first call to the last: a hang fails the test
# Room for every call to run at once, none queued or refused as busy.
SERVICES_TOML = f"""
listen = "127.0.0.1:0"
max_jobs = {CALLS_PER_NODE + 14}
max_queued = {CALLS_PER_NODE}

[services.cat]
command = ["cat"]
max_concurrent = {CALLS_PER_NODE + 14}
timeout = {3 * CALL_TIMEOUT:g}
"""
CAT = Call(service_id_for_name("cat"))

MIB = 1 << 20
KIB = 1 << 10


@dataclass(frozen=True)
class Plan:
    """One call: its node, its stdin, the first part sent before the kill, how the rest is cut."""

    node: int
    number: int
    data: bytes
    first: int
    chunks: tuple[int, ...]  # sizes of the rest, sent after the kill

    @property
    def name(self) -> str:
        return f"call {self.number} (node {self.node}, {len(self.data)} bytes)"


@dataclass
class Outcome:
    """What became of one call."""

    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    started: float = 0.0
    ended: float | None = None  # None: it never ended (it was cancelled)
    output: CallOutput | None = None
    error: Exception | None = None


def sizes(rng: random.Random) -> list[int]:
    """One node's 50 stdin sizes: 3 over 1 MiB, 10 from 64 KiB to 1 MiB, the rest small."""
    big = [MIB + rng.randrange(1, MIB // 2) for _ in range(3)]
    medium = [rng.randrange(64 * KIB, MIB) for _ in range(10)]
    small = [rng.randrange(1, 64 * KIB) for _ in range(CALLS_PER_NODE - len(big) - len(medium))]
    result = big + medium + small
    rng.shuffle(result)
    return result


def plans(rng: random.Random) -> list[Plan]:
    result: list[Plan] = []
    for node in range(NODES):
        for size in sizes(rng):
            data = rng.randbytes(size)
            first = min(size, rng.randrange(1, 16 * KIB))
            chunks, left = [], size - first
            while left:
                chunks.append(min(left, rng.randrange(1, STDIN_WINDOW)))
                left -= chunks[-1]
            result.append(Plan(node, len(result), data, first, tuple(chunks)))
    assert len({p.data for p in result}) == len(result), "every call's stdin is its own"
    return result


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """Four real `hubnode serve` processes, each serving `cat`; stopped (and checked) after the test."""
    require_program("cat")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Server(tmp_path / f"node{i}", SERVICES_TOML)) for i in range(NODES)]


async def run_call(
    client: Client,
    target: Target,
    plan: Plan,
    outcome: Outcome,
    killed: trio.Event,
    echoed: Callable[[], None],
    ended_early: Callable[[], None],
) -> None:
    async def stdin() -> AsyncIterator[bytes]:
        yield plan.data[: plan.first]
        await killed.wait()
        at = plan.first
        for size in plan.chunks:
            yield plan.data[at : at + size]
            at += size

    async def on_stdout(data: bytes) -> None:
        before = len(outcome.stdout)
        outcome.stdout += data
        if before < plan.first <= len(outcome.stdout):
            echoed()

    async def on_stderr(data: bytes) -> None:
        outcome.stderr += data

    outcome.started = trio.current_time()
    try:
        outcome.output = await client.call(
            target, CAT, stdin=stdin(), stdout=on_stdout, stderr=on_stderr, timeout=CALL_TIMEOUT
        )
    except Exception as exc:  # judged by the test, whatever it is
        outcome.error = exc
    outcome.ended = trio.current_time()
    if not killed.is_set():
        ended_early()


def describe(error: BaseException | None) -> str:
    if error is None:
        return "no error"
    if isinstance(error, BaseExceptionGroup):
        return f"{type(error).__name__}[{'; '.join(describe(e) for e in error.exceptions)}]"
    return f"{type(error).__name__}: {error}"


async def test_200_concurrent_calls_over_4_nodes_one_killed_midway(servers: list[Server]) -> None:
    seed = int.from_bytes(os.urandom(4))
    every = plans(random.Random(seed))
    where = f"(random seed {seed})"
    outcomes = [Outcome() for _ in every]
    targets = [Target.parse(server.target) for server in servers]
    victim = servers[KILLED]
    client = Client(Identity.generate(), connect_timeout=CALL_TIMEOUT / 2)

    killed = trio.Event()
    ready = trio.Event()  # every call echoed its first part, or one ended before the kill
    echoed = 0
    kill_time = 0.0

    def one_echoed() -> None:
        nonlocal echoed
        echoed += 1
        if echoed == len(every):
            ready.set()

    with trio.fail_after(WHOLE_TEST):
        async with trio.open_nursery() as nursery:
            for plan, outcome in zip(every, outcomes, strict=True):
                nursery.start_soon(
                    run_call, client, targets[plan.node], plan, outcome, killed, one_echoed, ready.set
                )
            # Bounded: a call that is refused or never answered would otherwise stall the test.
            with trio.move_on_after(CALL_TIMEOUT / 2):
                await ready.wait()
            if echoed < len(every):
                nursery.cancel_scope.cancel()
            else:
                status = await trio.to_thread.run_sync(victim.kill)
                assert status == -9, f"the killed node exited with status {status}"
                kill_time = trio.current_time()
                killed.set()

    if not killed.is_set():
        early = [f"{p.name}: {describe(o.error)}" for p, o in zip(every, outcomes, strict=True) if o.ended]
        pytest.fail(
            f"only {echoed} of {len(every)} calls were running before the kill {where}; "
            f"{len(early)} ended before it:\n" + "\n".join(early[:20])
        )

    failures = []
    latest = 0.0
    for plan, outcome in zip(every, outcomes, strict=True):
        assert outcome.ended is not None, f"{plan.name} never ended {where}"
        took = outcome.ended - outcome.started
        if took >= CALL_TIMEOUT:
            failures.append(f"{plan.name} ran into its deadline ({took:.1f} s): {describe(outcome.error)}")
            continue
        if plan.node != KILLED:
            result = outcome.output.result if outcome.output else None
            if result is None:
                failures.append(f"{plan.name} failed: {describe(outcome.error)}")
            elif (result.exit.exit_code, result.exit.signal, result.exit.error) != (0, None, None):
                failures.append(f"{plan.name} ended {result.exit}")
            elif bytes(outcome.stdout) != plan.data:
                failures.append(f"{plan.name}: {len(outcome.stdout)} bytes back, not its own input")
            elif outcome.stderr:
                failures.append(f"{plan.name}: stderr {bytes(outcome.stderr[:200])!r}")
            continue
        latest = max(latest, outcome.ended - kill_time)
        error = outcome.error
        if not isinstance(error, HubnetError):
            failures.append(f"{plan.name} on the killed node: {describe(error)}, not a hubnet error")
        elif "deadline" in str(error):
            failures.append(f"{plan.name} on the killed node waited for its deadline: {describe(error)}")
        elif bytes(outcome.stdout) != plan.data[: plan.first]:
            failures.append(f"{plan.name} on the killed node: got {len(outcome.stdout)} bytes back")
        elif victim.address not in str(error):
            failures.append(f"{plan.name} on the killed node: unclear error {describe(error)}")
    assert not failures, f"{len(failures)} of {len(every)} calls went wrong {where}:\n" + "\n".join(
        failures[:20]
    )
    print(f"the killed node's calls all ended within {latest:.2f} s of the kill")
