#!/usr/bin/env python
"""Bulk throughput of `hubnode call` beside ssh and a plain TCP pipe, on 127.0.0.1.

Three directions, each a whole process (or connection) from start to exit:

  upload      N MiB of random bytes into `wc -c` (which must report N MiB)
  download    N MiB out of `head -c N /dev/zero` (count and CRC-32 checked)
  round trip  N MiB of random bytes through `cat` and back (writer thread, half-close,
              read to EOF; count and CRC-32 checked)

each over four ways of reaching the same programs on this machine:

  hubnode call --server PEER@127.0.0.1:PORT SERVICE   a real `hubnode serve` in a temporary
                                                      home (Noise IK, pinned key, sandbox as
                                                      the node has it)
  ssh -c aes128-gcm@openssh.com 127.0.0.1 COMMAND     a private sshd started by the bench
  ssh 127.0.0.1 COMMAND                               the same, ssh's default cipher
  socat TCP-LISTEN:PORT,fork EXEC:COMMAND             no encryption, no framing: the floor

The sshd is the one bench/latency.py starts (bench/_common.py: temporary keys, public-key
auth only); without sshd or socat those rows are skipped, saying so. Runs are interleaved
(every way and direction once, then again), and the table shows medians, with the ratio of
hubnet's throughput to each baseline's, measured in the same run. Beside the wall times,
the CPU seconds that both ends spent per GiB moved (the client program, `hubnode call` or
`ssh`, and the server with the processes it reaped: `hubnode serve` and its job, sshd and its
session, socat and its child; not the bench feeding them): on a machine shared with other
work, the cost that the wall times hide.

    .venv/bin/python bench/throughput.py [--mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    HUBNODE,
    BenchError,
    Server,
    SshServer,
    bytecode_cache,
    children_cpu,
    free_port,
    hubnode_server,
    median,
    process_cpu,
    ssh_server,
)

MiB = 1024 * 1024
_CHUNK = 1 * MiB
_SOCAT_BUFSIZE = 64 * 1024
UPLOAD, DOWNLOAD, ROUND_TRIP = "upload", "download", "round trip"
DIRECTIONS = (UPLOAD, DOWNLOAD, ROUND_TRIP)
HUBNET = "hubnode call"
SSH_GCM = "ssh aes128-gcm"
SSH_DEFAULT = "ssh default cipher"
SOCAT = "socat (plain TCP)"
GCM = "aes128-gcm@openssh.com"
# The programs at the far end, one per direction, alike for every way of reaching them.
_SERVICE_NAMES = {UPLOAD: "sink", DOWNLOAD: "source", ROUND_TRIP: "cat"}


def far_commands(size: int) -> dict[str, list[str]]:
    return {UPLOAD: ["wc", "-c"], DOWNLOAD: ["head", "-c", str(size), "/dev/zero"], ROUND_TRIP: ["cat"]}


def services_toml(size: int) -> str:
    services = "".join(
        f"""
[services.{_SERVICE_NAMES[direction]}]
command = {command!r}
timeout = 3600
max_output = {max(2 * size, 16 * MiB)}
""".replace("'", '"')
        for direction, command in far_commands(size).items()
    )
    return 'listen = "127.0.0.1:0"\n' + services


class Payload:
    """`mib` copies of one 1 MiB random block, and what each direction must get back."""

    def __init__(self, mib: int) -> None:
        self.block = os.urandom(MiB)
        self.mib = mib
        self.size = mib * MiB
        self.crc = self.zeros_crc = 0
        zeros = bytes(MiB)
        for _ in range(mib):
            self.crc = zlib.crc32(self.block, self.crc)
            self.zeros_crc = zlib.crc32(zeros, self.zeros_crc)

    def check(self, what: str, direction: str, received: int, crc: int, text: bytes) -> None:
        if direction == UPLOAD:
            if text.strip() != str(self.size).encode():
                raise BenchError(f"{what}: `wc -c` at the far end counted {text[:40]!r}, sent {self.size}")
            return
        want = self.crc if direction == ROUND_TRIP else self.zeros_crc
        if received != self.size or crc != want:
            raise BenchError(
                f"{what} {direction}: got {received} bytes (CRC-32 {crc:08x}), "
                f"expected {self.size} (CRC-32 {want:08x})"
            )


@dataclass
class Pipe:
    """Either end that the bench talks to: a process's stdin/stdout, or a TCP socket."""

    write: Callable[[bytes], object]
    finish: Callable[[], object]  # end of our data: close stdin, or half-close
    read: Callable[[], bytes]  # b"" at the end


def exchange(pipe: Pipe, direction: str, payload: Payload, deadline: float) -> tuple[int, int, bytes]:
    """Send the payload (unless downloading) from a thread while reading everything back:
    (bytes received, their CRC-32, the first 64 of them)."""
    sending = direction != DOWNLOAD

    def send() -> None:
        with contextlib.suppress(OSError):
            for _ in range(payload.mib if sending else 0):
                pipe.write(payload.block)
            pipe.finish()

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    received, crc, head = 0, 0, b""
    while chunk := pipe.read():
        crc = zlib.crc32(chunk, crc)
        if len(head) < 64:
            head += chunk[: 64 - len(head)]
        received += len(chunk)
        if time.monotonic() > deadline:
            raise BenchError("took longer than its time limit")
    writer.join(timeout=5)
    return received, crc, head


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_process(
    argv: list[str], direction: str, payload: Payload, timeout: float, env: dict[str, str] | None, what: str
) -> float:
    """Wall seconds of one whole process (`hubnode call` or `ssh`), its start included."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, bufsize=0, env=env
        )
        assert proc.stdin is not None and proc.stdout is not None
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        stdin_fd, stdout_fd = proc.stdin.fileno(), proc.stdout.fileno()
        pipe = Pipe(
            lambda data: _write_fd(stdin_fd, data), proc.stdin.close, lambda: os.read(stdout_fd, _CHUNK)
        )
        try:
            received, crc, head = exchange(pipe, direction, payload, time.monotonic() + timeout)
            code = proc.wait()
            elapsed = time.perf_counter() - start
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        if code != 0:
            err.seek(0)
            raise BenchError(f"{what} {direction}: exit {code}: {err.read().decode(errors='replace')}")
    payload.check(what, direction, received, crc, head)
    return elapsed


def run_tcp(address: tuple[str, int], direction: str, payload: Payload, timeout: float) -> float:
    """The same over a bare TCP connection to a socat that runs the far command."""
    start = time.perf_counter()
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipe = Pipe(sock.sendall, lambda: sock.shutdown(socket.SHUT_WR), lambda: sock.recv(_CHUNK))
        received, crc, head = exchange(pipe, direction, payload, time.monotonic() + timeout)
    elapsed = time.perf_counter() - start
    payload.check("socat", direction, received, crc, head)
    return elapsed


def _wait_listening(address: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(address, timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise BenchError(f"socat exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise BenchError(f"socat did not start listening on {address}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def socat_servers(size: int) -> Iterator[dict[str, tuple[tuple[str, int], int]]]:
    """One `socat TCP-LISTEN:...,fork EXEC:COMMAND` per direction, as (address, pid) by
    direction; {} without socat."""
    if not shutil.which("socat"):
        yield {}
        return
    procs: list[subprocess.Popen[bytes]] = []
    addresses: dict[str, tuple[tuple[str, int], int]] = {}
    try:
        for direction, command in far_commands(size).items():
            port = free_port()
            argv = [
                *("socat", "-b", str(_SOCAT_BUFSIZE), "-t", "30"),
                f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                "EXEC:" + " ".join(command),
            ]
            # Its complaints (a reader gone first) would only clutter the table; the checks judge.
            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            addresses[direction] = (("127.0.0.1", port), procs[-1].pid)
            _wait_listening(addresses[direction][0], procs[-1])
        yield addresses
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- report --------------------------------------------------------------------------

Runner = Callable[[str, Payload, float], float]
# After a transfer, before reading the server's CPU: time for it to reap the connection's
# processes (sshd's session, socat's child), whose CPU only then counts as its own.
_REAP_PAUSE = 0.2


@dataclass(frozen=True)
class Way:
    """One way of moving the bytes: how to run a direction, and which process serves it."""

    run: Runner
    server_pid: Callable[[str], int]  # by direction


def ways(
    server: Server,
    sshd: SshServer | None,
    socat: dict[str, tuple[tuple[str, int], int]],
    size: int,
    env: dict[str, str],
) -> dict[str, Way]:
    """The ways to run each direction, by name: hubnet first, then the baselines that exist."""
    commands = far_commands(size)
    hubnode = [HUBNODE, "--home", str(server.client_home), "call", "--server", server.target]
    found = {
        HUBNET: Way(
            lambda d, p, t: run_process([*hubnode, _SERVICE_NAMES[d]], d, p, t, env, HUBNET),
            lambda d: server.pid,
        )
    }
    if sshd is not None:
        ssh = sshd.argv
        found[SSH_GCM] = Way(
            lambda d, p, t: run_process(ssh(*commands[d], cipher=GCM), d, p, t, None, SSH_GCM),
            lambda d: sshd.pid,
        )
        found[SSH_DEFAULT] = Way(
            lambda d, p, t: run_process(ssh(*commands[d]), d, p, t, None, SSH_DEFAULT), lambda d: sshd.pid
        )
    if socat:
        found[SOCAT] = Way(lambda d, p, t: run_tcp(socat[d][0], d, p, t), lambda d: socat[d][1])
    return found


def measure(way: Way, direction: str, payload: Payload, timeout: float) -> tuple[float, float]:
    """(wall seconds, CPU seconds of both ends) of one transfer."""
    pid = way.server_pid(direction)
    server_before, client_before = process_cpu(pid), children_cpu()
    wall = way.run(direction, payload, timeout)
    time.sleep(_REAP_PAUSE)
    return wall, process_cpu(pid) - server_before + children_cpu() - client_before


Times = dict[str, dict[str, list[float]]]


def _width(times: Times) -> int:
    return max(len(f"hubnet CPU / {name}") for name in times) + 2


def _table(title: str, times: Times, value: Callable[[list[float]], float], fmt: str) -> None:
    width = _width(times)
    print(f"{title:<{width}}" + "".join(f"{d:>13}" for d in DIRECTIONS))
    for name, by_direction in times.items():
        print(f"{name:<{width}}" + "".join(f"{value(by_direction[d]):>13{fmt}}" for d in DIRECTIONS))


def report(walls: Times, cpus: Times, mib: int, runs: int) -> None:
    width = _width(walls)
    _table("median MiB/s", walls, lambda t: mib / median(t), ".1f")
    print()
    targets = {SSH_GCM: 1.5, SOCAT: 0.5}
    print(f"{'hubnet / baseline':<{width}}" + "".join(f"{d:>13}" for d in DIRECTIONS) + "   target")
    for name in [n for n in walls if n != HUBNET]:
        ratios = [median(walls[name][d]) / median(walls[HUBNET][d]) for d in DIRECTIONS]
        target = targets.get(name)
        verdict = ""
        if target is not None:
            verdict = f"   >= {target}x: " + ("met" if min(ratios) >= target else "NOT met")
        print(f"{name:<{width}}" + "".join(f"{r:>12.2f}x" for r in ratios) + verdict)
    print()
    _table("CPU s per GiB, both ends", cpus, lambda c: median(c) * 1024 / mib, ".2f")
    for name in [n for n in cpus if n != HUBNET]:
        ratios = [median(cpus[HUBNET][d]) / median(cpus[name][d]) for d in DIRECTIONS]
        print(f"{'hubnet CPU / ' + name:<{width}}" + "".join(f"{r:>12.2f}x" for r in ratios))
    print()
    print(f"runs, {runs} of each, interleaved: wall s (CPU s)")
    for name, by_direction in walls.items():
        for d in DIRECTIONS:
            pairs = zip(by_direction[d], cpus[name][d], strict=True)
            print(f"  {name:<{width}} {d:<11} " + " ".join(f"{w:.3f} ({c:.2f})" for w, c in pairs))
    print("  (every time includes starting the process or connection: `hubnode call` and ssh")
    print("   start an interpreter or a handshake; see bench/latency.py for those alone)")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB to move each way (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="measurements of each (default 3)")
    args = parser.parse_args()
    if args.mib < 1 or args.runs < 1:
        parser.error("--mib and --runs must be at least 1")

    payload = Payload(args.mib)
    timeout = 60 + args.mib  # at least 1 MiB/s, or the run is abandoned as hung
    skipped: list[str] = []
    try:
        with (
            bytecode_cache() as env,
            hubnode_server(services_toml(payload.size), env) as server,
            ssh_server() as (sshd, ssh_reason),
            socat_servers(payload.size) as socat,
        ):
            if sshd is None:
                skipped.append(f"{SSH_GCM}, {SSH_DEFAULT}: {ssh_reason}")
            if not socat:
                skipped.append(f"{SOCAT}: socat not installed (Debian: apt-get install socat)")
            found = ways(server, sshd, socat, payload.size, env)
            # Warm-up: creates the client's identity key and faults in every path (not the
            # download: its far end always sends the whole size).
            warm = Payload(1)
            for way in found.values():
                for direction in (UPLOAD, ROUND_TRIP):
                    way.run(direction, warm, 60)
            walls: Times = {name: {d: [] for d in DIRECTIONS} for name in found}
            cpus: Times = {name: {d: [] for d in DIRECTIONS} for name in found}
            for _ in range(args.runs):  # interleaved, so drift hits every way alike
                for direction in DIRECTIONS:
                    for name, way in found.items():
                        wall, cpu = measure(way, direction, payload, timeout)
                        walls[name][direction].append(wall)
                        cpus[name][direction].append(cpu)
    except BenchError as exc:
        print(f"throughput: FAILED: {exc}", file=sys.stderr)
        return 1

    print(f"throughput: {args.mib} MiB each way on 127.0.0.1, {args.runs} interleaved runs of each")
    print("  upload: into `wc -c`; download: from `head -c N /dev/zero`; round trip: through `cat`")
    print("  every transfer checked (byte count, CRC-32, or the far end's count): OK")
    for line in skipped:
        print(f"  SKIPPED {line}")
    print()
    report(walls, cpus, args.mib, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
