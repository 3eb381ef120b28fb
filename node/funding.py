"""The seam through which a call can bring its own money: pay-per-call.

A node's server holds a paid call's worst case in the ledger before it runs the job. Just
before that hold (after the caller proved itself live with Start, so a replayed request
costs nothing), the server asks its `CallFunding`, if it has one, to fund the call: an
ecash backend redeems a token carried in the call and credits the payer's account with it
(`Ledger.credit(payer, amount, kind="deposit")`), and the hold then takes from that
balance as from any other. After the job is settled, `after_settle` may pay money back
(`Ledger.debit(payer, amount, kind="change")`, say as a fresh token) and returns extra
fields for the job's signed receipt (string keys, msgpack values, e.g. {"change": token}).

Neither method may raise for the caller's mistakes: `fund` answers a refusal (a Reject,
e.g. `payment-required` naming why the token was refused) and `after_settle` returns what
it could do. A node without a `CallFunding` serves prepaid accounts only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from hubnet.node.ledger import Ledger, Settlement
from hubnet.node.protocol import Call, Reject


class CallFunding(Protocol):
    """Pay-per-call for a node's server (see the module docstring)."""

    async def fund(self, ledger: Ledger, call: Call, payer: bytes, needed: int) -> Reject | None:
        """Before the hold of `needed` msat for `call` from `payer`'s account: credit what the
        call brings, or refuse it (the Reject goes to the caller; nothing is held or run)."""
        ...

    async def after_settle(
        self, ledger: Ledger, call: Call, payer: bytes, settlement: Settlement
    ) -> Mapping[str, Any]:
        """After the job was settled: pay back what is due, and say what the receipt adds."""
        ...
