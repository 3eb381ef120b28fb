#!/usr/bin/env python
"""Bulk throughput of `hubnode call` against a plain TCP pipe, both through `cat` on 127.0.0.1.

Starts a real `hubnode serve` with a `cat` service in a temporary home, pushes N MiB
through `hubnode call --server PEER@127.0.0.1:PORT cat` and reads it all back (writer
thread, half-close, read to EOF), checking byte count and SHA-256. The baseline does the
same round trip over a bare TCP socket to `socat ... EXEC:cat` (or, without socat, a small
Python splice server in its own process). Runs are interleaved; best and median are shown.

    .venv/bin/python bench/throughput.py [--mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HUBNODE, PYTHON, BenchError, Server, bytecode_cache, hubnode_server, median

MiB = 1024 * 1024
_CHUNK = 1 * MiB
_BUFSIZE = 64 * 1024


def _services_toml(mib: int) -> str:
    return f"""listen = "127.0.0.1:0"

[services.cat]
command = ["cat"]
description = "echo stdin to stdout"
timeout = 3600
max_output = {max(2 * mib, 16) * MiB}
"""


class _Payload:
    """`mib` copies of one 1 MiB random block, and the digest the far end must return."""

    def __init__(self, mib: int) -> None:
        self.block = os.urandom(MiB)
        self.mib = mib
        digest = hashlib.sha256()
        for _ in range(mib):
            digest.update(self.block)
        self.sha256 = digest.hexdigest()
        self.size = mib * MiB

    def check(self, what: str, received: int, sha256: str) -> None:
        if received != self.size or sha256 != self.sha256:
            raise BenchError(
                f"{what}: got {received} bytes sha256 {sha256[:16]}…, "
                f"sent {self.size} bytes sha256 {self.sha256[:16]}…"
            )


def _write_all(write: Callable[[bytes], object], finish: Callable[[], object], payload: _Payload) -> None:
    with contextlib.suppress(OSError):
        for _ in range(payload.mib):
            write(payload.block)
        finish()


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_hubnet(server: Server, payload: _Payload, timeout: float, env: dict[str, str]) -> float:
    """One round trip through `hubnode call ... cat`; wall seconds including the client's start."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [HUBNODE, "--home", str(server.client_home), "call", "--server", server.target, "cat"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            bufsize=0,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        stdin = proc.stdin
        write = lambda data: _write_fd(stdin.fileno(), data)  # noqa: E731
        writer = threading.Thread(target=_write_all, args=(write, stdin.close, payload), daemon=True)
        writer.start()
        digest, received, fd = hashlib.sha256(), 0, proc.stdout.fileno()
        try:
            while chunk := os.read(fd, _CHUNK):
                digest.update(chunk)
                received += len(chunk)
            code = proc.wait()
            elapsed = time.perf_counter() - start
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            writer.join(timeout=5)
        if code != 0:
            err.seek(0)
            raise BenchError(f"hubnode call exited with {code}: {err.read().decode(errors='replace')}")
    payload.check("hubnode call", received, digest.hexdigest())
    return elapsed


def run_tcp(address: tuple[str, int], payload: _Payload, timeout: float) -> float:
    """The same round trip over a bare TCP socket to the baseline cat server."""
    start = time.perf_counter()
    deadline = start + timeout
    sock = socket.create_connection(address, timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finish = lambda: sock.shutdown(socket.SHUT_WR)  # noqa: E731
        writer = threading.Thread(target=_write_all, args=(sock.sendall, finish, payload), daemon=True)
        writer.start()
        digest, received = hashlib.sha256(), 0
        while chunk := sock.recv(_CHUNK):
            digest.update(chunk)
            received += len(chunk)
            if time.perf_counter() > deadline:
                raise BenchError(f"baseline round trip took longer than {timeout:.0f} s")
        elapsed = time.perf_counter() - start
        writer.join(timeout=5)
    finally:
        sock.close()
    payload.check("baseline", received, digest.hexdigest())
    return elapsed


# --- the baseline server -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(address: tuple[str, int], proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(address, timeout=1):
                return
        except OSError:
            if proc.poll() is not None:
                raise BenchError(f"{what} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise BenchError(f"{what} did not start listening on {address}") from None
            time.sleep(0.05)


@contextlib.contextmanager
def baseline_server(kind: str) -> Iterator[tuple[str, tuple[str, int]]]:
    """Yield (description, address) of a TCP server that runs `cat` per connection."""
    if kind == "auto":
        kind = "socat" if shutil.which("socat") else "python"
    if kind == "socat":
        port = _free_port()
        argv = [
            "socat",
            "-b",
            str(_BUFSIZE),
            "-t",
            "30",
            f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            "EXEC:cat",
        ]
        description = " ".join(argv).replace(str(port), "PORT")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    else:
        proc = subprocess.Popen(
            [PYTHON, __file__, "--serve-baseline"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.isdigit():
            proc.kill()
            proc.wait()
            raise BenchError(f"python baseline server did not report its port ({line!r})")
        port = int(line)
        description = f"python splice server (socket <-> cat pipes, {_BUFSIZE // 1024} KiB reads)"
    address = ("127.0.0.1", port)
    try:
        _wait_listening(address, proc, description)
        yield description, address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _splice_connection(conn: socket.socket) -> None:
    with conn, subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0) as cat:
        assert cat.stdin is not None and cat.stdout is not None
        cat_in = cat.stdin

        def upstream() -> None:
            with contextlib.suppress(OSError), cat_in:
                while data := conn.recv(_BUFSIZE):
                    cat_in.write(data)

        up = threading.Thread(target=upstream, daemon=True)
        up.start()
        with contextlib.suppress(OSError):
            while data := os.read(cat.stdout.fileno(), _BUFSIZE):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        up.join(timeout=30)


def serve_baseline() -> None:
    """`--serve-baseline`: print the port, then splice each connection through its own `cat`."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    while True:  # ends when the parent terminates this process
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_splice_connection, args=(conn,), daemon=True).start()


# --- report --------------------------------------------------------------------------


def _row(name: str, times: list[float], mib: int) -> str:
    best, med = min(times), median(times)
    return f"{name:<30} {best:>8.3f} {med:>9.3f} {mib / best:>11.1f} {mib / med:>13.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="MiB to push through cat and back (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="measurements of each (default 3)")
    parser.add_argument(
        "--baseline",
        choices=["auto", "socat", "python"],
        default="auto",
        help="baseline TCP cat server: socat if installed (auto), or a Python splice server",
    )
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline()
        return 0
    if args.mib < 1 or args.runs < 1:
        parser.error("--mib and --runs must be at least 1")

    payload = _Payload(args.mib)
    timeout = 60 + args.mib  # at least 1 MiB/s, or the run is abandoned as hung
    hubnet_times: list[float] = []
    tcp_times: list[float] = []
    try:
        with (
            bytecode_cache() as env,
            hubnode_server(_services_toml(args.mib), env) as server,
            baseline_server(args.baseline) as baseline,
        ):
            description, address = baseline
            # Warm-up: creates the client's identity key and faults in both paths.
            warm = _Payload(1)
            run_hubnet(server, warm, 60, env)
            run_tcp(address, warm, 60)
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                hubnet_times.append(run_hubnet(server, payload, timeout, env))
                tcp_times.append(run_tcp(address, payload, timeout))
    except BenchError as exc:
        print(f"throughput: FAILED: {exc}", file=sys.stderr)
        return 1

    print(f"throughput: {args.mib} MiB through `cat` and back on 127.0.0.1, {args.runs} runs each")
    print(f"  hubnet:   {HUBNODE} call --server PEER@127.0.0.1:PORT cat (Noise IK, pinned key)")
    print(f"  baseline: {description}")
    print("  client:   writer thread, half-close, read to EOF; byte count + SHA-256 checked: OK")
    print()
    print(f"{'':<30} {'best s':>8} {'median s':>9} {'best MiB/s':>11} {'median MiB/s':>13}")
    print(_row("hubnode call", hubnet_times, args.mib))
    print(_row("plain TCP", tcp_times, args.mib))
    best_ratio = min(tcp_times) / min(hubnet_times)
    median_ratio = median(tcp_times) / median(hubnet_times)
    print(f"{'ratio hubnet / baseline MiB/s':<30} {'':>8} {'':>9} {best_ratio:>11.3f} {median_ratio:>13.3f}")
    print()
    print("  runs (s): hubnet " + " ".join(f"{t:.3f}" for t in hubnet_times))
    print("            tcp    " + " ".join(f"{t:.3f}" for t in tcp_times))
    print("  (hubnet times include starting the `hubnode call` process; see bench/latency.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
