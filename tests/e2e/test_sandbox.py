"""Every job in a sandbox, through a real `hubnode serve` and real `hubnode call`s.

Each service below is an attack or a probe from inside a job: a fork loop and a fork bomb,
a `setsid` child left holding the output, a connection to the host's loopback, writes
outside the job's folder, the limits seen by every element of a shell pipeline, memory
spread over several processes, and the job's user and capabilities. Where the node cannot
make cgroups (no v1 hierarchy or delegated v2 subtree for its user) the memory test is
skipped, saying so; everything else holds on any Linux with bubblewrap.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubnet.node.sandbox import probe_cgroups
from tests.e2e.harness import Client, Server, toml_string, wait_until
from tests.helpers import reachable_dir, require_program

ROOT = os.geteuid() == 0
NOBODY = 65534
FORK_CAP = 16
PIPE_CPU = 7
PIPE_PROCESSES = 33
# Durations that name the stray sleeps, so that the test can look for them on the host.
STRAY = "123.25"
STRAY_UNSANDBOXED = "123.5"
BOMB = "b() { b | b & }; b; sleep 10"
LIMITS = r"grep -h -E '^Max (cpu time|processes)' /proc/self/limits"
PYTHON = "/usr/bin/python3"  # Debian's, readable by any user (the test venv's may not be)
HOG = f"{PYTHON} -c 'import time; b = bytearray(40 << 20); time.sleep(1)'"
HOGS = f"{HOG} & a=$!; {HOG} & b=$!; {HOG} & c=$!; {HOG} & d=$!; wait $a && wait $b && wait $c && wait $d"
# Forks sleepers until the kernel refuses, then says how many it got.
FORKS = """
import os, time
forks = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    forks += 1
print(forks)
"""


@dataclass(frozen=True)
class Node:
    server: Server
    outside: Path  # a folder anyone may write (mode 0777): only the sandbox keeps jobs out
    state: Path  # the `files` service's writable folder
    listener: socket.socket  # on the host's 127.0.0.1, for the network tests
    accepted: list[bytes]  # what each connection to `listener` sent

    @property
    def target(self) -> str:
        return self.server.target


def services_toml(outside: Path, state: Path, port: int) -> str:
    files_script = (
        'touch /tmp/x && echo tmp; touch "$HOME/x" && echo home; touch "$STATE/x" && echo state; '
        'touch "$OUTSIDE/x" 2>/dev/null || echo outside-refused; '
        "touch /etc/hubnet-sandbox-test 2>/dev/null || echo etc-refused; "
        '[ -z "$(ls -A /run)" ] && echo no-host-sockets'
    )
    return f"""
listen = "127.0.0.1:0"
max_jobs = 16

[services.procs]
description = "forks up to 100 sleepers, then says how many it got"
command = [{toml_string(PYTHON)}, "-c", {toml_string(FORKS)}]
max_processes = {FORK_CAP}

[services.bomb]
command = ["sh", "-c", {toml_string(BOMB)}]
max_processes = {FORK_CAP}
timeout = 3

[services.setsid]
command = ["sh", "-c", "setsid sleep {STRAY} & sleep 0.5; echo done"]
timeout = 20

[services.setsid-unsandboxed]
command = ["sh", "-c", "setsid sleep {STRAY_UNSANDBOXED} & sleep 0.5; echo done"]
timeout = 20
sandbox = false

[services.net-off]
command = ["bash", "-c", "echo hi > /dev/tcp/127.0.0.1/{port} && echo connected"]

[services.net-on]
command = ["bash", "-c", "echo hi > /dev/tcp/127.0.0.1/{port} && echo connected"]
network = true

[services.files]
command = ["sh", "-c", {toml_string(files_script)}]
env = {{ OUTSIDE = {toml_string(outside)}, STATE = {toml_string(state)} }}
writable = [{toml_string(state)}]

[services.limits]
command = ["sh", "-c", "{LIMITS} | cat & sleep 0.05 | {LIMITS}; wait"]
cpu_seconds = {PIPE_CPU}
max_processes = {PIPE_PROCESSES}

[services.who]
command = ["sh", "-c", "id -u; grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status"]

[services.hogs]
description = "four processes of 40 MiB each under a 100 MiB cap for the job"
command = ["sh", "-c", {toml_string(HOGS)}]
memory = "100M"

[services.one-hog]
command = ["sh", "-c", {toml_string(HOG)}]
memory = "100M"
"""


def _accept_all(listener: socket.socket, accepted: list[bytes]) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                accepted.append(conn.recv(100))
            except OSError:
                accepted.append(b"")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    require_program("bwrap")
    require_program("bash")
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[bytes] = []
    threading.Thread(target=_accept_all, args=(listener, accepted), daemon=True).start()
    with reachable_dir() as outside, reachable_dir() as state:
        outside.chmod(0o777)
        state.chmod(0o777)
        home = tmp_path_factory.mktemp("sandbox")
        toml = services_toml(outside, state, listener.getsockname()[1])
        try:
            with Server(home, toml) as server:
                yield Node(server, outside, state, listener, accepted)
        finally:
            listener.close()


@pytest.fixture
def client(tmp_path: Path) -> Client:
    return Client(tmp_path / "client")


def _strays(duration: str) -> list[int]:
    """The pids of `sleep DURATION` processes on this host."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == f"sleep\0{duration}\0".encode():
                stat = (entry / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_the_start_line_says_which_isolation_is_in_force(node: Node) -> None:
    line = node.server.wait_for_log(lambda s: "isolation: bwrap" in s, 5)
    assert line is not None, node.server.log
    assert ("jobs run as nobody" if ROOT else "jobs run as this node's user") in line
    assert re.search(r"cgroups (v1|v2|none)", line), line
    warning = node.server.wait_for_log(lambda s: "service setsid-unsandboxed: sandbox = false" in s, 5)
    assert warning is not None and "WARNING" in warning, node.server.log


def test_a_fork_loop_gets_no_more_than_max_processes(node: Node, client: Client) -> None:
    require_program(PYTHON)
    result = client.call(node.target, "procs")
    assert result.returncode == 0, result.stderr
    forks = int(result.stdout)  # besides the forking process itself
    assert FORK_CAP - 3 <= forks < FORK_CAP, forks


def test_a_fork_bomb_is_capped_and_leaves_the_node_serving(node: Node, client: Client) -> None:
    bombs = [threading.Thread(target=client.call, args=(node.target, "bomb")) for _ in range(2)]
    for bomb in bombs:
        bomb.start()
    time.sleep(1)
    running = sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and BOMB.encode() in _cmdline(p))
    assert 0 < running <= 2 * FORK_CAP, running  # two bombs, each capped
    answered = client.call(node.target, "who")
    assert answered.returncode == 0, answered.stderr
    for bomb in bombs:
        bomb.join(60)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_setsid_child_is_gone_with_the_job_and_its_exit_is_reported(node: Node, client: Client) -> None:
    started = time.monotonic()
    result = client.call(node.target, "setsid")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n"
    assert elapsed < 10, elapsed  # not held until the timeout (20 s) by the stray's pipes
    assert wait_until(lambda: not _strays(STRAY), 5), _strays(STRAY)
    line = node.server.wait_for_log(lambda s: " setsid for " in s, 5)
    assert line is not None and ": exit 0 after" in line and "timeout" not in line, line


def test_an_unsandboxed_setsid_child_cannot_turn_an_exit_into_a_timeout(node: Node, client: Client) -> None:
    started = time.monotonic()
    result = client.call(node.target, "setsid-unsandboxed")
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10
    line = node.server.wait_for_log(lambda s: " setsid-unsandboxed for " in s, 5)
    assert line is not None and ": exit 0 after" in line and "timeout" not in line, line
    if probe_cgroups()[0] is not None:  # the job's cgroup kills what left its process group
        assert wait_until(lambda: not _strays(STRAY_UNSANDBOXED), 5), _strays(STRAY_UNSANDBOXED)
    else:
        for pid in _strays(STRAY_UNSANDBOXED):
            os.kill(pid, 9)


def test_no_network_unless_the_service_says_so(node: Node, client: Client) -> None:
    refused = client.call(node.target, "net-off")
    assert refused.returncode != 0 and b"connected" not in refused.stdout
    assert node.accepted == []
    allowed = client.call(node.target, "net-on")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == b"connected\n"
    assert wait_until(lambda: node.accepted == [b"hi\n"], 5), node.accepted


def test_a_job_writes_only_its_folder_its_tmp_and_its_writable_folders(node: Node, client: Client) -> None:
    result = client.call(node.target, "files")
    assert result.returncode == 0, result.stderr
    expected = ["tmp", "home", "state", "outside-refused", "etc-refused", "no-host-sockets"]
    assert result.stdout.decode().split() == expected
    assert (node.state / "x").exists()  # the writable folder is the host's own
    assert not (node.outside / "x").exists()
    assert not Path("/etc/hubnet-sandbox-test").exists()
    assert not Path("/tmp/x").exists() or Path("/tmp/x").stat().st_mtime < time.time() - 60  # a private /tmp


def test_limits_are_in_every_pipeline_element_in_20_of_20_calls(node: Node, client: Client) -> None:
    processes = PIPE_PROCESSES if ROOT else PIPE_PROCESSES + 1  # bwrap's init counts where it runs
    for _ in range(20):
        result = client.call(node.target, "limits")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.decode().splitlines()
        assert len(lines) == 4, lines  # two limits, from each of the two processes
        for line in lines:
            numbers = [int(n) for n in re.findall(r"\b\d+\b", line)]
            expected = [PIPE_CPU, PIPE_CPU + 1] if "cpu" in line else [processes, processes]
            assert numbers == expected, line


def test_jobs_have_no_capabilities_and_run_as_nobody_when_the_node_is_root(
    node: Node, client: Client
) -> None:
    result = client.call(node.target, "who")
    assert result.returncode == 0, result.stderr
    uid, *caps = result.stdout.decode().splitlines()
    assert int(uid) == (NOBODY if ROOT else os.getuid())
    assert len(caps) == 4 and all(line.split()[1] == "0000000000000000" for line in caps), caps


def test_memory_caps_the_whole_job(node: Node, client: Client) -> None:
    cgroups, why = probe_cgroups()
    if cgroups is None or "memory" not in cgroups.folders:
        pytest.skip(f"no memory cgroup for this user ({why}): memory caps each process")
    require_program(PYTHON)
    alone = client.call(node.target, "one-hog")
    assert alone.returncode == 0, alone.stderr  # 40 MiB fits in the 100 MiB
    together = client.call(node.target, "hogs")
    assert together.returncode != 0, together.stderr  # 4 x 40 MiB do not, though each would


SPARE = re.compile(r"hubnet-job-(\d+)-spare\d+")  # node.spare's, named by the node's pid


def test_a_stopped_node_leaves_no_spare_process_and_no_cgroup(tmp_path: Path, client: Client) -> None:
    cgroups, why = probe_cgroups()
    if cgroups is None:
        pytest.skip(f"no cgroups for this user ({why}): the node keeps no spare")
    bases = set(cgroups.folders.values())

    def spares() -> dict[Path, list[int]]:
        """Every spare's cgroup folder on this machine, with the processes in it."""
        found = {}
        for base in bases:
            for folder in base.iterdir():
                if SPARE.fullmatch(folder.name):
                    with contextlib.suppress(FileNotFoundError):
                        found[folder] = [int(p) for p in (folder / "cgroup.procs").read_text().split()]
        return found

    def owner(folder: Path) -> str:
        match = SPARE.fullmatch(folder.name)
        assert match is not None
        return match[1]

    before = set(spares())
    toml = 'listen = "127.0.0.1:0"\n\n[services.true]\ncommand = ["true"]\n'
    with Server(tmp_path / "node", toml) as server:
        assert client.call(server.target, "true").returncode == 0
        # The call took a spare; the node makes the next one in the background.
        assert wait_until(lambda: any(pids for f, pids in spares().items() if f not in before), 30)
        ours = {f: pids for f, pids in spares().items() if f not in before}
        [node_pid] = {owner(f) for f in ours}
        [spare] = {pid for pids in ours.values() for pid in pids}  # one spare, in every hierarchy
        assert b"_spare.py" in _cmdline(Path(f"/proc/{spare}"))
    assert [f for f in spares() if owner(f) == node_pid] == [], "the stopped node left a spare's cgroup"
    assert b"_spare.py" not in _cmdline(Path(f"/proc/{spare}")), "the stopped node left its spare"
