"""Many callers at once, callers that vanish, and callers that send garbage."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from hubnet.identity.keys import Identity, decode_peer_id
from hubnet.identity.session import NoiseSession
from tests.e2e.conftest import Node
from tests.e2e.harness import CALL_TIMEOUT, Client, base_env, wait_until

CALLERS = 20


@pytest.mark.parametrize("service", ["cat", "cat-queued"])
def test_concurrent_calls_each_get_their_own_bytes(
    node: Node, client: Client, tmp_path: Path, service: str
) -> None:
    """20 clients at once; `cat-queued` runs two at a time (each job sleeps 0.2 s), so most wait."""
    procs = []
    with contextlib.ExitStack() as files:
        for i in range(CALLERS):
            data = f"caller {i}\n".encode() + os.urandom(20_000 + 997 * i)
            (tmp_path / f"in{i}").write_bytes(data)
            procs.append(
                subprocess.Popen(
                    client.command("call", "--server", node.target, service),
                    stdin=files.enter_context((tmp_path / f"in{i}").open("rb")),
                    stdout=files.enter_context((tmp_path / f"out{i}").open("wb")),
                    stderr=files.enter_context((tmp_path / f"err{i}").open("wb")),
                    env=base_env(),
                )
            )
        deadline = time.monotonic() + CALL_TIMEOUT
        try:
            for proc in procs:
                proc.wait(max(deadline - time.monotonic(), 0.1))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    for i, proc in enumerate(procs):
        stderr = (tmp_path / f"err{i}").read_bytes()
        assert proc.returncode == 0, (i, stderr)
        assert stderr == b""
        assert (tmp_path / f"out{i}").read_bytes() == (tmp_path / f"in{i}").read_bytes(), i


def _job_alive(pid: int) -> bool:
    """True while `pid` is still the job's `sleep 600` (not gone, not a zombie, not reused)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00600\x00"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_client_disconnect_kills_the_job(node: Node, client: Client) -> None:
    node.pidfile.unlink(missing_ok=True)
    proc = subprocess.Popen(
        client.command("call", "--server", node.target, "pidfile"),
        stdin=subprocess.PIPE,  # kept open: the job has no reason to end by itself
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=base_env(),
    )
    try:
        assert wait_until(lambda: node.pidfile.exists() and node.pidfile.read_text().endswith("\n"), 10)
        pid = int(node.pidfile.read_text())
        assert _job_alive(pid)
        proc.kill()  # SIGKILL: no goodbye, the kernel just closes the socket
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()
    assert proc.returncode == -signal.SIGKILL
    assert wait_until(lambda: not _job_alive(pid), 10), f"job {pid} outlived its caller"
    assert node.server.wait_for_log(lambda s: " pidfile for " in s and "disconnected" in s) is not None


def _connect(node: Node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass


def _noise_initiator(remote: bytes | None) -> NoiseSession:
    me = Identity.generate()
    return NoiseSession(
        initiator=True, identity=me.public_key, static_private=me.noise_private_key, remote_identity=remote
    )


def test_garbage_clients_do_not_hurt_the_server(node: Node, client: Client) -> None:
    server_key = decode_peer_id(node.server.peer_id)
    ik_first = _noise_initiator(server_key).initiate(os.urandom(200))  # valid Noise, garbage request
    attempts: list[tuple[str, bytes, bool]] = [
        ("connect and close", b"", False),
        ("random bytes", os.urandom(4096), False),
        ("a zero-length frame", b"\x00\x00", True),
        ("a frame that promises more than it sends", b"\xff\xff" + os.urandom(100), False),
        ("half an XX handshake, then wait for the reply", _noise_initiator(None).initiate(), True),
        ("half of a first IK message", ik_first[: len(ik_first) // 2], False),
        ("an IK handshake whose request is garbage", ik_first, True),
        ("random bytes in frames", b"".join(b"\x00\x40" + os.urandom(64) for _ in range(10)), True),
    ]
    for what, data, read_reply in attempts:
        with _connect(node) as sock:
            sock.sendall(data)
            if read_reply:
                sock.shutdown(socket.SHUT_WR)
                _read_until_closed(sock)
        assert node.server.running, f"server died after {what}"

    result = client.call(node.target, "cat", input=b"still serving")
    assert (result.returncode, result.stdout) == (0, b"still serving"), result.stderr
    assert node.server.running
    assert "Traceback" not in node.server.log
    assert "internal error" not in node.server.log
