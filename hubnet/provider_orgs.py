"""How `hubnode services SERVICE` shows each provider's organisations.

For each offer: the memberships its attestations prove (organisation and role, see
`hubnet.select.proven_memberships`) and the organisations whose members its service serves
free (its `free_orgs`). Each organisation is shown by its fingerprint and the label of its
profile in the DHT. A label is what the organisation says of itself, so it is marked
unverified unless the organisation's id is one the client's config names (client.toml's
[select] `only_orgs`, `trusted_orgs` or `exclude_orgs`): anyone can make an organisation and
call it "The Robot Lab", but only the real one holds the key whose id you wrote down.

Pure functions: offers, proofs and profiles in, what to print out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hubnet.identity.keys import encode_peer_id, fingerprint

if TYPE_CHECKING:
    from hubnet.identity.orgs import Profile, Role
    from hubnet.node.offers import Offer


@dataclass(frozen=True)
class ShownOrg:
    """One organisation as `hubnode services` shows it."""

    org: bytes
    label: str | None  # its profile's label; None without a profile or with an empty label
    verified: bool  # the client's config names this organisation id
    role: str | None = None  # the role an attestation proves, for a membership

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "org": encode_peer_id(self.org),
            "fingerprint": fingerprint(self.org),
            "label": self.label,
            "verified": self.verified,
        }
        if self.role is not None:
            row["role"] = self.role
        return row

    def text(self) -> str:
        """`"The Robot Lab" (abcdefgh)`, with `, unverified` unless the config names it; the
        fingerprint alone without a label. The label is quoted so that it cannot pass for
        more than a label (say, a fingerprint of its own)."""
        short = fingerprint(self.org)
        if not self.label:
            return short
        quoted = json.dumps(self.label, ensure_ascii=False)
        return f"{quoted} ({short})" if self.verified else f"{quoted} ({short}, unverified)"


def _shown(
    org: bytes, profiles: Mapping[bytes, Profile], named: Set[bytes], role: str | None = None
) -> ShownOrg:
    profile = profiles.get(org)
    return ShownOrg(org, profile.label if profile is not None and profile.label else None, org in named, role)


def _order(shown: ShownOrg) -> tuple[bool, str, bytes, str]:
    """Organisations the config names first, then by label and id."""
    return (not shown.verified, shown.label or "", shown.org, shown.role or "")


def memberships_shown(
    offer: Offer,
    proven: Mapping[bytes, Set[tuple[bytes, Role]]],
    profiles: Mapping[bytes, Profile],
    named: Set[bytes],
) -> list[ShownOrg]:
    """The memberships `proven` holds for `offer`'s publisher, each with its role."""
    found = [_shown(org, profiles, named, role.value) for org, role in proven.get(offer.publisher, ())]
    return sorted(found, key=_order)


def free_shown(offer: Offer, profiles: Mapping[bytes, Profile], named: Set[bytes]) -> list[ShownOrg]:
    """The organisations whose members `offer`'s service serves free."""
    return sorted((_shown(org, profiles, named) for org in dict.fromkeys(offer.free_orgs)), key=_order)


def orgs_line(members: Sequence[ShownOrg], free: Sequence[ShownOrg]) -> str:
    """One line for the table: whom the provider belongs to and whom it serves free ("" if neither)."""
    parts = []
    if members:
        parts.append("member of " + ", ".join(f"{m.text()} as {m.role}" for m in members))
    if free:
        parts.append("free for members of " + ", ".join(f.text() for f in free))
    return "; ".join(parts)
