"""Helpers shared by every kind of test (import as `from tests.helpers import ...`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from hubnet.dht.addresses import parse_address
from hubnet.dht.ids import service_key
from hubnet.dht.records import ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.node.offers import Load, Offer, Price

REQUIRE_ALL_VARIABLE = "HUBNET_REQUIRE_ALL"


def require_all() -> bool:
    """True on CI (`HUBNET_REQUIRE_ALL=1`), where a missing program fails instead of skipping."""
    return os.environ.get(REQUIRE_ALL_VARIABLE) == "1"


def require_program(name: str) -> str:
    """The path of the program `name` on PATH; otherwise skip the test, saying why.

    With HUBNET_REQUIRE_ALL=1 (set by `.ci/run`) a missing program fails the test instead,
    so CI can never go green by silently skipping what it was meant to check.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    lacking(f"{name} is not installed: not found on PATH={os.environ.get('PATH', '')!r}")


def lacking(reason: str) -> NoReturn:
    """Skip the test for `reason` (something it needs is not installed); fail it on CI."""
    if require_all():
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def reachable_dir() -> Iterator[Path]:
    """A fresh folder that every user can reach, removed afterwards.

    pytest's tmp_path lies in a mode-0700 folder of the user running the tests: when that is
    root, sandboxed jobs (which then run as `nobody`) could neither reach nor be given a
    folder there.
    """
    path = Path(tempfile.mkdtemp(prefix="hubnet-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def signed_offer(
    publisher: Identity, service_id: bytes, addresses: Sequence[str], *, issued_at: int, ttl: int = 600
) -> ProviderRecord:
    """A valid provider record of an offer of `service_id` ("who": 1 msat a call, idle, one
    job slot) at `addresses`, signed by `publisher`."""
    offer = Offer(
        publisher=publisher.public_key,
        service_id=service_id,
        name="who",
        addresses=tuple(parse_address(a) for a in addresses),
        price=Price(per_call=1),
        load=Load(0, 0, 1),
        sequence=1,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
    )
    return ProviderRecord.create(
        publisher, service_key(service_id), offer.payload(), sequence=1, issued_at=issued_at, ttl=ttl
    )


def tampered(record: bytes) -> bytes:
    """`record` with its last byte (of its signature) changed, so that it no longer verifies.
    Flipped, not set: a byte set to 0 is no change at all when it was 0 already (1 in 256)."""
    return record[:-1] + bytes([record[-1] ^ 1])
