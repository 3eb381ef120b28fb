"""The client trusts no server: real `hubnode call` (and the Trio client) against a hostile node.

The node here is a fake: real TCP on 127.0.0.1 and the real Noise handshake
(`identity.secure.accept_secure`) and job protocol (`node.protocol.JobConnection`), but a
script in place of a server. It never accepts, goes silent mid-job, reports exit codes no
program can have, or fills its words with terminal escape sequences. Every call must end,
within its configured deadlines, with exit 255 for what is the node's fault, and print the
node's words escaped.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import trio

from hubnet.call_machine import CANCEL_GRACE, Timeouts
from hubnet.identity.errors import HubnetError, TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, accept_secure
from hubnet.node.naming import Target, service_id_for_name
from hubnet.node.protocol import (
    Accept,
    Call,
    Cancel,
    ConnectionClosed,
    Event,
    JobConnection,
    Kind,
    Message,
    PeerInfo,
    Peers,
    Reject,
    Role,
    ServiceInfo,
    Services,
    Start,
    Stdout,
    Terms,
)
from hubnet.trio_client import Client as TrioClient
from tests.e2e.harness import Client, stderr_lines

WAIT = 20.0  # a bound on every wait, never a time to sleep
ESC = "\x1b"
# Clears the screen, homes the cursor, and fakes a line of hubnode's own.
HOSTILE = f"{ESC}[2J{ESC}[H\nhubnode: all is well\r{ESC}]0;pwned\x07\u202e"


@dataclass
class Connection:
    """One caller's connection to the fake node, as the node saw it."""

    request: Event | None = None
    heard: list[Event] = field(default_factory=list)  # the caller's messages after its request


Behaviour = Callable[[SecureStream, JobConnection, Connection], Awaitable[None]]


class FakeNode:
    """A node that follows `behave` instead of the protocol, from `trio.run` in a thread."""

    def __init__(self, behave: Behaviour) -> None:
        self.identity = Identity.generate()
        self.behave = behave
        self.connections: list[Connection] = []
        self._ready: queue.Queue[tuple[trio.lowlevel.TrioToken, trio.CancelScope, int]] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
            port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            self._ready.put((trio.lowlevel.current_trio_token(), nursery.cancel_scope, port))

    async def _handle(self, transport: trio.SocketStream) -> None:
        connection = Connection()
        self.connections.append(connection)
        async with transport:
            with trio.fail_after(WAIT):
                stream, first_data = await accept_secure(transport, self.identity)
            conn = JobConnection(Role.SERVER)
            conn.receive_data(first_data)
            connection.request = conn.next_event()
            with contextlib.suppress(HubnetError):  # the caller went away: what it said is noted
                await self.behave(stream, conn, connection)

    def __enter__(self) -> FakeNode:
        self._thread.start()
        self._token, self._scope, self.port = self._ready.get(timeout=WAIT)
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the fake node did not stop"

    @property
    def target(self) -> str:
        return f"{self.identity.peer_id}@127.0.0.1:{self.port}"

    def heard_cancel(self) -> bool:
        return any(isinstance(event, Cancel) for c in self.connections for event in c.heard)


async def _hear(stream: SecureStream, conn: JobConnection, connection: Connection, until: type) -> None:
    """Read the caller's messages into `connection` until one of type `until` (or its end)."""
    while True:
        while (event := conn.next_event()) is None:
            conn.receive_data(await stream.receive_some())
        connection.heard.append(event)
        if isinstance(event, until | ConnectionClosed):
            return


async def _listen_for_ever(stream: SecureStream, conn: JobConnection, connection: Connection) -> None:
    """Say nothing more; note what the caller says until it leaves."""
    await _hear(stream, conn, connection, ConnectionClosed)


def raw(kind: Kind, fields: list[object]) -> bytes:
    """A message as a hostile node may send it: past the checks of `JobConnection.send`."""
    return bytes(msgpack.packb([kind, fields]))


ACCEPT = Accept("0123456789abcdef", Terms(0, 0, 0, 0))
USAGE = [0, 0, 0, 0, 0]


def never_accepts() -> Behaviour:
    async def behave(stream: SecureStream, conn: JobConnection, connection: Connection) -> None:
        await _listen_for_ever(stream, conn, connection)

    return behave


def goes_silent() -> Behaviour:
    """Accepts, says a little, then nothing at all (a hung node, or a hostile one)."""

    async def behave(stream: SecureStream, conn: JobConnection, connection: Connection) -> None:
        await _hear(stream, conn, connection, Start)
        await stream.send_all(conn.send(ACCEPT) + conn.send(Stdout(b"partial\n")))
        await _listen_for_ever(stream, conn, connection)

    return behave


def exits_with(fields: list[object], *before: Message) -> Behaviour:
    """Accepts, sends `before`, then an Exit with `fields` whatever they hold."""

    async def behave(stream: SecureStream, conn: JobConnection, connection: Connection) -> None:
        await _hear(stream, conn, connection, Start)
        await stream.send_all(conn.send(ACCEPT) + b"".join(conn.send(m) for m in before))
        await stream.send_all(raw(Kind.EXIT, fields))
        await _listen_for_ever(stream, conn, connection)

    return behave


def answers(reply: Message) -> Behaviour:
    async def behave(stream: SecureStream, conn: JobConnection, connection: Connection) -> None:
        await stream.send_all(conn.send(reply))
        await _listen_for_ever(stream, conn, connection)

    return behave


@pytest.fixture
def caller(tmp_path: Path) -> Client:
    """A caller whose client.toml gives short deadlines, so that a test takes seconds."""
    client = Client(tmp_path / "caller")
    (client.home / "client.toml").write_text("accept_timeout = 1\nidle_timeout = 1\n", encoding="utf-8")
    return client


@pytest.fixture
def plain(tmp_path: Path) -> Client:
    """A caller with no client.toml: the defaults."""
    return Client(tmp_path / "plain")


@pytest.fixture
def fake(request: pytest.FixtureRequest) -> Iterator[FakeNode]:
    with FakeNode(request.param) as node:
        yield node


def _one_error(result: object) -> str:
    lines = stderr_lines(result)  # type: ignore[arg-type]
    assert len(lines) == 1, lines
    return lines[0]


# --- deadlines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fake", [never_accepts()], indirect=True)
def test_a_node_that_never_accepts_fails_the_call_at_accept_timeout(fake: FakeNode, caller: Client) -> None:
    started = time.monotonic()
    result = caller.call(fake.target, "cat", input=b"", timeout=WAIT)
    took = time.monotonic() - started
    assert result.returncode == 255, result.stderr
    assert "did not accept the call within 1s" in _one_error(result)
    assert took < 1 + CANCEL_GRACE + 5, took
    assert fake.heard_cancel()  # the node was told, in case it was only slow


@pytest.mark.parametrize("fake", [goes_silent()], indirect=True)
def test_a_node_that_goes_silent_mid_job_is_cancelled_at_idle_timeout(fake: FakeNode, caller: Client) -> None:
    result = caller.call(fake.target, "cat", input=None, timeout=WAIT)
    assert result.returncode == 255, result.stderr
    assert result.stdout == b"partial\n"
    assert "sent nothing for 1s while the job ran" in _one_error(result)
    assert fake.heard_cancel()


@pytest.mark.parametrize("fake", [never_accepts()], indirect=True)
def test_accept_timeout_is_read_from_client_toml(fake: FakeNode, tmp_path: Path) -> None:
    patient = Client(tmp_path / "patient")
    (patient.home / "client.toml").write_text("accept_timeout = 3\n", encoding="utf-8")
    started = time.monotonic()
    result = patient.call(fake.target, "cat", timeout=WAIT)
    assert result.returncode == 255
    assert "within 3s" in _one_error(result)
    assert time.monotonic() - started >= 3


# --- exit codes no program has ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fake",
    [
        pytest.param(exits_with([256, None, None, USAGE, 0]), id="exit-256"),
        pytest.param(exits_with([256, None, "output-limit", USAGE, 0]), id="exit-256-output-limit"),
        pytest.param(exits_with([512, None, None, USAGE, 0], Stdout(b"ok\n")), id="exit-512"),
        pytest.param(exits_with([-1, None, None, USAGE, 0]), id="exit-minus-1"),
        pytest.param(exits_with([None, -128, None, USAGE, 0]), id="signal-minus-128"),
        pytest.param(exits_with([None, 0, None, USAGE, 0]), id="signal-0"),
        pytest.param(exits_with([None, 65, "timeout", USAGE, 0]), id="signal-65"),
        pytest.param(exits_with([0, 9, None, USAGE, 0]), id="both"),
        pytest.param(exits_with([None, None, None, USAGE, 0]), id="neither"),
        pytest.param(exits_with([True, None, None, USAGE, 0]), id="exit-true"),
    ],
    indirect=True,
)
def test_an_impossible_exit_is_a_protocol_error(fake: FakeNode, plain: Client) -> None:
    result = plain.call(fake.target, "cat", timeout=WAIT)
    assert result.returncode == 255, (result.returncode, result.stderr)
    assert "the node broke the protocol" in _one_error(result)


@pytest.mark.parametrize(
    ("fake", "status"),
    [
        pytest.param(exits_with([0, None, None, USAGE, 0]), 0, id="exit-0"),
        pytest.param(exits_with([255, None, None, USAGE, 0]), 255, id="exit-255"),
        pytest.param(exits_with([None, 1, None, USAGE, 0]), 129, id="signal-1"),
        pytest.param(exits_with([None, 64, None, USAGE, 0]), 192, id="signal-64"),
    ],
    indirect=["fake"],
)
def test_exits_at_the_edges_of_their_ranges_are_reported(fake: FakeNode, plain: Client, status: int) -> None:
    result = plain.call(fake.target, "cat", timeout=WAIT)
    assert result.returncode == status, result.stderr


# --- the node's words, escaped ------------------------------------------------------------------


def _assert_escaped(output: bytes) -> str:
    text = output.decode()
    assert ESC not in text and "\r" not in text and "\x07" not in text and "\u202e" not in text, text
    assert "\\x1b[2J" in text
    return text


@pytest.mark.parametrize("fake", [answers(Reject("busy", HOSTILE))], indirect=True)
def test_a_reject_reason_is_printed_escaped(fake: FakeNode, plain: Client) -> None:
    result = plain.call(fake.target, "cat", timeout=WAIT)
    assert result.returncode == 126
    _assert_escaped(result.stderr)
    line = _one_error(result)
    assert line.startswith("hubnode: busy: ") and "\\nhubnode: all is well\\r" in line


@pytest.mark.parametrize("fake", [exits_with([3, None, HOSTILE, USAGE, 0])], indirect=True)
def test_an_exit_error_is_printed_escaped(fake: FakeNode, plain: Client) -> None:
    result = plain.call(fake.target, "cat", timeout=WAIT)
    assert result.returncode == 3
    _assert_escaped(result.stderr)
    assert len(stderr_lines(result)) == 1


SID = service_id_for_name("evil")


@pytest.mark.parametrize(
    "fake", [answers(Services((ServiceInfo(f"evil{ESC}[2J", SID, HOSTILE, HOSTILE),)))], indirect=True
)
def test_service_names_and_descriptions_are_printed_escaped(fake: FakeNode, plain: Client) -> None:
    result = plain.run("services", "--server", fake.target, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    text = _assert_escaped(result.stdout)
    assert len(text.splitlines()) == 2  # the service's line and its arguments line


@pytest.mark.parametrize(
    "fake",
    [answers(Services((ServiceInfo(f"evi{ESC}[2J", service_id_for_name("x"), "d", "a"),)))],
    indirect=True,
)
def test_names_in_an_error_are_printed_escaped(fake: FakeNode, plain: Client) -> None:
    result = plain.run("services", "--server", fake.target, "evil", timeout=WAIT)
    assert result.returncode == 127
    line = _one_error(result)
    assert ESC not in line and "evi\\x1b[2J" in line, line


@pytest.mark.parametrize(
    "fake", [answers(Peers((PeerInfo(b"k" * 32, f"{ESC}[2J{HOSTILE}", 7070),)))], indirect=True
)
def test_peer_hosts_are_printed_escaped(fake: FakeNode, plain: Client) -> None:
    result = plain.run("peers", "--server", fake.target, timeout=WAIT)
    assert result.returncode == 0, result.stderr
    text = _assert_escaped(result.stdout)
    assert len(text.splitlines()) == 2  # the heading and the one contact


# --- the Trio client keeps the same deadlines ---------------------------------------------------


def _trio_call(fake: FakeNode, timeouts: Timeouts) -> tuple[float, BaseException | None]:
    target = Target.parse(fake.target)

    async def main() -> tuple[float, BaseException | None]:
        client = TrioClient(Identity.generate(), timeouts=timeouts)
        started = trio.current_time()
        try:
            with trio.fail_after(WAIT):
                await client.call(target, Call(service_id_for_name("cat")), stdin=b"")
        except TransportError as exc:
            return trio.current_time() - started, exc
        return trio.current_time() - started, None

    return trio.run(main)


@pytest.mark.parametrize("fake", [never_accepts()], indirect=True)
def test_the_trio_client_gives_up_on_a_node_that_never_accepts(fake: FakeNode) -> None:
    took, error = _trio_call(fake, Timeouts(accept=0.5))
    assert error is not None and "did not accept the call within 0.5s" in str(error)
    assert took < 0.5 + CANCEL_GRACE + 5
    assert fake.heard_cancel()


@pytest.mark.parametrize("fake", [goes_silent()], indirect=True)
def test_the_trio_client_gives_up_on_a_node_gone_silent(fake: FakeNode) -> None:
    _, error = _trio_call(fake, Timeouts(idle=0.5))
    assert error is not None and "sent nothing for 0.5s" in str(error)
    assert fake.heard_cancel()
