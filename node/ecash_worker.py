"""The node's ecash helper process: `python -m hubnet.node.ecash_worker DIR`.

It holds the node's Cashu wallet (nutshell's, in DIR/wallet.sqlite3) and answers the
requests of `hubnet.node.ecash_wire` read from stdin, one at a time, on stdout. It is a
process of its own because importing the Cashu library changes the importing process: it
loads ./.env into os.environ, sets sys.tracebacklimit = 0, replaces logging handlers and
prints to stdout (`hubnet.node.ecash` starts it in DIR with a clean environment, and this
module moves fd 1 away before the import so that nothing but replies reaches the node).

A token is checked before anything is swapped: it must be from a mint in the request's
trusted list, in sat, and its proofs must be of that mint's sat keysets. Only then is it
swapped at the mint for proofs of the node's own. Errors are sorted for the caller: the mint
could not be reached (nothing happened: the token is still the caller's), the mint says it
was spent, or anything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sys
from pathlib import Path
from typing import Any, BinaryIO

from hubnet.identity.errors import RemoteProtocolError
from hubnet.node.ecash_wire import (
    MAX_FRAME,
    CheckToken,
    EcashError,
    EcashErrorCode,
    Failed,
    FrameDecoder,
    GetBalance,
    Redeem,
    Redeemed,
    Reply,
    Send,
    Token,
    TokenState,
    WalletBalance,
    encode,
)

WALLET_NAME = "wallet"
LOCK_FILE = "wallet.lock"
# How a mint's refusal shows in nutshell's exception text, and the code for a spent proof (NUT-00).
_MINT_CODE = re.compile(r"\(Code: (\d+)\)")
_SPENT_CODES = {"11001"}


def normalize_mint(url: str) -> str:
    """A mint URL as compared against the trusted list: no trailing slash, lowercase scheme and host."""
    url = url.strip().rstrip("/")
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


class Worker:
    """The wallets of every mint the node has taken tokens from, in one database folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._wallets: dict[str, Any] = {}
        self._loaded: set[str] = set()  # mints whose keysets were fetched in this process

    async def wallet(self, mint: str, *, online: bool = True, reload: bool = False) -> Any:
        """The wallet for `mint`; when `online`, with the mint's keysets fetched (once, or
        again with `reload`)."""
        from cashu.wallet.wallet import Wallet

        wallet = self._wallets.get(mint)
        if wallet is None:
            wallet = await Wallet.with_db(mint, db=str(self.folder), name=WALLET_NAME)
            self._wallets[mint] = wallet
        if online and (reload or mint not in self._loaded):
            # The steps of Wallet.load_mint, which logs and swallows a mint that is down.
            await _at_mint(mint, wallet.load_mint_keysets())
            await _at_mint(mint, wallet.activate_keyset())
            await _at_mint(mint, wallet.load_mint_info(reload=True))
            self._loaded.add(mint)
        return wallet

    async def handle(self, request: Redeem | Send | CheckToken | GetBalance) -> Reply:
        try:
            if isinstance(request, Redeem):
                return await self.redeem(request)
            if isinstance(request, Send):
                return await self.send(request)
            if isinstance(request, CheckToken):
                return await self.check(request)
            return await self.balance(request)
        except EcashError as exc:
            return Failed(exc.code, str(exc)[:1000])
        except Exception as exc:  # the library raises bare Exceptions for most refusals
            return Failed(EcashErrorCode.FAILED, f"{type(exc).__name__}: {exc}"[:1000])

    async def redeem(self, request: Redeem) -> Redeemed:
        token = _parse(request.token)
        mint = normalize_mint(token.mint)
        if mint not in {normalize_mint(m) for m in request.mints}:
            raise EcashError(
                EcashErrorCode.UNTRUSTED_MINT, f"the token is from {mint}, a mint this node does not trust"
            )
        if token.unit not in (None, "sat"):
            raise EcashError(EcashErrorCode.WRONG_UNIT, f"the token is in {token.unit}, not sat")
        proofs = token.proofs  # built anew on every access: taken once
        amount = sum(p.amount for p in proofs)
        if not proofs or amount <= 0:
            raise EcashError(EcashErrorCode.BAD_TOKEN, "the token holds nothing")
        wallet = await self.wallet(mint)
        foreign = await _foreign_keysets(wallet, proofs)
        if foreign:  # perhaps a keyset the mint added since we fetched them
            foreign = await _foreign_keysets(await self.wallet(mint, reload=True), proofs)
        if foreign:
            raise EcashError(
                EcashErrorCode.WRONG_UNIT,
                f"the token's keysets {sorted(foreign)} are not {mint}'s sat keysets",
            )
        await _at_mint(mint, wallet.redeem(proofs))
        return Redeemed(amount, mint)

    async def send(self, request: Send) -> Token:
        mints = [normalize_mint(m) for m in request.mints]
        best = 0
        for mint in mints:
            wallet = await self.wallet(mint, online=False)
            await wallet.load_proofs(reload=True)
            available = int(wallet.available_balance.amount)
            best = max(best, available)
            if available >= request.amount:
                wallet = await self.wallet(mint)
                proofs, _ = await _at_mint(
                    mint, wallet.select_to_send(wallet.proofs, request.amount, set_reserved=True)
                )
                return Token(await wallet.serialize_proofs(proofs), sum(p.amount for p in proofs), mint)
        raise EcashError(
            EcashErrorCode.INSUFFICIENT,
            f"{request.amount} sat asked for; the node's wallet holds at most {best} sat at one mint",
        )

    async def check(self, request: CheckToken) -> TokenState:
        token = _parse(request.token)
        mint = normalize_mint(token.mint)
        wallet = await self.wallet(mint)
        proofs = token.proofs
        await wallet._expand_short_keyset_ids(proofs)
        states = await _at_mint(mint, wallet.check_proof_state(proofs))
        spent = all(str(s.state.value).upper() == "SPENT" for s in states.states)
        return TokenState(spent, sum(p.amount for p in proofs), mint)

    async def balance(self, request: GetBalance) -> WalletBalance:
        per_mint = []
        for mint in dict.fromkeys(normalize_mint(m) for m in request.mints):
            wallet = await self.wallet(mint, online=False)
            await wallet.load_proofs(reload=True)
            per_mint.append((mint, int(wallet.available_balance.amount)))
        return WalletBalance(tuple(per_mint))


async def _foreign_keysets(wallet: Any, proofs: list[Any]) -> set[str]:
    """The keysets of `proofs` that are not the wallet's mint's sat keysets (short ids expanded)."""
    with contextlib.suppress(KeyError):  # a short id that matches none of the mint's keysets
        await wallet._expand_short_keyset_ids(proofs)
    return {p.id for p in proofs} - {k.id for k in wallet.keysets.values()}


def _parse(text: str) -> Any:
    from cashu.core.base import TokenV3
    from cashu.wallet.helpers import deserialize_token_from_string

    try:
        token = deserialize_token_from_string(text.strip())
    except Exception:
        raise EcashError(EcashErrorCode.BAD_TOKEN, "not a Cashu token (cashuA... or cashuB...)") from None
    if isinstance(token, TokenV3) and len({t.mint for t in token.token}) != 1:
        raise EcashError(EcashErrorCode.BAD_TOKEN, "a token from several mints: send one per mint")
    if not token.mint:
        raise EcashError(EcashErrorCode.BAD_TOKEN, "the token does not say which mint it is from")
    return token


async def _at_mint(mint: str, work: Any) -> Any:
    """Await `work`, a request to `mint`, sorting its failures into EcashErrors."""
    import httpx

    try:
        return await work
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        # Nothing reached the mint: whatever was to be swapped is untouched.
        raise EcashError(EcashErrorCode.MINT_UNAVAILABLE, f"cannot reach the mint {mint}: {exc}") from None
    except httpx.HTTPError as exc:
        raise EcashError(EcashErrorCode.FAILED, f"the mint {mint} failed to answer: {exc}") from None
    except EcashError:
        raise
    except Exception as exc:
        code = _MINT_CODE.search(str(exc))
        if code and code.group(1) in _SPENT_CODES:
            raise EcashError(EcashErrorCode.SPENT, "the mint says the token was already spent") from None
        raise


def serve(requests: BinaryIO, replies: BinaryIO, worker: Worker) -> None:
    """Answer requests until the node closes our stdin.

    Each request holds an exclusive lock on the wallet's folder: the node's helper and an
    operator's `hubnode ledger payout` (a helper of its own) may share one wallet, and two
    selections of the same proofs would make one of two tokens worthless."""
    loop = asyncio.new_event_loop()  # one loop for the process: the wallets' HTTP clients live in it
    lock = os.open(worker.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    decoder = FrameDecoder()
    while True:
        message = decoder.next_message()
        if message is None:
            data = requests.read1(MAX_FRAME)  # type: ignore[attr-defined]
            if not data:
                return
            decoder.feed(data)
            continue
        if not isinstance(message, Redeem | Send | CheckToken | GetBalance):
            raise RemoteProtocolError(f"the node sent a reply ({type(message).__name__}), not a request")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            reply = loop.run_until_complete(worker.handle(message))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        replies.write(encode(reply))
        replies.flush()


def main() -> None:
    folder = Path(sys.argv[1])
    # Replies go to the stdout the node reads; the library's prints go to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    folder.mkdir(parents=True, exist_ok=True)
    os.chdir(folder)  # the library reads ./.env: the node's folder has none
    serve(sys.stdin.buffer, replies, Worker(folder))


if __name__ == "__main__":
    main()
