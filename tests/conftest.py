"""Shared by all tests.

`require_program(name)` lives in `tests.helpers` so that test modules can import it
(`from tests.helpers import require_program`): it returns the program's path, or skips the
test saying why, or, with HUBNET_REQUIRE_ALL=1 (as on CI), fails it. The Cashu mints of
`tests.mint` are fixtures here, so that every kind of test can use them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import REQUIRE_ALL_VARIABLE, require_all, require_program
from tests.mint import TestMint, running_mint
from tests.netns import Internet
from tests.netns import internet as build_internet

__all__ = ["require_program"]


def pytest_report_header(config: pytest.Config) -> str:
    if require_all():
        return f"{REQUIRE_ALL_VARIABLE}=1: a test that lacks a program fails instead of skipping"
    return f"{REQUIRE_ALL_VARIABLE} unset: a test that lacks a program is skipped, with the reason"


@pytest.fixture(scope="session")
def internet() -> Iterator[Internet]:
    """The simulated internet of `tests/netns.py`, built once per test session (root only)."""
    with build_internet() as net:
        yield net


@pytest.fixture(scope="session")
def cashu_mint() -> Iterator[TestMint]:
    """The session's real Cashu mint (nutshell, fake Lightning), started on first use."""
    with running_mint("mint") as mint:
        yield mint


@pytest.fixture(scope="session")
def untrusted_mint() -> Iterator[TestMint]:
    """A second mint, which no node under test trusts; started only if a test asks for it."""
    with running_mint("untrusted-mint") as mint:
        yield mint


@pytest.fixture
def own_mint() -> Iterator[TestMint]:
    """A mint of this test's own, which it may stop (`.stop()`) to see a mint go down."""
    with running_mint("own-mint") as mint:
        yield mint
