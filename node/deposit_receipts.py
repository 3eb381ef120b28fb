"""A node's signed word that it credited a caller's ecash deposit (domain `hubnet/deposit/1`).

Light on purpose: the caller's `hubnode deposit` checks these without loading the node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from hubnet.identity.keys import Identity, encode_peer_id, fingerprint
from hubnet.identity.records import InvalidRecord, SignedRecord
from hubnet.node.protocol import MAX_RECEIPT
from hubnet.node.receipts import signed_map

DEPOSIT_DOMAIN = "hubnet/deposit/1"
_KEY_LEN = 32
_FIELDS = ("node", "caller", "amount", "balance", "mint", "token", "time")


def token_hash(token: str) -> bytes:
    """What names a token in the ledger and in receipts without giving the money away."""
    return hashlib.blake2b(token.strip().encode(), digest_size=32).digest()


class InvalidDepositReceipt(InvalidRecord):
    """A deposit receipt that is damaged, badly signed, or not about the deposit it answers."""


@dataclass(frozen=True)
class DepositReceipt:
    """A node's signed word that it credited `amount` msat of ecash from `mint` to `caller`."""

    node: bytes
    caller: bytes
    amount: int  # msat credited
    balance: int  # the caller's balance after, msat
    mint: str
    token: bytes  # token_hash of the token redeemed
    time: int

    def sign(self, identity: Identity) -> bytes:
        body = msgpack.packb(
            {
                "node": self.node,
                "caller": self.caller,
                "amount": self.amount,
                "balance": self.balance,
                "mint": self.mint,
                "token": self.token,
                "time": self.time,
            }
        )
        record = SignedRecord.sign(identity, DEPOSIT_DOMAIN, bytes(body)).encode()
        if len(record) > MAX_RECEIPT:
            raise ValueError(f"a receipt is at most {MAX_RECEIPT} bytes")
        return record

    @classmethod
    def verify(cls, record: bytes, *, node: bytes, caller: bytes, token: str) -> DepositReceipt:
        """The receipt in `record` if it is `node`'s, for `caller`, about `token`; else
        InvalidDepositReceipt."""
        body, signer = signed_map(
            record, DEPOSIT_DOMAIN, _FIELDS, InvalidDepositReceipt, "the deposit receipt"
        )
        receipt = cls(*(body[k] for k in _FIELDS))
        if not (
            all(
                isinstance(v, bytes) and len(v) == _KEY_LEN
                for v in (receipt.node, receipt.caller, receipt.token)
            )
            and all(_is_count(v) for v in (receipt.amount, receipt.balance, receipt.time))
            and isinstance(receipt.mint, str)
        ):
            raise InvalidDepositReceipt("the deposit receipt's fields have the wrong types")
        if receipt.node != signer or receipt.node != node:
            raise InvalidDepositReceipt(
                f"the deposit receipt is signed by {fingerprint(signer)}, not the node"
            )
        if receipt.caller != caller:
            raise InvalidDepositReceipt(
                f"the deposit receipt is for {fingerprint(receipt.caller)}, not for this caller"
            )
        if receipt.token != token_hash(token):
            raise InvalidDepositReceipt("the deposit receipt is about another token")
        return receipt

    def as_json(self) -> Mapping[str, Any]:
        return {
            "node": encode_peer_id(self.node),
            "caller": encode_peer_id(self.caller),
            "amount_msat": self.amount,
            "balance_msat": self.balance,
            "mint": self.mint,
            "token": self.token.hex(),
            "time": self.time,
        }


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 63
