"""Organisations in a hubnet home: the keys one holds, and the memberships one has.

- **Organisation keys** (`DATA/orgs/NAME.key`, mode 0600, refused when readable by
  others) are kept apart from the node's own key: an organisation's key can live on a
  machine that never serves. Beside each key, `NAME.json` keeps what the organisation
  has said: its label and URL, and the members it revoked with the sequence of its
  newest revocation list.
- **Memberships** (`DATA/attestations`, one attestation per line): the attestations
  that organisations issued to this home's own key, presented with every call.

Nothing here touches the network; `hubnet.org_cli` publishes.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from hubnet.home import Home
from hubnet.identity import attest_text
from hubnet.identity.errors import ConfigError
from hubnet.identity.keys import Identity, decode_peer_id, encode_peer_id, load_or_create_identity
from hubnet.identity.orgs import Attestation, Profile, RevocationList
from hubnet.identity.records import InvalidRecord
from hubnet.node.org_records import MAX_REVOKED, OrgSetup

_NAME_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")


@dataclass
class OrgState:
    """What an organisation has published, kept beside its key."""

    label: str = ""
    url: str = ""
    revoked: list[str] = field(default_factory=list)  # peer ids
    sequence: int = 0  # of the newest revocation list and profile


@dataclass(frozen=True)
class HeldOrg:
    """An organisation whose key this home holds."""

    name: str
    identity: Identity
    state: OrgState

    def revocations(self) -> RevocationList:
        revoked = [decode_peer_id(p) for p in self.state.revoked]
        return RevocationList.issue(self.identity, self.state.sequence, self.state.sequence, revoked)

    def profile(self) -> Profile:
        return Profile.issue(self.identity, self.state.sequence, self.state.label, self.state.url)


class OrgKeys:
    """The organisation keys a home holds."""

    def __init__(self, home: Home) -> None:
        self.folder = home.data_dir / "orgs"

    def _paths(self, name: str) -> tuple[Path, Path]:
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(f"not an organisation name: {name!r} (1-64 of A-Z a-z 0-9 . _ -)")
        return self.folder / f"{name}.key", self.folder / f"{name}.json"

    def create(self, name: str, label: str = "", url: str = "") -> HeldOrg:
        key, _ = self._paths(name)
        if key.exists():
            raise ConfigError(f"organisation {name!r} exists already ({key}); pick another name")
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        held = HeldOrg(name, load_or_create_identity(key), OrgState(label, url))
        self.save(self.bump(held))
        return held

    def load(self, name: str) -> HeldOrg:
        key, state_path = self._paths(name)
        if not key.exists():
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f"no organisation {name!r} in {self.folder} (this home holds: {known})")
        try:
            state = OrgState(**json.loads(state_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            state = OrgState()
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{state_path}: damaged ({exc}); fix or delete it") from None
        return HeldOrg(name, load_or_create_identity(key), state)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.key")) if self.folder.is_dir() else []

    def bump(self, held: HeldOrg) -> HeldOrg:
        """The same organisation with a sequence greater than any it published (time-based,
        so that a copy of the key on another machine cannot go backwards either)."""
        held.state.sequence = max(held.state.sequence + 1, int(time.time()))
        return held

    def revoke(self, name: str, member: bytes) -> HeldOrg:
        held = self.load(name)
        peer = encode_peer_id(member)
        if peer not in held.state.revoked:
            if len(held.state.revoked) >= MAX_REVOKED:
                raise ConfigError(
                    f"organisation {name!r} has revoked {MAX_REVOKED} members, all a list holds: "
                    "issue short-lived attestations (--days) and let them expire instead"
                )
            held.state.revoked.append(peer)
        self.save(self.bump(held))
        return held

    def save(self, held: HeldOrg) -> None:
        _, state_path = self._paths(held.name)
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(held.state.__dict__, indent=1) + "\n", encoding="utf-8")
        tmp.replace(state_path)


class Memberships:
    """The attestations issued to this home's key, one per line in `DATA/attestations`."""

    def __init__(self, home: Home) -> None:
        self.path = home.attestations

    def all(self) -> list[Attestation]:
        attestations = []
        for number, record in attest_text.read_file(self.path):
            try:
                attestations.append(Attestation.decode(record))
            except InvalidRecord as exc:
                raise ConfigError(
                    f"{self.path}:{number}: not a valid attestation ({exc}); delete that line"
                ) from None
        return attestations

    def add(self, attestation: Attestation, own_key: bytes) -> None:
        """Keep `attestation`, which must name this home's key; it replaces an older one of the
        same organisation."""
        if attestation.member != own_key:
            raise ConfigError(
                f"this attestation is for {encode_peer_id(attestation.member)}, not for this node "
                f"({encode_peer_id(own_key)}): ask the organisation to attest `hubnode id`'s key"
            )
        kept = [a for a in self.all() if a.org != attestation.org]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [a.to_text() for a in [*kept, attestation]]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def org_setup(home: Home, own_key: bytes) -> OrgSetup:
    """What `hubnode serve` in `home` brings of organisations: the attestations naming its own
    key, and the lists and profiles of the organisations whose keys the home holds."""
    keys = OrgKeys(home)
    held = [keys.load(name) for name in keys.names()]
    return OrgSetup(
        attestations=tuple(a.encode() for a in Memberships(home).all() if a.member == own_key),
        own_lists=tuple(h.revocations() for h in held),
        own_profiles=tuple(h.profile() for h in held),
    )
