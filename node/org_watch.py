"""The serving node's view of the organisations it relies on: their newest revocation lists.

A node relies on an organisation when one of its services admits or serves free that
organisation's members (`allow_orgs`, `free_orgs`). Every `REFRESH` seconds (under the
5 minutes docs/organisations.md promises) it fetches each such organisation's lists from
the DHT, keeps the greatest sequence it has seen (it never goes back to an older one, even
if that is all the DHT still holds), and republishes it under its own key, so that the
list outlives the organisation's own one-hour record. A node whose home holds an
organisation's key publishes that organisation's list and profile the same way.

`HUBNET_ORG_REFRESH` (seconds, in the node's environment) shortens the interval: for
tests, and for an operator who wants revocations to take effect sooner at the price of a
DHT lookup that often. It can only shorten it (at least `MIN_REFRESH`, at most `REFRESH`),
so the bound docs/organisations.md promises holds whatever it says.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping

import trio

from hubnet.dht.node import DhtNode
from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import fingerprint
from hubnet.identity.orgs import Profile, RevocationList
from hubnet.node.org_records import (
    newest_revocations,
    profile_record,
    revocations_key,
    revocations_record,
)

log = logging.getLogger("hubnet.node")

REFRESH = 240.0  # seconds between fetches: a revoked member is refused within this (+ a lookup)
# Until a list of every relied-on organisation has been seen (a node that just started may
# not have joined the DHT yet), fetch this often instead.
FIRST_REFRESH = 15.0
REFRESH_ENV = "HUBNET_ORG_REFRESH"
# Republications are sequenced by the time in seconds: more than one a second would be refused.
MIN_REFRESH = 1.0


def refresh_interval(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between fetches: `REFRESH`, or the shorter interval `HUBNET_ORG_REFRESH` asks for.

    ConfigError if it is set to anything but a number of seconds within the bounds."""
    text = environ.get(REFRESH_ENV, "").strip()
    if not text:
        return REFRESH
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not MIN_REFRESH <= seconds <= REFRESH:  # (NaN fails it too)
        raise ConfigError(f"{REFRESH_ENV}={text!r}: want seconds from {MIN_REFRESH:g} to {REFRESH:g}")
    return seconds


class OrgWatch:
    """Newest revocation lists of `relied_on` organisations, kept fresh over `dht`."""

    def __init__(
        self,
        dht: DhtNode,
        relied_on: Iterable[bytes],
        *,
        own_lists: Iterable[RevocationList] = (),
        own_profiles: Iterable[Profile] = (),
        refresh: float = REFRESH,
    ) -> None:
        self.dht = dht
        self.refresh_every = refresh
        self.first_refresh_every = min(FIRST_REFRESH, refresh)
        self.relied_on = set(relied_on)
        self.revocations: dict[bytes, RevocationList] = {r.org: r for r in own_lists}
        self._profiles = list(own_profiles)

    def learn(self, revocations: RevocationList) -> bool:
        """Keep `revocations` if it is newer than what we have; whether it was."""
        if not revocations.replaces(self.revocations.get(revocations.org)):
            return False
        self.revocations[revocations.org] = revocations
        return True

    async def refresh(self) -> None:
        """Fetch every relied-on organisation's lists once, then republish what we hold."""
        for org in sorted(self.relied_on):
            newest = newest_revocations(await self.dht.find_providers(revocations_key(org)), org)
            if newest is not None and self.learn(newest):
                log.info(
                    "organisation %s: revocation list %d, %d revoked",
                    fingerprint(org),
                    newest.sequence,
                    len(newest.revoked),
                )
        now = self.dht.now()
        for revocations in self.revocations.values():
            await self.dht.publish_provider(revocations_record(self.dht.identity, revocations, now))
        for profile in self._profiles:
            await self.dht.publish_provider(profile_record(self.dht.identity, profile, now))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh now and every `refresh` seconds; `nursery.start` returns after the first."""
        await self.refresh()
        task_status.started()
        while True:
            seen_all = self.relied_on <= self.revocations.keys()
            await trio.sleep(self.refresh_every if seen_all else self.first_refresh_every)
            await self.refresh()
