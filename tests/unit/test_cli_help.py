"""Tests of what `hubnode --help` and `hubnode status` print (click, in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import hubnet.client
from hubnet.cli import cli
from hubnet.identity.keys import Identity
from hubnet.node.protocol import StatusReply

OWN_COMMANDS = sorted(cli.commands)  # every command, wherever it is defined (`org` in hubnet.org_cli)


def _command_list(width: int) -> str:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output.split("Commands:\n", 1)[1]


@pytest.mark.parametrize("width", [40, 60, 80, 200])
def test_the_command_list_reads_whole_at_any_width(width: int) -> None:
    assert {"alias", "call", "id", "org", "peers", "serve", "services", "status"} <= set(OWN_COMMANDS)
    listing = " ".join(_command_list(width).split())  # lines wrapped under a command joined again
    for name in OWN_COMMANDS:
        short = cli.commands[name].get_short_help_str()
        assert f"{name} {short} " in f"{listing} ", (name, width)
        assert "..." not in listing.split(f"{name} ", 1)[1].split(". ", 1)[0], (name, width)


def test_every_command_has_a_short_help_of_one_sentence() -> None:
    for name in OWN_COMMANDS:
        short = cli.commands[name].short_help
        assert short and short.endswith(".") and short.count(". ") == 0, name
        assert len(short) <= 60, name  # one line beside the names at 80 columns


def _status(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> str:
    def fake_request(*_args: object, **_kwargs: object) -> StatusReply:
        # What a node whose getloadavg gives fixed point (2662/2048 for 1.30) sends.
        return StatusReply(1, 0, 4, (1.2998046875, 0.5, 0.0999755859375))

    monkeypatch.setattr(hubnet.client, "request", fake_request)
    peer = Identity.from_seed(bytes(32)).peer_id
    argv = ["--home", str(tmp_path), "status", "--server", f"{peer}@127.0.0.1:7070", *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    return result.output


def test_status_rounds_the_load_averages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    as_json = json.loads(_status(tmp_path, monkeypatch, "--json"))
    assert as_json == {"running": 1, "queued": 0, "capacity": 4, "load": [1.3, 0.5, 0.1]}
    table = _status(tmp_path, monkeypatch)
    assert table == "running 1, queued 0, capacity 4, load 1.30 0.50 0.10\n"
