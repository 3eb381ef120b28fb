"""The hand-written fast path for `hubnode call` must parse exactly as click does."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import hubnet.cli
from hubnet.cli import cli
from hubnet.commands import Context
from hubnet.main import exit_code_for, parse_fast_call
from identity.errors import (
    ConfigError,
    HandshakeError,
    HostKeyMismatch,
    HubnetError,
    Rejected,
    TransportError,
)


def _click_parse(argv: list[str]) -> tuple[str | None, bool, str | None, str, tuple[str, ...]] | None:
    """What the click CLI hands to run_call for argv; None if it never gets there."""
    seen: list[tuple[str | None, bool, str | None, str, tuple[str, ...]]] = []

    def record(
        ctx: Context, server: str | None, service: str, args: tuple[str, ...], bootstrap: tuple[str, ...]
    ) -> int:
        # The fast path has no --bootstrap: a call that gives one is always left to click.
        assert bootstrap == ()
        seen.append((ctx.home_option, ctx.verbose, server, service, args))
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
    ],
)
def test_unusual_forms_go_to_click(argv: list[str]) -> None:
    assert parse_fast_call(argv) is None


def test_home_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUBNET_HOME", "/srv/node")
    assert (
        parse_fast_call(["call", "svc"])
        == _click_parse(["call", "svc"])
        == ("/srv/node", False, None, "svc", ())
    )


_TOKENS = st.sampled_from(
    ["call", "--home", "-v", "--verbose", "-s", "--server", "svc", "x", "--", "-n", "--help"]
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
