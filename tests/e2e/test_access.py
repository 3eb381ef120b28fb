"""Who may run what: the argument policy, allow lists, pinned keys and the job's environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import JOB_ENV_NAMES, SECRET, SECRET_VALUE, Node
from tests.e2e.harness import Client, one_line
from tests.helpers import require_program

ACCEPTED = ("--stdout", "-v", "en-us", "-s", "140", "This was a triumph")


def _refused_argument_lists(written: Path) -> list[tuple[str, ...]]:
    return [
        ("-w", str(written)),  # not in the policy: espeak-ng would write a file
        ("--stdout", "-v", "en-us", "-w", str(written)),
        ("-s", "fast"),  # not an INT
        ("-v", "../../etc/passwd"),  # not a WORD
        ("-v", "-w"),  # a value may not look like an option
        ("one", "two"),  # one positional at most
        ("--stdout=yes",),  # a flag takes no value
    ]


def test_refused_arguments_run_nothing_and_accepted_ones_run(
    node: Node, client: Client, tmp_path: Path
) -> None:
    node.marker.unlink(missing_ok=True)
    written = tmp_path / "x.wav"
    for args in _refused_argument_lists(written):
        result = client.call(node.target, "marked", *args, input=b"never read")
        assert result.returncode == 126, (args, result.stderr)
        assert "argument" in one_line(result)
        assert result.stdout == b""
        assert not node.marker.exists(), f"{args} ran the service"
    assert not written.exists()

    result = client.call(node.target, "marked", *ACCEPTED, input=b"ran")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ran"
    assert node.marker.exists()


def test_espeak_refuses_to_write_a_file(node: Node, client: Client, tmp_path: Path) -> None:
    require_program("espeak-ng")
    written = tmp_path / "x.wav"
    result = client.call(node.target, "espeak", "-w", str(written), "hello")
    assert result.returncode == 126
    assert "'-w'" in one_line(result)
    assert result.stdout == b""
    assert not written.exists()


def test_allow_list(node: Node, client: Client) -> None:
    node.private_marker.unlink(missing_ok=True)
    stranger = client.call(node.target, "private")
    assert stranger.returncode == 126
    assert "private" in one_line(stranger)
    assert stranger.stdout == b""
    assert not node.private_marker.exists()

    allowed = node.allowed.call(node.target, "private")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout == b"ok\n"
    assert node.private_marker.exists()


def test_wrong_pinned_key_is_refused_and_runs_nothing(node: Node, client: Client, tmp_path: Path) -> None:
    node.marker.unlink(missing_ok=True)
    other = Client(tmp_path / "other").peer_id
    assert other != node.server.peer_id
    result = client.call(f"{other}@{node.server.address}", "marked", input=b"x")
    assert result.returncode == 255
    line = one_line(result)
    assert f"is {node.server.peer_id}, not the pinned {other}" in line
    assert "check the id you typed" in line and "REMOTE KEY CHANGED" not in line
    assert result.stdout == b""
    assert not node.marker.exists()
    assert not client.known_hosts.exists()


def test_job_learns_its_caller_and_job_id(node: Node, client: Client) -> None:
    first = client.call(node.target, "whoami")
    second = client.call(node.target, "whoami")
    assert first.returncode == second.returncode == 0, (first.stderr, second.stderr)
    caller, job = first.stdout.decode().split()
    assert caller == client.peer_id
    assert re.fullmatch(r"[0-9a-f]{16}", job), job
    assert second.stdout.decode().split()[0] == caller
    assert second.stdout.decode().split()[1] != job
    assert node.allowed.call(node.target, "whoami").stdout.decode().split()[0] == node.allowed.peer_id


def test_job_environment_is_scrubbed(node: Node, client: Client) -> None:
    result = client.call(node.target, "env")
    assert result.returncode == 0, result.stderr
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert SECRET not in env
    assert SECRET_VALUE not in result.stdout.decode()
    assert set(env) <= JOB_ENV_NAMES | {"GREETING"}, set(env) - JOB_ENV_NAMES
    assert env["GREETING"] == "hello from services.toml"
    assert env["HUBNET_SERVICE"] == "env"
    assert env["HUBNET_CLIENT"] == client.peer_id
    assert env["HOME"] == env["TMPDIR"] != str(Path.home())


@pytest.mark.parametrize("arg", ["extra", "--stdout", "-"])
def test_service_without_arguments_policy_refuses_any(node: Node, client: Client, arg: str) -> None:
    result = client.call(node.target, "cat", arg, input=b"x")
    assert result.returncode == 126
    assert "argument" in one_line(result)
