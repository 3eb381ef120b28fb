"""The offers a discovery keeps for the next calls: read back only while fresh, never
trusted (every record checked again), and a file of anything else is no offers at all."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from hubnet.dht.records import ProviderRecord
from hubnet.discover import cached_offers
from hubnet.identity.keys import Identity
from hubnet.offer_cache import MAX_FILE, cache_name, keep_records, read_records
from tests.helpers import signed_offer, tampered

SID = bytes(range(16))
NOW = 1_700_000_000.0


def offer_record(
    publisher: Identity, *, service_id: bytes = SID, issued_at: int | None = None
) -> ProviderRecord:
    issued = int(time.time()) if issued_at is None else issued_at
    return signed_offer(publisher, service_id, ["127.0.0.1:7070"], issued_at=issued)


def test_records_are_read_back_while_fresh(tmp_path: Path) -> None:
    path = tmp_path / "offers" / cache_name(SID, ["peer@127.0.0.1:7070"])
    keep_records(path, [b"one", b"two"], now=NOW)
    assert read_records(path, now=NOW + 5, max_age=30) == ([b"one", b"two"], 5)
    assert read_records(path, now=NOW + 30, max_age=30) is None  # stale
    assert read_records(path, now=NOW - 1, max_age=30) is None  # from the future: the clock moved
    assert path.stat().st_mode & 0o777 == 0o600


def test_each_service_and_each_dht_has_a_file_of_its_own() -> None:
    names = {
        cache_name(SID, ["a@127.0.0.1:1"]),
        cache_name(SID, ["b@127.0.0.1:1"]),
        cache_name(bytes(16), ["a@127.0.0.1:1"]),
        cache_name(SID, ["a@127.0.0.1:1", "b@127.0.0.1:1"]),
    }
    assert len(names) == 4


def _read(data: bytes) -> tuple[list[bytes], float] | None:
    # Not pytest's tmp_path: hypothesis runs many examples in one test function.
    with tempfile.NamedTemporaryFile(suffix=".offers") as file:
        file.write(data)
        file.flush()
        return read_records(Path(file.name), now=NOW, max_age=30)


@given(st.binary(max_size=3000))
def test_a_file_of_anything_else_is_none_or_records(data: bytes) -> None:
    kept = _read(data)
    assert kept is None or all(isinstance(raw, bytes) for raw in kept[0])


def test_other_versions_shapes_and_sizes_are_none() -> None:
    assert _read(msgpack.packb([2, NOW, [b"x"]])) is None
    assert _read(msgpack.packb([1, NOW, ["text"]])) is None
    assert _read(msgpack.packb([1, "now", [b"x"]])) is None
    assert _read(msgpack.packb([1, NOW, [b"x"] * 1025])) is None
    assert _read(msgpack.packb([1, NOW, [b"x" * MAX_FILE]])) is None
    assert _read(msgpack.packb([1, NOW, [b"x"]])) == ([b"x"], 0)


def test_kept_offers_are_checked_again_as_the_dht_s_are(tmp_path: Path) -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    genuine = offer_record(alice)
    forged = tampered(offer_record(bob).raw)  # its signature no longer verifies
    other_service = offer_record(carol, service_id=bytes(16))
    expired = offer_record(carol, issued_at=int(time.time()) - 700)
    path = tmp_path / "kept"
    keep_records(path, [forged, other_service.raw, expired.raw, b"garbage", genuine.raw], now=time.time())
    kept = cached_offers(path, SID, 30)
    assert kept is not None
    found, age = kept
    assert [offer.publisher for offer in found.offers] == [alice.public_key]
    assert 0 <= age < 30
    assert cached_offers(path, SID, 0) is None  # offer_cache = 0: never reused


def test_no_valid_offer_kept_is_no_offers(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    keep_records(path, [tampered(offer_record(Identity.generate()).raw)], now=time.time())
    assert cached_offers(path, SID, 30) is None
    assert cached_offers(tmp_path / "absent", SID, 30) is None
