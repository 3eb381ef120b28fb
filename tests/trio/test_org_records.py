"""node.org_records: organisations' revocation lists and profiles in a DHT of real nodes.

The organisation's key signs the lists; any node can carry them. So a list outlives the
organisation's own publication (whose DHT record expires after an hour) as long as nodes
that rely on the organisation republish it, and a node that repeats an older list changes
nothing for readers, who keep the greatest sequence.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hubnet.dht.records import MAX_PROVIDER_RECORD_LEN
from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import Identity
from hubnet.identity.orgs import Profile, RevocationList
from hubnet.node.org_records import (
    MAX_REVOKED,
    RECORD_TTL,
    newest_profile,
    newest_revocations,
    profile_key,
    profile_record,
    revocations_key,
    revocations_record,
)
from hubnet.node.org_watch import REFRESH, REFRESH_ENV, OrgWatch, refresh_interval
from tests.dht_sim import seed_scheduler, simulation

LAB = Identity.from_seed(b"L" * 32)
OTHER = Identity.from_seed(b"O" * 32)
MEMBERS = [Identity.from_seed(bytes([i]) * 32).public_key for i in range(MAX_REVOKED + 1)]
NOW = 1_700_000_000


def test_a_full_revocation_list_fits_a_dht_record() -> None:
    full = RevocationList.issue(LAB, 1, NOW, MEMBERS[:MAX_REVOKED])
    record = revocations_record(OTHER, full, NOW)
    assert len(record.raw) <= MAX_PROVIDER_RECORD_LEN
    with pytest.raises(ValueError, match=f"at most {MAX_REVOKED}"):
        revocations_record(OTHER, RevocationList.issue(LAB, 2, NOW, MEMBERS), NOW)


def test_readers_keep_the_newest_list_of_the_right_organisation_only() -> None:
    old = RevocationList.issue(LAB, 1, NOW, [])
    new = RevocationList.issue(LAB, 2, NOW, MEMBERS[:1])
    impostor = RevocationList.issue(OTHER, 9, NOW, [])  # another organisation's list
    records = [
        revocations_record(OTHER, new, NOW),
        revocations_record(LAB, old, NOW + 5),  # repeated later: still the older list
        revocations_record(OTHER, impostor, NOW),
        profile_record(LAB, Profile.issue(LAB, 3, "Lab", "https://lab.example/"), NOW),
    ]
    assert newest_revocations(records, LAB.public_key) == new
    assert newest_revocations(records[1:2], LAB.public_key) == old
    assert newest_revocations([], LAB.public_key) is None
    profile = newest_profile(records, LAB.public_key)
    assert profile is not None and profile.label == "Lab"
    assert revocations_key(LAB.public_key) != profile_key(LAB.public_key)
    assert revocations_key(LAB.public_key) != revocations_key(OTHER.public_key)


async def test_a_list_relayed_by_members_outlives_the_organisations_record(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_scheduler(11)
    async with simulation(40, seed=11) as sim:
        org_node, relay, reader = sim.nodes[3], sim.nodes[17], sim.nodes[29]
        key = revocations_key(LAB.public_key)
        revocations = RevocationList.issue(LAB, 5, sim.now(), MEMBERS[:2])
        # The organisation publishes once (its record is signed by the node that holds its key,
        # but the list inside is the organisation's).
        assert await org_node.publish_provider(revocations_record(LAB, revocations, sim.now())) > 0
        seen = newest_revocations(await relay.find_providers(key), LAB.public_key)
        assert seen == revocations
        # A node that relies on the organisation republishes what it saw, under its own key...
        await trio.sleep(RECORD_TTL / 2)
        assert await relay.publish_provider(revocations_record(relay.identity, seen, sim.now())) > 0
        # ...so after the organisation's own record has expired, readers still find the list.
        await trio.sleep(RECORD_TTL / 2 + 60)
        records = await reader.find_providers(key)
        assert {r.publisher for r in records} == {relay.identity.public_key}
        assert newest_revocations(records, LAB.public_key) == revocations
        # An older list repeated by anyone does not undo the newer one.
        older = RevocationList.issue(LAB, 4, sim.now(), [])
        mallory = sim.nodes[5]
        assert await mallory.publish_provider(revocations_record(mallory.identity, older, sim.now())) > 0
        assert newest_revocations(await reader.find_providers(key), LAB.public_key) == revocations


async def test_a_node_learns_a_new_list_within_its_refresh_and_keeps_it_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seed_scheduler(12)
    async with simulation(30, seed=12) as sim:
        org_node, watcher_node, reader = sim.nodes[2], sim.nodes[11], sim.nodes[23]
        watch = OrgWatch(watcher_node, [LAB.public_key])
        first = RevocationList.issue(LAB, 1, sim.now(), [])
        assert await org_node.publish_provider(revocations_record(LAB, first, sim.now())) > 0
        sim.nursery.start_soon(watch.run)
        await trio.sleep(1)
        assert watch.revocations[LAB.public_key] == first
        # The organisation revokes a member: the watcher knows within one refresh.
        revoked = RevocationList.issue(LAB, 2, sim.now(), MEMBERS[:1])
        published_at = trio.current_time()
        assert await org_node.publish_provider(revocations_record(LAB, revoked, sim.now())) > 0
        while watch.revocations[LAB.public_key] != revoked:
            await trio.sleep(1)
        assert trio.current_time() - published_at <= REFRESH + 1
        # Two hours on, the organisation's own records are long gone; the watcher's are not.
        await trio.sleep(2 * RECORD_TTL)
        records = await reader.find_providers(revocations_key(LAB.public_key))
        assert LAB.public_key not in {r.publisher for r in records}
        assert newest_revocations(records, LAB.public_key) == revoked
        # An older list never takes the newer one's place at the watcher.
        assert not watch.learn(first)
        assert watch.revocations[LAB.public_key] == revoked


def test_the_refresh_interval_can_only_be_shortened() -> None:
    assert refresh_interval({}) == REFRESH
    assert refresh_interval({REFRESH_ENV: " "}) == REFRESH
    assert refresh_interval({REFRESH_ENV: "2.5"}) == 2.5
    assert refresh_interval({REFRESH_ENV: str(REFRESH)}) == REFRESH
    for wrong in ("0", "0.2", "-3", str(REFRESH + 1), "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match=REFRESH_ENV):
            refresh_interval({REFRESH_ENV: wrong})


async def test_a_shorter_refresh_learns_a_new_list_sooner(autojump_clock: trio.testing.MockClock) -> None:
    seed_scheduler(13)
    async with simulation(20, seed=13) as sim:
        org_node, watcher_node = sim.nodes[2], sim.nodes[11]
        first = RevocationList.issue(LAB, 1, sim.now(), [])
        assert await org_node.publish_provider(revocations_record(LAB, first, sim.now())) > 0
        watch = OrgWatch(watcher_node, [LAB.public_key], refresh=5.0)
        await sim.nursery.start(watch.run)
        assert watch.revocations[LAB.public_key] == first
        await trio.sleep(1)
        revoked = RevocationList.issue(LAB, 2, sim.now(), MEMBERS[:1])
        published_at = trio.current_time()
        assert await org_node.publish_provider(revocations_record(LAB, revoked, sim.now())) > 0
        while watch.revocations[LAB.public_key] != revoked:
            await trio.sleep(0.5)
        assert trio.current_time() - published_at <= 5.0 + 1
