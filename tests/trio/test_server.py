"""The node's Trio driver over in-memory streams: the protocol logic above the transport.

Real jobs run (real processes); only the socket is replaced. The real TCP listener is
covered by tests/e2e.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from hubnet.identity.errors import TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, connect_secure
from hubnet.node.naming import service_id_for_name
from hubnet.node.protocol import (
    DATA_CHUNK,
    MAX_STDIN_WINDOW,
    STDIN_WINDOW,
    Call,
    Cancel,
    Credit,
    Exit,
    GetStatus,
    JobConnection,
    ListServices,
    Message,
    Reject,
    Role,
    Services,
    Start,
    State,
    StatusReply,
    Stderr,
    Stdin,
    StdinEnd,
    Stdout,
)
from hubnet.node.server import Node
from hubnet.node.services import parse_services


def _node(tmp_path: Path, caller: Identity) -> Node:
    config = parse_services(
        f"""
        [services.cat]
        command = ["cat"]

        [services.marker]
        command = ["sh", "-c", "touch \\"$MARKER\\"; echo ran"]
        env = {{ MARKER = "{tmp_path / "ran"}" }}
        sandbox = false  # it leaves its mark outside any job's folder, where the test looks

        [services.echo]
        command = ["echo"]
        [services.echo.arguments]
        options = {{ "-n" = "flag" }}
        positional = 2
        positional_shape = "word"

        [services.private]
        command = ["true"]
        allow = ["{caller.peer_id}"]

        [services.env]
        command = ["env"]
        """
    )
    return Node(config, Identity.generate(), start_timeout=30.0)


async def _exchange(
    node: Node, caller: Identity, request: Message, stdin: bytes | None = None
) -> tuple[list[Message], bytes, bytes]:
    """One connection to `node`: send `request` (and Start + stdin for a call); collect the replies."""
    client_side, server_side = trio.testing.memory_stream_pair()
    job = JobConnection(Role.CLIENT)
    replies: list[Message] = []
    out, err = bytearray(), bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.handle_connection, server_side)
        stream = await connect_secure(client_side, caller, node.identity.public_key, job.send(request))
        if isinstance(request, Call):
            # A refused call may already be closed by the node; its Reject is still readable.
            with contextlib.suppress(TransportError):
                await stream.send_all(
                    job.send(Start()) + job.send(Stdin(stdin or b"")) + job.send(StdinEnd())
                )
        while job.their_state not in _ANSWERED and (data := await stream.receive_some()):
            job.receive_data(data)
            while (message := job.next_event()) is not None:
                if isinstance(message, Stdout):
                    out += message.data
                elif isinstance(message, Stderr):
                    err += message.data
                else:
                    replies.append(message)
        await stream.aclose()  # as the CLI does after the final reply; the node is waiting for it
    return replies, bytes(out), bytes(err)


_ANSWERED = (State.EXITED, State.DONE)


@pytest.fixture
def caller() -> Identity:
    return Identity.generate()


async def test_call_streams_stdin_to_stdout(tmp_path: Path, caller: Identity) -> None:
    data = os.urandom(300_000)
    replies, out, _ = await _exchange(_node(tmp_path, caller), caller, Call(service_id_for_name("cat")), data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    exit_message = replies[-1]
    assert isinstance(exit_message, Exit)
    assert (exit_message.exit_code, exit_message.signal, exit_message.error) == (0, None, None)
    assert exit_message.usage.stdin_bytes == exit_message.usage.stdout_bytes == len(data)


async def test_arguments_within_policy_reach_the_program(tmp_path: Path, caller: Identity) -> None:
    _, out, _ = await _exchange(
        _node(tmp_path, caller), caller, Call(service_id_for_name("echo"), ("-n", "hi"))
    )
    assert out == b"hi"


@pytest.mark.parametrize(
    ("service", "args", "code"),
    [
        ("nope", (), "no-such-service"),
        ("echo", ("-e", "x"), "bad-arguments"),
        ("echo", ("a", "b", "c"), "bad-arguments"),
        ("echo", ("--", "-x"), "bad-arguments"),
    ],
)
async def test_refused_calls(
    tmp_path: Path, caller: Identity, service: str, args: tuple[str, ...], code: str
) -> None:
    replies, out, _ = await _exchange(
        _node(tmp_path, caller), caller, Call(service_id_for_name(service), args)
    )
    assert len(replies) == 1
    reply = replies[0]
    assert isinstance(reply, Reject)
    assert reply.code == code
    assert out == b""


async def test_allow_list(tmp_path: Path, caller: Identity) -> None:
    node = _node(tmp_path, caller)
    allowed, _, _ = await _exchange(node, caller, Call(service_id_for_name("private")))
    assert isinstance(allowed[-1], Exit)
    assert allowed[-1].exit_code == 0
    stranger = Identity.generate()
    refused, _, _ = await _exchange(node, stranger, Call(service_id_for_name("private")))
    assert isinstance(refused[0], Reject)
    assert refused[0].code == "not-allowed"


async def test_job_environment_is_scrubbed_and_names_the_caller(
    tmp_path: Path, caller: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "do-not-leak")
    _, out, _ = await _exchange(_node(tmp_path, caller), caller, Call(service_id_for_name("env")))
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert "SECRET_TOKEN" not in env
    assert env["HUBNET_CLIENT"] == caller.peer_id
    assert env["HUBNET_SERVICE"] == "env"
    assert len(env["HUBNET_JOB"]) == 16
    assert env["HOME"] == env["TMPDIR"]
    assert not Path(env["HOME"]).exists(), "the per-job directory is removed afterwards"


async def test_list_and_status(tmp_path: Path, caller: Identity) -> None:
    node = _node(tmp_path, caller)
    (services,), _, _ = await _exchange(node, caller, ListServices())
    assert isinstance(services, Services)
    assert {s.name for s in services.services} == {"cat", "marker", "echo", "private", "env"}
    echo = next(s for s in services.services if s.name == "echo")
    assert echo.service_id == service_id_for_name("echo")
    assert "-n" in echo.arguments
    (status,), _, _ = await _exchange(node, caller, GetStatus())
    assert isinstance(status, StatusReply)
    assert (status.running, status.queued, status.capacity) == (0, 0, node.config.max_jobs)


class _Recorder(trio.abc.Stream):
    """Passes a stream through and records what was sent, as an eavesdropper on the wire would."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_replayed_first_message_runs_nothing(
    tmp_path: Path, caller: Identity, autojump_clock: trio.testing.MockClock
) -> None:
    node = _node(tmp_path, caller)
    marker = tmp_path / "ran"
    # A genuine call is recorded, but its caller never goes live (sends no Start).
    client_side, server_side = trio.testing.memory_stream_pair()
    recorder = _Recorder(client_side)
    job = JobConnection(Role.CLIENT)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.handle_connection, server_side)
        stream: SecureStream = await connect_secure(
            recorder, caller, node.identity.public_key, job.send(Call(service_id_for_name("marker")))
        )
        await stream.aclose()
    first_message = recorder.sent[0]
    # The attacker replays it on a new connection and waits out every timeout.
    attacker, server_side = trio.testing.memory_stream_pair()
    answered = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.handle_connection, server_side)
        await attacker.send_all(first_message)
        with trio.fail_after(120):
            while data := await attacker.receive_some():
                answered += data
    assert answered, "the node accepted the replayed handshake message (and answered it)"
    assert not marker.exists(), "a replayed request must not run the job"


async def test_live_caller_runs_the_marker_service(tmp_path: Path, caller: Identity) -> None:
    # The control for the replay test: the same request from a live caller does run.
    replies, out, _ = await _exchange(_node(tmp_path, caller), caller, Call(service_id_for_name("marker")))
    assert out == b"ran\n"
    assert isinstance(replies[-1], Exit)
    assert (tmp_path / "ran").exists()


async def test_garbage_ends_only_that_connection(tmp_path: Path, caller: Identity) -> None:
    node = _node(tmp_path, caller)
    for garbage in (b"", b"\x00", b"\x00\x20" + bytes(32) * 2, b"\xff\xff" + os.urandom(200)):
        client_side, server_side = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.handle_connection, server_side)
            await client_side.send_all(garbage)
            await client_side.aclose()
    replies, out, _ = await _exchange(node, caller, Call(service_id_for_name("cat")), b"still here")
    assert out == b"still here"
    assert isinstance(replies[-1], Exit)


class _ResetAfterArmed(trio.abc.Stream):
    """The node's side of a connection that a reset breaks once `armed`: the next read fails,
    as a read does when a killed caller's kernel answers with RST instead of FIN."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.armed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        if self.armed:
            raise trio.BrokenResourceError("connection reset by peer")
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_reset_caller_ends_its_job_as_disconnected(
    tmp_path: Path, caller: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hubnet.node")
    node = _node(tmp_path, caller)
    client_side, server_side = trio.testing.memory_stream_pair()
    resettable = _ResetAfterArmed(server_side)
    job = JobConnection(Role.CLIENT)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.handle_connection, resettable)
            stream = await connect_secure(
                client_side, caller, node.identity.public_key, job.send(Call(service_id_for_name("cat")))
            )
            await stream.send_all(job.send(Start()) + job.send(Stdin(b"hello")))
            while b"hello" not in await stream.receive_some():
                pass  # cat runs and waits for more stdin
            resettable.armed = True
            await stream.send_all(job.send(Stdin(b"more")))
    ended = [r.getMessage() for r in caplog.records if " cat for " in r.getMessage()]
    assert len(ended) == 1 and "(disconnected)" in ended[0], ended


async def test_a_start_riding_in_the_handshake_is_refused(tmp_path: Path, caller: Identity) -> None:
    # The IK first message can be replayed by anyone who recorded it, so a Start inside it
    # would let a replay run a job: the node drops such a connection and runs nothing.
    node = _node(tmp_path, caller)
    client_side, server_side = trio.testing.memory_stream_pair()
    job = JobConnection(Role.CLIENT)
    early = job.send(Call(service_id_for_name("marker"))) + job.send(Start()) + job.send(StdinEnd())
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.handle_connection, server_side)
            stream = await connect_secure(client_side, caller, node.identity.public_key, early)
            assert await stream.receive_some() == b""  # closed without an answer
            await stream.aclose()
    assert not (tmp_path / "ran").exists()


async def test_a_cancel_before_start_is_answered_with_a_refusal(tmp_path: Path, caller: Identity) -> None:
    node = _node(tmp_path, caller)
    client_side, server_side = trio.testing.memory_stream_pair()
    job = JobConnection(Role.CLIENT)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.handle_connection, server_side)
            stream = await connect_secure(
                client_side, caller, node.identity.public_key, job.send(Call(service_id_for_name("marker")))
            )
            await stream.send_all(job.send(Cancel()))
            while (event := job.next_event()) is None:
                job.receive_data(await stream.receive_some())
            await stream.aclose()
    assert event == Reject("cancelled", "the caller cancelled before the job started")
    assert not (tmp_path / "ran").exists()


async def _stream_through_cat(node: Node, caller: Identity, start: Start, data: bytes) -> tuple[bytes, int]:
    """`data` through the node's cat as fast as the credit allows, and back: (the output, the
    widest stdin window the caller held)."""
    client_side, server_side = trio.testing.memory_stream_pair()
    job = JobConnection(Role.CLIENT)
    out = bytearray()
    widest = job.stdin_window
    credited = trio.Event()

    async def send_stdin(stream: SecureStream) -> None:
        nonlocal credited
        view = memoryview(data)
        while view:
            if not job.stdin_window:
                await credited.wait()
                credited = trio.Event()
                continue
            chunk, view = view[: min(job.stdin_window, DATA_CHUNK)], view[min(job.stdin_window, DATA_CHUNK) :]
            await stream.send_all(job.send(Stdin(bytes(chunk))))
        await stream.send_all(job.send(StdinEnd()))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.handle_connection, server_side)
            stream = await connect_secure(
                client_side, caller, node.identity.public_key, job.send(Call(service_id_for_name("cat")))
            )
            await stream.send_all(job.send(start))
            nursery.start_soon(send_stdin, stream)
            while job.their_state not in _ANSWERED and (received := await stream.receive_some()):
                job.receive_data(received)
                while (message := job.next_event()) is not None:
                    if isinstance(message, Stdout):
                        out += message.data
                    elif isinstance(message, Credit):
                        widest = max(widest, job.stdin_window)
                        credited.set()
            await stream.aclose()
    return bytes(out), widest


@pytest.mark.parametrize(
    ("start", "size", "widest"),
    [
        (Start(MAX_STDIN_WINDOW), 12 * MAX_STDIN_WINDOW // 4, MAX_STDIN_WINDOW),  # a bulk stream
        (Start(MAX_STDIN_WINDOW), STDIN_WINDOW - 1, STDIN_WINDOW),  # small: the node holds no more
        (Start(), 3 * MAX_STDIN_WINDOW // 4, STDIN_WINDOW),  # a caller that predates the field
    ],
    ids=["bulk", "small", "version-1-caller"],
)
async def test_the_stdin_window_widens_only_for_a_bulk_stream_that_asked(
    tmp_path: Path, caller: Identity, start: Start, size: int, widest: int
) -> None:
    """Every byte comes back either way; the caller's machine would refuse a credit beyond
    the cap its Start set, so the widest window it held is what the node granted."""
    data = os.urandom(size)
    out, held = await _stream_through_cat(_node(tmp_path, caller), caller, start, data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
    assert held == widest
