"""Money end to end (issue 10): real `hubnode` processes on 127.0.0.1.

One desktop serves priced services; its operator credits callers with `hubnode ledger
credit`. A caller's paid call holds the worst case, settles at the exit, and comes back
with a signed receipt that the caller keeps; a caller without an account, or whose ceiling
is below the worst case, is refused before anything runs; a member of a `free_orgs`
organisation pays nothing; 50 concurrent calls of one caller with money for 20 run
exactly 20 times and leave the balance at 0, never below; and a node with surge pricing
quotes (and charges) more while it is busy, and says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from hubnet.home import Home
from hubnet.identity.errors import Rejected
from hubnet.identity.keys import load_or_create_identity
from hubnet.node.ledger import Ledger
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import Call, GetStatus, StatusReply
from hubnet.receipt_store import ReceiptStore
from hubnet.trio_client import CallOutput
from hubnet.trio_client import Client as TrioClient
from tests.e2e.harness import Client, Server, toml_string
from tests.helpers import require_program

PAID = 700  # msat a call of `paid`: per call only, so its hold is its cost
CONCURRENT = 50
AFFORDABLE = 20


def _toml(org: str) -> str:
    return f"""listen = "127.0.0.1:0"
max_jobs = 8
max_queued = {CONCURRENT * 2}
max_connections_per_address = {CONCURRENT * 2}

[services.paid]
command = ["echo", "paid"]
price = {{ per_call = {PAID} }}
max_concurrent = 8
sandbox = false

[services.metered]
command = ["cat"]
timeout = 5
max_output = "1M"
price = {{ per_call = 100, per_second = 10, per_mib = 1000 }}
sandbox = false

[services.labfree]
command = ["echo", "free for the lab"]
price = {{ per_call = {PAID} }}
free_orgs = [{toml_string(org)}]
sandbox = false
"""


@dataclass
class Shop:
    desktop: Server
    operator: Client  # the desktop's own home: `hubnode ledger` works on its books
    root: Path

    def credit(self, client: Client, msat: int) -> None:
        result = self.operator.run("ledger", "credit", client.peer_id, str(msat), "--note", "test")
        assert result.returncode == 0, result.stderr.decode()

    def balance(self, client: Client) -> dict[str, int]:
        result = client.run("balance", "--server", self.desktop.target, "--json")
        assert result.returncode == 0, result.stderr.decode()
        reply: dict[str, int] = json.loads(result.stdout)
        return reply


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    for program in ("echo", "cat"):
        require_program(program)
    root = tmp_path_factory.mktemp("money")
    admin, robot = Client(root / "admin"), Client(root / "robot")
    created = admin.run("org", "create", "lab")
    assert created.returncode == 0, created.stderr.decode()
    org = created.stdout.decode().strip().splitlines()[-1]
    attestation = admin.run("org", "attest", "lab", robot.peer_id, "--role", "robot")
    assert attestation.returncode == 0, attestation.stderr.decode()
    assert robot.run("org", "join", attestation.stdout.decode().strip()).returncode == 0
    operator = Client(root / "desktop")
    with Server(operator.home, _toml(org)) as desktop:
        yield Shop(desktop, operator, root)


def test_a_paid_call_costs_exactly_what_its_signed_receipt_says(shop: Shop) -> None:
    caller = Client(shop.root / "payer")
    shop.credit(caller, 100_000)
    assert shop.balance(caller) == {"available": 100_000, "held": 0}
    result = caller.call(shop.desktop.target, "metered", input=b"x" * 5000)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"x" * 5000
    with ReceiptStore(Home.locate(caller.home).data_dir) as store:
        (receipt,) = store.receipts()  # taken in only if its signature verifies
        assert store.problems() == []
    assert receipt.node.hex() and receipt.service == "metered"
    assert receipt.cost >= 100 and receipt.cost <= receipt.terms.held == 100 + 10 * 5 + 1000 * 2
    assert receipt.balance == 100_000 - receipt.cost
    assert shop.balance(caller) == {"available": 100_000 - receipt.cost, "held": 0}
    listed = json.loads(caller.run("receipts", "--json").stdout)
    assert listed["totals"] == [
        {"node": shop.desktop.peer_id, "service": "metered", "jobs": 1, "cost": receipt.cost}
    ]
    history = json.loads(shop.operator.run("ledger", "history", caller.peer_id, "--json").stdout)
    assert [(e["kind"], e["charged"]) for e in history] == [
        ("credit", 0),
        ("hold", 0),
        ("settle", receipt.cost),
    ]


def test_no_account_is_payment_required_with_the_amount(shop: Shop) -> None:
    stranger = Client(shop.root / "stranger")
    result = stranger.call(shop.desktop.target, "paid")
    assert result.returncode == 126, result.stderr.decode()
    said = result.stderr.decode()
    assert "payment-required" in said and f"needs {PAID} msat" in said, said
    assert result.stdout == b""


def test_a_ceiling_below_the_worst_case_is_too_expensive(shop: Shop) -> None:
    thrifty = Client(shop.root / "thrifty")
    shop.credit(thrifty, 10_000)
    result = thrifty.run("call", "--server", shop.desktop.target, "--max-cost", str(PAID - 1), "paid")
    assert result.returncode == 126, result.stderr.decode()
    assert f"too-expensive: paid may cost up to {PAID} msat" in result.stderr.decode()
    assert shop.balance(thrifty) == {"available": 10_000, "held": 0}  # nothing held or charged
    ok = thrifty.run("call", "--server", shop.desktop.target, "--max-cost", str(PAID), "paid")
    assert ok.returncode == 0, ok.stderr.decode()
    assert shop.balance(thrifty)["available"] == 10_000 - PAID


def test_a_free_orgs_member_pays_nothing_without_an_account(shop: Shop) -> None:
    robot = Client(shop.root / "robot")
    result = robot.call(shop.desktop.target, "labfree")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"free for the lab\n"
    assert shop.balance(robot) == {"available": 0, "held": 0}
    assert json.loads(robot.run("receipts", "--json").stdout)["receipts"] == []
    refused = robot.call(shop.desktop.target, "paid")  # the same price, not free for it
    assert refused.returncode == 126 and "payment-required" in refused.stderr.decode()


def test_concurrent_calls_of_one_caller_never_overdraw(shop: Shop) -> None:
    caller = Client(shop.root / "crowd")
    shop.credit(caller, AFFORDABLE * PAID)
    home = Home.locate(caller.home)
    client = TrioClient(
        load_or_create_identity(home.identity_key), announce=lambda _: None, receipts_dir=home.data_dir
    )
    outcomes: list[str] = []

    async def one() -> None:
        try:
            output = await client.call(Target.parse(shop.desktop.target), Call(service_id_for_name("paid")))
        except Rejected as exc:
            outcomes.append(exc.code)
        else:
            assert output.stdout == b"paid\n" and output.result.exit.cost == PAID
            outcomes.append("ran")

    async def crowd() -> None:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(CONCURRENT):
                    nursery.start_soon(one)

    trio.run(crowd)
    assert sorted(outcomes) == sorted(["ran"] * AFFORDABLE + ["payment-required"] * (CONCURRENT - AFFORDABLE))
    assert shop.balance(caller) == {"available": 0, "held": 0}
    with ReceiptStore(home.data_dir) as store:
        assert [(t.jobs, t.cost) for t in store.totals()] == [(AFFORDABLE, AFFORDABLE * PAID)]
        assert store.problems() == []
    with Ledger.open(Home.locate(shop.operator.home).data_dir, release_stale=False) as books:
        audit = books.audit()
    assert audit.consistent and audit.lowest_balance >= 0, audit
    assert audit.earnings >= AFFORDABLE * PAID


SURGE_TOML = """listen = "127.0.0.1:0"
max_jobs = 1
max_queued = 1

[services.slow]
command = ["sleep", "30"]
timeout = 60
price = { per_call = 1000 }
surge = { start = 0.0, max = 3.0 }
sandbox = false

[services.quick]
command = ["echo", "quick"]
price = { per_call = 1000 }
surge = { start = 0.0, max = 3.0 }
sandbox = false
"""


def test_a_busy_node_quotes_its_surge_price_and_lowers_it_again(tmp_path: Path) -> None:
    """One slot: while a job runs the node is half full (utilisation 1 of 2), so with
    `start = 0, max = 3` its multiplier is 2; `hubnode services` says so, a call that waits
    for the slot is quoted and charged double, and the price falls back once it is idle."""
    require_program("sleep")
    caller = Client(tmp_path / "caller")
    with Server(tmp_path / "node", SURGE_TOML) as node:
        operator = Client(node.home)
        assert operator.run("ledger", "credit", caller.peer_id, "1000000").returncode == 0
        home = Home.locate(caller.home)
        client = TrioClient(load_or_create_identity(home.identity_key), announce=lambda _: None)
        target = Target.parse(node.target)

        def shown() -> dict[str, tuple[float, int]]:
            listed = json.loads(caller.run("services", "--server", node.target, "--json").stdout)
            return {row["name"]: (row["multiplier"], row["price"]["per_call"]) for row in listed}

        assert shown() == {"slow": (1.0, 1000), "quick": (1.0, 1000)}
        seen: dict[str, tuple[float, int]] = {}

        async def busy() -> None:
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    slow = trio.CancelScope()

                    async def run_slow() -> None:
                        with slow:
                            await client.call(target, Call(service_id_for_name("slow")))

                    nursery.start_soon(run_slow)
                    while (await client.request(target, GetStatus(), StatusReply)).running < 1:
                        await trio.sleep(0.05)
                    seen.update(await trio.to_thread.run_sync(shown))
                    output: CallOutput | None = None

                    async def run_quick() -> None:
                        nonlocal output
                        output = await client.call(target, Call(service_id_for_name("quick")))

                    nursery.start_soon(run_quick)  # it waits for the slot, quoted at this moment
                    while (await client.request(target, GetStatus(), StatusReply)).queued < 1:
                        await trio.sleep(0.05)
                    slow.cancel()  # the slot frees, the queued call runs
            assert output is not None
            assert output.result.terms.per_call == 2000 and output.result.exit.cost == 2000

        trio.run(busy)
        assert seen == {"slow": (2.0, 2000), "quick": (2.0, 2000)}
        assert shown() == {"slow": (1.0, 1000), "quick": (1.0, 1000)}  # idle again
