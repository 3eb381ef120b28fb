"""docs/running-a-node.md: its systemd user unit is a unit that runs a real `hubnode serve`.

The unit is read as systemd reads its INI-style syntax (sections, `Key=Value`, `#` comments);
it must restart the node on failure, send its log to the journal and be enabled by the
default target; its ExecStart must be a `hubnode ... serve` command line that the real CLI
accepts. The document must also say how to enable it and keep it running after logout.
"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from tests.unit.test_docs import SHELL_LANGS, fenced_blocks, parse_hubnode, shell_segments

DOC = Path(__file__).resolve().parents[2] / "docs" / "running-a-node.md"
UNIT_HEADER = "# ~/.config/systemd/user/hubnode.service"
REQUIRED = {
    ("Service", "Restart"): "on-failure",
    ("Service", "StandardError"): "journal",
    ("Install", "WantedBy"): "default.target",
}


def parse_unit(text: str) -> configparser.ConfigParser:
    """A unit file's sections and keys; raises configparser.Error if it is not INI-style."""
    unit = configparser.ConfigParser(
        interpolation=None,
        delimiters=("=",),
        comment_prefixes=("#", ";"),
        strict=True,
        empty_lines_in_values=False,
    )
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd's keys are case-sensitive
    unit.read_string(text)
    return unit


def unit_problems(text: str) -> list[str]:
    """What is wrong with a hubnode user unit, as sentences; [] if nothing."""
    try:
        unit = parse_unit(text)
    except configparser.Error as exc:
        return [f"not an INI-style unit: {exc}"]
    problems = [
        f"no [{name}] section" for name in ("Unit", "Service", "Install") if not unit.has_section(name)
    ]
    for (section, key), wanted in REQUIRED.items():
        value = unit.get(section, key, fallback=None)
        if value != wanted:
            problems.append(f"[{section}] {key}={value} (want {wanted})")
    exec_start = unit.get("Service", "ExecStart", fallback="")
    words = shlex.split(exec_start.replace("%h", "/home/you"))
    if not words or Path(words[0]).name != "hubnode":
        return [*problems, f"ExecStart does not run hubnode: {exec_start!r}"]
    if not Path(words[0]).is_absolute():
        problems.append(f"ExecStart needs the full path of hubnode: {exec_start!r}")
    invocation, errors = parse_hubnode(words[1:])
    problems += [f"ExecStart: {error}" for error in errors]
    if invocation.command != "serve":
        problems.append(f"ExecStart runs `hubnode {invocation.command}`, not `hubnode serve`")
    return problems


def _document() -> str:
    return DOC.read_text(encoding="utf-8")


def _unit_block() -> str:
    (unit,) = [b.body for b in fenced_blocks(_document(), DOC.name) if b.body.startswith(UNIT_HEADER + "\n")]
    return unit


def test_the_documented_unit_runs_hubnode_serve_restarted_and_logging_to_the_journal() -> None:
    assert unit_problems(_unit_block()) == []


def test_the_document_says_how_to_enable_the_unit_and_keep_it_running() -> None:
    commands = [
        shlex.join(segment)
        for block in fenced_blocks(_document(), DOC.name)
        if block.lang in SHELL_LANGS
        for segment in shell_segments(block.body)
    ]
    assert "systemctl --user enable --now hubnode.service" in commands, commands
    assert any("loginctl enable-linger" in command for command in commands), commands
    assert any(command.startswith("journalctl --user -u hubnode.service") for command in commands), commands


GOOD = """\
[Unit]
Description=x
[Service]
ExecStart=%h/.local/bin/hubnode --home /srv/hubnet serve --log-level warning --listen 0.0.0.0:7070
Restart=on-failure
StandardError=journal
[Install]
WantedBy=default.target
"""


def test_the_unit_check_catches_mistakes() -> None:
    assert unit_problems(GOOD) == []
    assert any("not an INI-style unit" in p for p in unit_problems("ExecStart=hubnode serve\n"))
    assert any("Restart=always" in p for p in unit_problems(GOOD.replace("on-failure", "always")))
    assert any("StandardError=None" in p for p in unit_problems(GOOD.replace("StandardError=journal\n", "")))
    assert any("no [Install]" in p for p in unit_problems(GOOD.split("[Install]")[0]))
    assert any("not `hubnode serve`" in p for p in unit_problems(GOOD.replace(" serve ", " status ")))
    assert any("'--log-levle'" in p for p in unit_problems(GOOD.replace("--log-level", "--log-levle")))
    assert any("full path" in p for p in unit_problems(GOOD.replace("%h/.local/bin/hubnode", "hubnode")))
    assert any(
        "does not run hubnode" in p for p in unit_problems(GOOD.replace("hubnode --home", "python --home"))
    )
