"""Signed records: the envelope for offers, attestations and receipts.

Wire form is msgpack `[domain, body, pubkey, signature]`; the signature covers
`domain || 0x00 || body` so a signature made for one kind of record can never be
replayed as another kind.
"""

from __future__ import annotations

import msgpack

from hubnet.identity.errors import RemoteProtocolError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN, Identity, verify_signature

MAX_RECORD_LEN = 8192
_SIGNATURE_LEN = 64


class InvalidRecord(RemoteProtocolError):
    """A signed record is malformed, oversized or carries a bad signature."""


def _signed_message(domain: str, body: bytes) -> bytes:
    return domain.encode("utf-8") + b"\x00" + body


@frozen
class SignedRecord:
    """A body signed by `public_key` under a domain such as `hubnet/offer/1`."""

    domain: str
    body: bytes
    public_key: bytes
    signature: bytes

    @classmethod
    def sign(cls, identity: Identity, domain: str, body: bytes) -> SignedRecord:
        if "\x00" in domain:
            raise ValueError("a domain may not contain NUL")
        return cls(domain, body, identity.public_key, identity.sign(_signed_message(domain, body)))

    def encode(self) -> bytes:
        return bytes(msgpack.packb([self.domain, self.body, self.public_key, self.signature]))

    @classmethod
    def decode(cls, data: bytes, *, domain: str) -> SignedRecord:
        """Parse and verify; raise InvalidRecord unless it is a valid record of `domain`."""
        if "\x00" in domain:
            # As in sign(): with a NUL in the domain, domain || 0x00 || body would be ambiguous.
            raise ValueError("a domain may not contain NUL")
        if len(data) > MAX_RECORD_LEN:
            raise InvalidRecord("record too large")
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise InvalidRecord("record is not msgpack") from exc
        if not (isinstance(fields, list) and len(fields) == 4):
            raise InvalidRecord("record must be a 4-element array")
        got_domain, body, public_key, signature = fields
        if not (
            isinstance(got_domain, str)
            and isinstance(body, bytes)
            and isinstance(public_key, bytes)
            and isinstance(signature, bytes)
        ):
            raise InvalidRecord("record fields have the wrong types")
        if got_domain != domain:
            raise InvalidRecord(f"record domain {got_domain!r} is not {domain!r}")
        if len(public_key) != PUBLIC_KEY_LEN or len(signature) != _SIGNATURE_LEN:
            raise InvalidRecord("record key or signature has the wrong length")
        if not verify_signature(public_key, _signed_message(domain, body), signature):
            raise InvalidRecord("record signature does not verify")
        return cls(got_domain, body, public_key, signature)
