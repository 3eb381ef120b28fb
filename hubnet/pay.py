"""Pay as you call: when a node wants money, pay it with a Cashu token from the caller's wallet.

`hubnode call --pay auto` (or `pay = "auto"` in client.toml, or `hubnet.call(..., pay="auto")`)
opens the call waiting for the node's answer before any stdin flows. If the node refuses it as
`payment-required`, naming the msat it needs held, the smallest token in `hubnode wallet` that
covers it goes into the call again (inside the encrypted request) to that same node, pinned to
the key that asked; the node redeems it into the caller's account, runs the job, and returns the
change as a fresh token in the signed receipt, which goes back into the wallet. A token the node
refused before redeeming anything goes back as well.

A named server and a provider found in the DHT pay alike: discovery tries its candidates, and
when none takes the call unpaid, the first one that asked for money is the one paid.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from hubnet.client import PaymentRequired, open_call
from hubnet.commands import Context, ServiceCall, open_service_call
from hubnet.identity.errors import Rejected, TransportError
from hubnet.identity.frozen import replace
from hubnet.trust import PinnedKeys

if TYPE_CHECKING:
    from hubnet.client import OpenCall
    from hubnet.node.receipts import JobReceipt
    from hubnet.wallet import StoredToken

# Refusals after which the token was certainly not redeemed: it is still the caller's.
_UNSPENT = ("untrusted-mint", "bad-token", "mint-unavailable")


def open_paying_call(ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...]) -> OpenCall:
    """`planned`, accepted by its node: as it is, or with a token from the wallet when the node
    wants money. Rejected (payment-required, naming the amount and the node) when no token
    covers it."""
    try:
        return open_service_call(ctx, planned, bootstrap, wait_for_accept=True)
    except PaymentRequired as exc:
        asked = exc
    # Only now: a caller that pays nothing (or has an account) never loads the wallet (SQLite).
    from hubnet.wallet import Wallet

    sat = -(-asked.needed // 1000)
    with Wallet.open(ctx.home.data_dir) as wallet:
        token = wallet.take(sat)
    if token is None:
        raise Rejected(
            asked.code,
            f"{planned.label} needs {asked.needed} msat at {asked.provider} and your wallet holds no "
            f"token of {sat} sat or more: add one with `hubnode wallet add TOKEN`, or deposit with "
            f"`hubnode deposit --server {asked.provider} TOKEN`",
            asked.needed,
        )
    paid = replace(planned.request, token=token.token)
    config = ctx.client_config
    try:
        # This node and no other: it is waited for as long as any node (it may queue the call).
        return open_call(
            asked.target,
            ctx.identity(),
            PinnedKeys(),
            paid,
            timeout=config.connect_timeout,
            timeouts=config.timeouts,
            wait_for_accept=True,
        )
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
