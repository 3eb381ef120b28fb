"""Organisations: an Ed25519 key of its own that vouches for its members' keys.

An organisation (a lab, a company, a family) signs three kinds of record, each a
`SignedRecord` by the organisation's key under its own domain, so that none can be
passed off as another:

- an **attestation** (`hubnet/attest/1`) binds one member key to the organisation, with a
  role, a label, and a validity window. A member presents it (a node in its offers, a
  caller inside its encrypted request); it is useless to any other key.
- a **revocation list** (`hubnet/revocations/1`): the member keys the organisation no
  longer vouches for, sequence-numbered so that an older list never replaces a newer one.
- a **profile** (`hubnet/org-profile/1`): a label and a URL to show people. Labels are
  shown, never trusted: trust comes only from organisation ids named in config files.

Everything here is pure: bytes in, verdicts out, the time passed in by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Set

import msgpack

from hubnet.identity import attest_text
from hubnet.identity.attest_text import MAX_ATTESTATION_LEN as MAX_ATTESTATION_LEN
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN, Identity, decode_peer_id
from hubnet.identity.records import InvalidRecord, SignedRecord

ATTEST_DOMAIN = "hubnet/attest/1"
REVOCATIONS_DOMAIN = "hubnet/revocations/1"
PROFILE_DOMAIN = "hubnet/org-profile/1"

MAX_LABEL = 64  # bytes of UTF-8
MAX_URL = 256
MAX_REVOKED = 1000
MAX_VALIDITY = 5 * 366 * 86400  # an attestation lives at most about five years
CLOCK_SKEW = 60  # an attestation issued up to this far in the reader's future is accepted
_MAX_TIME = (1 << 63) - 1


class InvalidOrgRecord(InvalidRecord):
    """An attestation, revocation list or profile that is malformed or badly signed."""


class Role(enum.StrEnum):
    """What a member is to its organisation."""

    ROBOT = "robot"
    SERVER = "server"
    MEMBER = "member"


def _body(data: bytes, arity: int, what: str) -> list[object]:
    try:
        fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise InvalidOrgRecord(f"{what} is not msgpack") from exc
    if not (isinstance(fields, list) and len(fields) == arity):
        raise InvalidOrgRecord(f"{what} must be an array of {arity}")
    return fields


def _fits(text: str, limit: int) -> bool:
    """Printable, and at most `limit` bytes as UTF-8 (so that records have a fixed bound)."""
    return text.isprintable() and len(text.encode("utf-8")) <= limit


def _text(value: object, limit: int, what: str) -> str:
    if not (isinstance(value, str) and _fits(value, limit)):
        raise InvalidOrgRecord(f"{what} must be printable text of at most {limit} bytes")
    return value


def _time(value: object, what: str) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TIME):
        raise InvalidOrgRecord(f"{what} must be a time in unix seconds")
    return value


def _key(value: object, what: str) -> bytes:
    if not (isinstance(value, bytes) and len(value) == PUBLIC_KEY_LEN):
        raise InvalidOrgRecord(f"{what} must be a 32-byte key")
    return value


@frozen
class Attestation:
    """The organisation `org` vouches for `member` as `role` from `issued_at` to `expires_at`."""

    org: bytes
    member: bytes
    role: Role
    label: str
    issued_at: int
    expires_at: int
    record: SignedRecord

    @classmethod
    def issue(
        cls, org: Identity, member: bytes, role: Role, label: str, issued_at: int, expires_at: int
    ) -> Attestation:
        if len(member) != PUBLIC_KEY_LEN:
            raise ValueError("a member is a 32-byte key")
        if not (issued_at < expires_at <= issued_at + MAX_VALIDITY):
            raise ValueError(f"an attestation is valid for at most {MAX_VALIDITY // 86400} days")
        if not _fits(label, MAX_LABEL):
            raise ValueError(f"a label is printable text of at most {MAX_LABEL} bytes")
        body = msgpack.packb([member, role.value, label, issued_at, expires_at])
        record = SignedRecord.sign(org, ATTEST_DOMAIN, bytes(body))
        return cls(org.public_key, member, role, label, issued_at, expires_at, record)

    def encode(self) -> bytes:
        return self.record.encode()

    @classmethod
    def decode(cls, data: bytes) -> Attestation:
        """Parse and check the signature; InvalidOrgRecord for anything else. Whether it is
        valid *now* and for *whom* is `check`'s question."""
        if len(data) > MAX_ATTESTATION_LEN:
            raise InvalidOrgRecord(f"an attestation is at most {MAX_ATTESTATION_LEN} bytes")
        record = SignedRecord.decode(data, domain=ATTEST_DOMAIN)
        member, role, label, issued_at, expires_at = _body(record.body, 5, "an attestation")
        try:
            parsed_role = Role(_text(role, MAX_LABEL, "the role"))
        except ValueError:
            raise InvalidOrgRecord(f"unknown role {role!r}") from None
        issued, expires = _time(issued_at, "issued_at"), _time(expires_at, "expires_at")
        if not issued < expires <= issued + MAX_VALIDITY:
            raise InvalidOrgRecord("an attestation's validity window is empty or too long")
        return cls(
            record.public_key,
            _key(member, "the member"),
            parsed_role,
            _text(label, MAX_LABEL, "the label"),
            issued,
            expires,
            record,
        )

    def to_text(self) -> str:
        """One line, for `hubnode org attest` to print and `hubnode org join` to read."""
        return attest_text.to_text(self.encode())

    @classmethod
    def from_text(cls, text: str) -> Attestation:
        try:
            return cls.decode(attest_text.from_text(text))
        except InvalidRecord as exc:
            raise ConfigError(f"the attestation is not valid: {exc}") from None


@frozen
class RevocationList:
    """The member keys `org` no longer vouches for; a greater `sequence` replaces a smaller."""

    org: bytes
    sequence: int
    issued_at: int
    revoked: frozenset[bytes]
    record: SignedRecord

    @classmethod
    def issue(cls, org: Identity, sequence: int, issued_at: int, revoked: Iterable[bytes]) -> RevocationList:
        keys = sorted(set(revoked))
        if len(keys) > MAX_REVOKED or any(len(k) != PUBLIC_KEY_LEN for k in keys):
            raise ValueError(f"a revocation list holds at most {MAX_REVOKED} 32-byte keys")
        body = msgpack.packb([sequence, issued_at, keys])
        record = SignedRecord.sign(org, REVOCATIONS_DOMAIN, bytes(body))
        return cls(org.public_key, sequence, issued_at, frozenset(keys), record)

    def encode(self) -> bytes:
        return self.record.encode()

    @classmethod
    def decode(cls, data: bytes) -> RevocationList:
        record = SignedRecord.decode(data, domain=REVOCATIONS_DOMAIN)
        sequence, issued_at, keys = _body(record.body, 3, "a revocation list")
        if not (isinstance(keys, list) and len(keys) <= MAX_REVOKED):
            raise InvalidOrgRecord(f"a revocation list holds at most {MAX_REVOKED} keys")
        return cls(
            record.public_key,
            _time(sequence, "the sequence"),
            _time(issued_at, "issued_at"),
            frozenset(_key(k, "a revoked key") for k in keys),
            record,
        )

    def replaces(self, older: RevocationList | None) -> bool:
        """Whether this list may replace `older` (same organisation, greater sequence)."""
        return older is None or (self.org == older.org and self.sequence > older.sequence)


@frozen
class Profile:
    """How `org` would like to be shown: a label and a URL (shown, never trusted)."""

    org: bytes
    sequence: int
    label: str
    url: str
    record: SignedRecord

    @classmethod
    def issue(cls, org: Identity, sequence: int, label: str, url: str) -> Profile:
        if not (_fits(label, MAX_LABEL) and _fits(url, MAX_URL)):
            raise ValueError(f"a label is at most {MAX_LABEL} and a URL {MAX_URL} bytes of printable text")
        record = SignedRecord.sign(org, PROFILE_DOMAIN, bytes(msgpack.packb([sequence, label, url])))
        return cls(org.public_key, sequence, label, url, record)

    def encode(self) -> bytes:
        return self.record.encode()

    @classmethod
    def decode(cls, data: bytes) -> Profile:
        record = SignedRecord.decode(data, domain=PROFILE_DOMAIN)
        sequence, label, url = _body(record.body, 3, "a profile")
        return cls(
            record.public_key,
            _time(sequence, "the sequence"),
            _text(label, MAX_LABEL, "the label"),
            _text(url, MAX_URL, "the URL"),
            record,
        )


def check(
    attestation: Attestation, holder: bytes, now: int, revocations: RevocationList | None = None
) -> str | None:
    """Why `attestation` does not make `holder` a member at `now`, or None if it does.

    `revocations` must be the organisation's newest list that the caller has (a list of
    another organisation is a caller's bug).
    """
    if revocations is not None and revocations.org != attestation.org:
        raise ValueError("a revocation list of another organisation")
    if attestation.member != holder:
        return "it names another key"
    if now < attestation.issued_at - CLOCK_SKEW:
        return "it is not valid yet"
    if now >= attestation.expires_at:
        return "it has expired"
    if revocations is not None and holder in revocations.revoked:
        return "the organisation revoked it"
    return None


@frozen
class OrgRule:
    """`ORG_ID` (any member) or `ORG_ID/ROLE` (members of that role), as config files write it."""

    org: bytes
    role: Role | None = None

    @classmethod
    def parse(cls, text: str) -> OrgRule:
        org_text, slash, role_text = text.partition("/")
        org = decode_peer_id(org_text)
        if not slash:
            return cls(org)
        try:
            return cls(org, Role(role_text))
        except ValueError:
            roles = ", ".join(r.value for r in Role)
            raise ConfigError(f"not a role: {role_text!r} in {text!r} (want one of {roles})") from None

    def matches(self, membership: tuple[bytes, Role]) -> bool:
        org, role = membership
        return org == self.org and (self.role is None or self.role is role)


def memberships(
    attestations: Iterable[Attestation],
    holder: bytes,
    now: int,
    revocations: dict[bytes, RevocationList],
) -> set[tuple[bytes, Role]]:
    """The (organisation, role) pairs that `attestations` prove for `holder` at `now`."""
    return {(a.org, a.role) for a in attestations if check(a, holder, now, revocations.get(a.org)) is None}


def satisfies(rules: Iterable[OrgRule], proven: Set[tuple[bytes, Role]]) -> bool:
    """Whether any of `proven` meets any of `rules`."""
    return any(rule.matches(m) for rule in rules for m in proven)
