"""node.admission: who may run what on which terms, and what a job costs, decided without I/O."""

from __future__ import annotations

import pytest

from hubnet.identity.keys import Identity, fingerprint
from hubnet.identity.orgs import Attestation, RevocationList, Role
from hubnet.node.admission import MIB, Admitted, Occupancy, Standing, admit, cost_of, settle, standing
from hubnet.node.naming import service_id_for_name
from hubnet.node.protocol import Call, Reject, Terms
from hubnet.node.runner import JobOutcome
from hubnet.node.services import parse_services

LAB = Identity.from_seed(b"L" * 32)
ROBOT = Identity.from_seed(b"R" * 32).public_key
STRANGER = Identity.from_seed(b"S" * 32).public_key
NOW = 1_800_000_000
FREE = Occupancy(slot_free=True, queued=0)
CONFIG = parse_services(
    f"""
    [services.open]
    command = ["true"]
    price = {{ per_call = 1000, per_second = 10 }}
    timeout = 30

    [services.members]
    command = ["true"]
    allow_orgs = ["{LAB.peer_id}/robot"]

    [services.discounted]
    command = ["true"]
    price = {{ per_call = 1000 }}
    free_orgs = ["{LAB.peer_id}"]
    """
)


def _call(name: str, *attestations: Attestation) -> Call:
    return Call(service_id_for_name(name), (), tuple(a.encode() for a in attestations))


def _robot(member: bytes = ROBOT, days: int = 30) -> Attestation:
    return Attestation.issue(LAB, member, Role.ROBOT, "robot 7", NOW - 86400, NOW - 86400 + days * 86400)


def _admit(
    call: Call, caller: bytes, revocations: dict[bytes, RevocationList] | None = None
) -> Admitted | Reject:
    return admit(call, caller, CONFIG, FREE, standing(call.attestations, caller, NOW, revocations or {}))


def test_standing_keeps_what_is_proven_and_says_why_the_rest_is_not() -> None:
    expired = _robot(days=1)
    result = standing([_robot().encode(), expired.encode(), b"junk"], ROBOT, NOW, {})
    assert result.memberships == {(LAB.public_key, Role.ROBOT)}
    assert len(result.refused) == 2
    assert "it has expired" in result.refused[0] and fingerprint(LAB.public_key) in result.refused[0]
    assert "damaged" in result.refused[1]
    assert standing([], ROBOT, NOW, {}) == Standing()


def test_an_open_service_charges_its_price() -> None:
    admitted = _admit(_call("open"), STRANGER)
    assert isinstance(admitted, Admitted)
    assert admitted.terms == Terms(1000, 10, 0, 1000 + 10 * 30)


def test_a_members_only_service_serves_members_and_refuses_strangers_naming_the_organisation() -> None:
    assert isinstance(_admit(_call("members", _robot()), ROBOT), Admitted)
    refused = _admit(_call("members"), STRANGER)
    assert isinstance(refused, Reject) and refused.code == "not-allowed"
    assert f"members of organisation {fingerprint(LAB.public_key)} (as robot) only" in refused.reason
    assert "carried no attestation" in refused.reason


@pytest.mark.parametrize(
    ("attestation", "caller", "why"),
    [
        (_robot(), STRANGER, "it names another key"),  # a robot's attestation, replayed by a stranger
        (_robot(days=1), ROBOT, "it has expired"),
    ],
)
def test_an_attestation_that_proves_nothing_is_refused_saying_why(
    attestation: Attestation, caller: bytes, why: str
) -> None:
    refused = _admit(_call("members", attestation), caller)
    assert isinstance(refused, Reject) and refused.code == "not-allowed"
    assert why in refused.reason


def test_a_revoked_member_is_refused() -> None:
    revocations = {LAB.public_key: RevocationList.issue(LAB, 2, NOW, [ROBOT])}
    refused = _admit(_call("members", _robot()), ROBOT, revocations)
    assert isinstance(refused, Reject) and "the organisation revoked it" in refused.reason


def test_free_orgs_members_are_quoted_nothing_and_others_the_price() -> None:
    member = _admit(_call("discounted", _robot()), ROBOT)
    stranger = _admit(_call("discounted"), STRANGER)
    assert isinstance(member, Admitted) and member.terms == Terms()
    assert isinstance(stranger, Admitted) and stranger.terms.per_call == 1000


def test_settle_charges_by_usage_never_above_the_hold_and_nothing_for_a_failed_start() -> None:
    terms = Terms(per_call=100, per_second=1000, per_mib=10, held=1500)
    ran = JobOutcome(0, None, None, 0.5, 0.1, MIB, MIB, 0)
    assert cost_of(settle(ran, terms).usage, terms) == 100 + 500 + 20
    assert settle(ran, terms).cost == 620
    long = JobOutcome(0, None, None, 10.0, 0.1, 0, 0, 0)
    assert settle(long, terms).cost == terms.held
    failed = JobOutcome(127, None, "failed-to-start", 0.0, 0.0, 0, 0, 0)
    assert settle(failed, terms).cost == 0


def test_a_member_of_the_wrong_role_is_told_so() -> None:
    server = Attestation.issue(LAB, ROBOT, Role.SERVER, "desk", NOW - 86400, NOW + 86400)
    refused = _admit(_call("members", server), ROBOT)
    assert isinstance(refused, Reject)
    assert f"you are a member of {fingerprint(LAB.public_key)} as server, another role" in refused.reason
