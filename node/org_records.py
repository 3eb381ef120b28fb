"""An organisation's revocation list and profile in the DHT.

Each lives under a DHT key of its own, derived from the organisation's id, as the payload
of an ordinary provider record. The payload is the organisation-signed record itself, so
the provider record's publisher does not matter: the organisation publishes its lists
when it can (`hubnode org revoke`, or a node that holds the organisation's key), and every
node that relies on an organisation republishes the newest list it has seen under its own
key. A list thereby outlives the one-hour life of a DHT record without the organisation's
key being online, and nobody can do more than repeat an older list, which readers ignore
because they keep the greatest sequence.

A provider record holds at most 1024 bytes, so a revocation list holds at most
`MAX_REVOKED` keys here; an organisation that needs to shed more members issues short-lived
attestations and stops renewing them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from hubnet.dht.ids import ID_LEN
from hubnet.dht.records import ProviderRecord
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import Profile, RevocationList
from hubnet.identity.records import InvalidRecord

OrgRecordT = TypeVar("OrgRecordT", RevocationList, Profile)

MAX_REVOKED = 16  # what fits in one provider record with room to spare (a test checks)
RECORD_TTL = 3600  # the longest a DHT record may live; republished well before


def revocations_key(org: bytes) -> bytes:
    """The DHT key of `org`'s revocation lists."""
    return hashlib.blake2b(b"hubnet/org-revocations/1\x00" + org).digest()[:ID_LEN]


def profile_key(org: bytes) -> bytes:
    """The DHT key of `org`'s profiles."""
    return hashlib.blake2b(b"hubnet/org-profile/1\x00" + org).digest()[:ID_LEN]


def revocations_record(
    publisher: Identity, revocations: RevocationList, now: int, *, sequence: int | None = None
) -> ProviderRecord:
    """A provider record carrying `revocations`, published by `publisher` (anyone) at `now`.

    DHT nodes keep a record only if its `sequence` (default `now`) is greater than that of
    the publisher's record they hold: a publisher that may publish twice within a second
    (the organisation's key, through `hubnode org`) passes a sequence of its own."""
    if len(revocations.revoked) > MAX_REVOKED:
        raise ValueError(f"a revocation list in the DHT holds at most {MAX_REVOKED} keys")
    return ProviderRecord.create(
        publisher,
        revocations_key(revocations.org),
        revocations.encode(),
        sequence=now if sequence is None else sequence,
        issued_at=now,
        ttl=RECORD_TTL,
    )


def profile_record(
    publisher: Identity, profile: Profile, now: int, *, sequence: int | None = None
) -> ProviderRecord:
    """A provider record carrying `profile`, published by `publisher` (anyone) at `now`;
    `sequence` as for `revocations_record`."""
    return ProviderRecord.create(
        publisher,
        profile_key(profile.org),
        profile.encode(),
        sequence=now if sequence is None else sequence,
        issued_at=now,
        ttl=RECORD_TTL,
    )


def newest_revocations(records: Iterable[ProviderRecord], org: bytes) -> RevocationList | None:
    """The greatest-sequence revocation list of `org` among `records` (others are ignored)."""
    return _newest(records, revocations_key(org), RevocationList.decode, org)


def newest_profile(records: Iterable[ProviderRecord], org: bytes) -> Profile | None:
    """The greatest-sequence profile of `org` among `records` (others are ignored)."""
    return _newest(records, profile_key(org), Profile.decode, org)


def _newest(
    records: Iterable[ProviderRecord], key: bytes, decode: Callable[[bytes], OrgRecordT], org: bytes
) -> OrgRecordT | None:
    newest: OrgRecordT | None = None
    for record in records:
        if record.key != key:
            continue
        try:
            candidate = decode(record.payload)
        except InvalidRecord:
            continue
        if candidate.org == org and (newest is None or candidate.sequence > newest.sequence):
            newest = candidate
    return newest


@dataclass(frozen=True)
class OrgSetup:
    """What a node brings of organisations: its own attestations (carried in its offers), and
    the lists and profiles of the organisations whose keys its home holds (kept published)."""

    attestations: tuple[bytes, ...] = ()
    own_lists: tuple[RevocationList, ...] = ()
    own_profiles: tuple[Profile, ...] = ()
