"""`hubnode deposit` and `hubnode wallet`: ecash from the caller's side.

Tokens are Cashu's (`cashuA...`/`cashuB...`, from any Cashu wallet), carried whole: this side
never swaps them and has no Cashu library. A node redeems them at a mint it trusts (see
docs/money.md).
"""

from __future__ import annotations

import sys

import click

from hubnet.commands import Context
from hubnet.safe_text import printable

TARGET_HELP = "The node, PEER_ID@HOST:PORT (HOST:PORT trusts its key on first use)."


def _token_text(token: str) -> str:
    return (sys.stdin.read() if token == "-" else token).strip()


@click.command(short_help="Put a Cashu token into your account at a node.")
@click.option("--server", "-s", metavar="TARGET", help=TARGET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the signed receipt's fields as JSON.")
@click.argument("token")
@click.pass_obj
def deposit(obj: Context, server: str | None, as_json: bool, token: str) -> None:
    """Redeem TOKEN at the node into your account there (1 sat = 1000 msat).

    \b
    TOKEN is a Cashu token (cashuA... or cashuB...) from any Cashu wallet, or - to read it
    from stdin. The node takes tokens only from the mints it trusts (services.toml's `mints`).
    Its signed receipt is checked and kept in this home's wallet.

    Exits 0 when credited; 126 if the node refused the token (untrusted-mint, bad-token: nothing
    was redeemed; token-spent: nothing was credited); 75 if its mint cannot be reached (nothing
    was credited; the token is still yours: try again later); 2 if TOKEN is not a Cashu token;
    255 if the connection failed or the node's receipt does not verify.
    """
    from hubnet.cashu_token import read_token
    from hubnet.client import exchange
    from hubnet.node.deposit_receipts import DepositReceipt, InvalidDepositReceipt
    from hubnet.node.protocol import Deposit, Receipt
    from hubnet.wallet import Wallet

    text = _token_text(token)
    info = read_token(text)  # a typo is said here, before the node is bothered
    identity = obj.identity()
    reply, node = exchange(obj.target(server), identity, obj.known_hosts(), Deposit(text), Receipt)
    try:
        receipt = DepositReceipt.verify(reply.record, node=node, caller=identity.public_key, token=text)
    except InvalidDepositReceipt as exc:
        raise InvalidDepositReceipt(
            f"the node answered the deposit with a bad receipt ({exc}): it may have redeemed the "
            "token without crediting you; keep the token and ask its operator (hubnode balance)"
        ) from None
    with Wallet.open(obj.home.data_dir) as wallet:
        wallet.keep_deposit(
            node, receipt.token, receipt.amount, receipt.balance, receipt.mint, receipt.time, reply.record
        )
    if as_json:
        import json

        click.echo(json.dumps(receipt.as_json(), indent=2))
        return
    click.echo(
        f"deposited {receipt.amount // 1000} sat ({receipt.amount} msat) from {printable(info.mint)}; "
        f"your balance there: {receipt.balance} msat"
    )


@click.group(invoke_without_command=True, short_help="Your Cashu tokens: list them, add one.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the tokens themselves).")
@click.pass_context
def wallet(ctx: click.Context, as_json: bool) -> None:
    """List the Cashu tokens kept in this home, for paying as you call (`call --pay auto`).

    \b
    hubnode wallet add TOKEN     keep a token (cashuA.../cashuB..., or - for stdin)
    hubnode wallet [--json]      list them: mint, amount, when added
    hubnode wallet deposits      the nodes' signed receipts for your deposits

    A node's change comes back into this wallet by itself.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hubnet.wallet import Wallet

    obj: Context = ctx.obj
    with Wallet.open(obj.home.data_dir) as store:
        tokens = store.tokens()
    if as_json:
        import json

        click.echo(json.dumps([t.as_json() for t in tokens], indent=2))
        return
    if not tokens:
        click.echo("no tokens; add one with `hubnode wallet add TOKEN`")
        return
    click.echo(f"{'ID':>4} {'AMOUNT':>10} {'UNIT':<5} MINT")
    totals: dict[tuple[str, str], int] = {}
    for t in tokens:
        click.echo(f"{t.id:>4} {t.amount:>10} {printable(t.unit):<5} {printable(t.mint)}")
        totals[t.mint, t.unit] = totals.get((t.mint, t.unit), 0) + t.amount
    for (mint, unit), total in sorted(totals.items()):
        click.echo(f"total {total} {printable(unit)} at {printable(mint)}")


@wallet.command("add")
@click.argument("token")
@click.pass_obj
def wallet_add(obj: Context, token: str) -> None:
    """Keep TOKEN (a Cashu token, or - to read it from stdin) in this home's wallet."""
    from hubnet.wallet import Wallet

    with Wallet.open(obj.home.data_dir) as store:
        kept = store.add(_token_text(token))
    click.echo(f"kept {kept.amount} {printable(kept.unit)} from {printable(kept.mint)} (id {kept.id})")


@wallet.command("deposits")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def wallet_deposits(obj: Context, as_json: bool) -> None:
    """The deposits nodes have credited you (`hubnode deposit`), from their signed receipts."""
    from hubnet.wallet import Wallet

    with Wallet.open(obj.home.data_dir) as store:
        kept = store.deposits()
    if as_json:
        import json

        click.echo(json.dumps([d.as_json() for d in kept], indent=2))
        return
    from hubnet.identity.keys import encode_peer_id

    for d in kept:
        node, mint = encode_peer_id(d.node), printable(d.mint)
        click.echo(f"{d.amount:>10} msat  balance {d.balance:>10} msat  {node}  {mint}")
