"""The other commands a user types: `services`, `status`, `alias`, and `serve` failing to listen."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ESPEAK_SUMMARY, MAX_JOBS, Node
from tests.e2e.harness import Client, Server, one_line, run, wait_until

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
    listed, isolation = {}, {}
    for name_line, arguments_line, isolation_line in zip(lines[::3], lines[1::3], lines[2::3], strict=True):
        match = re.fullmatch(r"(\S+)\s+([0-9A-F]{32})\s*(.*)", name_line)
        assert match, name_line
        listed[match[1]] = (match[2], match[3], arguments_line.strip())
        isolation[match[1]] = isolation_line.strip()
    assert set(listed) == SERVICE_NAMES
    assert listed["espeak"][1:] == ("text to speech", f"arguments: {ESPEAK_SUMMARY}")
    assert listed["cat"][2] == "arguments: no arguments"
    assert len({sid for sid, _, _ in listed.values()}) == len(SERVICE_NAMES)
    # How each service's jobs are isolated: `marked` leaves its mark outside, unsandboxed.
    assert isolation["cat"].startswith("isolation: sandbox, no network, writes only its folder and /tmp")
    assert isolation["marked"].startswith("isolation: none: runs as ")


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
    busy, reach = result.stdout.decode().splitlines()
    assert re.fullmatch(rf"running \d+, queued \d+, capacity {MAX_JOBS}, load [0-9.]+ [0-9.]+ [0-9.]+", busy)
    # Alone on loopback: no peer to dial it back, so nothing known of its reach.
    assert reach == "reachability unknown, observed address not yet known, DHT server mode, 0 peer(s)"

    result = client.run("status", "--server", node.target, "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["capacity"] == MAX_JOBS
    assert status["running"] >= 0 and status["queued"] >= 0
    assert len(status["load"]) == 3
    assert {k: status[k] for k in ("reachability", "observed", "dht_mode", "peers", "relays")} == {
        "reachability": "unknown",
        "observed": None,
        "dht_mode": "server",
        "peers": 0,
        "relays": [],
    }


def test_status_without_a_server_asks_the_node_serving_from_this_home(node: Node, client: Client) -> None:
    serving = node.server.home / "serving"  # the home's data folder: --home puts everything there
    assert serving.read_text().strip() == node.target
    result = Client(node.server.home).run("status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["capacity"] == MAX_JOBS
    # A home that serves nothing and names no server: the usual one-line error.
    result = client.run("status")
    assert result.returncode != 0
    assert "no server" in one_line(result)


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


# --- what goes wrong: one line on stderr naming what was typed, and the documented exit code ---
# (the table in docs/getting-started.md, "Exit codes"; the one map is hubnet/exits.py)

ESPEAK_ID = "0464183066062102ACA7E1DE02EC3B44"  # the default id of the name "espeak"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _client_toml(client: Client, text: str) -> None:
    (client.home / "client.toml").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def custom_id_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """docs/services.md's "every key at once" example, reduced: a local name, espeak's id."""
    toml = f"""listen = "127.0.0.1:0"
[services.espeak-private]
id = "{ESPEAK_ID}"
command = ["cat"]
[services.cat]
command = ["cat"]
"""
    with Server(tmp_path_factory.mktemp("custom-id"), toml) as server:
        yield server


def test_a_service_with_its_own_id_answers_to_its_listed_name(custom_id_node: Server, client: Client) -> None:
    target = custom_id_node.target
    for typed in ("espeak-private", "espeak", ESPEAK_ID, ESPEAK_ID.lower()):
        # `services SERVICE` shows what `call SERVICE` reaches.
        listed = client.run("services", "--server", target, "--json", typed)
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert [(row["name"], row["id"]) for row in rows] == [("espeak-private", ESPEAK_ID)]
        called = client.call(target, typed, input=b"by " + typed.encode())
        assert (called.returncode, called.stdout) == (0, b"by " + typed.encode()), called.stderr
    near = client.call(target, "espeak-privat")
    assert near.returncode == 127
    assert one_line(near) == (
        f"hubnode: no service 'espeak-privat' on {custom_id_node.address}; did you mean espeak-private?"
    )


def test_no_such_service_suggests_close_names(node: Node, client: Client, tmp_path: Path) -> None:
    result = client.call(node.target, "espeek")
    assert result.returncode == 127
    assert one_line(result) == f"hubnode: no service 'espeek' on {node.server.address}; did you mean espeak?"
    made = client.run("alias", "--server", node.target, "--bin-dir", str(tmp_path / "bin"), "say", "espeek")
    assert made.returncode == 0, made.stderr
    via_alias = client.run("call", "say")
    assert via_alias.returncode == 127
    assert one_line(via_alias) == (
        f"hubnode: no service 'espeek' (alias 'say') on {node.server.address}; did you mean espeak?"
    )
    far = client.call(node.target, "zzzz")
    assert far.returncode == 127
    line = one_line(far)
    assert line.startswith(f"hubnode: no service 'zzzz' on {node.server.address}; it offers ")
    assert f"hubnode services --server {node.target}" in line  # 14 services: how to see them all


def test_services_with_a_server_and_no_such_service_is_127_in_both_modes(node: Node, client: Client) -> None:
    table = client.run("services", "--server", node.target, "espeek")
    json_mode = client.run("services", "--server", node.target, "--json", "espeek")
    expected = f"hubnode: no service 'espeek' on {node.server.address}; did you mean espeak?"
    assert (table.returncode, table.stdout, one_line(table)) == (127, b"", expected)
    assert (json_mode.returncode, json.loads(json_mode.stdout), one_line(json_mode)) == (127, [], expected)


def test_nobody_offers_it_in_the_dht_is_127_in_every_mode(node: Node, client: Client) -> None:
    expected = "hubnode: nobody in the DHT offers 'nosuch': check the name, or ask a node you know"
    for command in (
        ("call", "--bootstrap", node.target, "nosuch"),
        ("services", "--bootstrap", node.target, "nosuch"),
        ("services", "--bootstrap", node.target, "--json", "nosuch"),
    ):
        result = client.run(*command)
        assert result.returncode == 127, (command, result.stderr)
        assert one_line(result).startswith(expected), command
        assert result.stdout == (b"[]\n" if "--json" in command else b"")


def test_no_acceptable_offer_is_127_in_every_mode(node: Node, client: Client) -> None:
    seed = ("--bootstrap", node.target)
    # The node published its offers as it started; wait for them (at most a few seconds).
    assert wait_until(lambda: client.run("services", *seed, "--json", "cat").returncode == 0, 20.0)
    _client_toml(client, f'[select]\nexclude = ["{node.server.peer_id}"]\n')
    source = client.home / "client.toml"
    for command in (("call", *seed, "cat"), ("services", *seed, "cat"), ("services", *seed, "--json", "cat")):
        result = client.run(*command)
        assert result.returncode == 127, (command, result.stderr)
        assert one_line(result).startswith(
            f"hubnode: 1 offer(s) of 'cat' found, none acceptable under [select] in {source}"
        )
        assert result.stdout == (b"[]\n" if "--json" in command else b"")


def test_a_dht_that_does_not_answer_is_a_network_failure(node: Node, client: Client) -> None:
    dead = f"{node.server.peer_id}@127.0.0.1:{_free_port()}"  # a pinned seed is not asked first
    for command in (("call", "--bootstrap", dead, "cat"), ("services", "--bootstrap", dead, "cat")):
        result = client.run(*command)
        assert result.returncode == 255, (command, result.stderr)
        assert one_line(result).startswith("hubnode: no DHT node answered at 127.0.0.1:")


def test_no_server_and_no_dht_is_a_usage_error(client: Client) -> None:
    for command in (("call", "cat"), ("services", "cat"), ("status",)):
        result = client.run(*command)
        assert result.returncode == 2, (command, result.stderr)
        assert "--server" in one_line(result), command
    assert one_line(client.run("call", "cat")).startswith(
        "hubnode: no server given and no DHT to find one in: give"
    )


def test_call_options_after_service_are_the_programs_but_a_failure_says_where_they_go(
    node: Node, client: Client
) -> None:
    # No server, no DHT: the call cannot go anywhere, and the message says what was meant.
    result = client.run("call", "cat", "--server", node.target)
    assert result.returncode == 2
    assert one_line(result) == (
        "hubnode: no server given and no DHT to find one in; --server after cat went to the remote "
        "program, as everything after SERVICE does; if it was meant for hubnode, put it before "
        f"SERVICE: hubnode call --server {node.target} cat"
    )
    # With a default server, `--server X` went to cat, which takes no arguments: refused (126).
    _client_toml(client, f'server = "{node.target}"\n')
    refused = client.run("call", "cat", "-s", node.target)
    assert refused.returncode == 126
    assert one_line(refused).startswith(
        "hubnode: bad-arguments: argument 1 ('-s'): option not allowed; -s after cat"
    )
    assert one_line(refused).endswith(f"put it before SERVICE: hubnode call -s {node.target} cat")
    # The program's own options, even hubnode's letters, pass untouched and draw no hint.
    own = client.run("call", "argv", "-n", "5", "--flag")
    assert (own.returncode, own.stdout) == (3, b"<-n>\n<5>\n<--flag>\n"), own.stderr
    plain = client.run("call", "cat", "-s", "140")
    assert plain.returncode == 126
    assert one_line(plain) == "hubnode: bad-arguments: argument 1 ('-s'): option not allowed"


def test_a_global_option_after_the_command_says_where_it_goes(node: Node, client: Client) -> None:
    home = str(client.home)
    result = client.run("call", "-v", "-s", node.target, "cat")
    assert result.returncode == 2
    assert one_line(result) == (
        "hubnode: -v is an option of hubnode itself and goes before the command: "
        f"hubnode -v call --server {node.target} cat"
    )
    for command in (("serve", "-v"), ("services", "--verbose", "--server", node.target)):
        result = client.run(*command)
        assert result.returncode == 2, command
        moved = " ".join([command[1], "--home", home, command[0], *command[2:]])
        said = f"hubnode: {command[1]} is an option of hubnode itself and goes before the command"
        assert one_line(result) == f"{said}: hubnode {moved}"


def test_other_usage_errors_are_one_line_naming_the_slip(client: Client) -> None:
    unknown = client.run("call", "--sever", "h:1", "cat")
    assert unknown.returncode == 2
    assert one_line(unknown).startswith(
        "hubnode: call has no option '--sever'; did you mean --server? usage: "
    )
    typo = client.run("services", "--jsn")
    assert typo.returncode == 2
    assert one_line(typo) == (
        "hubnode: services: No such option '--jsn'. Did you mean '--json'? See 'hubnode services --help'."
    )


def test_a_refusal_is_126_with_or_without_a_server(node: Node, client: Client) -> None:
    # `private` allows one other peer only; found in the DHT, its one provider refuses too.
    seed = ("--bootstrap", node.target)
    assert wait_until(lambda: client.run("services", *seed, "--json", "private").returncode == 0, 20.0)
    direct = client.call(node.target, "private")
    found = client.run("call", *seed, "private")
    assert (direct.returncode, found.returncode) == (126, 126), found.stderr
    assert one_line(direct).startswith("hubnode: not-allowed: ")
    assert one_line(found).startswith("hubnode: not-allowed: every provider of 'private' refused the call: ")
