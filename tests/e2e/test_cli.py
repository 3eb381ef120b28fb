"""The other commands a user types: `services`, `status`, `alias`, and `serve` failing to listen."""

from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path

from tests.e2e.conftest import ESPEAK_SUMMARY, MAX_JOBS, Node
from tests.e2e.harness import Client, one_line, run

SERVICE_NAMES = {
    "argv",
    "capped",
    "capped-small",
    "cat",
    "cat-queued",
    "env",
    "espeak",
    "exit7",
    "marked",
    "pidfile",
    "private",
    "sigterm",
    "sleepy",
    "whoami",
}


def test_services_lists_names_ids_and_arguments(node: Node, client: Client) -> None:
    assert node.server.service_count == len(SERVICE_NAMES)
    result = client.run("services", "--server", node.target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    listed = {}
    for name_line, arguments_line in zip(lines[::2], lines[1::2], strict=True):
        match = re.fullmatch(r"(\S+)\s+([0-9A-F]{32})\s*(.*)", name_line)
        assert match, name_line
        listed[match[1]] = (match[2], match[3], arguments_line.strip())
    assert set(listed) == SERVICE_NAMES
    assert listed["espeak"][1:] == ("text to speech", f"arguments: {ESPEAK_SUMMARY}")
    assert listed["cat"][2] == "arguments: no arguments"
    assert len({sid for sid, _, _ in listed.values()}) == len(SERVICE_NAMES)


def test_services_json_and_calling_by_listed_id(node: Node, client: Client) -> None:
    result = client.run("services", "--server", node.target, "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == SERVICE_NAMES
    assert rows["espeak"]["arguments"] == ESPEAK_SUMMARY
    assert rows["cat-queued"]["description"] == "cat, two at a time"
    by_id = client.call(node.target, rows["cat"]["id"], input=b"called by id")
    assert (by_id.returncode, by_id.stdout) == (0, b"called by id")
    lower = client.call(node.target, rows["cat"]["id"].lower(), input=b"any case")
    assert (lower.returncode, lower.stdout) == (0, b"any case")


def test_status(node: Node, client: Client) -> None:
    result = client.run("status", "--server", node.target)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode().strip()
    assert re.fullmatch(rf"running \d+, queued \d+, capacity {MAX_JOBS}, load [0-9.]+ [0-9.]+ [0-9.]+", text)

    result = client.run("status", "--server", node.target, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["capacity"] == MAX_JOBS
    assert status["running"] >= 0 and status["queued"] >= 0
    assert len(status["load"]) == 3


def test_alias_writes_a_command(node: Node, client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    made = client.run("alias", "--server", node.target, "--bin-dir", str(bin_dir), "greet", "argv", "--flag")
    assert made.returncode == 0, made.stderr
    script = bin_dir / "greet"
    assert str(script) in made.stderr.decode()

    result = run([str(script), "-n", "5", "hello world", "x"], input=None)
    # `argv` prints each argument it got, then exits 3.
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"<--flag>\n<-n>\n<5>\n<hello world>\n<x>\n"

    refused = run([str(script), "-n", "five"], input=None)
    assert refused.returncode == 126
    assert "five" in one_line(refused)


def test_alias_passes_stdin_and_exit_status(node: Node, client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    for name, service in (("mycat", "cat"), ("seven", "exit7")):
        made = client.run("alias", "--server", node.target, "--bin-dir", str(bin_dir), name, service)
        assert made.returncode == 0, made.stderr
    copied = run([str(bin_dir / "mycat")], input=b"through an alias")
    assert (copied.returncode, copied.stdout) == (0, b"through an alias")
    assert run([str(bin_dir / "seven")], input=None).returncode == 7


def test_alias_made_by_python_dash_m_works(node: Node, client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    hubnet = [sys.executable, "-m", "hubnet", "--home", str(client.home)]
    made = run([*hubnet, "alias", "--server", node.target, "--bin-dir", str(bin_dir), "mycat", "cat"])
    assert made.returncode == 0, made.stderr
    result = run([str(bin_dir / "mycat")], input=b"via python -m")
    assert (result.returncode, result.stdout) == (0, b"via python -m"), result.stderr


def test_serve_on_a_port_in_use_says_it_cannot_listen(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = Client(tmp_path).run("serve", "--no-lan", "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert one_line(result) == f"hubnode: cannot listen on 127.0.0.1:{port}: Address already in use"
