"""Real `hubnode` processes for end-to-end tests: a server that says where it listens, and clients.

Nothing here sleeps for time to pass: the server's address is read from its stderr as soon as
it prints it, and every wait has a deadline, so a broken build fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

# The venv's console script next to the interpreter running the tests; `-m hubnet` if there is none.
_SCRIPT = Path(sys.executable).parent / "hubnode"
HUBNODE: list[str] = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "hubnet"]

START_TIMEOUT = 20.0  # seconds for a server to print its address (generous for a loaded 2-core CI box)
STOP_TIMEOUT = 10.0
CALL_TIMEOUT = 60.0  # a single client process, however slow the machine; a hang fails the test

# The line `hubnode serve` prints once listening: service count, peer id, host, port.
_BANNER = re.compile(r"hubnode: serving (\d+) service\(s\) on (\S+)@(\S+):(\d+)$")


def toml_string(value: str | Path) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(str(value))


def base_env(**extra: str) -> dict[str, str]:
    """This process's environment without HUBNET_HOME (every command gets an explicit --home)."""
    env = {k: v for k, v in os.environ.items() if k != "HUBNET_HOME"}
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


class Server:
    """`hubnode --home HOME -v serve` with `services_toml`, as a context manager.

    Its stderr is read by a thread from the start (a full pipe would stall the server's
    logging), so tests can wait for a log line. On exit it is stopped with SIGTERM, and a
    traceback in its log, a non-zero exit (unless `kill` ended it on purpose) or a failure to
    stop fails the test.
    """

    def __init__(
        self,
        home: Path,
        services_toml: str,
        *,
        env: dict[str, str] | None = None,
        serve_args: Sequence[str] = ("--no-lan",),
        prefix: Sequence[str] = (),
    ) -> None:
        self.home = home
        # No LAN beacon by default: tests talk only to 127.0.0.0/8, never to the LAN.
        self.serve_args = tuple(serve_args)
        # What runs hubnode: e.g. `ip netns exec NAME` for a node in a namespace (tests/netns.py).
        self.prefix = tuple(prefix)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "services.toml").write_text(services_toml, encoding="utf-8")
        self._env = env if env is not None else base_env()
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed = False  # by `kill`, on purpose: its exit is then no failure
        self._reader: threading.Thread | None = None
        self.peer_id = ""
        self.host = ""
        self.port = 0
        self.service_count = 0

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> Server:
        self._proc = subprocess.Popen(
            [*self.prefix, *HUBNODE, "--home", str(self.home), "-v", "serve", *self.serve_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self._env,
        )
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        banner = self.wait_for_log(_BANNER.search, START_TIMEOUT)
        if banner is None:
            self._kill()
            pytest.fail(f"hubnode serve printed no address within {START_TIMEOUT}s:\n{self.log}")
        match = _BANNER.search(banner)
        assert match is not None
        self.service_count, self.peer_id, self.host, self.port = (
            int(match[1]),
            match[2],
            match[3],
            int(match[4]),
        )
        return self

    def stop(self) -> list[str]:
        """SIGTERM, wait, and say what went wrong: a traceback, a bad exit, a hang."""
        proc = self._proc
        if proc is None:
            return []
        problems = []
        if proc.poll() is not None:
            if not self._killed:
                problems.append(f"the server had already exited with status {proc.returncode}")
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"the server did not stop within {STOP_TIMEOUT}s of SIGTERM")
                self._kill()
            else:
                if proc.returncode != 0:
                    problems.append(f"the server exited with status {proc.returncode} on SIGTERM")
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT)
        if "Traceback" in self.log:
            problems.append("the server's stderr has a traceback")
        self._proc = None
        return problems

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = self.stop()
        if problems and kind is None:
            pytest.fail("; ".join(problems) + f"\n--- server stderr ---\n{self.log}")

    def kill(self) -> int:
        """SIGKILL the server now, as a crash or a pulled plug would, and reap it; its status.

        For tests that kill a node on purpose: `stop` (so the context manager) then does not
        count its exit as a failure, but still fails on a traceback in its log.
        """
        assert self._proc is not None and self._proc.poll() is None, "the server is not running"
        self._killed = True
        self._proc.kill()
        return self._proc.wait(STOP_TIMEOUT)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the server for the block, then SIGCONT it: a node that went silent without
        closing anything (a hung process, a pulled cable), whose connections stay open."""
        assert self._proc is not None and self._proc.poll() is None, "the server is not running"
        self._proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._proc.send_signal(signal.SIGCONT)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(STOP_TIMEOUT)

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            with self._changed:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    # --- what it says ----------------------------------------------------------------

    @property
    def target(self) -> str:
        """PEER_ID@HOST:PORT (127.0.0.1 unless it listens elsewhere): the pinned address a caller is given."""
        return f"{self.peer_id}@{self.address}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def wait_for_log(self, matches: Callable[[str], object], timeout: float = 30.0) -> str | None:
        """The first stderr line for which `matches` is true, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self._lines[seen:]:
                    if matches(line):
                        return line
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return None
                self._changed.wait(remaining)


class Client:
    """A caller with its own home (so its own identity and known_hosts)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.home.mkdir(parents=True, exist_ok=True)
        self._peer_id: str | None = None

    def command(self, *args: str) -> list[str]:
        return [*HUBNODE, "--home", str(self.home), *args]

    def run(
        self, *args: str, input: bytes | None = b"", timeout: float = CALL_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        """`hubnode --home HOME ARGS...` to completion; `input=None` gives it /dev/null."""
        return run(self.command(*args), input=input, timeout=timeout)

    def call(
        self, server: str, service: str, *args: str, input: bytes | None = b"", timeout: float = CALL_TIMEOUT
    ) -> subprocess.CompletedProcess[bytes]:
        return self.run("call", "--server", server, service, *args, input=input, timeout=timeout)

    @property
    def peer_id(self) -> str:
        if self._peer_id is None:
            result = self.run("id")
            assert result.returncode == 0, result.stderr
            self._peer_id = result.stdout.decode().strip()
        return self._peer_id

    @property
    def known_hosts(self) -> Path:
        return self.home / "known_hosts"


def run(
    argv: Sequence[str], *, input: bytes | None = b"", timeout: float = CALL_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        timeout=timeout,
        env=base_env(),
        check=False,
    )


def stderr_lines(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return result.stderr.decode("utf-8", "replace").splitlines()


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The single line the client printed on stderr (fails if it printed more or nothing)."""
    lines = stderr_lines(result)
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("hubnode: "), lines[0]
    return lines[0]
