"""A job that never reads stdin, fed 100 MiB, dies within 1 s of a Cancel or of its caller vanishing.

The job's stdin is back-pressured all the way to the caller (the node grants stdin credit only
as the job takes it, see `node.protocol.STDIN_WINDOW`), yet the node keeps reading the caller's
messages (`node.server._Caller`), so a Cancel or a closed connection still reaches it at once
and it kills the job (`node.runner.Job.cancel`). Three ways for the caller to stop:

1. the Trio API (`hubnet.trio_client`): the call's cancel scope is cancelled, the client sends Cancel
   and the node reports the job as cancelled;
2. `hubnode call` gets SIGINT (Ctrl-C): the blocking client sends Cancel and exits 130;
3. `hubnode call` gets SIGKILL: nothing is sent, the node only sees the connection go.

Each time the job must be dead within KILL_BOUND of the moment the caller stopped, the node
must say how the job ended, and it must go on serving.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hubnet.call_machine import CANCEL_GRACE
from hubnet.exits import EXIT_INTERRUPTED
from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call
from hubnet.trio_client import Client as TrioClient
from tests.e2e.harness import CALL_TIMEOUT, Client, Server, base_env, toml_string
from tests.helpers import require_program

MiB = 1 << 20
TOTAL = 100 * MiB  # what the caller offers the job
CHUNK = 256 * 1024
# The promise, measured from the moment the caller stops (the Cancel is sent, the signal
# is delivered). The node kills the job as soon as it hears of it, in milliseconds, so no slack.
KILL_BOUND = 1.0
# Feeding is back-pressured once the bytes taken from the caller's stdin stop growing for this long.
STALL = 0.5
# Back-pressured, the caller has sent only what the node's credit window, the node's buffer and
# the job's (1 MiB) stdin pipe hold: a few MiB, far below what it offers.
MAX_BUFFERED = 25 * MiB
SETUP_TIMEOUT = 30.0  # for the job to start and its stdin to fill (a loaded 2-core CI box)
EXIT_TIMEOUT = 10.0  # for `hubnode call` to exit once interrupted (it does not wait for the node)
JOB_TIMEOUT = 600  # the service's own timeout: only the caller can end the job within a test


# The job writes its pid to $PIDDIR/<job id> (renamed into place, so never read half written),
# then becomes `sleep`, which never reads its stdin.
JOB_SCRIPT = (
    'echo $$ > "$PIDDIR/.$HUBNET_JOB" && mv "$PIDDIR/.$HUBNET_JOB" "$PIDDIR/$HUBNET_JOB"'
    f" && exec sleep {JOB_TIMEOUT}"
)


CAT = Call(service_id_for_name("cat"))


def services_toml(piddir: Path) -> str:
    return f"""
listen = "127.0.0.1:0"

[services.deaf]
description = "never reads its stdin"
command = ["sh", "-c", {toml_string(JOB_SCRIPT)}]
env = {{ PIDDIR = {toml_string(piddir)} }}
timeout = {JOB_TIMEOUT}
sandbox = false  # its pids are read and signalled from outside: no PID namespace of its own

[services.cat]
command = ["cat"]
"""


@dataclass(frozen=True)
class DeafNode:
    server: Server
    piddir: Path


@pytest.fixture(scope="module")
def deaf_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeafNode]:
    for program in ("sh", "mv", "sleep", "cat"):
        require_program(program)
    root = tmp_path_factory.mktemp("cancel")
    piddir = root / "pids"
    piddir.mkdir()
    with Server(root / "server", services_toml(piddir)) as server:
        yield DeafNode(server, piddir)


@pytest.fixture
def node(deaf_node: DeafNode) -> Iterator[DeafNode]:
    """The module's node with no job pid files left over; afterwards, no job of this test left alive."""
    for stale in deaf_node.piddir.iterdir():
        stale.unlink()
    yield deaf_node
    for _job_id, pid in _jobs(deaf_node):
        if _alive(pid):  # only after a failure: don't leave a `sleep 600` behind
            os.kill(pid, signal.SIGKILL)


# --- the job ---------------------------------------------------------------------------


def _jobs(node: DeafNode) -> list[tuple[str, int]]:
    """(job id, pid) of every job that has written its pid file."""
    return [(p.name, int(p.read_text())) for p in node.piddir.iterdir() if not p.name.startswith(".")]


def _alive(pid: int) -> bool:
    """True while `pid` is still the job's `sleep` (not gone, not a killed zombie, not reused)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == f"sleep\0{JOB_TIMEOUT}\0".encode()
    except OSError:  # FileNotFoundError, ProcessLookupError: gone
        return False


def _one_job(node: DeafNode) -> tuple[str, int] | None:
    jobs = _jobs(node)
    assert len(jobs) <= 1, jobs
    return jobs[0] if jobs else None


def _node_report(node: DeafNode, job_id: str) -> str:
    """The node's log line on how the job ended (`job ID deaf for PEER: signal 9 (REASON) after T`)."""
    line = node.server.wait_for_log(lambda s: f"job {job_id} " in s, timeout=10)
    assert line is not None, f"the node did not report job {job_id}:\n{node.server.log}"
    return line


def _killed_for(reason: str) -> str:
    return f"signal {signal.SIGKILL} ({reason})"


# --- 1. the Trio API -----------------------------------------------------------------------


class Feed:
    """100 MiB of stdin, made as it is pulled (one 256 KiB buffer, reused), counting what was pulled."""

    def __init__(self) -> None:
        self.pulled = 0
        self.finished = False

    async def chunks(self) -> AsyncIterator[bytes]:
        chunk = bytes(CHUNK)
        for _ in range(TOTAL // CHUNK):
            self.pulled += CHUNK
            yield chunk
        self.finished = True


async def _trio_wait_for_job(node: DeafNode) -> tuple[str, int]:
    while (job := _one_job(node)) is None:
        await trio.sleep(0.01)
    return job


async def _trio_wait_for_stall(count: Callable[[], int]) -> int:
    """Wait until `count()` is positive and has not grown for STALL seconds; its value."""
    last, since = count(), trio.current_time()
    while last == 0 or trio.current_time() - since < STALL:
        await trio.sleep(0.02)
        if count() != last:
            last, since = count(), trio.current_time()
    return last


async def _trio_until_dead(pid: int, started: float) -> float:
    """Seconds from `started` (time.monotonic) until the job is dead; polled every 2 ms."""
    with trio.fail_after(CALL_TIMEOUT):
        while _alive(pid):
            await trio.sleep(0.002)
    return time.monotonic() - started


async def test_trio_cancel_kills_a_job_that_never_reads_stdin(node: DeafNode) -> None:
    client = TrioClient(Identity.generate())
    target = Target.parse(node.server.target)
    feed = Feed()
    scope = trio.CancelScope()
    call_done = trio.Event()

    async def call() -> None:
        try:
            with scope:
                await client.call(target, Call(service_id_for_name("deaf")), stdin=feed.chunks(), timeout=600)
        finally:
            call_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        with trio.fail_after(SETUP_TIMEOUT):
            job_id, pid = await _trio_wait_for_job(node)
            pulled = await _trio_wait_for_stall(lambda: feed.pulled)
        assert _alive(pid)
        assert not feed.finished and pulled <= MAX_BUFFERED, (
            f"stdin not back-pressured: {pulled} bytes pulled"
        )

        started = time.monotonic()
        scope.cancel()  # the client sends Cancel (shielded) on its way out
        latency = await _trio_until_dead(pid, started)
        with trio.fail_after(EXIT_TIMEOUT):
            await call_done.wait()

    print(
        f"trio Cancel: {pulled / MiB:.2f} MiB pulled before back-pressure;",
        f"job dead {latency * 1e3:.1f} ms after",
    )
    assert scope.cancelled_caught, "the call ended by itself instead of being cancelled"
    assert latency <= KILL_BOUND, f"job {pid} outlived the Cancel by {latency:.3f} s"

    # The node goes on serving.
    with trio.fail_after(CALL_TIMEOUT):
        output = await client.call(target, Call(service_id_for_name("cat")), stdin=b"still serving")
    assert (output.result.exit.exit_code, output.stdout) == (0, b"still serving"), output

    report = _node_report(node, job_id)
    assert _killed_for("cancelled") in report, report


# --- 2 and 3. `hubnode call`, interrupted or killed ---------------------------------------------


class PipeWriter:
    """Writes 100 MiB into `hubnode call`'s stdin pipe from a thread, counting what the pipe took.

    It blocks when the pipe is full, which is the point; it stops when the reader goes (EPIPE).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.written = 0
        self.finished = False
        self.error: OSError | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        chunk = memoryview(bytes(CHUNK))
        try:
            for _ in range(TOTAL // CHUNK):
                view = chunk
                while view:
                    n = os.write(self.fd, view)
                    self.written += n
                    view = view[n:]
            self.finished = True
        except OSError as exc:  # BrokenPipeError once hubnode is gone
            self.error = exc


def _wait(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def _wait_for_stall(count: Callable[[], int], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while last == 0 or time.monotonic() - since < STALL:
        if time.monotonic() >= deadline:
            pytest.fail(f"stdin never stalled within {timeout} s ({count()} bytes taken)")
        time.sleep(0.02)
        if count() != last:
            last, since = count(), time.monotonic()
    return last


def _until_dead(pid: int, started: float) -> float:
    deadline = started + CALL_TIMEOUT
    while _alive(pid):
        if time.monotonic() >= deadline:
            pytest.fail(f"job {pid} still alive {CALL_TIMEOUT} s after its caller stopped")
        time.sleep(0.002)
    return time.monotonic() - started


@pytest.mark.parametrize(
    ("how", "sig", "reason"),
    [
        ("interrupted", signal.SIGINT, "cancelled"),  # Ctrl-C: the client sends Cancel
        ("killed", signal.SIGKILL, "disconnected"),  # the caller vanishes: no Cancel, only a closed socket
    ],
)
def test_hubnode_call_stopped_kills_a_job_that_never_reads_stdin(
    node: DeafNode, tmp_path: Path, how: str, sig: signal.Signals, reason: str
) -> None:
    client = Client(tmp_path / "client")
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("wb") as stderr_file:
        proc = subprocess.Popen(
            client.command("call", "--server", node.server.target, "deaf"),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            env=base_env(),
        )
    assert proc.stdin is not None
    writer = PipeWriter(proc.stdin.fileno())
    try:
        _wait(
            lambda: _one_job(node) is not None or proc.poll() is not None, SETUP_TIMEOUT, "the job to start"
        )
        assert proc.poll() is None, f"hubnode call exited with {proc.returncode}: {stderr_path.read_text()}"
        job = _one_job(node)
        assert job is not None
        job_id, pid = job
        written = _wait_for_stall(lambda: writer.written, SETUP_TIMEOUT)
        assert _alive(pid)
        assert proc.poll() is None, f"hubnode call exited with {proc.returncode}: {stderr_path.read_text()}"
        assert not writer.finished and written <= MAX_BUFFERED, f"stdin not back-pressured: {written} bytes"

        started = time.monotonic()
        proc.send_signal(sig)
        latency = _until_dead(pid, started)
        proc.wait(EXIT_TIMEOUT)
        exited = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.thread.join(EXIT_TIMEOUT)  # hubnode is gone, so a blocked write fails with EPIPE
        proc.stdin.close()

    stderr = stderr_path.read_text(errors="replace")
    print(
        f"hubnode call {how}: {written / MiB:.2f} MiB taken before back-pressure; "
        f"job dead {latency * 1000:.1f} ms after, hubnode exited {exited * 1000:.1f} ms after"
    )
    assert latency <= KILL_BOUND, f"job {pid} outlived its {how} caller by {latency:.3f} s"
    if sig == signal.SIGINT:
        assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, stderr)
        assert stderr.strip().endswith("hubnode: interrupted"), stderr
    else:
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, stderr)
    assert not writer.thread.is_alive()
    report = _node_report(node, job_id)
    assert _killed_for(reason) in report, report

    # The node goes on serving.
    result = client.call(node.server.target, "cat", input=b"still serving")
    assert (result.returncode, result.stdout) == (0, b"still serving"), result.stderr
    assert node.server.running


# --- 4. a node that goes silent --------------------------------------------------------------


async def test_a_deadline_ends_a_call_to_a_node_that_stopped_answering(tmp_path: Path) -> None:
    """A frozen node closes nothing and reads nothing: the call's deadline must still end the call
    within CANCEL_GRACE, even while megabytes of stdin wait to go (the feeder then blocks on a
    full socket, and must not keep the Cancel from being tried)."""
    require_program("cat")
    deadline = 3.0
    with Server(tmp_path / "silent", 'listen = "127.0.0.1:0"\n[services.cat]\ncommand = ["cat"]\n') as server:
        client = TrioClient(Identity.generate())
        echoed, frozen, done = trio.Event(), trio.Event(), trio.Event()
        failure: list[BaseException] = []

        async def stdin() -> AsyncIterator[bytes]:
            yield b"x"
            await frozen.wait()
            for _ in range(64):  # 4 MiB: more than the credit window and the socket buffers
                yield bytes(1 << 16)

        async def first_echo(data: bytes) -> None:
            echoed.set()

        async def call() -> None:
            try:
                await client.call(
                    Target.parse(server.target), CAT, stdin=stdin(), stdout=first_echo, timeout=deadline
                )
            except Exception as exc:  # judged below
                failure.append(exc)
            finally:
                done.set()

        started = trio.current_time()
        with trio.fail_after(CALL_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await echoed.wait()
                with server.frozen():
                    frozen.set()
                    with trio.move_on_after(deadline + CANCEL_GRACE + 10) as waiting:
                        await done.wait()
                    nursery.cancel_scope.cancel()
        assert not waiting.cancelled_caught, "the call outlived its deadline and the grace after it"
        took = trio.current_time() - started
    [error] = failure
    assert isinstance(error, TransportError) and "deadline" in str(error), repr(error)
    assert server.address in str(error), error
    assert took < deadline + CANCEL_GRACE + 10, took
