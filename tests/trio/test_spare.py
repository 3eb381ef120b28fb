"""node.spare with real processes and the machine's real cgroups (root, cgroup-tools, bwrap).

A job started from a spare must be the job it would have been through cgexec: in a cgroup
of its own, with its own limits, refused with the same SpawnError, and nothing of it or of
the spares left once the node stops.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from hubnet.node import spare as node_spare
from hubnet.node.runner import Job, JobLimits, JobOutcome, SpawnError
from hubnet.node.sandbox import Cgroups, Confinement, Host, Isolation, probe_host
from hubnet.node.spare import Spare, Spares, encode_instruction
from tests.helpers import lacking, require_program
from tests.trio.test_runner import BASE_ENV, ROOMY, Collect, gone, no_stdin

PYTHON = "/usr/bin/python3"  # Debian's, readable by the sandboxed job's user
UNSANDBOXED = Isolation(sandbox=False, max_processes=7)


@pytest.fixture(scope="module")
def host() -> Host:
    require_program("bwrap")
    found = probe_host()
    if found.cgroups is None:
        lacking(f"no cgroups for this user ({found.cgroups_note}): the node keeps no spares")
    if found.bwrap is None:
        lacking(found.bwrap_problem)
    return found


def cgroups_of(host: Host) -> Cgroups:
    assert host.cgroups is not None
    return host.cgroups


def job_folders(cgroups: Cgroups, name: str) -> list[Path]:
    """The folders of cgroup `name` that exist, in every hierarchy."""
    return [base / name for base in set(cgroups.folders.values()) if (base / name).exists()]


def own_folders(cgroups: Cgroups) -> list[Path]:
    """Every job or spare cgroup of this process's, in every hierarchy."""
    prefix = f"hubnet-job-{os.getpid()}-"
    return [p for base in set(cgroups.folders.values()) for p in base.iterdir() if p.name.startswith(prefix)]


@asynccontextmanager
async def keeping(cgroups: Cgroups) -> AsyncIterator[Spares]:
    spares = Spares(cgroups)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spares.run)
        yield spares
        nursery.cancel_scope.cancel()


async def ready(spares: Spares) -> Spare:
    """The spare waiting for the next job, once there is one."""
    with trio.fail_after(30):
        while spares._ready is None:
            await trio.sleep(0.01)
    return spares._ready


def confined(
    host: Host, tmp_path: Path, isolation: Isolation = UNSANDBOXED, name: str = "job"
) -> Confinement:
    tmp_path.chmod(0o777)  # a root node's sandboxed job runs as nobody
    return Confinement(host, isolation, workdir=str(tmp_path), name=name)


async def run(
    argv: list[str], confinement: Confinement, spares: Spares | None, limits: JobLimits = ROOMY
) -> tuple[JobOutcome, Collect]:
    out = Collect()
    cwd = confinement.workdir or "/"
    job = Job(argv, env=BASE_ENV, cwd=cwd, limits=limits, confinement=confinement, spares=spares)
    with trio.fail_after(60):
        outcome = await job.run(no_stdin(), out)
    return outcome, out


def cgroup_names(cgroup_file: bytes) -> set[str]:
    """The last path element of each v1 hierarchy (or the v2 group) in /proc/PID/cgroup."""
    return {
        line.rsplit("/", 1)[-1]
        for line in cgroup_file.decode().splitlines()
        if "pids" in line or "memory" in line
    }


async def test_a_job_from_a_spare_runs_in_the_spares_cgroup_with_the_jobs_limits(
    host: Host, tmp_path: Path
) -> None:
    cgroups = cgroups_of(host)
    async with keeping(cgroups) as spares:
        spare = await ready(spares)
        name = spare.cgroup.name
        confinement = confined(host, tmp_path)
        send, receive = trio.open_memory_channel[bytes](1)
        out = Collect()
        limits = JobLimits(timeout=60, max_output=1 << 20, memory_bytes=48 << 20)
        job = Job(
            ["sh", "-c", "cat /proc/self/cgroup; exec cat"],
            env=BASE_ENV,
            cwd=str(tmp_path),
            limits=limits,
            confinement=confinement,
            spares=spares,
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job.run, receive, out)
            with trio.fail_after(30):
                await out.first.wait()
            # While it runs: its cgroup is the spare's, with this job's limits in it.
            assert cgroup_names(bytes(out.stdout)) == {name}
            assert (cgroups.folders["pids"] / name / "pids.max").read_text().strip() == "7"
            if "memory" in cgroups.folders:
                limit = "memory.limit_in_bytes" if cgroups.version == 1 else "memory.max"
                assert (cgroups.folders["memory"] / name / limit).read_text().strip() == str(48 << 20)
            await send.aclose()
        assert job_folders(cgroups, name) == []  # removed with the job


async def test_the_memory_limit_holds_for_a_sandboxed_job_from_a_spare(host: Host, tmp_path: Path) -> None:
    cgroups = cgroups_of(host)
    if "memory" not in cgroups.folders:
        pytest.skip("no memory cgroup here: memory caps each process, spare or not")
    require_program(PYTHON)
    limits = JobLimits(timeout=60, max_output=1 << 20, memory_bytes=64 << 20)
    hog = [
        PYTHON,
        "-c",
        "import sys; b = bytearray(int(sys.argv[1]) << 20); b[::4096] = b'x' * len(b[::4096])",
    ]
    async with keeping(cgroups) as spares:
        outcomes = []
        for mib in ("16", "128"):
            spare = await ready(spares)
            confinement = confined(host, tmp_path, Isolation(), name=f"hog{mib}")
            outcome, _ = await run([*hog, mib], confinement, spares, limits)
            assert confinement.cgroup is spare.cgroup, "the job did not start from the spare"
            outcomes.append(outcome)
    fits, hogs = outcomes
    assert fits.exit_code == 0, fits
    assert hogs.exit_code != 0, hogs  # OOM-killed in the cgroup: bwrap reports it as a failure


async def test_a_job_that_cannot_start_is_the_same_spawn_error_with_a_spare(
    host: Host, tmp_path: Path
) -> None:
    cgroups = cgroups_of(host)
    # The chain's first program is missing: the spare's exec fails, as open_process's would.
    broken = dataclasses.replace(host, prlimit="/nonexistent/prlimit")
    bare = dataclasses.replace(broken, cgroups=None)
    async with keeping(cgroups) as spares:
        messages = []
        for argv in (["no-such-program-here"], ["true"]):
            spare = await ready(spares)
            with pytest.raises(SpawnError) as from_spare:
                await run(argv, confined(broken, tmp_path), spares)
            with pytest.raises(SpawnError) as without:
                await run(argv, confined(bare, tmp_path), None)
            assert str(from_spare.value) == str(without.value)
            messages.append(str(from_spare.value))
            if argv == ["true"]:  # the spare was used, and nothing of it is left
                assert gone(spare.process.pid)
                assert job_folders(cgroups, spare.cgroup.name) == []
            else:  # refused before any process is needed: the spare waits for the next job
                assert spares._ready is spare
    assert messages == [
        "cannot start 'no-such-program-here': no such executable file",
        "cannot start 'true': No such file or directory",
    ]


async def test_consecutive_jobs_each_get_a_fresh_spare_and_cgroup(host: Host, tmp_path: Path) -> None:
    cgroups = cgroups_of(host)
    names = []
    async with keeping(cgroups) as spares:
        for _ in range(3):
            spare = await ready(spares)
            outcome, out = await run(["cat", "/proc/self/cgroup"], confined(host, tmp_path), spares)
            assert outcome.exit_code == 0
            assert cgroup_names(bytes(out.stdout)) == {spare.cgroup.name}
            assert job_folders(cgroups, spare.cgroup.name) == []
            names.append(spare.cgroup.name)
    assert len(set(names)) == 3
    assert all(name.startswith(f"hubnet-job-{os.getpid()}-spare") for name in names)  # sweep_cgroups's


async def test_the_next_spare_is_made_as_soon_as_the_job_ends(
    host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short job's end (as the server says it, once the Exit is sent), not the pause after
    a spare is taken, starts the next spare: a robot that calls again as soon as its call
    returns finds one."""
    monkeypatch.setattr(node_spare, "_PAUSE", 3600.0)
    cgroups = cgroups_of(host)
    async with keeping(cgroups) as spares:
        first = await ready(spares)
        outcome, _ = await run(["true"], confined(host, tmp_path), spares)
        assert outcome.exit_code == 0
        spares.job_ended()
        second = await ready(spares)  # within ready()'s 30 s, not the hour's pause
        assert second is not first


async def test_stopping_leaves_no_spare_and_no_cgroup(host: Host) -> None:
    cgroups = cgroups_of(host)
    async with keeping(cgroups) as spares:
        spare = await ready(spares)
        pid = spare.process.pid
        assert job_folders(cgroups, spare.cgroup.name) != []
        assert [
            int(p) for p in (cgroups.folders["pids"] / spare.cgroup.name / "cgroup.procs").read_text().split()
        ] == [pid]
    assert gone(pid)
    assert own_folders(cgroups) == []


async def test_without_a_spare_ready_the_job_starts_through_cgexec(host: Host, tmp_path: Path) -> None:
    cgroups = cgroups_of(host)
    idle = Spares(cgroups)  # its task never runs: it has no spare to give
    confinement = confined(host, tmp_path, name="plain")
    outcome, out = await run(["cat", "/proc/self/cgroup"], confinement, idle)
    assert outcome.exit_code == 0
    assert cgroup_names(bytes(out.stdout)) == {f"hubnet-job-{os.getpid()}-plain"}
    assert own_folders(cgroups) == []


async def test_a_spare_that_died_waiting_is_not_used_and_is_replaced(host: Host, tmp_path: Path) -> None:
    cgroups = cgroups_of(host)
    async with keeping(cgroups) as spares:
        dead = await ready(spares)
        os.kill(dead.process.pid, signal.SIGKILL)
        with trio.fail_after(30):
            while dead.process.poll() is None:
                await trio.sleep(0.01)
        outcome, out = await run(
            ["cat", "/proc/self/cgroup"], confined(host, tmp_path, name="instead"), spares
        )
        assert outcome.exit_code == 0
        assert cgroup_names(bytes(out.stdout)) == {f"hubnet-job-{os.getpid()}-instead"}
        fresh = await ready(spares)
        assert fresh is not dead
        assert job_folders(cgroups, dead.cgroup.name) == []


async def test_the_spare_execs_exactly_what_it_is_told(host: Host, tmp_path: Path) -> None:
    """argv, environment, working directory, default SIGPIPE, and no fd but the job's three."""
    cgroups = cgroups_of(host)
    script = (
        'printf "%s|" "$0" "$1" "$PWD" "$ONLY"; echo; '
        "ls /proc/self/fd | wc -l; grep SigIgn /proc/self/status; env"
    )
    async with keeping(cgroups) as spares:
        spare = await ready(spares)
        sh = require_program("sh")
        await spare.launch([sh, "-c", script, "a b", "c"], env={"ONLY": "x y"}, cwd=str(tmp_path))
        assert spare.process.stdout is not None
        output = b""
        with trio.fail_after(30):
            while chunk := await spare.process.stdout.receive_some():
                output += chunk
            assert await spare.process.wait() == 0
        await spare.discard()
    words, fds, ignored, *env = output.decode().splitlines()
    assert words == f"a b|c|{tmp_path}|x y|"
    assert "ONLY=x y" in env and not any(line.startswith("PATH=") for line in env), env
    assert int(fds) == 4  # 0, 1, 2 and the one `ls` reads
    assert int(ignored.split()[1], 16) & (1 << (signal.SIGPIPE - 1)) == 0


def test_an_instruction_execve_would_refuse_is_refused_before_it_is_sent() -> None:
    for argv, env in (
        ([], {}),
        (["/bin/true\0"], {}),
        (["/bin/true"], {"A=B": "c"}),
        (["/bin/true"], {"": "c"}),
    ):
        with pytest.raises(ValueError):
            encode_instruction(argv, env, "/")
    with pytest.raises(ValueError):
        encode_instruction(["/bin/true", "x" * (2 << 20)], {}, "/")


def test_the_spare_program_decodes_what_the_node_encodes() -> None:
    from hubnet.node._spare import decode_instruction

    data = encode_instruction(["/bin/echo", "", "é", "a=b"], {"K": "v=w", "E": ""}, "/tmp")
    assert decode_instruction(data) == (
        [b"/bin/echo", b"", "é".encode(), b"a=b"],
        {b"K": b"v=w", b"E": b""},
        b"/tmp",
    )
    for bad in (
        b"",
        b"/\x000\x00X=1\x00",
        b"/\x00one\x00/bin/x\x00",
        b"/\x001\x00relative\x00",
        b"/\x001\x00/bin/x\x00NO\x00",
    ):
        with pytest.raises(ValueError):
            decode_instruction(bad)


async def test_a_spare_that_cannot_be_made_is_said_once_and_retried_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, autojump_clock: trio.abc.Clock
) -> None:
    """No cgroup folder to make it in: jobs start without a spare, and the log says so once,
    not every few seconds for as long as the node runs."""
    missing = Cgroups(1, {"pids": tmp_path / "no-such-hierarchy"}, {"pids": "/"}, "cgexec")
    spares = Spares(missing)
    with caplog.at_level(logging.DEBUG, logger="hubnet.node"), trio.move_on_after(60):
        await spares.run()
    said = [r for r in caplog.records if "cannot make a spare" in r.getMessage()]
    assert len(said) > 3  # retried all along (every 5 s of the minute)
    assert [r.levelno for r in said].count(logging.WARNING) == 1
    assert spares.take() is None
