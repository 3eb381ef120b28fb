"""Signed job receipts: what a node says a job used and cost, in a record the caller keeps.

After a paid job's `Exit` the node sends a `Receipt` whose record is a `SignedRecord` of
domain `hubnet/receipt/1` (so no other signature of the node's passes for one). Its body is
a msgpack map with string keys, so that later versions (and pay-per-call's change token)
add keys without breaking older readers, which keep what they do not know in `extra`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import msgpack

from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import Identity, fingerprint
from hubnet.identity.records import InvalidRecord, SignedRecord
from hubnet.node.protocol import MAX_RECEIPT, SERVICE_ID_LEN, Terms, Usage

if TYPE_CHECKING:
    from typing import Any

RECEIPT_DOMAIN = "hubnet/receipt/1"
_KEY_LEN = 32
_KNOWN = ("job", "service", "name", "caller", "node", "payer", "usage", "terms", "cost", "balance", "time")


class InvalidReceipt(InvalidRecord):
    """A receipt that is damaged, badly signed, or not about the call it came with."""


@frozen
class JobReceipt:
    """One job's account, as its node signed it. `payer` is the account charged (the caller's
    own, or an organisation's that pays for it); `balance` that account's balance after;
    `time` unix seconds at settlement; `extra` keys this version does not know."""

    job_id: str
    service_id: bytes
    service: str
    caller: bytes
    node: bytes
    payer: bytes
    usage: Usage
    terms: Terms
    cost: int
    balance: int
    time: int
    extra: Mapping[str, Any] = MappingProxyType({})

    def body(self) -> bytes:
        fields: dict[str, Any] = dict(self.extra)
        fields |= {
            "job": self.job_id,
            "service": self.service_id,
            "name": self.service,
            "caller": self.caller,
            "node": self.node,
            "payer": self.payer,
            "usage": [
                self.usage.wall_ms,
                self.usage.cpu_ms,
                self.usage.stdin_bytes,
                self.usage.stdout_bytes,
                self.usage.stderr_bytes,
            ],
            "terms": [self.terms.per_call, self.terms.per_second, self.terms.per_mib, self.terms.held],
            "cost": self.cost,
            "balance": self.balance,
            "time": self.time,
        }
        return bytes(msgpack.packb(fields))

    def sign(self, identity: Identity) -> bytes:
        """The encoded signed record; `identity` must be the receipt's node."""
        if identity.public_key != self.node:
            raise ValueError("a receipt is signed by its own node")
        record = SignedRecord.sign(identity, RECEIPT_DOMAIN, self.body()).encode()
        if len(record) > MAX_RECEIPT:
            raise ValueError(f"a receipt is at most {MAX_RECEIPT} bytes")
        return record

    @classmethod
    def decode(cls, record: bytes) -> JobReceipt:
        """Parse and verify the signature (by the key in the record, which must be the body's
        node); InvalidReceipt otherwise. Whether it is the right node's is `verify`'s."""
        body, signer = signed_map(record, RECEIPT_DOMAIN, _KNOWN, InvalidReceipt, "the receipt")
        try:
            receipt = cls(
                job_id=_typed(body["job"], str),
                service_id=_key(body["service"], SERVICE_ID_LEN),
                service=_typed(body["name"], str),
                caller=_key(body["caller"]),
                node=_key(body["node"]),
                payer=_key(body["payer"]),
                usage=Usage(*_counts(body["usage"], 5)),
                terms=Terms(*_counts(body["terms"], 4)),
                cost=_counts([body["cost"]], 1)[0],
                balance=_counts([body["balance"]], 1)[0],
                time=_counts([body["time"]], 1)[0],
                extra=MappingProxyType({k: v for k, v in body.items() if k not in _KNOWN}),
            )
        except (TypeError, ValueError) as exc:
            raise InvalidReceipt(f"the receipt's body is malformed: {exc}") from None
        if receipt.node != signer:
            raise InvalidReceipt("the receipt is signed by another key than its node's")
        return receipt


def signed_map(
    record: bytes, domain: str, fields: Sequence[str], error: type[InvalidRecord], what: str
) -> tuple[dict[str, Any], bytes]:
    """The body of a signed record of `domain` whose body is a msgpack map with string keys
    holding at least `fields`, and the key that signed it; `error` saying what is wrong
    with `what` (a receipt, a deposit receipt) otherwise."""
    try:
        signed = SignedRecord.decode(record, domain=domain)
    except InvalidRecord as exc:  # one error type for every way a receipt can be wrong
        raise error(f"{what}: {exc}") from None
    try:
        body = msgpack.unpackb(signed.body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise error(f"{what}'s body is not msgpack ({exc})") from None
    if not isinstance(body, dict) or not all(key in body for key in fields):
        raise error(f"{what} lacks fields")
    return body, signed.public_key


def _typed(value: object, kind: type[Any]) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(f"expected {kind.__name__}")
    return value


def _key(value: object, length: int = _KEY_LEN) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"expected {length} bytes")
    return value


def _counts(value: object, length: int) -> list[int]:
    if not isinstance(value, list) or len(value) < length:
        raise ValueError(f"expected {length} numbers")
    numbers = value[:length]
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1 << 63 for n in numbers):
        raise ValueError("expected non-negative integers")
    return numbers


def verify(record: bytes, *, node: bytes, caller: bytes, job_id: str, cost: int) -> JobReceipt:
    """The receipt in `record`, if it is `node`'s about job `job_id` of `caller` at `cost`
    (the Exit's); InvalidReceipt naming what is wrong otherwise."""
    receipt = JobReceipt.decode(record)
    if receipt.node != node:
        raise InvalidReceipt(f"the receipt is signed by {fingerprint(receipt.node)}, not the node called")
    if receipt.caller != caller:
        raise InvalidReceipt(f"the receipt is for {fingerprint(receipt.caller)}, not for this caller")
    if receipt.job_id != job_id:
        raise InvalidReceipt(f"the receipt is for job {receipt.job_id!r}, not {job_id!r}")
    if receipt.cost != cost:
        raise InvalidReceipt(f"the receipt says {receipt.cost} msat, the job's Exit {cost} msat")
    if receipt.cost > receipt.terms.held:
        raise InvalidReceipt(
            f"the receipt charges {receipt.cost} msat, more than the {receipt.terms.held} held"
        )
    return receipt
