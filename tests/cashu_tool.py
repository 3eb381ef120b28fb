"""Cashu wallet chores for the tests, run as a separate process: `python tests/cashu_tool.py ...`.

Tests never import the Cashu library themselves (it loads ./.env into os.environ, sets
sys.tracebacklimit and reconfigures logging in whatever process imports it), so this script
does their wallet work in a process of its own, with nutshell's own Wallet API. It reads
one JSON request a line and answers each with a JSON line (tests/mint.py drives it):

    {"command": "mint", "url": URL, "folder": DIR, "amounts": [SAT, ...], "v3": false}
        -> {"tokens": [...]}: each amount minted (fake Lightning) by the wallet in DIR
    {"command": "receive", "folder": DIR, "token": TOKEN}
        -> {"amount": SAT}: TOKEN redeemed into the wallet in DIR
    anything failed -> {"error": "..."}
"""

from __future__ import annotations

import asyncio
import json
import os
import sys


async def mint(url: str, folder: str, amounts: list[int], legacy: bool) -> list[str]:
    from cashu.wallet.wallet import Wallet

    wallet = await Wallet.with_db(url, db=folder)
    await wallet.load_mint()
    tokens = []
    for amount in amounts:
        quote = await wallet.request_mint(amount)  # a FakeWallet mint marks its invoice paid at once
        proofs = await wallet.mint(amount, quote_id=quote.quote)
        tokens.append(await wallet.serialize_proofs(proofs, legacy=legacy))
    return tokens


async def receive(folder: str, text: str) -> int:
    from cashu.wallet.helpers import deserialize_token_from_string
    from cashu.wallet.wallet import Wallet

    token = deserialize_token_from_string(text)
    wallet = await Wallet.with_db(token.mint, db=folder)
    await wallet.load_mint()
    proofs = token.proofs
    await wallet._expand_short_keyset_ids(proofs)
    await wallet.redeem(proofs)
    return sum(p.amount for p in proofs)


def main() -> None:
    """Answer one JSON request per stdin line with one JSON line, until stdin ends: a process
    lives for the whole test session, so the library is imported once, not per token."""
    # Our output is the answers alone: the library's own prints (a new mnemonic...) go to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    loop = asyncio.new_event_loop()  # one loop: the wallets' HTTP clients live in it
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["command"] == "mint":
                work = mint(request["url"], request["folder"], request["amounts"], request["v3"])
                answer: dict[str, object] = {"tokens": loop.run_until_complete(work)}
            else:
                answer = {"amount": loop.run_until_complete(receive(request["folder"], request["token"]))}
        except Exception as exc:  # the test that asked says what failed
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), file=out, flush=True)


if __name__ == "__main__":
    main()
