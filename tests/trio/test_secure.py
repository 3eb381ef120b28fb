"""Tests of identity.secure, the Trio driver of the secure session, over trio.testing streams.

Tests that could hang take the `autojump_clock` fixture and bound themselves with `trio.fail_after`:
a hang then fails in virtual time, at no real cost.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hubnet.identity.errors import (
    DecryptError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
)
from hubnet.identity.keys import Identity
from hubnet.identity.secure import SecureStream, accept_secure, connect_secure

ALICE = Identity.from_seed(bytes(range(32)))  # the client
BOB = Identity.from_seed(bytes(range(32, 64)))  # the server
CAROL = Identity.from_seed(bytes(range(64, 96)))

BOUND = 10  # seconds of virtual time any of these exchanges may take


async def receive_exactly(stream: SecureStream, size: int) -> bytes:
    got = bytearray()
    while len(got) < size:
        chunk = await stream.receive_some()
        assert chunk, "stream ended early"
        got += chunk
    return bytes(got)


async def handshake(
    client_t: trio.abc.Stream, server_t: trio.abc.Stream, remote: Identity | None, first_data: bytes = b""
) -> tuple[SecureStream, SecureStream, bytes]:
    """Run both sides at once; returns (client stream, server stream, first data the server got)."""
    result: dict[str, Any] = {}

    async def server() -> None:
        result["server"], result["first"] = await accept_secure(server_t, BOB)

    async def client() -> None:
        result["client"] = await connect_secure(
            client_t, ALICE, None if remote is None else remote.public_key, first_data
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(client)
    return result["client"], result["server"], result["first"]


# --- Handshakes ------------------------------------------------------------------------------------------


async def test_ik_carries_early_data_and_authenticates_both_sides(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        client, server, first = await handshake(client_t, server_t, BOB, b"CALL espeak")
        assert first == b"CALL espeak"
        assert client.remote_identity == BOB.public_key
        assert server.remote_identity == ALICE.public_key
        await client.send_all(b"start")
        assert await server.receive_some() == b"start"
        await server.send_all(b"output")
        assert await client.receive_some() == b"output"


async def test_xx_completes_on_the_first_send(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            accepted: list[tuple[SecureStream, bytes]] = []

            async def serve() -> None:
                accepted.append(await accept_secure(server_t, BOB))

            nursery.start_soon(serve)
            client = await connect_secure(client_t, ALICE, None)
            assert client.remote_identity == BOB.public_key  # known before anything is sent
            assert not accepted  # the server waits for message 3
            await client.send_all(b"request")
        [(server, first)] = accepted
        assert first == b"request"
        assert server.remote_identity == ALICE.public_key
        await server.send_all(b"reply")
        assert await client.receive_some() == b"reply"


async def test_xx_refuses_first_data() -> None:
    client_t, _ = trio.testing.memory_stream_pair()
    with pytest.raises(LocalProtocolError):
        await connect_secure(client_t, ALICE, None, b"unvetted request")


async def test_lockstep_streams(autojump_clock: trio.abc.Clock) -> None:
    # Every send_all waits for the peer to read: any write that nobody reads deadlocks here.
    client_t, server_t = trio.testing.lockstep_stream_pair()
    with trio.fail_after(BOUND):
        client, server, first = await handshake(client_t, server_t, BOB, b"hello")
        assert first == b"hello"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, b"x" * 100_000)
            nursery.start_soon(server.send_all, b"y" * 100_000)
            assert await receive_exactly(server, 100_000) == b"x" * 100_000
            assert await receive_exactly(client, 100_000) == b"y" * 100_000


async def test_five_mib_both_ways_at_once(autojump_clock: trio.abc.Clock) -> None:
    """Batches larger than a frame, both directions at once, in sizes that straddle frames."""
    size = 5 << 20
    client_t, server_t = trio.testing.memory_stream_pair()
    up, down = os.urandom(size), os.urandom(size)
    digests: dict[str, str] = {}

    async def pump(stream: SecureStream, data: bytes) -> None:
        for start in range(0, len(data), 300_000):  # sizes that straddle frames
            await stream.send_all(data[start : start + 300_000])

    async def drain(name: str, stream: SecureStream) -> None:
        digest, received = hashlib.sha256(), 0
        while received < size:
            chunk = await stream.receive_some(100_000)
            assert chunk
            digest.update(chunk)
            received += len(chunk)
        assert received == size
        digests[name] = digest.hexdigest()

    with trio.fail_after(BOUND):
        client, server, _ = await handshake(client_t, server_t, BOB)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, up)
            nursery.start_soon(pump, server, down)
            nursery.start_soon(drain, "server", server)
            nursery.start_soon(drain, "client", client)
    assert digests == {"server": hashlib.sha256(up).hexdigest(), "client": hashlib.sha256(down).hexdigest()}


async def test_clean_close_is_end_of_stream(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        client, server, _ = await handshake(client_t, server_t, BOB)
        await client.send_all(b"last words")
        await client.aclose()
        assert await server.receive_some() == b"last words"
        assert await server.receive_some() == b""
        assert await server.receive_some() == b""


async def test_send_to_a_closed_peer_is_a_transport_error(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        client, server, _ = await handshake(client_t, server_t, BOB)
        await server.aclose()
        with pytest.raises(TransportError):
            await client.send_all(b"anyone there?")


# --- A man in the middle ---------------------------------------------------------------------------------


class PeerWentAway(Exception):
    """The other side closed before saying what the test expected (a consequence, not the fault)."""


class Cut:
    """Returned by a tamper function: send `partial` and then close this direction."""

    def __init__(self, partial: bytes) -> None:
        self.partial = partial


Tamper = Callable[[str, int, bytes], "bytes | Cut"]  # (direction, frame index, frame) -> what to forward


def untouched(direction: str, index: int, frame: bytes) -> bytes | Cut:
    return frame


async def relay_one_way(src: trio.abc.Stream, dst: trio.abc.Stream, direction: str, tamper: Tamper) -> None:
    """Copy whole frames from src to dst through `tamper`; close dst's sending side when done."""
    buffer, index = bytearray(), 0
    try:
        while chunk := await src.receive_some():
            buffer += chunk
            while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                size = 2 + int.from_bytes(buffer[:2], "big")
                out = tamper(direction, index, bytes(buffer[:size]))
                del buffer[:size]
                index += 1
                if isinstance(out, Cut):
                    await dst.send_all(out.partial)
                    return
                await dst.send_all(out)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await dst.send_eof()  # type: ignore[attr-defined]


async def expect(stream: SecureStream, wanted: bytes) -> None:
    got = bytearray()
    while len(got) < len(wanted):
        chunk = await stream.receive_some()
        if not chunk:
            raise PeerWentAway(f"stream ended after {bytes(got)!r}")
        got += chunk
    assert got == wanted


async def run_side(
    results: dict[str, Exception | None],
    name: str,
    transport: trio.abc.Stream,
    body: Callable[[], Awaitable[None]],
) -> None:
    """Run one end of a connection, record how it ended (None or its error), then close its transport.

    Recording rather than raising lets a test see both ends' fates after one of them fails.
    """
    try:
        await body()
        results[name] = None
    except Exception as exc:
        results[name] = exc
    finally:
        await transport.aclose()


async def exchange(pattern: str, tamper: Tamper) -> dict[str, Exception | None]:
    """Client and server talk through a relay; returns each side's error (None if it finished).

    Each side closes its transport when it finishes or fails, as the node and client do.
    """
    client_t, relay_left = trio.testing.memory_stream_pair()
    relay_right, server_t = trio.testing.memory_stream_pair()
    results: dict[str, Exception | None] = {}

    async def client() -> None:
        remote = BOB.public_key if pattern == "IK" else None
        stream = await connect_secure(client_t, ALICE, remote, b"request" if pattern == "IK" else b"")
        await stream.send_all(b"start" if pattern == "IK" else b"request")
        await expect(stream, b"output")
        assert await stream.receive_some() == b""

    async def server() -> None:
        stream, first = await accept_secure(server_t, BOB)
        assert first == b"request"
        if pattern == "IK":
            await expect(stream, b"start")
        await stream.send_all(b"output")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay_one_way, relay_left, relay_right, "c2s", tamper)
            nursery.start_soon(relay_one_way, relay_right, relay_left, "s2c", tamper)
            nursery.start_soon(run_side, results, "client", client_t, client)
            nursery.start_soon(run_side, results, "server", server_t, server)
    return results


def assert_only_consequences(result: Exception | None) -> None:
    """The side that did not receive the damage may finish, or see the other side go away."""
    assert result is None or isinstance(result, RemoteProtocolError | TransportError | PeerWentAway), result


@pytest.mark.parametrize("pattern", ["IK", "XX"])
async def test_honest_relay(pattern: str, autojump_clock: trio.abc.Clock) -> None:
    assert await exchange(pattern, untouched) == {"client": None, "server": None}


# (pattern, direction, frame index) -> who notices and how. An XX message 1 is only an ephemeral key:
# the server cannot tell it was changed, the client notices when message 2 does not fit.
TAMPER_CASES = {
    ("IK", "c2s", 0): ("server", HandshakeError),
    ("IK", "s2c", 0): ("client", HandshakeError),
    ("IK", "c2s", 1): ("server", DecryptError),
    ("IK", "s2c", 1): ("client", DecryptError),
    ("XX", "c2s", 0): ("client", HandshakeError),
    ("XX", "s2c", 0): ("client", HandshakeError),
    ("XX", "c2s", 1): ("server", HandshakeError),
    ("XX", "s2c", 1): ("client", DecryptError),
}
CASE_IDS = ["-".join(map(str, case)) for case in TAMPER_CASES]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("case", TAMPER_CASES, ids=CASE_IDS)
async def test_flipped_byte_is_caught_by_the_receiver(
    case: tuple[str, str, int], where: str, autojump_clock: trio.abc.Clock
) -> None:
    pattern, direction, target = case
    victim, error = TAMPER_CASES[case]

    def tamper(d: str, index: int, frame: bytes) -> bytes | Cut:
        if (d, index) != (direction, target):
            return frame
        position = {"first": 2, "middle": len(frame) // 2, "last": len(frame) - 1}[where]
        return frame[:position] + bytes([frame[position] ^ 0x40]) + frame[position + 1 :]

    results = await exchange(pattern, tamper)  # returning at all means nobody hung
    assert isinstance(results[victim], error), results
    assert_only_consequences(results["client" if victim == "server" else "server"])


@pytest.mark.parametrize("case", TAMPER_CASES, ids=CASE_IDS)
async def test_relay_closing_mid_frame_is_truncation(
    case: tuple[str, str, int], autojump_clock: trio.abc.Clock
) -> None:
    pattern, direction, target = case

    def tamper(d: str, index: int, frame: bytes) -> bytes | Cut:
        return Cut(frame[: len(frame) // 2]) if (d, index) == (direction, target) else frame

    results = await exchange(pattern, tamper)
    receiver = "server" if direction == "c2s" else "client"
    if (pattern, direction, target) == ("XX", "c2s", 0):
        # Half of message 1 never completes a frame: the server sees truncation, the client
        # then sees the server hang up in the handshake.
        assert isinstance(results["client"], RemoteProtocolError), results
    assert isinstance(results[receiver], RemoteProtocolError), results
    assert_only_consequences(results["client" if receiver == "server" else "server"])


# --- Garbage, wrong keys, silence ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"\x00\x05hello", id="impossible-length"),
        pytest.param(b"\xff\xff" + bytes(range(256)) * 255 + bytes(15), id="maximal-garbage-frame"),
        pytest.param(b"\x00\x20" + bytes(32), id="low-order-xx-key"),
        pytest.param(b"\xff\xff" + b"not that much", id="oversized-header-then-eof"),
        pytest.param(b"\x00", id="half-a-header"),
        pytest.param(b"", id="immediate-eof"),
    ],
)
async def test_garbage_first_frame_is_refused(garbage: bytes, autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        await client_t.send_all(garbage)
        await client_t.aclose()
        with pytest.raises(RemoteProtocolError):
            await accept_secure(server_t, BOB)


async def test_garbage_reply_is_refused_by_the_client(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:

            async def liar() -> None:
                await server_t.receive_some()
                await server_t.send_all(b"\x00\x60" + bytes(96))

            nursery.start_soon(liar)
            with pytest.raises(HandshakeError):
                await connect_secure(client_t, ALICE, BOB.public_key, b"request")


async def test_wrong_key_fails_on_both_sides(autojump_clock: trio.abc.Clock) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()
    results: dict[str, Exception | None] = {}

    async def server() -> None:
        await accept_secure(server_t, BOB)

    async def client() -> None:
        await connect_secure(client_t, ALICE, CAROL.public_key, b"meant for carol")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_side, results, "server", server_t, server)
            nursery.start_soon(run_side, results, "client", client_t, client)
    assert isinstance(results["server"], HandshakeError), results
    assert isinstance(results["client"], RemoteProtocolError), results


@pytest.mark.parametrize("side", ["server", "ik-client", "xx-client"])
async def test_silent_peer_is_bounded_by_the_callers_timeout(
    side: str, autojump_clock: trio.abc.Clock
) -> None:
    client_t, server_t = trio.testing.memory_stream_pair()  # nobody ever answers
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(10):
            if side == "server":
                await accept_secure(server_t, BOB)
            else:
                await connect_secure(client_t, ALICE, BOB.public_key if side == "ik-client" else None)
    assert trio.current_time() - start == pytest.approx(10)


async def test_xx_handshake_stalled_at_message_3_is_bounded(autojump_clock: trio.abc.Clock) -> None:
    # The client completes (it has seen the server) but never sends: the server must give up.
    client_t, server_t = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def client() -> None:
            await connect_secure(client_t, ALICE, None)
            await trio.sleep_forever()

        nursery.start_soon(client)
        with pytest.raises(trio.TooSlowError):
            with trio.fail_after(10):
                await accept_secure(server_t, BOB)
        nursery.cancel_scope.cancel()
