"""`hubnode alias` cannot be turned against its user: each finding of issue 15, through the CLI.

An argument cannot break out of the script's quoting; `.`, `..` and other names that are
no plain file name are refused; a command already on PATH is not shadowed without
--force; a file that `hubnode alias` did not write is never replaced; and aliases.toml
changes only once the script is written.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from tests.e2e.conftest import Node
from tests.e2e.harness import Client, one_line, run


def _alias(client: Client, bin_dir: Path, *words: str) -> tuple[int, str]:
    made = client.run("alias", "--bin-dir", str(bin_dir), *words)
    return made.returncode, made.stderr.decode()


def _aliases_toml(client: Client) -> str:
    path = client.home / "aliases.toml"
    return path.read_text(encoding="utf-8") if path.exists() else ""


INJECTIONS = [
    pytest.param("x\ntouch {pwned}\n#", id="newline"),
    pytest.param("x\rtouch {pwned}\r#", id="carriage-return"),
    pytest.param("$(touch {pwned})", id="command-substitution"),
    pytest.param("`touch {pwned}`", id="backticks"),
    pytest.param("x'; touch {pwned}; '", id="single-quote"),
    pytest.param('x"; touch {pwned}; "', id="double-quote"),
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_no_argument_breaks_out_of_the_script(
    node: Node, client: Client, tmp_path: Path, template: str
) -> None:
    pwned = tmp_path / "PWNED"
    hostile = template.format(pwned=pwned)
    bin_dir = tmp_path / "bin"
    code, said = _alias(client, bin_dir, "--server", node.target, "weird", "argv", hostile)
    assert code == 0, said
    assert all(line.startswith("hubnode: ") for line in said.splitlines()), said
    result = run([str(bin_dir / "weird"), "more"], input=None)
    assert not pwned.exists(), (bin_dir / "weird").read_text()
    # ...and the argument still reaches the program whole.
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"<{hostile}>\n<more>\n".encode()


def test_the_script_shows_the_arguments_on_one_escaped_comment_line(client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    code, said = _alias(client, bin_dir, "weird", "argv", "a\nb\x1b[2J")
    assert code == 0, said
    lines = (bin_dir / "weird").read_text().splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == "#!/bin/sh"
    assert lines[1].startswith("# hubnet alias weird: ") and "\\n" in lines[1] and "\\x1b" in lines[1]
    assert lines[3].startswith("exec ")
    assert "\x1b" not in said


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "../up", "-x", "", "a b", "0" * 32])
def test_names_that_are_no_plain_file_name_are_refused(client: Client, tmp_path: Path, name: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    code, said = _alias(client, bin_dir, "--", name, "cat")
    assert code == 2, said
    assert "Traceback" not in said
    assert list(bin_dir.iterdir()) == []
    assert _aliases_toml(client) == ""


def test_a_file_it_did_not_write_is_never_replaced(client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mine = bin_dir / "backup"
    mine.write_text("#!/bin/sh\necho my own backup script\n", encoding="utf-8")
    for force in ([], ["--force"]):
        made = client.run("alias", "--bin-dir", str(bin_dir), *force, "backup", "cat")
        assert made.returncode == 2, made.stderr
        assert "was not written by hubnode alias" in one_line(made)
        assert mine.read_text(encoding="utf-8") == "#!/bin/sh\necho my own backup script\n"
        assert _aliases_toml(client) == ""  # the entry only follows the script


def test_a_directory_or_a_link_is_never_replaced(client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    (bin_dir / "folder").mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text("precious\n", encoding="utf-8")
    (bin_dir / "link").symlink_to(target)
    for name in ("folder", "link"):
        code, said = _alias(client, bin_dir, name, "cat")
        assert code == 2, said
        assert "Traceback" not in said
    assert target.read_text(encoding="utf-8") == "precious\n"
    assert (bin_dir / "folder").is_dir() and (bin_dir / "link").is_symlink()
    assert _aliases_toml(client) == ""


def test_its_own_script_is_replaced(client: Client, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert _alias(client, bin_dir, "speak", "cat")[0] == 0
    code, said = _alias(client, bin_dir, "speak", "espeak", "--stdout")
    assert code == 0, said
    assert "espeak --stdout" in (bin_dir / "speak").read_text(encoding="utf-8")
    assert '"--stdout"' in _aliases_toml(client)
    mode = (bin_dir / "speak").stat().st_mode
    assert mode & stat.S_IXUSR and not mode & stat.S_IWOTH


def test_a_command_on_path_is_not_shadowed_without_force(client: Client, tmp_path: Path) -> None:
    ls = shutil.which("ls")
    if ls is None:
        pytest.skip("no ls on PATH")
    bin_dir = tmp_path / "bin"
    made = client.run("alias", "--bin-dir", str(bin_dir), "ls", "cat")
    assert made.returncode == 2
    line = one_line(made)
    assert "already a command on PATH" in line and os.path.dirname(ls) in line and "--force" in line
    assert not (bin_dir / "ls").exists()
    assert _aliases_toml(client) == ""

    forced = client.run("alias", "--bin-dir", str(bin_dir), "--force", "ls", "cat")
    assert forced.returncode == 0, forced.stderr
    assert (bin_dir / "ls").is_file()
    assert "[ls]" in _aliases_toml(client)
