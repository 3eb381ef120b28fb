"""A priced relay charges the private node that holds the reservation: real hubnode
processes on loopback.

Two relays: P charges 10 msat per MiB relayed (circuits of at most 8 MiB, so a circuit
holds 80 msat), F relays free. The desktop is forced private and pins both. Without an
account at P its reservation there is refused (payment-required, with the amount) and it
serves through F alone; once P's operator credits it (`hubnode ledger credit`), it holds a
reservation at P too, `hubnode status` shows each relay's price, and a call through P
lowers its balance there by exactly the price of the bytes P carried.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from hubnet.home import Home
from hubnet.node.ledger import Ledger
from hubnet.node.relay_charges import MIB
from tests.e2e.harness import Client, Server

PRICE = 10  # msat per MiB relayed
CIRCUIT_BYTES = 8 * MIB
HOLD = PRICE * CIRCUIT_BYTES // MIB
CREDIT = 1000
PUBLIC = 'listen = "127.0.0.1:0"\n'
RESERVE_TIMEOUT = 20.0


@dataclass
class Relays:
    priced: Server
    free: Server
    root: Any

    def desktop(self) -> Server:
        """A private desktop serving cat that pins both relays (not started)."""
        pins = f'"{self.priced.target}", "{self.free.target}"'
        toml = f'{PUBLIC}reachability = "private"\nrelays = [{pins}]\n\n[services.cat]\ncommand = ["cat"]\n'
        joined = ("--no-lan", "--bootstrap", self.free.target)
        return Server(self.root / "desktop", toml, serve_args=joined)


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relays]:
    root = tmp_path_factory.mktemp("relaypay")
    servers: list[Server] = []
    try:
        free = Server(root / "free", f"{PUBLIC}\n[relay]\nenabled = true\n").start()
        servers.append(free)
        priced_toml = (
            f"{PUBLIC}\n[relay]\nenabled = true\n"
            f"price_per_mib = {PRICE}\nmax_circuit_bytes = {CIRCUIT_BYTES}\n"
        )
        priced = Server(root / "priced", priced_toml, serve_args=("--no-lan", "--bootstrap", free.target))
        servers.append(priced.start())
        yield Relays(priced, free, root)
    finally:
        problems = [p for server in servers for p in server.stop()]
    assert not problems, problems


def _reserved_at(relay: Server) -> re.Pattern[str]:
    return re.compile(rf"reserved at relay {relay.peer_id[:8]}\S* for \d+ s at (\d+) msat per MiB")


def _status(desktop: Server) -> dict[str, Any]:
    result = Client(desktop.home).run("status", "--json")
    assert result.returncode == 0, result.stderr.decode()
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


def _ledger(relay: Server, *args: str) -> Any:
    result = Client(relay.home).run("ledger", *args, "--json")
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def test_a_priced_relay_charges_the_desktop_for_the_bytes_it_carries(relays: Relays) -> None:
    account = Client(relays.root / "desktop").peer_id  # the desktop's key, made before it serves

    # No account at the priced relay: refused clearly, and the desktop serves through the free one.
    with relays.desktop() as desktop:
        refused = desktop.wait_for_log(re.compile(r"payment-required").search, RESERVE_TIMEOUT)
        assert refused is not None, desktop.log
        assert f"holds {HOLD} msat for each circuit" in refused and "no balance" in refused
        reserved = desktop.wait_for_log(_reserved_at(relays.free).search, RESERVE_TIMEOUT)
        assert reserved is not None, desktop.log
        status = _status(desktop)
        assert [r.split("@")[0] for r in status["relays"]] == [relays.free.peer_id]
        assert status["relay_prices"] == [0]
        text = Client(desktop.home).run("status").stdout.decode()
        assert f"{relays.free.peer_id}@{relays.free.address} (free)" in text

    credited = Client(relays.priced.home).run("ledger", "credit", account, str(CREDIT))
    assert credited.returncode == 0, credited.stderr.decode()

    with relays.desktop() as desktop:
        for relay in (relays.priced, relays.free):
            assert desktop.wait_for_log(_reserved_at(relay).search, RESERVE_TIMEOUT), desktop.log
        status = _status(desktop)
        prices = dict(zip((r.split("@")[0] for r in status["relays"]), status["relay_prices"], strict=True))
        assert prices == {relays.priced.peer_id: PRICE, relays.free.peer_id: 0}
        text = Client(desktop.home).run("status").stdout.decode()
        assert f"{relays.priced.peer_id}@{relays.priced.address} ({PRICE} msat/MiB)" in text

        data = os.urandom(MIB)
        circuit = f"{relays.priced.target}/circuit/{desktop.peer_id}"
        result = Client(relays.root / "pi").call(circuit, "cat", input=data)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == data

    settled = [e for e in _ledger(relays.priced, "history", account) if e["kind"] == "settle"]
    assert len(settled) == 1, settled
    match = re.fullmatch(r"relayed (\d+) bytes", settled[0]["note"])
    assert match is not None, settled
    carried = int(match[1])
    assert 2 * MIB < carried < 2 * MIB + 64 * 1024  # the MiB each way, and Noise's framing
    cost = -(-PRICE * carried // MIB)
    assert settled[0]["charged"] == cost
    assert _ledger(relays.priced, "balance", account) == {
        "account": account,
        "available": CREDIT - cost,
        "held": 0,
    }
    with Ledger.open(Home.locate(relays.priced.home).data_dir, release_stale=False) as books:
        audit = books.audit()
        assert audit.consistent and audit.earnings == cost and audit.holds == 0
