"""What `hubnode serve` logs, as an operator reads it: real servers, their stderr in a file.

At the default level: one line per job and per refusal, with the local time and level, the
service's name, the caller's fingerprint and the outcome. `--log-level warning` keeps only
the start line and problems. When stderr is systemd's journal stream (`$JOURNAL_STREAM`
names it), each line is `<N>MESSAGE`, with no timestamp, an error that stops the node
included. The republish every 100 s gets a line only when what it found changed. A node
with no services says which file it read.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from hubnet.identity.keys import Identity
from hubnet.node.naming import format_service_id, service_id_for_name
from tests.e2e.harness import HUBNODE, START_TIMEOUT, STOP_TIMEOUT, Client, base_env, wait_until
from tests.helpers import require_program

SERVICES = f"""
listen = "127.0.0.1:0"

[services.cat]
command = ["cat"]
price = {{ per_call = 7 }}

[services.nap]
command = ["sleep", "2"]

[services.private]
command = ["echo", "ok"]
allow = ["{Identity.generate().peer_id}"]
"""

LOCAL_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
BANNER = re.compile(r"serving (\d+) service\(s\) on (\S+@127\.0\.0\.1:\d+)$")


class LoggedServer:
    """`hubnode --home HOME [GLOBAL...] serve --no-lan [ARGS...]`, its stderr going to a file."""

    def __init__(
        self,
        home: Path,
        services_toml: str | None,
        *,
        global_args: Sequence[str] = (),
        serve_args: Sequence[str] = (),
        journal: bool = False,
        journal_stream: str | None = None,
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        if services_toml is not None:
            (home / "services.toml").write_text(services_toml, encoding="utf-8")
        self.log_path = home.parent / f"{home.name}.log"
        env = base_env()
        env.pop("JOURNAL_STREAM", None)
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        with self.log_path.open("wb") as log:
            if journal:  # what systemd does: name the stream it connects to stderr
                status = os.fstat(log.fileno())
                env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
            self.proc = subprocess.Popen(
                [*HUBNODE, "--home", str(home), *global_args, "serve", "--no-lan", *serve_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )
        banner = self.wait_for(BANNER.search, START_TIMEOUT)
        if banner is None:
            self.stop()
            pytest.fail(f"hubnode serve printed no address within {START_TIMEOUT}s:\n{self.text}")
        match = BANNER.search(banner)
        assert match is not None
        self.target = match[2]

    @property
    def text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def wait_for(self, matches: object, timeout: float = 20.0) -> str | None:
        assert callable(matches)
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if matches(line)]
            return bool(found) or self.proc.poll() is not None

        wait_until(seen, timeout, interval=0.05)
        return found[0] if found else None

    def stop(self) -> list[str]:
        """SIGTERM it, wait, and return its whole log (failing on a bad exit or a traceback)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"the server did not stop on SIGTERM:\n{self.text}")
        assert self.proc.returncode == 0, self.text
        assert "Traceback" not in self.text, self.text
        return self.lines


@pytest.fixture
def servers() -> Iterator[list[LoggedServer]]:
    """Servers a test starts; each is stopped at its end even if the test failed."""
    for program in ("cat", "sleep", "echo"):
        require_program(program)
    started: list[LoggedServer] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def _call_everything(server: LoggedServer, client: Client) -> None:
    """A job, and a refusal of each kind a caller can cause."""
    credited = Client(server.home).run("ledger", "credit", client.peer_id, "1000")  # to pay for `cat`
    assert credited.returncode == 0, credited.stderr.decode()
    assert client.call(server.target, "cat", input=b"hello").stdout == b"hello"
    assert client.call(server.target, "private").returncode == 126
    assert client.call(server.target, "cat", "--nope").returncode == 126
    assert client.call(server.target, format_service_id(service_id_for_name("nosuch"))).returncode == 127


def test_each_job_and_each_refusal_gets_one_line_at_the_default_level(
    tmp_path: Path, client: Client, servers: list[LoggedServer]
) -> None:
    server = LoggedServer(tmp_path / "node", SERVICES)
    servers.append(server)
    _call_everything(server, client)
    lines = server.stop()
    caller = client.peer_id[:8]

    (job,) = [line for line in lines if " cat for " in line]
    assert re.fullmatch(
        rf"{LOCAL_TIME} INFO    hubnode: job [0-9a-f]{{16}} cat for {caller}: exit 0 after \d+\.\d\ds, "
        r"stdin 5 B, stdout 5 B, stderr 0 B, cost 7 msat",
        job,
    ), job
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 3, refusals
    private, bad_arguments, unknown = refusals
    assert re.fullmatch(
        rf"{LOCAL_TIME} INFO    hubnode: refused private from {caller}: not-allowed", private
    ), private
    assert f"refused cat from {caller}: bad-arguments (" in bad_arguments, bad_arguments
    assert "'--nope'" in bad_arguments
    # The node has no name for an id it does not serve: that one is shown in hex.
    hex_id = format_service_id(service_id_for_name("nosuch"))
    assert f"refused unknown service {hex_id} from {caller}: no-such-service" in unknown, unknown
    # Every line is dated and levelled; connection details are debug, not shown.
    assert all(re.match(rf"{LOCAL_TIME} (INFO |WARNING) ", line) for line in lines), lines
    assert not any("connection ended" in line or "DEBUG" in line for line in lines), lines
    assert any(line.endswith("hubnode: stopping on SIGTERM") for line in lines), lines


def test_log_level_warning_keeps_only_the_address_and_problems(
    tmp_path: Path, client: Client, servers: list[LoggedServer]
) -> None:
    # Given with -v too: an explicit --log-level wins over the global "more".
    server = LoggedServer(
        tmp_path / "node", SERVICES, global_args=["-v"], serve_args=["--log-level", "warning"]
    )
    servers.append(server)
    _call_everything(server, client)
    lines = server.stop()
    # The address and the isolation in force are output, always shown.
    assert len(lines) == 2 and BANNER.search(lines[0]) and "isolation: bwrap" in lines[1], lines


def test_the_journal_gets_a_priority_prefix_and_no_timestamp(
    tmp_path: Path, client: Client, servers: list[LoggedServer]
) -> None:
    server = LoggedServer(tmp_path / "node", SERVICES, journal=True)
    servers.append(server)
    _call_everything(server, client)
    lines = server.stop()
    assert all(re.match(r"<[3467]>\S", line) for line in lines), lines
    assert not any(re.search(LOCAL_TIME, line) or "hubnode:" in line for line in lines), lines
    assert any(re.fullmatch(r"<6>serving 3 service\(s\) on \S+@127\.0\.0\.1:\d+", line) for line in lines)
    assert any(
        re.match(rf"<6>job [0-9a-f]{{16}} cat for {client.peer_id[:8]}: exit 0 ", line) for line in lines
    )
    assert any(line.startswith(f"<6>refused private from {client.peer_id[:8]}: ") for line in lines)


def test_a_journal_stream_that_is_not_stderr_is_no_journal(
    tmp_path: Path, servers: list[LoggedServer]
) -> None:
    # A program started from a unit inherits $JOURNAL_STREAM even with stderr elsewhere.
    server = LoggedServer(tmp_path / "node", SERVICES, journal_stream="1:1")
    servers.append(server)
    banner = next(line for line in server.stop() if BANNER.search(line))
    assert re.fullmatch(rf"{LOCAL_TIME} INFO    hubnode: serving 3 service.*", banner), banner


def test_a_node_with_no_services_says_which_file_it_read(tmp_path: Path, servers: list[LoggedServer]) -> None:
    missing = LoggedServer(tmp_path / "empty-home", None, serve_args=["--listen", "127.0.0.1:0"])
    servers.append(missing)
    lines = missing.stop()
    wanted = (
        f"WARNING hubnode: no services to serve: {tmp_path / 'empty-home' / 'services.toml'} does not exist; "
    )
    assert any(wanted in line for line in lines), lines
    assert any("serving 0 service(s)" in line for line in lines), lines

    empty = tmp_path / "empty.toml"
    empty.write_text('listen = "127.0.0.1:0"\n', encoding="utf-8")
    given = LoggedServer(tmp_path / "other-home", None, serve_args=["--services", str(empty)], journal=True)
    servers.append(given)
    lines = given.stop()
    assert f"<4>no services to serve: {empty} defines no [services.NAME] table; " in given.text, lines


def test_an_unchanged_republish_gets_no_line(
    tmp_path: Path, client: Client, servers: list[LoggedServer]
) -> None:
    # The first publication gets a line; a job changes the node's load, which republishes
    # its offers (at most every 5 s), with nothing else changed: that one is debug only.
    server = LoggedServer(tmp_path / "node", SERVICES, global_args=["-v"])
    servers.append(server)
    assert server.wait_for(lambda line: "hubnode: published" in line) is not None, server.text
    time.sleep(4)  # so that the nap's load is seen at least 5 s after the first publication
    assert client.call(server.target, "nap").returncode == 0
    published: list[str] = []

    def republished() -> bool:
        published[:] = [line for line in server.lines if "hubnode: published" in line]
        return len(published) >= 2

    assert wait_until(republished, 15), server.text
    lines = server.stop()
    first, again = published[:2]
    assert " INFO    hubnode: published 3 offer(s) (cat, nap, private), stored at 1 node(s); " in first, first
    assert " DEBUG   hubnode: published 3 offer(s) " in again, again
    assert [line for line in lines if "INFO    hubnode: published" in line] == [first], lines


def test_an_error_that_stops_the_node_is_an_error_in_the_journal(tmp_path: Path) -> None:
    home = tmp_path / "node"
    home.mkdir()
    (home / "services.toml").write_text("[services.cat]\ncomand = ['cat']\n", encoding="utf-8")
    log_path = tmp_path / "node.log"
    with log_path.open("wb") as log:
        status = os.fstat(log.fileno())
        result = subprocess.run(
            [*HUBNODE, "--home", str(home), "serve", "--no-lan"],
            stdin=subprocess.DEVNULL,
            stderr=log,
            env=base_env(JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}"),
            timeout=START_TIMEOUT,
            check=False,
        )
    assert result.returncode == 2  # a usage error: the documented unit does not restart it
    (line,) = log_path.read_text(encoding="utf-8").splitlines()
    assert line.startswith(f"<3>{home / 'services.toml'}: services.cat.command: required"), line
