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

import atexit
import base64
import contextlib
import ctypes
import json
import os
import select
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
from typing import IO, Any

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


def _die_with_parent() -> None:
    """In the mint's process before it starts: SIGTERM when the test process dies, however it
    dies (a SIGKILLed or timed-out pytest never reaches the fixture's stop)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


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
                preexec_fn=_die_with_parent,
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


class _Tool:
    """The session's one tests/cashu_tool.py process (the library takes 1-2 s to import)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.folder = Path(tempfile.mkdtemp(prefix="hubnet-cashu-tool-"))

    def ask(self, request: dict[str, object]) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(self.folder),
                "CASHU_DIR": str(self.folder),
            }
            self.process = subprocess.Popen(
                [sys.executable, str(_TOOL)],
                env=env,
                cwd=self.folder,  # the library reads ./.env: there is none here
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            atexit.register(self.close)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = _read_line(self.process.stdout, TOOL_TIMEOUT)
        if not answer:
            raise RuntimeError(f"cashu_tool exited ({self.process.poll()}) on {request['command']}")
        result: dict[str, Any] = json.loads(answer)
        if "error" in result:
            raise RuntimeError(f"cashu_tool {request['command']} failed: {result['error']}")
        return result

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_line(stream: IO[str], timeout: float) -> str:
    """A line from `stream`, or "" if none came in `timeout` seconds (a hung tool fails the test)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


_tool = _Tool()


def mint_tokens(mint: TestMint, wallet: Path, *amounts: int, v3: bool = False) -> list[str]:
    """Fresh tokens of `amounts` sat from `mint` (fake Lightning), minted by a wallet in `wallet`."""
    request = {"command": "mint", "url": mint.url, "folder": str(wallet), "amounts": list(amounts), "v3": v3}
    wallet.mkdir(parents=True, exist_ok=True)
    return list(_tool.ask(request)["tokens"])


def receive_token(wallet: Path, token: str) -> int:
    """Redeem `token` into the wallet in `wallet` (any Cashu wallet would); the sat received."""
    wallet.mkdir(parents=True, exist_ok=True)
    return int(_tool.ask({"command": "receive", "folder": str(wallet), "token": token})["amount"])


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
