"""What real ecash costs a caller: a deposit's round trip beside a plain request.

Runs a real nutshell mint (fake Lightning, tests/mint.py) and a real `hubnode serve` that
trusts it, mints tokens, then times, interleaved: `hubnode deposit` (connect, the node's
swap at the mint, a ledger credit, a signed receipt checked and kept) beside `hubnode
status` (connect, one request, one reply); and a priced call paid as you go (`--pay auto`:
refused, then again with a token, redeemed, and the change made and returned) beside the
same call paid from a prepaid account, beside a free one. The first deposit also starts the
node's ecash helper (it imports the Cashu library): it is reported apart.

    .venv/bin/python bench/ecash.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The test suite's mint launcher (tests/mint.py), from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import HUBNODE, BenchError, bytecode_cache, hubnode_server

from tests.mint import TestMint, mint_tokens


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchError(f"{argv[3:5]} exited {done.returncode}: {done.stderr.decode()}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8, help="timed runs of each case")
    runs = parser.parse_args().runs
    mint = TestMint("bench-mint")
    try:
        with tempfile.TemporaryDirectory() as work, bytecode_cache() as env:
            # One token per deposit (and a first, which starts the node's helper), one big one
            # for the prepaid account, one per paid-as-you-go call (each pays 3 of its 10 sat).
            tokens = mint_tokens(mint, Path(work) / "payer", *[10] * (2 * runs + 1), 1000)
            deposit_tokens, pay_tokens, prepaid = tokens[: runs + 1], tokens[runs + 1 : -1], tokens[-1]
            with hubnode_server(_TOML.format(mint=mint.url), env) as server:
                client = [HUBNODE, "--home", str(server.client_home), "--server", server.target]
                payer = Path(work) / "payer-home"  # no account at the node: pays as it calls
                payer_call = [
                    HUBNODE,
                    "--home",
                    str(payer),
                    "call",
                    "--pay",
                    "auto",
                    "--server",
                    server.target,
                ]
                for token in pay_tokens:
                    timed([HUBNODE, "--home", str(payer), "wallet", "add", token], env)
                first = timed([*client[:3], "deposit", *client[3:], deposit_tokens[0]], env)
                timed([*client[:3], "deposit", *client[3:], prepaid], env)
                cases: dict[str, list[float]] = {name: [] for name in _CASES}
                for token in deposit_tokens[1:]:
                    cases["deposit"].append(timed([*client[:3], "deposit", *client[3:], token], env))
                    cases["status"].append(timed([*client[:3], "status", *client[3:]], env))
                    cases["free"].append(timed([*client[:3], "call", *client[3:], "cat"], env))
                    cases["prepaid"].append(timed([*client[:3], "call", *client[3:], "priced"], env))
                    cases["pay"].append(timed([*payer_call, "priced"], env))
    finally:
        mint.stop()
    med = {name: statistics.median(times) * 1000 for name, times in cases.items()}
    print(f"ecash, {runs} interleaved runs, medians (hubnode processes, a real nutshell mint on 127.0.0.1)")
    print(f"  first deposit (starts the node's ecash helper): {first * 1000:8.1f} ms")
    for name, label in _CASES.items():
        print(f"  {label:<56} {med[name]:8.1f} ms")
    for (a, b), what in _RATIOS.items():
        print(f"  {what:<23} {med[a] / med[b]:.2f}x (+{med[a] - med[b]:.1f} ms)")
    return 0


_TOML = """listen = "127.0.0.1:0"
mints = ["{mint}"]
[services.cat]
command = ["cat"]
sandbox = false
[services.priced]
command = ["cat"]
sandbox = false
price = {{ per_call = 3000 }}
"""
_RATIOS = {
    ("deposit", "status"): "deposit / status:",
    ("prepaid", "free"): "prepaid call / free:",
    ("pay", "prepaid"): "pay-per-call / prepaid:",
}
_CASES = {
    "status": "hubnode status (one request; the baseline of a deposit)",
    "deposit": "hubnode deposit TOKEN (swap at the mint, credit, receipt)",
    "free": "hubnode call cat (free)",
    "prepaid": "hubnode call priced (paid from a prepaid account)",
    "pay": "hubnode call --pay auto priced (a token, change back)",
}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/ecash.py: {exc}", file=sys.stderr)
        sys.exit(1)
