"""Pay as you call: when a node wants money, pay it with a Cashu token from the caller's wallet.

`hubnode call --pay auto` (or `pay = "auto"` in client.toml, or `pay="auto"` in the Python
API) opens the call waiting for the node's answer before any stdin flows. If the node
refuses it as `payment-required`, naming the msat it needs held, the smallest token in
`hubnode wallet` that covers it goes into the call again (inside the encrypted request) to
that same node, pinned to the key that asked; the node redeems it into the caller's account,
runs the job, and returns the change as a fresh token in the signed receipt, which goes back
into the wallet. A token the node refused before redeeming anything goes back as well.

A named server and a provider found in the DHT pay alike: discovery tries its candidates, and
when none takes the call unpaid, the first one that asked for money is the one paid.

The decisions are the pure functions at the top (`token_size`, `no_token`,
`token_still_ours`) and the wallet's few steps below them, so that every caller follows one
set of rules: the blocking driver here (`open_paying_call`: `hubnode call`, `hubnet.call`,
`hubnet.stream`) and the Trio one in `hubnet.trio_api` (its `call` and `stream`,
`hubnet.Executor` and `hubnode map`), which runs the wallet's steps on a worker thread.
Nothing here imports Trio or click, and the wallet (SQLite) is imported only to pay.
"""

from __future__ import annotations

import sys

from hubnet.client import PaymentRequired, open_call
from hubnet.commands import Context, ServiceCall, open_service_call
from hubnet.identity.cheap_typing import TYPE_CHECKING
from hubnet.identity.errors import Rejected
from hubnet.identity.frozen import replace
from hubnet.node.protocol import RejectCode
from hubnet.trust import PinnedKeys

if TYPE_CHECKING:
    from hubnet.client import OpenCall
    from hubnet.node.protocol import Call
    from hubnet.node.receipts import JobReceipt
    from hubnet.wallet import StoredToken

# Refusals a node gives before it redeems a call's token (admission, then the swap that never
# happened): the token is still the caller's. The others (token-spent, deposit-failed,
# payment-required after the deposit, cancelled while queued) come after it was taken in.
UNSPENT = frozenset(
    {
        RejectCode.NO_SUCH_SERVICE,
        RejectCode.NOT_ALLOWED,
        RejectCode.BAD_ARGUMENTS,
        RejectCode.BUSY,
        RejectCode.TOO_EXPENSIVE,
        RejectCode.UNTRUSTED_MINT,
        RejectCode.BAD_TOKEN,
        RejectCode.MINT_UNAVAILABLE,
    }
)


def token_size(asked: PaymentRequired, max_cost: int | None) -> int:
    """The sats of the smallest token that pays for what `asked` wants held: its msat rounded
    up, since the node makes change in whole sats.

    Never for more than the call's ceiling `max_cost`: an honest node refuses a job above it
    as too-expensive before it asks for money, so one that asks for more gets no token
    (Rejected, too-expensive). This ties a paid job to a run's budget too: the ceiling a
    fan-out's call carries is what its budget has left for it.
    """
    if max_cost is not None and asked.needed > max_cost:
        raise Rejected(
            RejectCode.TOO_EXPENSIVE,
            f"{asked.provider} asks for {asked.needed} msat held, above the ceiling of {max_cost} msat: "
            "no token was sent",
        )
    return _whole_sats(asked.needed)


def _whole_sats(msat: int) -> int:
    return -(-msat // 1000)


def no_token(label: str, asked: PaymentRequired) -> Rejected:
    """The refusal when the wallet holds no token that covers what `asked` needs: the amount,
    the node, and the two ways to pay it, in one line."""
    return Rejected(
        asked.code,
        f"{label} needs {asked.needed} msat at {asked.provider} and your wallet holds no token "
        f"of {_whole_sats(asked.needed)} sat or more: add one with `hubnode wallet add TOKEN`, or "
        f"deposit with `hubnode deposit --server {asked.provider} TOKEN`",
        asked.needed,
    )


def token_still_ours(failure: BaseException, *, accepted: bool) -> bool:
    """Whether a token sent with a call that ended in `failure` goes back into the wallet.

    After the node's Accept it was redeemed (a node funds a job before it accepts it): no.
    Before it, a refusal says which: UNSPENT ones come before the token is touched. No
    answer at all (a connection that failed, a node that broke the protocol, a caller that
    gave up: an interrupt, a cancelled task) leaves its fate unknown, and it goes back: if
    the node did redeem it, its next use is refused as token-spent and the amount is in the
    caller's account there; kept out, a token that was never redeemed would be lost.
    """
    if accepted:
        return False
    if isinstance(failure, Rejected):
        return failure.code in UNSPENT
    return True


def paid(request: Call, token: StoredToken) -> Call:
    """`request` carrying `token`, for the node that asked for it."""
    return replace(request, token=token.token)


def take_token(ctx: Context, sat: int) -> StoredToken | None:
    """The smallest token of at least `sat` out of the home's wallet (None if none): from now
    on it is the node's unless `put_back`. Blocking (SQLite)."""
    # Only now: a caller that pays nothing (or has an account) never loads the wallet.
    from hubnet.wallet import Wallet

    with Wallet.open(ctx.home.data_dir) as wallet:
        return wallet.take(sat)


def put_back(ctx: Context, token: StoredToken) -> None:
    """A token taken for a call that did not spend it (`token_still_ours`), back into the wallet."""
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


def open_paying_call(ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...]) -> OpenCall:
    """`planned`, accepted by its node: as it is, or with a token from the wallet when the node
    wants money. Rejected (payment-required, naming the amount and the node) when no token
    covers it."""
    try:
        return open_service_call(ctx, planned, bootstrap, wait_for_accept=True)
    except PaymentRequired as exc:
        asked = exc
    token = take_token(ctx, token_size(asked, planned.request.max_cost))
    if token is None:
        raise no_token(planned.label, asked)
    config = ctx.client_config
    try:
        # This node and no other: it is waited for as long as any node (it may queue the call).
        return open_call(
            asked.target,
            ctx.identity(),
            PinnedKeys(),
            paid(planned.request, token),
            timeout=config.connect_timeout,
            timeouts=config.timeouts,
            wait_for_accept=True,
            dialer=ctx.call_dialer(),
        )
    except BaseException as exc:
        # open_call returns at the Accept: whatever ends it here came before one.
        if token_still_ours(exc, accepted=False):
            put_back(ctx, token)
        raise
