"""Cashu wallet chores for the tests, run as a separate process: `python tests/cashu_tool.py ...`.

Tests never import the Cashu library themselves (it loads ./.env into os.environ, sets
sys.tracebacklimit and reconfigures logging in whatever process imports it), so this script
does their wallet work in a process of its own, with nutshell's own Wallet API:

    mint URL WALLET_DIR [--v3] AMOUNT...   mint each AMOUNT (sat; fake Lightning) and print a token per line
    receive WALLET_DIR TOKEN               redeem TOKEN into the wallet and print the amount received
"""

from __future__ import annotations

import asyncio
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
    # Our output is the tokens alone: the library's own prints (a new mnemonic...) go to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    command, *args = sys.argv[1:]
    if command == "mint":
        url, folder, *rest = args
        legacy = "--v3" in rest
        amounts = [int(a) for a in rest if a != "--v3"]
        for token in asyncio.run(mint(url, folder, amounts, legacy)):
            print(token, file=out)
    elif command == "receive":
        folder, token = args
        print(asyncio.run(receive(folder, token)), file=out)
    else:
        sys.exit(f"unknown command {command!r}")
    out.flush()


if __name__ == "__main__":
    main()
