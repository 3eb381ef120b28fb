"""What a caller sees from a call: its bytes, exit statuses, signals and the server's limits."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.e2e.conftest import Node
from tests.e2e.harness import Client, one_line
from tests.helpers import require_program


def test_ten_mebibytes_of_random_bytes_through_cat(node: Node, client: Client) -> None:
    data = os.urandom(10 * 1024 * 1024)
    result = client.call(node.target, "cat", input=data)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == len(data)
    assert hashlib.sha256(result.stdout).hexdigest() == hashlib.sha256(data).hexdigest()
    assert result.stderr == b""


def test_every_byte_value_through_cat(node: Node, client: Client) -> None:
    data = bytes(range(256)) + bytes(reversed(range(256))) + b"\r\n\x00\x1a\x04\xff" * 64
    result = client.call(node.target, "cat", input=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_empty_stdin_gives_empty_output(node: Node, client: Client) -> None:
    result = client.call(node.target, "cat", input=None)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_espeak_produces_a_wav(node: Node, client: Client) -> None:
    require_program("espeak-ng")
    result = client.call(node.target, "espeak", "--stdout", "-v", "en-us", "-s", "140", "This was a triumph")
    assert result.returncode == 0, result.stderr
    wav = result.stdout
    assert wav[:4] == b"RIFF"
    assert wav[8:12] == b"WAVE"
    assert len(wav) > 10_000  # about a second of 22 kHz 16-bit speech, not just a header


def test_espeak_reads_text_from_stdin(node: Node, client: Client) -> None:
    require_program("espeak-ng")
    result = client.call(node.target, "espeak", input=b"hello from the other side\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout[:4] == b"RIFF" and result.stdout[8:12] == b"WAVE"
    assert len(result.stdout) > 10_000


@pytest.mark.parametrize(("service", "status"), [("exit7", 7), ("sigterm", 128 + 15)])
def test_exit_status_and_signal_pass_through(node: Node, client: Client, service: str, status: int) -> None:
    result = client.call(node.target, service)
    assert result.returncode == status, result.stderr
    assert result.stdout == b""


def test_unknown_service_is_127(node: Node, client: Client) -> None:
    result = client.call(node.target, "no-such-service")
    assert result.returncode == 127
    assert "no-such-service" in one_line(result)


def test_unknown_service_id_is_127(node: Node, client: Client) -> None:
    result = client.call(node.target, "0123456789ABCDEF0123456789ABCDEF")
    assert result.returncode == 127
    assert "0123456789ABCDEF0123456789ABCDEF" in one_line(result)


def test_timeout_kills_the_job(node: Node, client: Client) -> None:
    started = time.monotonic()
    result = client.call(node.target, "sleepy", timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 128 + 9, result.stderr
    assert "time" in one_line(result)
    assert elapsed < 30  # the job is `sleep 60` with `timeout = 1`
    line = node.server.wait_for_log(lambda s: " sleepy for " in s and "timeout" in s)
    assert line is not None, node.server.log


def test_output_cap_stops_the_job(node: Node, client: Client) -> None:
    result = client.call(node.target, "capped")
    assert len(result.stdout) <= 1000
    assert result.stdout == b"\x00" * len(result.stdout)
    assert "limit" in one_line(result)
    assert result.returncode != 0


def test_output_cap_is_an_error_even_if_the_job_already_exited(node: Node, client: Client) -> None:
    # `head -c 2000` usually exits 0 before the server reads its output, so the kill for the cap
    # hits a zombie and the job's own status is 0; the call must still fail. 8 calls hit that race.
    statuses = []
    for _ in range(8):
        result = client.call(node.target, "capped-small")
        assert len(result.stdout) <= 1000
        assert "limit" in one_line(result)
        statuses.append(result.returncode)
    assert 0 not in statuses, statuses
