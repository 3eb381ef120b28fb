"""`hubnode alias`: a local command that calls a service, and the rules that keep it harmless.

An alias is an entry in `aliases.toml` (`hubnet.config`) and a small shell script NAME in
a bin folder that runs `hubnode call NAME "$@"`. Writing that script must never hurt:

- NAME is a plain file name (`hubnet.config.check_alias_name`): not `.` or `..`, no `/`;
- it does not shadow a command already on PATH (`ls`, `backup`) unless asked (`force`);
- it replaces only a script that `hubnode alias` wrote (its first two lines say so, see
  `is_alias_script`), never another file, a directory or a symbolic link;
- nothing the user gave can break out of the script's quoting: the alias's arguments stay
  in `aliases.toml`, and the script's comment shows them escaped (a newline in one would
  otherwise end the comment and run the rest as a command);
- `aliases.toml` changes only once the script is in place, so a refused alias leaves no entry.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from hubnet.config import Alias, check_alias_name, save_alias
from hubnet.identity.errors import ConfigError
from hubnet.safe_text import printable

SHEBANG = "#!/bin/sh"
_HEAD_BYTES = 4096


def _marker(name: str) -> str:
    """The script's second line starts with this: how a script of ours is recognised."""
    return f"# hubnet alias {name}:"


def script_text(name: str, alias: Alias, command: Sequence[str]) -> str:
    """The script for `alias`, running `command` (hubnode, with its --home) with `call NAME`."""
    summary = printable(shlex.join([alias.service, *alias.args]))  # one line, whatever the args hold
    return (
        f"{SHEBANG}\n"
        f"{_marker(name)} {summary}\n"
        "# Written by hubnode alias, which replaces only scripts that begin with these lines.\n"
        f'exec {shlex.join(command)} call {shlex.quote(name)} "$@"\n'
    )


def is_alias_script(path: Path, name: str) -> bool:
    """Whether `path` is a regular file that `hubnode alias` wrote for `name`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, _HEAD_BYTES).decode("utf-8", "replace").split("\n")
    finally:
        os.close(fd)
    return len(head) > 2 and head[0] == SHEBANG and head[1].startswith(_marker(name))


def shadowed_command(name: str, directory: Path, path_variable: str | None = None) -> Path | None:
    """A command NAME on PATH outside `directory` (the one the alias would be, or be hidden
    by), or None."""
    here = os.path.realpath(directory)
    for entry in (os.environ.get("PATH", "") if path_variable is None else path_variable).split(os.pathsep):
        if not entry or os.path.realpath(entry) == here:
            continue
        candidate = Path(entry) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def hubnode_command() -> list[str]:
    """How to run hubnode again the way it was run: the `hubnode` script, or `python -m
    hubnet` (whose argv[0] is hubnet/__main__.py, not something to exec)."""
    hubnode = Path(sys.argv[0]).absolute()
    started_as_module = getattr(sys.modules["__main__"], "__spec__", None) is not None
    if hubnode.is_file() and not started_as_module:
        return [str(hubnode)]
    return [sys.executable, "-m", "hubnet"]


def make_alias(
    aliases_file: Path, directory: Path, alias: Alias, command: Sequence[str], *, force: bool
) -> Path:
    """Write NAME's script in `directory`, then record `alias` in `aliases_file`; the script.

    ConfigError, with nothing written, if the name is not a plain name, would shadow a
    command on PATH (unless `force`), or names a file there that is not our script.
    """
    name = alias.name
    check_alias_name(name)
    if not force:
        other = shadowed_command(name, directory)
        if other is not None:
            raise ConfigError(
                f"{name!r} is already a command on PATH ({printable(str(other))}); "
                "choose another name, or give --force to make the alias all the same"
            )
    script = directory / name
    if os.path.lexists(script) and not is_alias_script(script, name):
        raise ConfigError(
            f"{printable(str(script))} exists and was not written by hubnode alias; "
            "it is left alone: choose another name, or another --bin-dir"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_script(script, script_text(name, alias, command))
    except OSError as exc:
        raise ConfigError(f"cannot write {printable(str(script))}: {exc.strerror or exc}") from None
    save_alias(aliases_file, alias)
    return script


def _write_script(script: Path, text: str) -> None:
    """Write `text` beside `script` and move it into place: never through a link, never half."""
    temporary = script.with_name(f".{script.name}.hubnode-alias-{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o755)  # whatever the umask
            file.write(text)
        os.replace(temporary, script)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
