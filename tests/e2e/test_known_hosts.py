"""Trust on first use: a server reached by address alone is remembered, and a new key is refused."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import Client, Server, one_line, stderr_lines, toml_string


def _services(listen: str, marker: Path) -> str:
    return f"""
listen = {toml_string(listen)}

[services.marked]
command = ["sh", "-c", "touch \\"$MARKER\\"; cat"]
env = {{ MARKER = {toml_string(marker)} }}
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

        # Someone who never met the first server simply trusts the second on first use.
        stranger = Client(tmp_path / "stranger").call(address, "marked", input=b"hi")
        assert (stranger.returncode, stranger.stdout) == (0, b"hi"), stranger.stderr
