"""Pay as you call: when a node wants money, pay it with a Cashu token from the caller's wallet.

`hubnode call --pay auto` (or `pay = "auto"` in client.toml) opens the call waiting for the
node's answer before any stdin flows. If the node refuses it as `payment-required`, naming
the msat it needs held, the smallest token in `hubnode wallet` that covers it goes into the
call again (inside the encrypted request), the node redeems it into the caller's account,
runs the job, and returns the change as a fresh token in the signed receipt, which goes back
into the wallet. A token the node refused before redeeming anything goes back as well.
Only a call with a server named pays this way: a refusal from a discovered provider does not
say how much is needed.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING

from hubnet.commands import Context, ServiceCall, open_service_call
from hubnet.identity.errors import Rejected, TransportError

if TYPE_CHECKING:
    from hubnet.client import OpenCall
    from hubnet.node.receipts import JobReceipt
    from hubnet.wallet import StoredToken

PAYMENT_REQUIRED = "payment-required"
# Refusals after which the token was certainly not redeemed: it is still the caller's.
_UNSPENT = ("untrusted-mint", "bad-token", "mint-unavailable")


def open_paying_call(ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...]) -> OpenCall:
    """`planned`, accepted by its node: as it is, or with a token from the wallet when the node
    wants money. Rejected (payment-required, naming the amount) when no token covers it."""
    try:
        return open_service_call(ctx, planned, bootstrap, wait_for_accept=True)
    except Rejected as exc:
        if exc.code != PAYMENT_REQUIRED or exc.needed is None:
            raise
        needed = exc.needed
    # Only now: a caller that pays nothing (or has an account) never loads the wallet (SQLite).
    from hubnet.wallet import Wallet

    sat = -(-needed // 1000)
    with Wallet.open(ctx.home.data_dir) as wallet:
        token = wallet.take(sat)
    if token is None:
        raise Rejected(
            PAYMENT_REQUIRED,
            f"the call needs {needed} msat and your wallet holds no token of {sat} sat or more: "
            "add one with `hubnode wallet add TOKEN` (or deposit with `hubnode deposit`)",
            needed,
        )
    paid = dataclasses.replace(planned, request=dataclasses.replace(planned.request, token=token.token))
    try:
        return open_service_call(ctx, paid, bootstrap, wait_for_accept=True)
    except Rejected as exc:
        if exc.code in _UNSPENT:
            _put_back(ctx, token)
        raise
    except TransportError:
        # The node may or may not have redeemed it: kept, a later use finds out (token-spent).
        _put_back(ctx, token)
        raise


def _put_back(ctx: Context, token: StoredToken) -> None:
    from hubnet.wallet import Wallet

    with Wallet.open(ctx.home.data_dir) as wallet:
        wallet.put_back(token)


def keep_change(ctx: Context, receipt: JobReceipt) -> None:
    """The change a node returned in `receipt` (checked already), into the wallet."""
    change = receipt.extra.get("change")
    if change is None:
        return
    from hubnet.cashu_token import BadToken
    from hubnet.identity.keys import fingerprint
    from hubnet.wallet import Wallet

    try:
        with Wallet.open(ctx.home.data_dir) as wallet:
            wallet.add(
                change if isinstance(change, str) else "", note=f"change from {fingerprint(receipt.node)}"
            )
    except BadToken as exc:
        print(
            f"hubnode: WARNING: node {fingerprint(receipt.node)} returned change that is no token: {exc}",
            file=sys.stderr,
        )
