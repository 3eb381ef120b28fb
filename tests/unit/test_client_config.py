"""Tests of hubnet.config's client.toml: what it accepts, and what a typo in it is told."""

from __future__ import annotations

import datetime
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubnet.call_machine import Timeouts
from hubnet.config import DEFAULT_CONNECT_TIMEOUT, ClientConfig, _read_toml, load_client_config
from hubnet.identity.errors import ConfigError
from hubnet.identity.hints import did_you_mean
from hubnet.select import parse_selection_rules


def _load(tmp_path: Path, text: str) -> ClientConfig:
    path = tmp_path / "client.toml"
    path.write_text(text, encoding="utf-8")
    return load_client_config(path)


def test_a_missing_client_toml_is_the_defaults(tmp_path: Path) -> None:
    config = load_client_config(tmp_path / "client.toml")
    assert (config.server, config.connect_timeout, config.bootstrap) == (None, DEFAULT_CONNECT_TIMEOUT, ())


def test_calls_through_relays_hole_punch_unless_told_not_to(tmp_path: Path) -> None:
    assert load_client_config(tmp_path / "client.toml").punch is True
    with pytest.raises(ConfigError, match="punch: must be true or false"):
        _load(tmp_path, 'punch = "yes"\n')


def test_the_timeouts_default_to_the_documented_values(tmp_path: Path) -> None:
    config = load_client_config(tmp_path / "client.toml")
    assert (config.accept_timeout, config.idle_timeout) == (60.0, 60.0)
    assert config.timeouts == Timeouts(60.0, 60.0) == Timeouts()


def test_every_key(tmp_path: Path) -> None:
    text = 'server = "desktop:7070"\nconnect_timeout = 3\nbootstrap = ["seed:7070"]\n'
    text += "accept_timeout = 120\nidle_timeout = 0.5\npunch = false\n"
    config = _load(tmp_path, text + "[select]\nprobe_count = 2\n")
    assert config.punch is False
    assert config.server == "desktop:7070"
    assert config.connect_timeout == 3.0
    assert config.timeouts == Timeouts(accept=120.0, idle=0.5)
    assert config.bootstrap == ("seed:7070",)
    assert config.select == {"probe_count": 2}
    assert config.source == str(tmp_path / "client.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sever = "desktop:7070"', "sever: unknown key (did you mean 'server'?)"),
        ("conect_timeout = 3", "conect_timeout: unknown key (did you mean 'connect_timeout'?)"),
        ("accept_timeuot = 3", "accept_timeuot: unknown key (did you mean 'accept_timeout'?)"),
        ("idle_time = 3", "idle_time: unknown key (did you mean 'idle_timeout'?)"),
        ("connect_timout = 3", "connect_timout: unknown key (did you mean 'connect_timeout'?)"),
        ('bootstraps = ["seed:7070"]', "bootstraps: unknown key (did you mean 'bootstrap'?)"),
        ("[selct]\nprobe_count = 2", "selct: unknown key (did you mean 'select'?)"),
        # Nothing close: no guess.
        ("colour = 1", "colour: unknown key"),
        ('"two words" = 1', "'two words': unknown key"),
    ],
)
def test_a_typo_is_named_with_its_file_and_the_key_it_was_meant_to_be(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    assert str(caught.value) == f"{tmp_path / 'client.toml'}: {message}"


def test_typos_in_select_are_told_the_same_way(tmp_path: Path) -> None:
    # The [select] table is checked by hubnet.select, with the same hint.
    config = _load(tmp_path, "[select]\nprobe_cont = 2\n")
    with pytest.raises(
        ConfigError, match=r"select\.probe_cont: unknown key \(did you mean 'probe_count'\?\)$"
    ):
        parse_selection_rules(config.select, source=config.source)


def test_did_you_mean_offers_only_a_close_choice() -> None:
    assert did_you_mean("timout", ["timeout", "listen"]) == " (did you mean 'timeout'?)"
    assert did_you_mean("zzz", ["timeout", "listen"]) == ""
    assert did_you_mean("x", []) == ""


@pytest.mark.parametrize("key", ["connect_timeout", "accept_timeout", "idle_timeout"])
@pytest.mark.parametrize("value", ["0", "-1", "true", '"60"', "inf", "nan", "1e10"])
def test_a_timeout_is_a_positive_finite_number_of_seconds(tmp_path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, f"{key} = {value}\n")
    assert str(caught.value) == f"{tmp_path / 'client.toml'}: {key}: must be a positive number of seconds"


_SEES_TOMLLIB = """
import sys
from pathlib import Path
from hubnet.config import load_client_config
config = load_client_config(Path(sys.argv[1]))
print(config.server, "tomllib" in sys.modules)
"""


def _load_in_a_fresh_process(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _SEES_TOMLLIB, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_a_file_parsed_once_is_read_again_without_tomllib(tmp_path: Path) -> None:
    """What a Pi pays per call: the second read of the same bytes takes the kept parse."""
    path = tmp_path / "client.toml"
    path.write_text('server = "desktop:7070"\n', encoding="utf-8")
    assert _load_in_a_fresh_process(path) == "desktop:7070 True"
    assert (tmp_path / ".client.toml.parsed").is_file()
    assert _load_in_a_fresh_process(path) == "desktop:7070 False"


def test_an_edit_is_read_at_once_whatever_the_kept_parse_says(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('server = "desktop:7070"\n', encoding="utf-8")
    assert load_client_config(path).server == "desktop:7070"
    stat = path.stat()
    path.write_text('server = "laptop:7070"\n', encoding="utf-8")  # same size, maybe same mtime
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert load_client_config(path).server == "laptop:7070"
    path.write_text("server = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"client\.toml"):
        load_client_config(path)


@pytest.mark.parametrize(
    "kept", [b"", b"garbage", marshal.dumps((1, b"key", "not tables")), marshal.dumps(7)]
)
def test_a_kept_parse_that_is_not_ours_is_parsed_again(tmp_path: Path, kept: bytes) -> None:
    path = tmp_path / "client.toml"
    path.write_text('server = "desktop:7070"\n', encoding="utf-8")
    (tmp_path / ".client.toml.parsed").write_bytes(kept)
    assert load_client_config(path).server == "desktop:7070"


def test_a_value_marshal_cannot_keep_is_parsed_each_time(tmp_path: Path) -> None:
    path = tmp_path / "aliases.toml"
    path.write_text("[speak]\nwhen = 1979-05-27\n", encoding="utf-8")
    assert _read_toml(path) == {"speak": {"when": datetime.date(1979, 5, 27)}}
    assert [p.name for p in tmp_path.iterdir()] == ["aliases.toml"]


def test_a_folder_that_cannot_keep_the_parse_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('server = "desktop:7070"\nconnect_timeout = 3\n', encoding="utf-8")
    (tmp_path / ".client.toml.parsed").mkdir()  # in the way of the file, as a read-only folder is
    assert load_client_config(path).connect_timeout == 3.0
    assert load_client_config(path).connect_timeout == 3.0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
