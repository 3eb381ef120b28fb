"""`hubnode services` shows providers' organisations: what it looks up, and how it prints them.

The formatting (`hubnet.provider_orgs`) over offers, proofs and profiles; and the lookups of
`hubnet.discover.find_offers` over a fake DHT: profiles and the lists of the organisations
the offers name only for `services` (`describe_orgs`), never on `call`'s path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from types import TracebackType

import pytest

from hubnet import discover
from hubnet.dht import client as dht_client
from hubnet.dht.addresses import DirectAddress
from hubnet.dht.ids import service_key
from hubnet.dht.records import ProviderRecord
from hubnet.identity.keys import Identity, fingerprint
from hubnet.identity.orgs import Attestation, Profile, RevocationList, Role
from hubnet.node.offers import Load, Offer, Price
from hubnet.node.org_records import profile_key, profile_record, revocations_key, revocations_record
from hubnet.provider_orgs import ShownOrg, free_shown, memberships_shown, orgs_line
from hubnet.select import proven_memberships

NOW = 1_700_000_000
SID = b"s" * 16
LAB = Identity.from_seed(b"L" * 32)
CLUB = Identity.from_seed(b"C" * 32)
DESK = Identity.from_seed(b"D" * 32)
STRANGER = Identity.from_seed(b"S" * 32)


def offer(publisher: Identity, *attestations: Attestation, free: tuple[Identity, ...] = ()) -> Offer:
    return Offer(
        publisher=publisher.public_key,
        service_id=SID,
        name="who",
        addresses=(DirectAddress("127.0.0.1", 7070),),
        price=Price(10, 0, 0),
        load=Load(0, 0, 4),
        sequence=1,
        issued_at=NOW - 60,
        expires_at=NOW + 600,
        attestations=tuple(a.encode() for a in attestations),
        free_orgs=tuple(o.public_key for o in free),
    )


def attest(
    org: Identity, member: Identity, role: Role = Role.SERVER, *, expires: int = NOW + 86400
) -> Attestation:
    return Attestation.issue(org, member.public_key, role, "desk", NOW - 3600, expires)


def profiles(*pairs: tuple[Identity, str]) -> dict[bytes, Profile]:
    return {org.public_key: Profile.issue(org, 1, label, "") for org, label in pairs}


# --- formatting -----------------------------------------------------------------------------------


def test_a_label_is_unverified_unless_the_config_names_the_organisation() -> None:
    short = fingerprint(LAB.public_key)
    assert (
        ShownOrg(LAB.public_key, "The Robot Lab", verified=False).text()
        == f'"The Robot Lab" ({short}, unverified)'
    )
    assert ShownOrg(LAB.public_key, "The Robot Lab", verified=True).text() == f'"The Robot Lab" ({short})'
    assert ShownOrg(LAB.public_key, None, verified=False).text() == short  # no profile: the id alone


def test_a_label_cannot_pass_for_a_fingerprint() -> None:
    fake = f'Lab" ({fingerprint(CLUB.public_key)}'
    text = ShownOrg(LAB.public_key, fake, verified=False).text()
    assert text.startswith('"Lab\\" (') and text.endswith(f"({fingerprint(LAB.public_key)}, unverified)")
    assert ShownOrg(LAB.public_key, "Labo de Montréal", verified=True).text().startswith('"Labo de Montréal"')


def test_memberships_are_what_the_attestations_prove() -> None:
    offers = [
        offer(DESK, attest(LAB, DESK), attest(CLUB, DESK, Role.MEMBER)),
        offer(STRANGER, attest(LAB, DESK)),  # another key's attestation proves nothing
    ]
    proven, refused = proven_memberships(offers, NOW, {})
    known = profiles((LAB, "The Robot Lab"))
    desk = memberships_shown(offers[0], proven, known, {CLUB.public_key})
    # The organisation the config names comes first; the club has no profile, so no label.
    assert desk == [
        ShownOrg(CLUB.public_key, None, True, "member"),
        ShownOrg(LAB.public_key, "The Robot Lab", False, "server"),
    ]
    assert memberships_shown(offers[1], proven, known, set()) == []
    assert len(refused) == 1 and "names another key" in refused[0]


def test_a_revoked_or_expired_membership_is_not_shown() -> None:
    offers = [offer(DESK, attest(LAB, DESK)), offer(STRANGER, attest(CLUB, STRANGER, expires=NOW - 1))]
    revoked = {LAB.public_key: RevocationList.issue(LAB, 2, NOW, [DESK.public_key])}
    proven, _ = proven_memberships(offers, NOW, revoked)
    assert [memberships_shown(o, proven, {}, set()) for o in offers] == [[], []]


def test_free_orgs_are_shown_once_each() -> None:
    free = offer(DESK, free=(LAB, CLUB, LAB))
    shown = free_shown(free, profiles((LAB, "The Robot Lab"), (CLUB, "Chess club")), {LAB.public_key})
    assert [(s.label, s.verified, s.role) for s in shown] == [
        ("The Robot Lab", True, None),
        ("Chess club", False, None),
    ]


def test_the_table_line() -> None:
    lab, club = fingerprint(LAB.public_key), fingerprint(CLUB.public_key)
    member = ShownOrg(LAB.public_key, "The Robot Lab", False, "server")
    free = ShownOrg(CLUB.public_key, "Chess club", True)
    assert orgs_line([member], [free]) == (
        f'member of "The Robot Lab" ({lab}, unverified) as server; free for members of "Chess club" ({club})'
    )
    assert orgs_line([], [free]) == f'free for members of "Chess club" ({club})'
    assert orgs_line([member, dataclasses.replace(member, role="robot")], []).count(" as ") == 2
    assert orgs_line([], []) == ""


def test_the_json_keys() -> None:
    member = ShownOrg(LAB.public_key, "The Robot Lab", False, "robot").as_json()
    assert member == {
        "org": LAB.peer_id,
        "fingerprint": fingerprint(LAB.public_key),
        "label": "The Robot Lab",
        "verified": False,
        "role": "robot",
    }
    assert "role" not in ShownOrg(LAB.public_key, None, True).as_json()


# --- what find_offers looks up ----------------------------------------------------------------


class FakeDht:
    """A DhtClient that answers find_providers from a table, and remembers what it was asked."""

    def __init__(self, records: list[ProviderRecord]) -> None:
        self.records = records
        self.asked: list[bytes] = []
        self.seen = {b"x": None}

    def __enter__(self) -> FakeDht:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def find_providers(self, key: bytes) -> list[ProviderRecord]:
        self.asked.append(key)
        return [r for r in self.records if r.key == key]


def offer_record(o: Offer, publisher: Identity) -> ProviderRecord:
    return ProviderRecord.create(publisher, service_key(SID), o.payload(), sequence=1, issued_at=NOW, ttl=600)


@pytest.fixture
def dht(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDht]:
    desk_offer = offer(DESK, attest(LAB, DESK), free=(CLUB,))
    fake = FakeDht(
        [
            offer_record(desk_offer, DESK),
            profile_record(STRANGER, Profile.issue(LAB, 1, "The Robot Lab", ""), NOW),
            profile_record(STRANGER, Profile.issue(LAB, 2, "The Robot Lab (new)", ""), NOW),
            revocations_record(STRANGER, RevocationList.issue(LAB, 5, NOW, [STRANGER.public_key]), NOW),
        ]
    )
    monkeypatch.setattr(dht_client, "DhtClient", lambda identity, seeds, tokens_file: fake)
    yield fake


SEED = (f"{STRANGER.peer_id}@127.0.0.1:7070",)


def test_call_looks_up_only_the_lists_its_rules_need(dht: FakeDht) -> None:
    found = discover.find_offers(DESK, SEED, SID, {CLUB.public_key})
    assert len(found.offers) == 1 and found.profiles == {}
    assert dht.asked == [service_key(SID), revocations_key(CLUB.public_key)]


def test_services_looks_up_the_profiles_and_lists_of_the_organisations_offers_name(dht: FakeDht) -> None:
    found = discover.find_offers(DESK, SEED, SID, describe_orgs=True)
    assert set(dht.asked[1:]) == {
        revocations_key(LAB.public_key),
        revocations_key(CLUB.public_key),
        profile_key(LAB.public_key),
        profile_key(CLUB.public_key),
    }
    assert found.profiles[LAB.public_key].label == "The Robot Lab (new)"  # the greatest sequence
    assert CLUB.public_key not in found.profiles
    assert found.revocations[LAB.public_key].sequence == 5


def test_services_looks_up_a_bounded_number_of_organisations(monkeypatch: pytest.MonkeyPatch) -> None:
    orgs = [Identity.from_seed(bytes([i]) * 32) for i in range(20, 40)]
    publishers = [Identity.from_seed(bytes([i]) * 32) for i in range(100, 116)]
    # Publisher i serves orgs i..i+3 free: 16 offers name 19 organisations, most of them 4 times.
    offers = [offer(p, free=tuple(orgs[i : i + 4])) for i, p in enumerate(publishers)]
    named = discover.orgs_named(offers)
    assert set(named) == {o.public_key for o in orgs[:19]}
    assert named[:13] == sorted(o.public_key for o in orgs[3:16])  # named by four offers each
    fake = FakeDht([offer_record(o, p) for o, p in zip(offers, publishers, strict=True)])
    monkeypatch.setattr(dht_client, "DhtClient", lambda identity, seeds, tokens_file: fake)
    discover.find_offers(DESK, SEED, SID, describe_orgs=True)
    assert len(fake.asked) == 1 + 2 * discover.MAX_DESCRIBED_ORGS
