"""What real ecash costs a caller: a deposit's round trip beside a plain request.

Runs a real nutshell mint (fake Lightning, tests/mint.py) and a real `hubnode serve` that
trusts it, mints tokens, then times, interleaved, `hubnode deposit` (connect, the node's
swap at the mint, a ledger credit, a signed receipt checked and kept) and `hubnode status`
(connect, one request, one reply) against the same node. The first deposit also starts the
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
    parser.add_argument("--runs", type=int, default=8, help="timed deposits (and status requests)")
    runs = parser.parse_args().runs
    mint = TestMint("bench-mint")
    try:
        with tempfile.TemporaryDirectory() as work, bytecode_cache() as env:
            tokens = mint_tokens(mint, Path(work) / "payer", *[10] * (runs + 1))
            toml = f'listen = "127.0.0.1:0"\nmints = ["{mint.url}"]\n[services.cat]\ncommand = ["cat"]\n'
            with hubnode_server(toml, env) as server:
                client = [HUBNODE, "--home", str(server.client_home)]
                first = timed([*client, "deposit", "--server", server.target, tokens[0]], env)
                deposits, statuses = [], []
                for token in tokens[1:]:
                    deposits.append(timed([*client, "deposit", "--server", server.target, token], env))
                    statuses.append(timed([*client, "status", "--server", server.target], env))
    finally:
        mint.stop()
    deposit, status = statistics.median(deposits), statistics.median(statuses)
    print(
        f"ecash deposit round trip, {runs} runs, medians (hubnode processes, real nutshell mint on 127.0.0.1)"
    )
    print(f"  first deposit (starts the node's ecash helper): {first * 1000:8.1f} ms")
    print(f"  hubnode deposit TOKEN:                          {deposit * 1000:8.1f} ms")
    print(f"  hubnode status (baseline: same connection, no mint): {status * 1000:5.1f} ms")
    added = (deposit - status) * 1000
    print(f"  deposit / status: {deposit / status:.2f}x; the swap, credit and receipt add {added:.1f} ms")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench/ecash.py: {exc}", file=sys.stderr)
        sys.exit(1)
