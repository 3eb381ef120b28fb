"""identity.orgs: attestations, revocation lists and profiles, their checks and the org rules."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import (
    ATTEST_DOMAIN,
    MAX_ATTESTATION_LEN,
    MAX_LABEL,
    MAX_VALIDITY,
    Attestation,
    InvalidOrgRecord,
    OrgRule,
    Profile,
    RevocationList,
    Role,
    check,
    memberships,
    satisfies,
)
from hubnet.identity.records import InvalidRecord, SignedRecord

LAB = Identity.from_seed(bytes([1]) * 32)
OTHER_ORG = Identity.from_seed(bytes([2]) * 32)
ROBOT = Identity.from_seed(bytes([3]) * 32).public_key
DESKTOP = Identity.from_seed(bytes([4]) * 32).public_key
NOW = 1_800_000_000
DAY = 86400


def attest(
    member: bytes = ROBOT, role: Role = Role.ROBOT, org: Identity = LAB, days: int = 30
) -> Attestation:
    return Attestation.issue(org, member, role, "robot 7", NOW - DAY, NOW - DAY + days * DAY)


# ---- codecs ----------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    role=st.sampled_from(Role),
    label=st.text(st.characters(categories=["L", "N", "P", "S"]) | st.just(" "), max_size=MAX_LABEL).filter(
        lambda text: len(text.encode()) <= MAX_LABEL
    ),
    issued=st.integers(0, 1 << 40),
    length=st.integers(1, MAX_VALIDITY),
)
def test_an_attestation_round_trips_in_both_forms(role: Role, label: str, issued: int, length: int) -> None:
    made = Attestation.issue(LAB, ROBOT, role, label, issued, issued + length)
    assert len(made.encode()) <= MAX_ATTESTATION_LEN
    assert Attestation.decode(made.encode()) == made
    text = made.to_text()
    assert "\n" not in text and Attestation.from_text(text) == made


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_are_never_an_attestation_list_or_profile(data: bytes) -> None:
    for kind in (Attestation, RevocationList, Profile):
        with pytest.raises(InvalidRecord):
            kind.decode(data)


@settings(max_examples=100, deadline=None)
@given(
    body=st.lists(
        st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.binary(max_size=40), st.text(max_size=40)),
        max_size=8,
    ).filter(lambda body: len(body) != 5)
)
def test_a_well_signed_body_of_the_wrong_shape_is_refused(body: list[object]) -> None:
    # Signed by the organisation, so only the body's shape can be wrong.
    record = SignedRecord.sign(LAB, ATTEST_DOMAIN, bytes(msgpack.packb(body)))
    with pytest.raises(InvalidOrgRecord):
        Attestation.decode(record.encode())


@pytest.mark.parametrize(
    "body",
    [
        [b"short", "robot", "x", NOW, NOW + 1],
        [ROBOT, "pilot", "x", NOW, NOW + 1],
        [ROBOT, 1, "x", NOW, NOW + 1],
        [ROBOT, "robot", "x\n", NOW, NOW + 1],
        [ROBOT, "robot", "x" * (MAX_LABEL + 1), NOW, NOW + 1],
        [ROBOT, "robot", "x", NOW, NOW],
        [ROBOT, "robot", "x", NOW, NOW + MAX_VALIDITY + 1],
        [ROBOT, "robot", "x", -1, NOW],
        [ROBOT, "robot", "x", True, NOW],
    ],
)
def test_a_well_signed_body_with_a_wrong_field_is_refused(body: list[object]) -> None:
    record = SignedRecord.sign(LAB, ATTEST_DOMAIN, bytes(msgpack.packb(body)))
    with pytest.raises(InvalidOrgRecord):
        Attestation.decode(record.encode())


def test_oversized_and_tampered_attestations_are_refused() -> None:
    with pytest.raises(InvalidOrgRecord, match="at most"):
        Attestation.decode(bytes(MAX_ATTESTATION_LEN + 1))
    good = attest().encode()
    tampered = good.replace(ROBOT, DESKTOP)  # a member swapping in another key
    assert tampered != good
    with pytest.raises(InvalidRecord, match="signature"):
        Attestation.decode(tampered)


def test_a_revocation_list_is_not_an_attestation_nor_a_profile() -> None:
    revocations = RevocationList.issue(LAB, 1, NOW, [ROBOT]).encode()
    with pytest.raises(InvalidRecord, match="domain"):
        Attestation.decode(revocations)
    with pytest.raises(InvalidRecord, match="domain"):
        Profile.decode(revocations)


def test_revocation_lists_and_profiles_round_trip() -> None:
    revocations = RevocationList.issue(LAB, 7, NOW, [ROBOT, DESKTOP, ROBOT])
    assert RevocationList.decode(revocations.encode()) == revocations
    assert revocations.revoked == {ROBOT, DESKTOP}
    profile = Profile.issue(LAB, 2, "The Robot Lab", "https://lab.example/")
    assert Profile.decode(profile.encode()) == profile


@pytest.mark.parametrize(
    "text",
    ["", "hubnet-attest1:", "hubnet-attest1:!!!", "hubnet-attest1:AAAA", "attest:" + "A" * 40],
)
def test_damaged_attestation_text_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        Attestation.from_text(text)


def test_issue_refuses_what_decode_would_refuse() -> None:
    with pytest.raises(ValueError):
        Attestation.issue(LAB, ROBOT, Role.ROBOT, "x", NOW, NOW)  # empty window
    with pytest.raises(ValueError):
        Attestation.issue(LAB, ROBOT, Role.ROBOT, "x", NOW, NOW + MAX_VALIDITY + 1)
    with pytest.raises(ValueError):
        Attestation.issue(LAB, ROBOT, Role.ROBOT, "x" * (MAX_LABEL + 1), NOW, NOW + 1)
    with pytest.raises(ValueError):
        Attestation.issue(LAB, ROBOT, Role.ROBOT, "é" * (MAX_LABEL // 2 + 1), NOW, NOW + 1)  # bytes count
    with pytest.raises(ValueError):
        Attestation.issue(LAB, b"short", Role.ROBOT, "x", NOW, NOW + 1)


# ---- validity --------------------------------------------------------------------------------------


def test_a_valid_attestation_proves_membership() -> None:
    assert check(attest(), ROBOT, NOW) is None


@pytest.mark.parametrize(
    ("holder", "now", "why"),
    [
        (DESKTOP, NOW, "it names another key"),
        (ROBOT, NOW - 2 * DAY, "it is not valid yet"),
        (ROBOT, NOW + 30 * DAY, "it has expired"),
    ],
)
def test_an_attestation_proves_nothing_for_another_key_or_outside_its_window(
    holder: bytes, now: int, why: str
) -> None:
    assert check(attest(), holder, now) == why


def test_a_revoked_member_is_no_member_and_an_older_list_cannot_undo_it() -> None:
    newer = RevocationList.issue(LAB, 2, NOW, [ROBOT])
    older = RevocationList.issue(LAB, 1, NOW - DAY, [])
    assert check(attest(), ROBOT, NOW, newer) == "the organisation revoked it"
    assert check(attest(member=DESKTOP, role=Role.SERVER), DESKTOP, NOW, newer) is None
    assert newer.replaces(older) and newer.replaces(None)
    assert not older.replaces(newer)
    assert not RevocationList.issue(LAB, 2, NOW, []).replaces(newer)  # equal sequence
    assert not RevocationList.issue(OTHER_ORG, 9, NOW, []).replaces(newer)  # another organisation
    with pytest.raises(ValueError):
        check(attest(), ROBOT, NOW, RevocationList.issue(OTHER_ORG, 1, NOW, []))


# ---- rules -----------------------------------------------------------------------------------------


def test_org_rules_parse_with_and_without_a_role() -> None:
    assert OrgRule.parse(LAB.peer_id) == OrgRule(LAB.public_key)
    assert OrgRule.parse(f"{LAB.peer_id}/robot") == OrgRule(LAB.public_key, Role.ROBOT)
    with pytest.raises(ConfigError, match="not a role: 'pilot'"):
        OrgRule.parse(f"{LAB.peer_id}/pilot")
    with pytest.raises(ConfigError):
        OrgRule.parse("not-an-org")


@pytest.mark.parametrize(
    ("rules", "attestations", "admitted"),
    [
        ([], [attest()], False),  # no rule: nobody is let in by organisation
        ([f"{LAB.peer_id}"], [attest()], True),
        ([f"{LAB.peer_id}/robot"], [attest()], True),
        ([f"{LAB.peer_id}/server"], [attest()], False),  # the wrong role
        ([f"{OTHER_ORG.peer_id}"], [attest()], False),  # another organisation
        ([f"{LAB.peer_id}"], [attest(member=DESKTOP)], False),  # someone else's attestation
        ([f"{LAB.peer_id}"], [attest(org=OTHER_ORG)], False),  # signed by the wrong key
        ([f"{OTHER_ORG.peer_id}", f"{LAB.peer_id}/robot"], [attest(org=OTHER_ORG, role=Role.MEMBER)], True),
        ([f"{LAB.peer_id}"], [], False),
    ],
)
def test_the_policy_decision_table(rules: list[str], attestations: list[Attestation], admitted: bool) -> None:
    proven = memberships(attestations, ROBOT, NOW, {})
    assert satisfies([OrgRule.parse(r) for r in rules], proven) is admitted


def test_membership_ends_with_revocation() -> None:
    rules = [OrgRule.parse(LAB.peer_id)]
    revoked = {LAB.public_key: RevocationList.issue(LAB, 1, NOW, [ROBOT])}
    assert satisfies(rules, memberships([attest()], ROBOT, NOW, {}))
    assert not satisfies(rules, memberships([attest()], ROBOT, NOW, revoked))
