"""The offers a discovery found, kept a short while for the next call of the same service.

A robot calls the same service again and again, and each DHT lookup (two dozen datagrams at
a dozen providers) finds the same signed offers. `hubnode call` keeps the raw records of
its last lookup of a service (through the same bootstrap nodes) in the home, one file per
service, and a call within `offer_cache` seconds (client.toml's `[select]`) starts from
them. Nothing in the file is trusted: every record's signature, expiry and key are checked
again as the DHT's are (`hubnet.discover.cached_offers`), the providers are still probed
live, and a call that none of them takes asks the DHT afresh. Organisations' revocation
lists are never kept: a call whose rules name organisations always asks the DHT.
"""

from __future__ import annotations

import contextlib
import os
from _blake2 import blake2b
from collections.abc import Sequence
from pathlib import Path

import msgpack

from hubnet.files import replace_whole

_VERSION = 1
MAX_FILE = 1 << 20  # bytes read from a cache file: far more than any honest lookup's records
MAX_RECORDS = 1024


def cache_name(service_id: bytes, bootstrap: Sequence[str]) -> str:
    """The file name for `service_id` as found through `bootstrap` (another DHT, another file)."""
    named = service_id + "\n".join(bootstrap).encode("utf-8", errors="replace")
    return blake2b(named, digest_size=16).hexdigest()


def read_records(path: Path, *, now: float, max_age: float) -> tuple[list[bytes], float] | None:
    """The raw records kept at `path` and how many seconds ago they were found, if that is
    less than `max_age`; None for a missing, stale or malformed file."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE + 1)
    except OSError:
        return None
    if len(data) > MAX_FILE:
        return None
    try:
        kept = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    match kept:
        case [int() as version, int() | float() as found_at, list() as raws] if (
            version == _VERSION and len(raws) <= MAX_RECORDS and all(isinstance(raw, bytes) for raw in raws)
        ):
            age = now - found_at
            return (raws, age) if 0 <= age < max_age else None
    return None


def keep_records(path: Path, raws: Sequence[bytes], *, now: float) -> None:
    """Keep `raws`, found at `now`, for the calls of the next while (best effort)."""
    replace_whole(path, msgpack.packb([_VERSION, now, list(raws[:MAX_RECORDS])], use_bin_type=True))


def forget(path: Path) -> None:
    """Drop the kept records: none of them took a call."""
    with contextlib.suppress(OSError):
        os.unlink(path)
