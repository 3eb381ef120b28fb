"""A real Cashu mint for the tests: nutshell's `mint` with fake Lightning, on 127.0.0.1.

`conftest.py` starts one for the whole session (`cashu_mint`), a second, untrusted one only
when a test asks for it (`untrusted_mint`), and a private one per test that a test may stop
(`own_mint`). Each runs with a temporary HOME, CASHU_DIR, database and working directory (the
library reads ./.env and ~/.cashu/.env), answers /v1/info before the fixture returns, and is
stopped when its scope ends, also when a test failed. Tokens come from `mint_tokens`, which
runs nutshell's Wallet API in a process of its own (tests/cashu_tool.py), as the node does:
the Cashu library is never imported by the tests themselves.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cbor2

from tests.helpers import lacking

START_TIMEOUT = 60.0  # it answers after 2-4 s on an idle machine; CI shares two cores
STOP_TIMEOUT = 15.0
TOOL_TIMEOUT = 120.0
_TOOL = Path(__file__).with_name("cashu_tool.py")


def ecash_program(name: str) -> Path:
    """The console script `name` of the ecash extra, beside this interpreter; skip (fail on CI) without it."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        lacking(
            f"{name} of the ecash extra is not installed beside {sys.executable} (pip install -e '.[ecash]')"
        )
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestMint:
    """One running mint: its `url`, and `stop()` (idempotent)."""

    __test__ = False  # a helper, not a test class

    def __init__(self, name: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"hubnet-{name}-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for sub in ("home", "db", "cwd"):
            (self.folder / sub).mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.folder / "home"),
            "CASHU_DIR": str(self.folder / "home"),
            "MINT_BACKEND_BOLT11_SAT": "FakeWallet",
            "MINT_PRIVATE_KEY": f"hubnet-test-{name}",
            "MINT_DATABASE": str(self.folder / "db"),
            "MINT_LISTEN_HOST": "127.0.0.1",
            "MINT_LISTEN_PORT": str(self.port),
            "FAKEWALLET_DELAY_INCOMING_PAYMENT": "0",
            "MINT_INPUT_FEE_PPK": "0",
            "MINT_RATE_LIMIT": "FALSE",
        }
        self.log = self.folder / "mint.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(ecash_program("mint"))],
                env=env,
                cwd=self.folder / "cwd",
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: uvicorn's workers go with it
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the test mint exited ({self.process.returncode}): {self.log_tail()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/v1/info", timeout=2) as answer,
            ):
                if "nuts" in json.load(answer):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the test mint did not answer /v1/info in {START_TIMEOUT}s: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def running_mint(name: str) -> Iterator[TestMint]:
    mint = TestMint(name)
    try:
        yield mint
    finally:
        mint.stop()


def _tool(*args: str, wallet: Path) -> list[str]:
    wallet.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(wallet), "CASHU_DIR": str(wallet)}
    done = subprocess.run(
        [sys.executable, str(_TOOL), *args],
        env=env,
        cwd=wallet,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cashu_tool {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout.split()


def mint_tokens(mint: TestMint, wallet: Path, *amounts: int, v3: bool = False) -> list[str]:
    """Fresh tokens of `amounts` sat from `mint` (fake Lightning), minted by a wallet in `wallet`."""
    return _tool("mint", mint.url, str(wallet), *(["--v3"] if v3 else []), *map(str, amounts), wallet=wallet)


def receive_token(wallet: Path, token: str) -> int:
    """Redeem `token` into the wallet in `wallet` (any Cashu wallet would); the sat received."""
    return int(_tool("receive", str(wallet), token, wallet=wallet)[0])


# Tokens made by hand, of no real mint: for what reads envelopes, and for nodes that must
# refuse a token without asking any mint about it.
FAKE_MINT = "http://127.0.0.1:3338"


def v3_token(amounts: list[int], mint: str = FAKE_MINT, unit: str | None = "sat") -> str:
    body = {
        "token": [
            {"mint": mint, "proofs": [{"amount": a, "id": "00ad", "secret": "s", "C": "02"} for a in amounts]}
        ]
    }
    if unit is not None:
        body["unit"] = unit
    return "cashuA" + base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


def v4_token(amounts: list[int], mint: str = FAKE_MINT, unit: str = "sat") -> str:
    proofs = [{"a": a, "s": f"secret{i}", "c": b"\x02" * 33} for i, a in enumerate(amounts)]
    body = {"t": [{"i": b"\x00\xad", "p": proofs}], "m": mint, "u": unit}
    return "cashuB" + base64.urlsafe_b64encode(cbor2.dumps(body)).decode().rstrip("=")
