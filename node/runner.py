"""Run one accepted job's process under limits, streaming its I/O (Trio).

The server has already checked the service and the arguments and built the argv and a scrubbed
environment; this module only starts the program (never through a shell), pipes the client's
stdin into it, streams its stdout and stderr back with back-pressure, enforces the wall-clock,
output and resource limits, and guarantees that no process of the job outlives `Job.run`.

The program is started through an exec chain (`node.sandbox.Confinement`: cgexec, setpriv,
bwrap, prlimit, as the job needs) in which every limit is set before the program's first
instruction; the node never runs Python between fork and exec. Where the node keeps a spare
(`node.spare`: a process already in a fresh job cgroup), the job's process is that spare,
told to exec the chain without cgexec; the only Python it runs is a program of its own that
reads the chain and execs it.

Linux only: it relies on `os.pidfd_open`, `/proc/<pid>/stat` and util-linux's `prlimit`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio

from hubnet.identity.errors import HubnetError
from hubnet.node.sandbox import Confinement, SandboxError
from hubnet.node.spare import Spares, remove_cgroup

_CHUNK = 65536
_PIPE_SIZE = 1 << 20
# After the group is killed, how long the output pumps may still run (a stalled client, or a
# process that escaped the group but holds the pipes open) before they are abandoned.
_DRAIN_GRACE = 5.0
# After the job's first process has exited: how long its output pipes may stay open with
# nothing in them (only an unsandboxed job outside any cgroup can leave a process that is
# not killed at once, and holds them) before they are abandoned.
_EXIT_GRACE = 2.0


class SpawnError(HubnetError):
    """The job's program could not be started (missing, not executable, bad cwd, limits refused)."""


@dataclass(frozen=True)
class JobLimits:
    """What one job may use; `None` leaves a resource limit as inherited."""

    timeout: float  # wall-clock seconds, then the whole process group is killed
    max_output: int  # bytes of stdout+stderr together; beyond it the job is killed
    cpu_seconds: int | None = None  # RLIMIT_CPU of each process
    memory_bytes: int | None = None  # the job's cgroup, if it has one; else RLIMIT_AS of each process


@dataclass(frozen=True)
class JobOutcome:
    """How a job ended, for the client and for accounting."""

    exit_code: int | None  # the exit status, when the process exited by itself
    signal: int | None  # the signal number, when it died of a signal (ours or not)
    error: str | None  # why hubnet ended it: "timeout", "output-limit", "cancelled", or None
    wall_seconds: float
    cpu_seconds: float  # user+sys of the process and the children it waited for; 0.0 if unreadable
    stdin_bytes: int  # bytes written into the process's stdin
    stdout_bytes: int  # bytes delivered to `JobOutput` (never more than the output cap)
    stderr_bytes: int


class JobOutput(Protocol):
    """Where the job's output goes; each call may block, which slows the job down."""

    async def send_stdout(self, data: bytes) -> None: ...
    async def send_stderr(self, data: bytes) -> None: ...


class Job:
    """One run of one program. Create it, call `run` once; `cancel` may be called from any task.

    The job is its first process: when that process exits, whatever it left running in its
    process group (and its sandbox, and its cgroup) is killed, and so is everything on timeout,
    output limit, cancellation, a failing `JobOutput` or an outside cancellation of `run`.
    `confinement` says how it is isolated; by default only its rlimits apply.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str,
        limits: JobLimits,
        read_size: int = _CHUNK,
        confinement: Confinement | None = None,
        spares: Spares | None = None,
    ) -> None:
        self._argv = list(argv)
        self._env = dict(env)
        self._cwd = cwd
        self._limits = limits
        self._read_size = read_size  # the caller's message size, so each read is sent whole
        self._confinement = confinement or Confinement()
        self._spares = spares  # where there is one, the job starts from a spare (node.spare)
        self._proc: trio.Process | None = None
        self._reaped = False
        self._exited = False  # the first process has exited: the outcome is its, not a timeout
        self._receiving: set[trio.CancelScope] = set()  # the pumps' reads in progress
        self._error: str | None = None
        self._failure: Exception | None = None  # what a JobOutput call raised
        self._drain_scope = trio.CancelScope()
        self._stdin_bytes = 0
        self._output_bytes = {"stdout": 0, "stderr": 0}

    def cancel(self, reason: str = "cancelled") -> None:
        """Kill the job's process group; `run` returns an outcome with `error=reason`."""
        self._end(reason)

    async def run(self, stdin: trio.abc.ReceiveChannel[bytes], output: JobOutput) -> JobOutcome:
        """Run the job to the end and say how it ended.

        Raises `SpawnError` if the program cannot be started. If `output` raises, or `run` is
        cancelled, the group is killed and reaped first, then the exception propagates.
        """
        if self._proc is not None:
            raise RuntimeError("a Job runs only once")
        argv = [self._program(), *self._argv[1:]]
        proc = await self._start(argv)
        self._proc = proc
        _widen_pipes(proc)
        started = trio.current_time()
        # Our own pidfd tells us when the process has exited *without reaping it*: while it is an
        # unreaped zombie its pid cannot be reused, so killing its group stays safe, and its CPU
        # times can still be read from /proc.
        pidfd = os.pidfd_open(proc.pid)
        try:
            if self._error is not None:  # cancel() came before the process existed
                self._kill_group()
            await self._supervise(proc, pidfd, stdin, output)
        finally:
            with trio.CancelScope(shield=True):  # the kill and the reap must happen even if cancelled
                self._kill_group()
                await trio.lowlevel.wait_readable(pidfd)
                cpu = _cpu_seconds(proc.pid)
                returncode = await proc.wait()
                self._reaped = True
                os.close(pidfd)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        await stream.aclose()
                await self._remove_cgroup()
                # bwrap's monitor may exit without reaping its namespace's init, whose children's
                # CPU it would count: the job's cgroup, where there is one, counts them all.
                cpu = max(cpu, self._confinement.cpu_seconds)
        if self._failure is not None:
            raise self._failure
        return JobOutcome(
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            error=self._error,
            wall_seconds=trio.current_time() - started,
            cpu_seconds=cpu,
            stdin_bytes=self._stdin_bytes,
            stdout_bytes=self._output_bytes["stdout"],
            stderr_bytes=self._output_bytes["stderr"],
        )

    async def _start(self, argv: list[str]) -> trio.Process:
        """The job's first process, its exec chain started; SpawnError if it cannot be (and
        then nothing of it is left: no process, no cgroup)."""
        confinement = self._confinement
        # A spare is already in a job cgroup: of use only to a job that would have one.
        has_cgroup = confinement.cgroup is not None
        spare = self._spares.take() if self._spares is not None and has_cgroup else None
        try:
            confinement.start(
                memory_bytes=self._limits.memory_bytes, cgroup=spare.cgroup if spare is not None else None
            )
            command = confinement.command(
                argv, cpu_seconds=self._limits.cpu_seconds, memory_bytes=self._limits.memory_bytes
            )
            if spare is not None:
                await spare.launch(command, env=self._env, cwd=self._cwd)
                return spare.process
            return await trio.lowlevel.open_process(
                command,
                shell=False,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env,
                cwd=self._cwd,
                process_group=0,  # its own group, so os.killpg reaches grandchildren too
            )
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if spare is not None:
                    await spare.close()
                await self._remove_cgroup()
            if isinstance(exc, SandboxError):
                raise SpawnError(f"cannot start {self._argv[0]!r}: {exc}") from exc
            if isinstance(exc, OSError):  # PermissionError, NotADirectoryError, EMFILE...
                raise SpawnError(f"cannot start {self._argv[0]!r}: {exc.strerror or exc}") from exc
            raise

    def _program(self) -> str:
        """The program's absolute path, found as exec would (PATH from the job's environment),
        so a missing program is a SpawnError rather than the exit status of a wrapper."""
        program = self._argv[0]
        if not os.path.isdir(self._cwd):
            raise SpawnError(f"cannot start {program!r}: no directory {self._cwd!r}")
        if "/" in program:
            found: str | None = os.path.join(self._cwd, program)
            if not (found and os.path.isfile(found) and os.access(found, os.X_OK)):
                found = None
        else:
            found = shutil.which(program, path=self._env.get("PATH", os.defpath))
        if found is None:
            raise SpawnError(f"cannot start {program!r}: no such executable file")
        return os.path.abspath(found)

    async def _remove_cgroup(self) -> None:
        """Kill what is left in the job's cgroup, wait until it is gone, remove the cgroup."""
        if self._confinement.cgroup is not None:
            await remove_cgroup(self._confinement.cgroup)

    async def _supervise(
        self, proc: trio.Process, pidfd: int, stdin: trio.abc.ReceiveChannel[bytes], output: JobOutput
    ) -> None:
        """Copy I/O until the process has exited and its output is drained, or the job is stopped."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        deadline = trio.current_time() + self._limits.timeout
        self._drain_scope.deadline = deadline + _DRAIN_GRACE
        with self._drain_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._feed, proc.stdin, stdin)
                nursery.start_soon(self._watchdog, deadline)
                async with trio.open_nursery() as pumps:
                    pumps.start_soon(self._pump, proc.stdout, output.send_stdout, "stdout")
                    pumps.start_soon(self._pump, proc.stderr, output.send_stderr, "stderr")
                    await trio.lowlevel.wait_readable(pidfd)  # exited, not yet reaped
                    self._exited = True  # no timeout is claimed for a program that has ended
                    self._kill_group()  # whatever it left behind goes with it
                    for scope in self._receiving:  # reads that wait for nothing get a moment
                        scope.deadline = min(scope.deadline, trio.current_time() + _EXIT_GRACE)
                # Output is drained; stop waiting on the client's stdin and the clock.
                nursery.cancel_scope.cancel()

    async def _watchdog(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        if not self._exited:
            self._end("timeout")

    async def _feed(self, sink: trio.abc.SendStream, stdin: trio.abc.ReceiveChannel[bytes]) -> None:
        """Client stdin -> process stdin, one chunk at a time; closes the process's stdin at the end."""
        try:
            async for chunk in stdin:  # ends when the sender closes the channel
                try:
                    await sink.send_all(chunk)
                except trio.BrokenResourceError:
                    return  # the process closed its stdin: stop reading the channel
                self._stdin_bytes += len(chunk)
        finally:
            with trio.CancelScope(shield=True):
                await sink.aclose()
                # The sender must not block on a channel nobody reads any more: closing our end
                # makes its next send fail at once, so it can drop the rest of stdin.
                await stdin.aclose()

    async def _pump(
        self, source: trio.abc.ReceiveStream, send: Callable[[bytes], Awaitable[None]], name: str
    ) -> None:
        """Process output -> client. Each chunk is sent before the next is read (back-pressure)."""
        while received := await self._receive(source):
            data = bytes(received)  # receive_some may hand back a bytearray; JobOutput takes bytes
            room = self._limits.max_output - sum(self._output_bytes.values())
            if len(data) > room:
                data = data[: max(room, 0)]  # deliver up to the cap, never a byte past it
                self._end("output-limit")
            if data:
                # Count before awaiting so the other pump sees this part of the cap as taken.
                self._output_bytes[name] += len(data)
                try:
                    await send(data)
                except Exception as exc:  # the client went away: stop everything, re-raise in run()
                    if self._failure is None:
                        self._failure = exc
                    self._kill_group()
                    self._drain_scope.cancel()
                    return
            if self._error == "output-limit":
                return  # the group is dead; nothing more will be delivered

    async def _receive(self, source: trio.abc.ReceiveStream) -> bytes | bytearray:
        """The next output, or b"" at its end; also b"" when, after the program has exited, a
        process it left holds the pipe open without writing for `_EXIT_GRACE`."""
        with trio.CancelScope() as scope:
            if self._exited:
                scope.deadline = trio.current_time() + _EXIT_GRACE
            self._receiving.add(scope)
            try:
                return await source.receive_some(self._read_size)
            finally:
                self._receiving.discard(scope)
        return b""

    def _end(self, reason: str) -> None:
        """Stop the job for `reason`; the first reason given is the one reported."""
        if self._error is None:
            self._error = reason
        self._kill_group()

    def _kill_group(self) -> None:
        # Only while the leader is unreaped: until then its pid, which is the group id, cannot be
        # reused by another process. The leader is also killed by pid in case it left the group.
        # A sandboxed leader is bwrap: its death takes the job's PID namespace with it.
        if self._proc is not None and not self._reaped:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError):
                    kill(self._proc.pid, signal.SIGKILL)
        self._confinement.kill()  # the job's cgroup, if it has one: setsid or not


def _widen_pipes(proc: trio.Process) -> None:
    """Give bulk jobs 1 MiB pipes instead of 64 KiB: each read and message then carries more,
    which cuts the per-message cost that bounds throughput. Best effort (the size is capped
    by /proc/sys/fs/pipe-max-size); a refusal leaves the default."""
    for stream in (proc.stdin, proc.stdout):
        if isinstance(stream, trio.lowlevel.FdStream):
            with contextlib.suppress(OSError):
                fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of an exited, unreaped process and of the children it reaped, or 0.0."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
        fields = stat[stat.rfind(")") + 2 :].split()
        ticks = sum(int(t) for t in fields[11:15])  # utime, stime, cutime, cstime
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
