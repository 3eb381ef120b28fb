"""A spare job process, already in a job cgroup of its own before any job needs it (Trio).

Where the node makes cgroups, every job used to start as `cgexec -g ...:JOB -- CHAIN`, and
cgexec moving itself into the job's cgroup was the slowest step of a cold call: on cgroup
v1, moving a process takes the kernel's cgroup_threadgroup_rwsem for writing, which waits
for an RCU grace period (12-17 ms measured here) unless another move came just before.
CLONE_INTO_CGROUP, which would avoid the move, is cgroup v2 only and out of subprocess's
reach. So the node keeps one spare ahead of the calls (`Spares`): a tiny Python program of
ours (`node._spare`, never a shell), started with the job's stdin, stdout and stderr pipes
and its own process group as a job's process is, moved into a fresh job cgroup once its
interpreter is up (so the cgroup counts none of that start's CPU), and blocked reading
one instruction. A job then writes its limits into that cgroup and tells the spare to exec
its chain (without cgexec) in its working directory and environment (`Spare.launch`); the
next spare is made in the background. With no spare ready, the job starts as before.

Where there are no cgroups there is nothing to move, so the node keeps no spare.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from hubnet.node._spare import MAX_INSTRUCTION, READY
from hubnet.node.sandbox import Cgroups, JobCgroup, SandboxError, job_cgroup

log = logging.getLogger("hubnet.node")

_PROGRAM = str(Path(__file__).with_name("_spare.py"))
# After a spare is taken: how long before the next is made, unless a job ends first (see
# `Spares.run`).
_PAUSE = 0.05
# After a spare could not be made: how long before the next try (jobs start without one).
_RETRY = 5.0
# How long the processes of a job's or a spare's cgroup may take to die before the cgroup is
# left for the next node's `sweep_cgroups`.
_CGROUP_GRACE = 5.0
_MAX_STATUS = 16  # an errno in decimal


def encode_instruction(argv: Sequence[str], env: Mapping[str, str], cwd: str) -> bytes:
    """What `node._spare` reads: `cwd`, the number of arguments, `argv`, then `env` as
    NAME=VALUE, each ended by a NUL. ValueError for what execve would refuse (a NUL inside,
    a name with `=`, no program) or what the spare would (longer than it reads)."""
    fields = [cwd, str(len(argv)), *argv, *(f"{name}={value}" for name, value in env.items())]
    if not argv or any("\0" in field for field in fields) or any("=" in name or not name for name in env):
        raise ValueError("cannot pass this to a spare: no program, or a NUL or a misplaced '='")
    encoded = b"".join(os.fsencode(field) + b"\0" for field in fields)
    if len(encoded) > MAX_INSTRUCTION:
        raise ValueError(f"cannot pass {len(encoded)} bytes of arguments and environment to a spare")
    return encoded


@dataclass
class Spare:
    """One spare: its process (stdin, stdout and stderr are the job's), its job cgroup, and
    our ends of its control and status pipes."""

    process: trio.Process
    cgroup: JobCgroup
    control: trio.lowlevel.FdStream
    status: trio.lowlevel.FdStream

    async def launch(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str) -> None:
        """Make the spare exec `argv` (its program an absolute path) in `cwd` with `env`, and
        return once it has. OSError (as subprocess raises it) if the exec fails, ValueError if
        the instruction cannot be sent; the caller then `close`s the spare."""
        instruction = encode_instruction(argv, env, cwd)
        await self.control.send_all(instruction)
        await self.control.aclose()  # the end of the instruction
        report = b""
        while chunk := await self.status.receive_some(_MAX_STATUS):  # its end: the exec happened
            report += chunk
            if len(report) > _MAX_STATUS:
                break
        await self.status.aclose()
        if report:
            code = int(report) if report.isdigit() else 0
            raise OSError(code, os.strerror(code) if code else f"the spare said {report[:_MAX_STATUS]!r}")

    async def close(self) -> None:
        """Kill and reap the spare (or what it became) and close our pipes; not its cgroup."""
        with trio.CancelScope(shield=True):
            self.process.kill()  # a no-op once it has been reaped
            await self.process.wait()
            process = self.process
            for stream in (self.control, self.status, process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()

    async def discard(self) -> None:
        """`close`, then remove its cgroup."""
        await self.close()
        await remove_cgroup(self.cgroup)


class Spares:
    """Keeps at most one `Spare` ready for the next job on hosts with cgroups; `run` is the
    task that makes them, and kills the last one and removes its cgroup when cancelled."""

    def __init__(self, cgroups: Cgroups) -> None:
        self._cgroups = cgroups
        self._ready: Spare | None = None
        self._taken = trio.Event()  # set when the ready spare is taken: make the next
        self._job_ended = trio.Event()  # set when a job's process has ended: make it now
        self._dead: Spare | None = None  # one that died waiting, for `run` to discard
        self._made = 0

    def take(self) -> Spare | None:
        """The ready spare, now the caller's to launch or close; None if there is none (the
        job starts as before)."""
        spare, self._ready = self._ready, None
        self._job_ended = trio.Event()  # only a job ending from now on hastens the next spare
        self._taken.set()
        if spare is not None and spare.process.poll() is not None:
            self._dead = spare
            return None
        return spare

    def job_ended(self) -> None:
        """A job has ended and its caller has its Exit (the job need not have come from a
        spare): the CPU the job needed is free for the next spare."""
        self._job_ended.set()

    async def run(self) -> None:
        """Make a spare, wait until it is taken, make the next; until cancelled."""
        failures = 0
        try:
            while True:
                try:
                    spare = await self._make()
                except (OSError, SandboxError) as exc:
                    # Said once, then quietly retried: jobs start without a spare meanwhile, and a
                    # cause that lasts would otherwise fill the log every few seconds.
                    failures += 1
                    level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(level, "cannot make a spare job process (jobs start without one): %s", exc)
                    await trio.sleep(_RETRY)
                    continue
                failures = 0
                self._ready, self._taken = spare, trio.Event()
                await self._taken.wait()
                # Not at once: the job that took it is starting now, on a machine that may
                # have two cores, and the next spare's interpreter and cgroup move slowed that
                # start as much as the spare saved (measured: a sandboxed `true` 31 ms from
                # spawn to exit without a spare, 32 with the next made at once, 16 after 60 ms).
                # A call that has ended (a short one, as most calls of a robot are; the
                # server says so once its Exit is out) has nothing left to slow down: the next
                # spare is then made at once, so that it is ready for a caller that calls
                # again as soon as its call returns.
                with trio.move_on_after(_PAUSE):
                    await self._job_ended.wait()
                if self._dead is spare:
                    self._dead = None
                    await spare.discard()
        finally:
            last, self._ready = self._ready, None
            if last is not None:
                await last.discard()

    async def _make(self) -> Spare:
        self._made += 1
        cgroup = job_cgroup(self._cgroups, f"spare{self._made}")
        try:
            cgroup.make()
            spare = await _spawn(cgroup)
        except BaseException:
            with contextlib.suppress(OSError):
                cgroup.remove()  # nothing has entered it
            raise
        try:
            if await spare.status.receive_some(len(READY)) != READY:
                raise SandboxError(f"a spare exited with {await spare.process.wait()} before it was ready")
            # Only once its interpreter is up, so that the job's cgroup counts none of that CPU;
            # in a thread, since the move may wait for an RCU grace period.
            await trio.to_thread.run_sync(cgroup.enter, spare.process.pid)
        except BaseException:
            await spare.discard()
            raise
        return spare


async def remove_cgroup(cgroup: JobCgroup) -> None:
    """Kill what is left in `cgroup`, wait until it is gone, remove the cgroup (a job's, as
    `node.runner` ends it, or a spare's); even when cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(_CGROUP_GRACE):
        while not cgroup.remove():
            cgroup.kill()
            await trio.sleep(0.005)


async def _spawn(cgroup: JobCgroup) -> Spare:
    """Start `node._spare` with a job's pipes and process group, and its own two pipes."""
    control, status = os.pipe(), os.pipe()  # (read, write) each; not inherited by default
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-I", "-S", _PROGRAM, str(control[0]), str(status[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            cwd="/",
            pass_fds=(control[0], status[1]),
            process_group=0,  # as a job's: os.killpg reaches what its chain starts
        )
    except BaseException:
        os.close(control[1])
        os.close(status[0])
        raise
    finally:
        os.close(control[0])
        os.close(status[1])
    return Spare(process, cgroup, trio.lowlevel.FdStream(control[1]), trio.lowlevel.FdStream(status[0]))
