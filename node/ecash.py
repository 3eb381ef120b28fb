"""The node's Cashu wallet, as the Trio side sees it: a helper process spoken to over a pipe.

The Cashu library never loads in the node's own process (see `hubnet.node.ecash_worker`).
`EcashWallet` starts the helper on its first request, sends it one request at a time
(`hubnet.node.ecash_wire`), and kills and forgets it when it fails to answer in time, dies,
or says something that breaks the codec: the next request starts a fresh one. A request that
was in flight when that happened raises EcashError(FAILED): whether its swap happened at the
mint is not known, which is why deposits are written down before they are redeemed
(`hubnet.node.cashier`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import trio

from hubnet.identity.errors import HubnetError
from hubnet.node.ecash_wire import (
    CheckToken,
    EcashError,
    EcashErrorCode,
    FrameDecoder,
    GetBalance,
    Redeem,
    Redeemed,
    Reply,
    Request,
    Send,
    Token,
    TokenState,
    WalletBalance,
    encode,
    reply_or_raise,
)

log = logging.getLogger("hubnet.node.ecash")

ECASH_DIR = "ecash"  # in the node's data folder: the helper's wallet database and its log
# A swap is one or two HTTP round trips to the mint (about 0.1 s here); the helper's first
# request also imports the library (1-2 s) and fetches the mint's keys.
REQUEST_TIMEOUT = 60.0
MSAT_PER_SAT = 1000


class EcashWallet:
    """The node's ecash: tokens redeemed at `mints` (the trusted ones, services.toml's `mints`)
    into a wallet in `data_dir`/ecash, and tokens sent from it."""

    def __init__(
        self, data_dir: Path, mints: tuple[str, ...], *, request_timeout: float = REQUEST_TIMEOUT
    ) -> None:
        self.folder = data_dir / ECASH_DIR
        self.mints = mints
        self.request_timeout = request_timeout
        self._process: trio.Process | None = None
        self._decoder = FrameDecoder()
        self._lock = trio.Lock()

    async def redeem(self, token: str) -> Redeemed:
        """Swap `token` into the node's wallet; EcashError (UNTRUSTED_MINT, WRONG_UNIT,
        BAD_TOKEN before anything is swapped; SPENT; MINT_UNAVAILABLE: nothing happened)."""
        if not self.mints:
            raise EcashError(
                EcashErrorCode.UNTRUSTED_MINT, "this node takes no ecash (services.toml names no mints)"
            )
        reply = await self._request(Redeem(token, self.mints))
        assert isinstance(reply, Redeemed)
        return reply

    async def send(self, amount_sat: int, *, prefer: str = "") -> Token:
        """A token of `amount_sat` from the node's wallet, from the mint `prefer` if it has enough."""
        mints = (prefer, *(m for m in self.mints if m != prefer)) if prefer else self.mints
        reply = await self._request(Send(amount_sat, mints))
        assert isinstance(reply, Token)
        return reply

    async def check(self, token: str) -> TokenState:
        """What `token` holds, and whether its mint has every proof of it marked spent."""
        reply = await self._request(CheckToken(token))
        assert isinstance(reply, TokenState)
        return reply

    async def balance(self) -> WalletBalance:
        reply = await self._request(GetBalance(self.mints))
        assert isinstance(reply, WalletBalance)
        return reply

    async def aclose(self) -> None:
        """Stop the helper (it also stops by itself when the node's end of its stdin closes)."""
        await self._stop()

    async def _request(self, request: Request) -> Reply:
        async with self._lock:
            wire = encode(request)
            try:
                with trio.fail_after(self.request_timeout):
                    process = await self._running()
                    assert process.stdin is not None and process.stdout is not None
                    await process.stdin.send_all(wire)
                    while (reply := self._decoder.next_message()) is None:
                        data = await process.stdout.receive_some()
                        if not data:
                            raise trio.BrokenResourceError("the ecash helper exited")
                        self._decoder.feed(bytes(data))
                return reply_or_raise(request, reply)
            except EcashError:
                raise  # the helper's answer: it is well
            except (
                trio.TooSlowError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                HubnetError,
            ) as exc:
                await self._stop()
                what = "did not answer in time" if isinstance(exc, trio.TooSlowError) else f"failed ({exc})"
                raise EcashError(
                    EcashErrorCode.FAILED, f"the ecash helper {what}; the outcome at the mint is unknown"
                ) from None

    async def _running(self) -> trio.Process:
        if self._process is not None and self._process.returncode is None:
            return self._process
        await self._stop()
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Only what Python needs: the library takes settings from the environment and ./.env.
        env = {name: os.environ[name] for name in ("PATH", "PYTHONPATH") if name in os.environ}
        env |= {"HOME": str(self.folder), "CASHU_DIR": str(self.folder), "LANG": "C.UTF-8", "DEBUG": "FALSE"}
        with (self.folder / "helper.log").open("ab") as errors:
            self._process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "hubnet.node.ecash_worker", str(self.folder)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=self.folder,
                env=env,
            )
        self._decoder = FrameDecoder()
        log.debug("started the ecash helper (pid %d)", self._process.pid)
        return self._process

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        with trio.CancelScope(shield=True):
            if process.stdin is not None:
                await process.stdin.aclose()
            process.kill()
            await process.wait()


def sat_to_msat(sat: int) -> int:
    return sat * MSAT_PER_SAT
