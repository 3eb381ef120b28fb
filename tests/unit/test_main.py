"""`hubnode`'s entry point: the hand-written fast path for `hubnode call` parses exactly as
click does, imports neither click nor Trio, and errors map to exit statuses in one place."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import hubnet.cli
from hubnet.cli import cli
from hubnet.commands import Context, misplaced_option, options_after_service, shown_command
from hubnet.exits import exit_code_for
from hubnet.identity.errors import (
    ConfigError,
    HandshakeError,
    HostKeyMismatch,
    HubnetError,
    NotOffered,
    Rejected,
    TransportError,
)
from hubnet.main import FastCall, parse_fast_call


def _click_parse(argv: list[str]) -> FastCall | None:
    """What the click CLI hands to run_call for argv; None if it never gets there."""
    seen: list[FastCall] = []

    def record(
        ctx: Context,
        server: str | None,
        service: str,
        args: tuple[str, ...],
        bootstrap: tuple[str, ...],
        *,
        max_cost: int | None,
        pay: str | None,
    ) -> int:
        # The fast path has no --pay: a call that gives one is always left to click.
        assert pay is None
        seen.append((ctx.home_option, ctx.verbose, server, max_cost, service, args, bootstrap))
        return 0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hubnet.cli, "run_call", record)
        CliRunner().invoke(cli, argv)
    return seen[0] if seen else None


FAST_FORMS = [
    ["call", "espeak"],
    ["call", "espeak", "--stdout", "-v", "en-us", "This was a triumph"],
    ["--home", "/tmp/h", "call", "--server", "abc@h:1", "cat", "-n"],
    ["-v", "--home", "/tmp/h", "call", "-s", "h:1", "svc", "--server", "x"],
    ["--verbose", "call", "svc", "--help"],
    ["--home", "call", "call", "svc"],
    ["call", "svc", "--", "-x"],
    ["call", "--max-cost", "500", "-s", "h:1", "svc", "--max-cost", "1"],
    ["call", "--server", "h:1", "--max-cost", "0", "--server", "h:2", "svc"],
    ["call", "-b", "abc@h:1", "--bootstrap", "h:2", "svc", "-b", "x"],
]


@pytest.mark.parametrize("argv", FAST_FORMS)
def test_fast_path_agrees_with_click(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUBNET_HOME", raising=False)
    fast = parse_fast_call(argv)
    assert fast is not None, "these are the plain forms the fast path exists for"
    assert fast == _click_parse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["call", "--help"],
        ["call"],
        ["id"],
        ["--home=/x", "call", "svc"],
        ["call", "--server=h:1", "s"],
        ["call", "--max-cost", "-5", "s"],
        ["call", "--max-cost", "lots", "s"],
    ],
)
def test_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert parse_fast_call(argv) is None


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBNET_HOME", "/srv/node")
    assert (
        parse_fast_call(["call", "svc"])
        == _click_parse(["call", "svc"])
        == ("/srv/node", False, None, None, "svc", (), ())
    )


_TOKENS = st.sampled_from(
    [
        "call",
        "--home",
        "-v",
        "--verbose",
        "-s",
        "--server",
        "--max-cost",
        "-b",
        "--bootstrap",
        "7",
        "svc",
        "x",
        "--",
        "-n",
        "--help",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TOKENS, max_size=7))
def test_fast_path_never_disagrees(argv: list[str]) -> None:
    fast = parse_fast_call(argv)
    if fast is not None:
        assert fast == _click_parse(argv)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (Rejected("no-such-service", "x"), 127),
        (NotOffered("x"), 127),
        (Rejected("bad-arguments", "x"), 126),
        (TransportError("x"), 255),
        (HandshakeError("x"), 255),
        (HostKeyMismatch("x"), 255),
        (ConfigError("x"), 2),
        (HubnetError("x"), 1),
    ],
)
def test_exit_codes(error: HubnetError, code: int) -> None:
    assert exit_code_for(error) == code


# --- where options go: the hints a misplaced option gets ------------------------------------


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        (("--server", "h:1"), "hubnode call --server h:1 espeak"),
        (("--server=h:1", "hi"), "hubnode call --server=h:1 espeak hi"),
        (("-v", "en", "-s", "k@h:1"), "hubnode call -s k@h:1 espeak -v en"),
        (("--bootstrap", "seed"), "hubnode call --bootstrap seed espeak"),
        (("-b", "h:7070", "hello world"), "hubnode call -b h:7070 espeak 'hello world'"),
    ],
)
def test_call_options_after_service_get_a_hint(args: tuple[str, ...], fix: str) -> None:
    hint = options_after_service("espeak", args)
    assert hint is not None and hint.endswith(f"put it before SERVICE: {fix}"), hint


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("-v", "en-us", "hello"),
        ("-s", "140"),  # espeak's own -s (speed): not an address, so not hubnode's
        ("-b", "1"),
        ("--", "--server", "h:1"),  # after --, explicitly the program's
        ("--servers", "h:1"),
    ],
)
def test_the_programs_own_options_get_no_hint(args: tuple[str, ...]) -> None:
    assert options_after_service("espeak", args) is None


def test_a_global_option_after_call_says_where_it_goes() -> None:
    message = str(misplaced_option("-v", "k@h:1", ("b:2",), ("cat", "-n")))
    assert message == (
        "-v is an option of hubnode itself and goes before the command: "
        "hubnode -v call --server k@h:1 --bootstrap b:2 cat -n"
    )
    message = str(misplaced_option("--home", None, (), ("/srv/my node", "cat")))
    assert message.endswith("before the command: hubnode --home '/srv/my node' call cat")
    assert str(misplaced_option("--home=/x", None, (), ("cat",))).endswith(": hubnode --home=/x call cat")


def test_an_unknown_call_option_gets_the_closest_and_the_usage() -> None:
    message = str(misplaced_option("--sever", None, (), ("h:1", "cat")))
    assert message.startswith("call has no option '--sever'; did you mean --server? usage: hubnode ")
    assert "did you mean" not in str(misplaced_option("-x", None, (), ()))


def test_shown_commands_stay_on_one_line() -> None:
    assert shown_command(["hubnode", "call", "cat", "a\nb"]) == "hubnode call cat ..."
    long = shown_command(["hubnode", "call", "espeak", "word " * 100])
    assert long == "hubnode call espeak ..."


# Run in a fresh interpreter (this one has imported everything): `hubnode ARGS` as the
# console script runs it, then print which of the costly modules it loaded.
_LOADED_BY = """
import atexit, sys
COSTLY = (
    "trio", "click", "dataclasses", "tempfile", "encodings.idna", "_hashlib", "threading", "tomllib",
    "random", "typing",
)
atexit.register(lambda: print(",".join(m for m in COSTLY if m in sys.modules)))
sys.argv = ["hubnode", *sys.argv[1:]]
from hubnet.main import main
main()
"""


def _python(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("call", "needed"),
    [
        (["call", "--server", "127.0.0.1:1", "cat"], ""),  # a server given: connect (refused)
        # None given: discovery in the DHT (with no bootstrap nodes). A call with offers to
        # choose between draws from os.urandom, and its probes run on `_thread`'s threads,
        # never `threading`'s (tests/e2e/test_discovery.py).
        (["call", "cat"], ""),
    ],
    ids=["server", "discovery"],
)
def test_call_imports_none_of_the_costly_modules(call: list[str], needed: str, tmp_path: Path) -> None:
    done = _python(_LOADED_BY, "--home", str(tmp_path), *call)
    assert done.returncode != 0  # nothing answers; what matters is what it loaded on the way
    assert done.stdout.strip() == needed, done.stderr


def test_a_call_with_a_client_toml_parsed_before_imports_no_toml_parser(tmp_path: Path) -> None:
    (tmp_path / "client.toml").write_text('server = "127.0.0.1:1"\n', encoding="utf-8")
    for _ in range(2):  # the first call parses the file and keeps what it parsed to
        done = _python(_LOADED_BY, "--home", str(tmp_path), "call", "cat")
        assert done.returncode != 0
    assert done.stdout.strip() == "", done.stderr


def test_cli_and_main_do_not_import_each_other() -> None:
    # main reaches the click CLI only when it calls it; the CLI needs nothing from main.
    check = (
        "import sys; import hubnet.cli; assert 'hubnet.main' not in sys.modules, 'cli imports main'\n"
        "for m in [m for m in sys.modules if m.startswith('hubnet')]: del sys.modules[m]\n"
        "import hubnet.main; assert 'hubnet.cli' not in sys.modules, 'main imports cli'"
    )
    done = _python(check)
    assert done.returncode == 0, done.stderr
