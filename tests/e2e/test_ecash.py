"""Real ecash end to end: a real nutshell mint (fake Lightning), real `hubnode serve` and clients."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import hubnet
from hubnet.identity.keys import Identity, decode_peer_id
from hubnet.node.deposit_receipts import DepositReceipt, token_hash
from hubnet.node.ledger import Ledger
from hubnet.node.protocol import Receipt
from tests.e2e.conftest import Node
from tests.e2e.harness import Client, Server, one_line, toml_string, wait_until
from tests.e2e.test_hostile_server import FakeNode, answers
from tests.mint import FAKE_MINT, TestMint, mint_tokens, receive_token, v4_token

EXIT_REFUSED, EXIT_TEMPFAIL, EXIT_USAGE = 126, 75, 2
PRICE = 3000  # msat a call of `priced`: per call only, so its hold is its cost
HOLD_SECONDS = 2  # a job that keeps the one slot of a node busy, longer than connect_timeout


def node_toml(*mints: str) -> str:
    return f"""
listen = "127.0.0.1:0"
mints = [{", ".join(toml_string(m) for m in mints)}]

[services.cat]
command = ["cat"]

[services.priced]
command = ["cat"]
price = {{ per_call = {PRICE} }}
"""


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory, cashu_mint: TestMint) -> Iterator[Server]:
    """A node that trusts the session's mint."""
    with Server(tmp_path_factory.mktemp("bank") / "node", node_toml(cashu_mint.url)) as server:
        yield server


def test_a_deposit_credits_once_and_untrusted_ecash_is_never_redeemed(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint, untrusted_mint: TestMint
) -> None:
    forty, nine = mint_tokens(cashu_mint, tmp_path / "payer", 40, 9)
    (foreign,) = mint_tokens(untrusted_mint, tmp_path / "stranger", 50)

    first = client.run("deposit", "--server", bank.target, forty)
    assert first.returncode == 0, first.stderr
    assert first.stdout.decode() == (
        f"deposited 40 sat (40000 msat) from {cashu_mint.url}; your balance there: 40000 msat\n"
    )

    again = client.run("deposit", "--server", bank.target, forty)
    assert again.returncode == EXIT_REFUSED
    assert "token-spent" in one_line(again) and "nothing was credited" in one_line(again)

    refused = client.run("deposit", "--server", bank.target, foreign)
    assert refused.returncode == EXIT_REFUSED
    assert "untrusted-mint" in one_line(refused) and untrusted_mint.url in one_line(refused)
    assert receive_token(tmp_path / "stranger-again", foreign) == 50  # the refused token was never swapped

    by_stdin = client.run("deposit", "--server", bank.target, "--json", "-", input=nine.encode())
    assert by_stdin.returncode == 0, by_stdin.stderr
    receipt = json.loads(by_stdin.stdout)
    assert (receipt["amount_msat"], receipt["balance_msat"]) == (
        9000,
        49000,
    )  # the second 40 credited nothing
    assert receipt["caller"] == client.peer_id and receipt["mint"] == cashu_mint.url

    kept = _json(client.run("wallet", "deposits", "--json"))  # the two signed receipts, kept
    assert [(d["amount_msat"], d["balance_msat"]) for d in kept] == [(40000, 40000), (9000, 49000)]

    typo = client.run("deposit", "--server", bank.target, "cashuBnot-a-token")
    assert typo.returncode == EXIT_USAGE
    assert "Cashu token" in one_line(typo)


def test_a_mint_that_is_down_credits_nothing_and_the_token_stays_yours(
    client: Client, tmp_path: Path, own_mint: TestMint
) -> None:
    (token,) = mint_tokens(own_mint, tmp_path / "payer", 8)
    with Server(tmp_path / "node", node_toml(own_mint.url)) as server:
        own_mint.stop()
        down = client.run("deposit", "--server", server.target, token)
    assert down.returncode == EXIT_TEMPFAIL
    line = one_line(down)
    assert "mint-unavailable" in line and own_mint.url in line and "the token is still yours" in line
    with Ledger.open(server.home, release_stale=False) as books:
        assert books.balance(decode_peer_id(client.peer_id)).available == 0
        assert books.audit().paid_in == 0


def test_a_node_without_mints_takes_no_ecash(node: Node, client: Client) -> None:
    token = v4_token([5])  # well formed, from no real mint: this node asks nobody about it
    refused = client.run("deposit", "--server", node.target, token)
    assert refused.returncode == EXIT_REFUSED
    assert "untrusted-mint" in one_line(refused) and "names no mints" in one_line(refused)


def _json(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_deposit_pays_for_calls_at_exactly_their_receipts_cost(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    (token,) = mint_tokens(cashu_mint, tmp_path / "payer", 20)
    assert client.run("deposit", "--server", bank.target, token).returncode == 0
    called = client.call(bank.target, "priced", input=b"paid for")
    assert (called.returncode, called.stdout) == (0, b"paid for")
    kept = _json(client.run("receipts", "--json"))
    (receipt,) = kept["receipts"]  # checked by the client: the node's signature, this caller, this job
    assert (receipt["cost"], kept["problems"]) == (PRICE, [])
    assert _json(client.run("balance", "--server", bank.target, "--json"))["available"] == 20_000 - PRICE


def test_pay_per_call_with_change_and_the_change_is_money(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    unpaid = client.call(bank.target, "priced")
    assert unpaid.returncode == EXIT_REFUSED
    assert "payment-required" in one_line(unpaid) and f"needs {PRICE} msat" in one_line(unpaid)
    nothing = client.run("call", "--pay", "auto", "--server", bank.target, "priced")
    assert nothing.returncode == EXIT_REFUSED
    assert "hubnode wallet add" in one_line(nothing)

    small, ten = mint_tokens(cashu_mint, tmp_path / "payer", 2, 10)
    for token in (small, ten):
        assert client.run("wallet", "add", token).returncode == 0
    paid = client.run("call", "--pay", "auto", "--server", bank.target, "priced", input=b"pay as you go")
    assert (paid.returncode, paid.stdout) == (0, b"pay as you go"), paid.stderr
    (receipt,) = _json(client.run("receipts", "--json"))["receipts"]
    assert receipt["cost"] == PRICE
    # The 10-sat token paid (the 2-sat one could not); 7 sat came back as a fresh token.
    wallet = _json(client.run("wallet", "--json"))
    assert sorted(t["amount"] for t in wallet) == [2, 10 - PRICE // 1000]
    change = next(t for t in wallet if t["amount"] == 7)
    assert change["token"] not in (small, ten) and change["mint"] == cashu_mint.url
    assert _json(client.run("balance", "--server", bank.target, "--json"))["available"] == 0

    again = _json(client.run("deposit", "--server", bank.target, "--json", change["token"]))
    assert (again["amount_msat"], again["balance_msat"]) == (7000, 7000)

    # The node's earnings out, as ecash any wallet takes, beside the running node.
    operator = Client(bank.home)
    out = operator.run("ledger", "payout", str(PRICE))
    assert out.returncode == 0, out.stderr
    assert receive_token(tmp_path / "operator", out.stdout.decode().strip()) == PRICE // 1000


def test_a_deposit_answered_by_a_bad_receipt_is_said_loudly(client: Client) -> None:
    token = v4_token([5])
    stranger = Identity.generate()
    forged = DepositReceipt(
        stranger.public_key, decode_peer_id(client.peer_id), 5000, 5000, FAKE_MINT, token_hash(token), 1
    )
    with FakeNode(answers(Receipt(forged.sign(stranger)))) as node:
        told = client.run("deposit", "--server", node.target, token)
    assert told.returncode == 255
    line = one_line(told)
    assert "bad receipt" in line and "keep the token" in line


def test_a_token_the_node_refuses_before_redeeming_stays_in_the_wallet(bank: Server, client: Client) -> None:
    foreign = v4_token([50])  # from a mint the bank does not trust
    assert client.run("wallet", "add", foreign).returncode == 0
    refused = client.run("call", "--pay", "auto", "--server", bank.target, "priced")
    assert refused.returncode == EXIT_REFUSED
    assert "untrusted-mint" in one_line(refused)
    assert [t["token"] for t in _json(client.run("wallet", "--json"))] == [foreign]


ONE_SLOT = "max_jobs = 1\n"  # top-level keys of services.toml, before node_toml's
HOLD_SLOT = f"""
[services.hold]
command = ["sleep", "{HOLD_SECONDS}"]
"""


def test_pay_per_call_to_a_provider_found_in_the_dht(
    client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    """The Pi's way: `hubnode call SERVICE --pay auto` by name, no server, no account anywhere."""
    with (
        Server(tmp_path / "seed", 'listen = "127.0.0.1:0"\n') as seed,
        Server(
            tmp_path / "provider",
            ONE_SLOT + node_toml(cashu_mint.url) + HOLD_SLOT,
            serve_args=["--no-lan", "--bootstrap", seed.target],
        ) as provider,
    ):

        def offered() -> bool:
            found = client.run("services", "--json", "-b", seed.target, "priced", input=None)
            return found.returncode == 0 and len(json.loads(found.stdout)) == 1

        assert wait_until(offered, 30.0, interval=0.3), "the provider's offer never reached the DHT"

        empty = client.run("call", "--pay", "auto", "-b", seed.target, "priced", input=None)
        assert empty.returncode == EXIT_REFUSED
        line = one_line(empty)
        for said in (f"needs {PRICE} msat", provider.peer_id, "hubnode wallet add", "hubnode deposit"):
            assert said in line, line

        (ten,) = mint_tokens(cashu_mint, tmp_path / "payer", 10)
        assert client.run("wallet", "add", ten).returncode == 0
        paid = client.run("call", "--pay", "auto", "-b", seed.target, "priced", input=b"found and paid")
        assert (paid.returncode, paid.stdout) == (0, b"found and paid"), paid.stderr
        kept = _json(client.run("receipts", "--json"))
        (receipt,) = kept["receipts"]  # checked by the client: the provider's signature, this caller
        assert (receipt["cost"], receipt["node"], kept["problems"]) == (PRICE, provider.peer_id, [])
        (change,) = _json(client.run("wallet", "--json"))
        assert (change["amount"], change["mint"]) == (10 - PRICE // 1000, cashu_mint.url)

        # The Python API pays alike, here with the change the CLI kept.
        result = hubnet.call("priced", stdin=b"again", home=client.home, bootstrap=[seed.target], pay="auto")
        assert (result.stdout, result.cost, result.provider) == (b"again", PRICE, provider.peer_id)
        (left,) = _json(client.run("wallet", "--json"))
        assert left["amount"] == change["amount"] - PRICE // 1000 and left["token"] != change["token"]

        # A paid call queued behind a running job waits for its Accept as long as accept_timeout
        # says, not only connect_timeout: the node has the token, and the job is coming.
        (client.home / "client.toml").write_text("connect_timeout = 0.5\n", encoding="utf-8")
        with subprocess.Popen(client.command("call", "--server", provider.target, "hold")) as holding:
            assert wait_until(lambda: _status(client, provider)["running"] == 1, 10.0, 0.05)
            queued = client.run("call", "--pay", "auto", "-b", seed.target, "priced", input=b"queued")
            assert holding.wait(10) == 0
        assert (queued.returncode, queued.stdout) == (0, b"queued"), queued.stderr


def _status(client: Client, server: Server) -> Any:
    return _json(client.run("status", "--server", server.target, "--json"))


def test_the_trio_api_pays_per_call_and_keeps_the_change(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    home = client.home
    call = functools.partial(hubnet.trio_api.call, "priced", server=bank.target, home=home)
    with pytest.raises(hubnet.Rejected) as unpaid:  # pay="never" by default, as client.toml says
        trio.run(functools.partial(call, stdin=b"x"))
    assert unpaid.value.code == "payment-required" and unpaid.value.needed == PRICE
    with pytest.raises(hubnet.Rejected) as empty:
        trio.run(functools.partial(call, stdin=b"x", pay="auto"))
    assert empty.value.code == "payment-required"
    for said in (f"needs {PRICE} msat", bank.peer_id, "hubnode wallet add", "hubnode deposit"):
        assert said in str(empty.value), empty.value

    (ten,) = mint_tokens(cashu_mint, tmp_path / "payer", 10)
    assert client.run("wallet", "add", ten).returncode == 0
    result = trio.run(functools.partial(call, stdin=b"paid from trio", pay="auto"))
    assert (result.stdout, result.cost, result.provider) == (b"paid from trio", PRICE, bank.peer_id)
    (change,) = _json(client.run("wallet", "--json"))
    assert (change["amount"], change["mint"]) == (10 - PRICE // 1000, cashu_mint.url)
    assert change["token"] != ten

    async def streamed() -> tuple[bytes, hubnet.Result | None]:
        async with hubnet.trio_api.stream("priced", server=bank.target, home=home, pay="auto") as job:
            await job.send(b"streamed, ")
            await job.send(b"paid with the change")
            await job.end_stdin()
            out = b"".join([piece async for piece in job])
        return out, job.result

    out, done = trio.run(streamed)
    assert out == b"streamed, paid with the change" and done is not None and done.cost == PRICE
    (left,) = _json(client.run("wallet", "--json"))
    assert left["amount"] == change["amount"] - PRICE // 1000 and left["token"] != change["token"]
    kept = _json(client.run("receipts", "--json"))
    assert [r["cost"] for r in kept["receipts"]] == [PRICE, PRICE] and kept["problems"] == []
    assert _json(client.run("balance", "--server", bank.target, "--json"))["available"] == 0

    # The change is money: the node takes it as a deposit.
    again = _json(client.run("deposit", "--server", bank.target, "--json", left["token"]))
    assert (again["amount_msat"], again["balance_msat"]) == (left["amount"] * 1000, left["amount"] * 1000)


def _inputs(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    paths = [folder / f"{i}.txt" for i in range(1, count + 1)]
    for i, path in enumerate(paths, start=1):
        path.write_bytes(b"input %d\n" % i)
    return paths


def _joblog(path: Path) -> list[dict[str, str]]:
    header, *rows = path.read_text(encoding="utf-8").splitlines()
    return [dict(zip(header.split("\t"), row.split("\t"), strict=True)) for row in rows]


def test_map_pays_each_job_from_one_token_within_its_budget(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    """Three jobs at 3 sat, one 10-sat token: each job is paid with the change of the one
    before (a job that finds the wallet empty waits for it), and --max-cost 9000, below the
    token's 10 sat, bounds what is charged, not the deposit whose change comes back."""
    (ten,) = mint_tokens(cashu_mint, tmp_path / "payer", 10)
    assert client.run("wallet", "add", ten).returncode == 0
    inputs = _inputs(tmp_path / "in", 3)
    joblog = tmp_path / "joblog"
    budget = ("--max-cost", str(3 * PRICE))
    ran = client.run(
        "map", "--pay", "auto", "-s", bank.target, *budget, "-k", "--joblog", str(joblog),
        "priced", ":::", *map(str, inputs),
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr.decode()
    assert ran.stdout == b"".join(path.read_bytes() for path in inputs)
    assert b"3 done, 0 failed" in ran.stderr and b"%d msat" % (3 * PRICE) in ran.stderr
    rows = _joblog(joblog)
    assert sorted(int(row["Seq"]) for row in rows) == [1, 2, 3]
    assert all(row["Exitval"] == "0" and row["Provider"] == bank.peer_id for row in rows)
    kept = _json(client.run("receipts", "--json"))
    assert kept["problems"] == [] and all(r["node"] == bank.peer_id for r in kept["receipts"])
    assert (
        sorted(int(row["Cost"]) for row in rows) == sorted(r["cost"] for r in kept["receipts"]) == [PRICE] * 3
    )
    (left,) = _json(client.run("wallet", "--json"))
    assert left["amount"] == 10 - 3 * PRICE // 1000  # 10 -> 7 -> 4 -> 1: every change came back
    assert _json(client.run("balance", "--server", bank.target, "--json"))["available"] == 0


def test_map_and_the_executor_pay_only_when_told_and_say_what_an_empty_wallet_lacks(
    bank: Server, client: Client, tmp_path: Path, cashu_mint: TestMint
) -> None:
    inputs = _inputs(tmp_path / "in", 2)
    args = ("-s", bank.target, "priced", ":::", *map(str, inputs))
    empty = client.run("map", "--pay", "auto", *args)
    assert empty.returncode == 2, empty.stderr.decode()  # both inputs failed
    said = empty.stderr.decode()
    for part in ("payment-required", f"needs {PRICE} msat", bank.peer_id, "hubnode wallet add"):
        assert part in said, said

    (ten,) = mint_tokens(cashu_mint, tmp_path / "payer", 10)
    assert client.run("wallet", "add", ten).returncode == 0
    (client.home / "client.toml").write_text('pay = "auto"\n', encoding="utf-8")
    never = client.run("map", "--pay", "never", *args)  # the option wins over client.toml
    assert never.returncode == 2 and b"payment-required" in never.stderr, never.stderr.decode()
    assert [t["token"] for t in _json(client.run("wallet", "--json"))] == [ten]
    assert _json(client.run("receipts", "--json"))["receipts"] == []

    # client.toml's pay = "auto" is the Executor's too.
    with hubnet.Executor(servers=[bank.target], home=client.home) as pool:
        results = list(pool.map("priced", [b"one", b"two"]))
    assert [(r.stdout, r.cost) for r in results] == [(b"one", PRICE), (b"two", PRICE)]
    (left,) = _json(client.run("wallet", "--json"))
    assert left["amount"] == 10 - 2 * PRICE // 1000
