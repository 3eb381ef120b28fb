"""Trust on first use: a server reached by address alone is remembered, and a new key is refused."""

from __future__ import annotations

from pathlib import Path

from hubnet.identity.keys import encode_peer_id
from tests.e2e.harness import Client, Server, one_line, stderr_lines, toml_string


def _services(listen: str, marker: Path) -> str:
    return f"""
listen = {toml_string(listen)}

[services.marked]
command = ["sh", "-c", "touch \\"$MARKER\\"; cat"]
env = {{ MARKER = {toml_string(marker)} }}
sandbox = false  # it leaves a mark outside any job's folder, where the test looks
"""


def test_first_use_is_remembered_and_a_changed_key_is_refused(tmp_path: Path, client: Client) -> None:
    marker = tmp_path / "marker"
    with Server(tmp_path / "first", _services("127.0.0.1:0", marker)) as first:
        address = first.address
        result = client.call(address, "marked", input=b"hello")
        assert (result.returncode, result.stdout) == (0, b"hello"), result.stderr
        assert stderr_lines(result) == [
            f"hubnode: remembered {address} as {first.peer_id} (trust on first use)"
        ]
        assert client.known_hosts.read_text() == f"{address} {first.peer_id}\n"

        again = client.call(address, "marked", input=b"again")
        assert (again.returncode, again.stdout, again.stderr) == (0, b"again", b"")
        assert client.known_hosts.read_text() == f"{address} {first.peer_id}\n"

    marker.unlink()
    # A different node (new home, so a new key) on the very same port.
    with Server(tmp_path / "second", _services(address, marker)) as second:
        assert second.port == first.port
        assert second.peer_id != first.peer_id
        result = client.call(address, "marked", input=b"to the impostor")
        assert result.returncode == 255
        line = one_line(result)
        assert "REMOTE KEY CHANGED" in line
        assert first.peer_id in line and second.peer_id in line
        assert result.stdout == b""
        assert not marker.exists()
        assert client.known_hosts.read_text() == f"{address} {first.peer_id}\n"

        # Pinning the id of the first server too is a mismatch with the node, not a changed key.
        pinned = client.call(f"{first.peer_id}@{address}", "marked", input=b"to the impostor")
        assert pinned.returncode == 255
        line = one_line(pinned)
        assert f"is {second.peer_id}, not the pinned {first.peer_id}" in line
        assert "check the id you typed" in line and "REMOTE KEY CHANGED" not in line
        assert not marker.exists()

        # Someone who never met the first server simply trusts the second on first use.
        stranger = Client(tmp_path / "stranger").call(address, "marked", input=b"hi")
        assert (stranger.returncode, stranger.stdout) == (0, b"hi"), stranger.stderr


def test_a_mistyped_pinned_id_is_not_a_changed_key(tmp_path: Path, client: Client) -> None:
    marker = tmp_path / "marker"
    with Server(tmp_path / "server", _services("127.0.0.1:0", marker)) as server:
        first = client.call(server.address, "marked", input=b"hello")  # remembered on first use
        assert first.returncode == 0, first.stderr
        marker.unlink()
        typo = server.peer_id[:10] + ("b" if server.peer_id[10] != "b" else "c") + server.peer_id[11:]
        result = client.call(f"{typo}@{server.address}", "marked", input=b"x")
        assert result.returncode == 255
        line = one_line(result)
        assert f"{server.address} is remembered as {server.peer_id}" in line
        assert f"not the pinned {typo}" in line
        assert "the pinned id does not match the node's key; check the id you typed" in line
        assert "REMOTE KEY CHANGED" not in line and "intercept" not in line
        assert result.stdout == b""
        assert not marker.exists()
        assert client.call(f"{server.peer_id}@{server.address}", "marked", input=b"ok").stdout == b"ok"


def test_a_bad_known_hosts_line_is_named_by_file_and_line(tmp_path: Path, client: Client) -> None:
    marker = tmp_path / "marker"
    with Server(tmp_path / "server", _services("127.0.0.1:0", marker)) as server:
        off_curve = encode_peer_id(bytes([2]) + bytes(31))  # decodes, but no node can have it
        client.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        client.known_hosts.write_text(
            f"# mine\nelsewhere:7070 {server.peer_id}\n{server.address} {off_curve}\n"
        )
        result = client.call(server.address, "marked", input=b"x")
        assert result.returncode == 2
        line = one_line(result)
        assert f"{client.known_hosts}:3: peer id {off_curve} is not a valid Ed25519 public key" in line
        assert "fix or delete this line" in line
        assert not marker.exists()

        client.known_hosts.write_text(f"{server.address} {server.peer_id[:-3]}\n")
        line = one_line(client.call(server.address, "marked", input=b"x"))
        assert f"{client.known_hosts}:1: not a peer id" in line and "fix or delete this line" in line
        assert not marker.exists()
