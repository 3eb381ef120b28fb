"""Money on the command line: the operator's `hubnode ledger` and the caller's `hubnode
balance` and `hubnode receipts`.

`hubnode ledger ...` works on the node's own books (node.ledger) in this home's data
folder, beside a running node (SQLite lets both take turns); amounts are millisatoshi.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from hubnet.commands import DEFAULT_TARGET_HELP, Context
from hubnet.safe_text import printable

if TYPE_CHECKING:
    from hubnet.node.ledger import Ledger


@click.group(short_help="The node's accounts: credit, balances, history, payout.")
def ledger() -> None:
    """The node's prepaid accounts, in millisatoshi (1 sat = 1000 msat).

    A caller's calls of a priced service are paid from its account here: the worst case
    is held when the job starts and the rest released when it ends. An account is a
    caller's peer id, or an organisation's id (it then pays for members who have none).

    \b
    hubnode ledger credit PEER_ID 50000 --note "paid in cash"
    hubnode ledger balance                 # every account, and the node's earnings
    hubnode ledger history PEER_ID
    hubnode ledger payout > earnings.token  # the earnings as a Cashu token
    """


def _open(obj: Context) -> Ledger:
    from hubnet.node.ledger import Ledger

    # A node may be running on these books: its holds are its running jobs, not stale.
    return Ledger.open(obj.home.data_dir, release_stale=False)


def _account(text: str) -> bytes:
    from hubnet.identity.keys import decode_peer_id

    return decode_peer_id(text)


@ledger.command(short_help="Pay the node's earnings out as a Cashu token.")
@click.argument("msat", type=click.IntRange(min=1), required=False)
@click.option(
    "--services",
    "services_path",
    type=click.Path(dir_okay=False, exists=True),
    help="The node's services.toml, for its mints (default: the home's).",
)
@click.pass_obj
def payout(obj: Context, msat: int | None, services_path: str | None) -> None:
    """Print a Cashu token of MSAT millisatoshi of the node's earnings on stdout (whole sats;
    default: all the earnings, rounded down to a sat), and take it from the earnings.

    The token comes from the node's ecash wallet (the tokens callers deposited and paid
    calls with), at one of services.toml's `mints`; any Cashu wallet redeems it
    (`cashu receive TOKEN`). Works beside a running node. Keep the token: it is the money.
    """
    from pathlib import Path

    import trio

    from hubnet.identity.errors import ConfigError
    from hubnet.node.services import load_services

    services = Path(services_path) if services_path else obj.home.services
    mints = load_services(services).mints
    if not mints:
        raise ConfigError(f"{services} names no mints: this node has no ecash to pay out")
    token, paid = trio.run(_payout, obj, mints, msat)
    click.echo(token)
    click.echo(f"hubnode: paid out {paid} msat of the node's earnings", err=True)


async def _payout(obj: Context, mints: tuple[str, ...], msat: int | None) -> tuple[str, int]:
    from hubnet.node.cashier import Cashier
    from hubnet.node.ecash import EcashWallet

    data_dir = obj.home.data_dir
    with _open(obj) as books:
        wallet = EcashWallet(data_dir, mints)
        try:
            return await Cashier(wallet, books, obj.identity()).payout(msat)
        finally:
            await wallet.aclose()


@ledger.command(short_help="Add money to an account.")
@click.argument("peer_id")
@click.argument("msat", type=click.IntRange(min=1))
@click.option("--note", default="", metavar="TEXT", help="Why, for the history (e.g. a payment's reference).")
@click.pass_obj
def credit(obj: Context, peer_id: str, msat: int, note: str) -> None:
    """Credit MSAT millisatoshi to PEER_ID's account (a caller's or an organisation's id);
    prints the balance after."""
    account = _account(peer_id)
    with _open(obj) as books:
        click.echo(books.credit(account, msat, note=note))


@ledger.command(short_help="Show balances: one account's, or all and the node's earnings.")
@click.argument("peer_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def balance(obj: Context, peer_id: str | None, as_json: bool) -> None:
    """PEER_ID's balance (available, and held by running jobs); without PEER_ID every
    account and what the node has earned."""
    from hubnet.identity.keys import encode_peer_id

    with _open(obj) as books:
        accounts = [books.balance(_account(peer_id))] if peer_id else books.balances()
        earnings = books.earnings()
    rows = [
        {"account": encode_peer_id(b.account), "available": b.available, "held": b.held} for b in accounts
    ]
    if as_json:
        click.echo(json.dumps(rows[0] if peer_id else {"accounts": rows, "earnings": earnings}, indent=2))
        return
    for row in rows:
        click.echo(f"{row['account']}  {row['available']:>12} msat  ({row['held']} held)")
    if not peer_id:
        click.echo(f"earnings: {earnings} msat")


@ledger.command(short_help="Show the journal: one account's, or everyone's.")
@click.argument("peer_id", required=False)
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="The newest N entries."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def history(obj: Context, peer_id: str | None, limit: int, as_json: bool) -> None:
    """Every change to PEER_ID's account (or to all, payouts included), oldest first:
    credits, holds, settlements (what the job cost), releases, debits, payouts."""
    import time

    from hubnet.identity.keys import encode_peer_id

    with _open(obj) as books:
        entries = books.history(_account(peer_id) if peer_id else None, limit=limit)
    rows: list[dict[str, Any]] = [
        {
            "time": e.time,
            "account": None if e.account is None else encode_peer_id(e.account),
            "kind": e.kind,
            "change": e.change,
            "charged": e.charged,
            "job": e.job_id,
            "note": e.note,
            "balance": e.balance,
        }
        for e in entries
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        who = "" if peer_id else f"{row['account'] or 'node':<56} "
        charged = f" cost {row['charged']}" if row["kind"] == "settle" else ""
        job = f" job {row['job']}" if row["job"] else ""
        note = f"  {printable(row['note'])}" if row["note"] else ""
        click.echo(
            f"{when} {who}{row['kind']:<8} {row['change']:>+10}{charged} -> {row['balance']} msat{job}{note}"
        )


@click.command("balance", short_help="Show your balance at a server.")
@click.option("--server", "-s", metavar="TARGET", help=DEFAULT_TARGET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def caller_balance(obj: Context, server: str | None, as_json: bool) -> None:
    """Your account at a server, in millisatoshi: what you may spend, and what your running
    jobs hold (a job holds its worst case until it ends)."""
    from hubnet.client import request
    from hubnet.node.protocol import BalanceReply, GetBalance

    reply = request(obj.target(server), obj.identity(), obj.known_hosts(), GetBalance(), BalanceReply)
    if as_json:
        click.echo(json.dumps({"available": reply.available, "held": reply.held}))
    else:
        click.echo(f"{reply.available} msat available, {reply.held} msat held by running jobs")


@click.command(short_help="List the receipts of your paid calls.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def receipts(obj: Context, as_json: bool) -> None:
    """Every signed receipt your paid calls got, with totals per node and service, and every
    receipt that failed its check (or a paid job that came without one)."""
    from hubnet.identity.keys import encode_peer_id
    from hubnet.receipt_store import ReceiptStore

    with ReceiptStore(obj.home.data_dir) as store:
        kept, totals, problems = store.receipts(), store.totals(), store.problems()
    listed: list[dict[str, Any]] = [
        {
            "job": r.job_id,
            "node": encode_peer_id(r.node),
            "service": r.service,
            "cost": r.cost,
            "balance": r.balance,
            "time": r.time,
            "usage": {
                "wall_ms": r.usage.wall_ms,
                "stdin": r.usage.stdin_bytes,
                "stdout": r.usage.stdout_bytes,
            },
            "terms": {
                "per_call": r.terms.per_call,
                "per_second": r.terms.per_second,
                "per_mib": r.terms.per_mib,
                "held": r.terms.held,
            },
        }
        for r in kept
    ]
    summed: list[dict[str, Any]] = [
        {"node": encode_peer_id(t.node), "service": t.service, "jobs": t.jobs, "cost": t.cost} for t in totals
    ]
    bad = [
        {"node": encode_peer_id(p.node) if p.node else "", "job": p.job_id, "reason": p.reason}
        for p in problems
    ]
    if as_json:
        click.echo(json.dumps({"receipts": listed, "totals": summed, "problems": bad}, indent=2))
        return
    for row in listed:
        click.echo(f"{row['job']}  {printable(row['service']):<16} {row['cost']:>10} msat  {row['node']}")
    for total in summed:
        jobs = f"{total['jobs']} job(s)"
        click.echo(f"total {printable(total['service']):<16} {jobs} {total['cost']} msat  {total['node']}")
    for problem in bad:
        click.echo(f"PROBLEM job {problem['job']} from {problem['node']}: {printable(problem['reason'])}")
