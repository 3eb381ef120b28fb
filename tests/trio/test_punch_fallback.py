"""What a caller's dialer does with a hole punch that fails or breaks off (hubnet.trio_client's
TcpStreamDialer over memory streams, and hubnet.dialer's over socket pairs, the relay
stood in for): a failed punch leaves the same
relayed stream clean for what follows; a punch that breaks off drops it, and the dialer asks
the relay again, without punching. Either way the target rests."""

from __future__ import annotations

import socket
import threading

import pytest
import trio
import trio.testing

from hubnet import dialer as blocking
from hubnet.dht.addresses import DirectAddress, RelayAddress
from hubnet.node.holepunch import Role
from hubnet.node.holepunch_trio import punch
from hubnet.node.relay_protocol import CircuitLimits, Linked
from hubnet.punching import Punching
from hubnet.trio_client import TcpStreamDialer

LIMITS = CircuitLimits(1 << 30, 3600)
# TEST-NET addresses (RFC 5737): never routed, so every dial to them fails.
CALLER_IP, TARGET_IP = "192.0.2.1", "192.0.2.2"
ADDRESS = RelayAddress(b"r" * 32, DirectAddress("198.18.1.10", 4300), b"t" * 32)


class FakeRelay:
    """Stands in for `TcpStreamDialer._linked`: each dial of the relay links the caller to a
    fresh memory stream, whose far end `target` drives; records what each Connect asked."""

    def __init__(self, nursery: trio.Nursery, target: object) -> None:
        self.nursery = nursery
        self.target = target
        self.asked: list[bool] = []

    async def linked(self, address: RelayAddress, punch: bool) -> tuple[trio.abc.Stream, Linked]:
        ours, theirs = trio.testing.memory_stream_pair()
        self.asked.append(punch)
        linked = Linked(LIMITS, True, CALLER_IP, TARGET_IP) if punch else Linked(LIMITS)
        self.nursery.start_soon(self.target, theirs, punch)  # type: ignore[arg-type]
        return ours, linked


async def a_target_whose_punch_fails(stream: trio.abc.Stream, punched: bool) -> None:
    """Runs the exchange (its dial fails), then answers what comes over the circuit."""
    if punched:
        direct, leftover = await punch(stream, Role.RESPONDER, TARGET_IP, CALLER_IP)
        assert direct is None and leftover == b""
    await stream.send_all(b"echo: " + await stream.receive_some())


async def a_target_that_breaks_off(stream: trio.abc.Stream, punched: bool) -> None:
    """Reads the caller's Connect and goes away; a fresh circuit, unpunched, works."""
    if punched:
        await stream.receive_some()
        await stream.aclose()
        return
    await stream.send_all(b"echo: " + await stream.receive_some())


@pytest.mark.parametrize(
    ("target", "asked", "said"),
    [
        (a_target_whose_punch_fails, [True], "failed: the call stays on relay"),
        (a_target_that_breaks_off, [True, False], "broke off: dialling relay"),
    ],
)
async def test_a_call_whose_punch_fails_or_breaks_off_goes_on_over_a_clean_relayed_stream(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    target: object,
    asked: list[bool],
    said: str,
) -> None:
    announced: list[str] = []
    punching = Punching(announce=announced.append)
    dialer = TcpStreamDialer(punching)
    assert await echoed_through_relay(dialer, target, b"the handshake", monkeypatch) == asked
    assert len(announced) == 1 and said in announced[0]
    assert not punching.wanted(ADDRESS.target)  # it rests: the next call does not ask
    assert await echoed_through_relay(dialer, a_target_whose_punch_fails, b"again", monkeypatch) == [False]


async def test_a_caller_without_punching_never_asks(monkeypatch: pytest.MonkeyPatch) -> None:
    dialer = TcpStreamDialer()
    assert await echoed_through_relay(dialer, a_target_whose_punch_fails, b"plain", monkeypatch) == [False]


async def echoed_through_relay(
    dialer: TcpStreamDialer, target: object, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> list[bool]:
    """Dial ADDRESS with `dialer` through a FakeRelay to `target`, check that `data` comes back
    echoed over the stream it hands back, and return what each of the relay's Connects asked."""
    async with trio.open_nursery() as nursery:
        relay = FakeRelay(nursery, target)
        monkeypatch.setattr(dialer, "_linked", relay.linked)
        stream = await dialer.dial(ADDRESS)
        await stream.send_all(data)
        assert await stream.receive_some() == b"echo: " + data
    return relay.asked


def test_the_blocking_dialer_asks_the_relay_again_without_punching_after_a_broken_punch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hubnet.dialer, as `hubnode call` uses it: the same fallback over sockets."""
    asked: list[bool] = []
    threads: list[threading.Thread] = []

    def linked_socket(address: RelayAddress, timeout: float, punch: bool) -> tuple[socket.socket, Linked]:
        ours, theirs = socket.socketpair()
        asked.append(punch)
        threads.append(threading.Thread(target=a_blocking_target, args=(theirs, punch)))
        threads[-1].start()
        return ours, Linked(LIMITS, True, CALLER_IP, TARGET_IP) if punch else Linked(LIMITS)

    monkeypatch.setattr(blocking, "_linked_socket", linked_socket)
    announced: list[str] = []
    sock = blocking.TcpDialer(Punching(announce=announced.append)).dial(ADDRESS, 5.0)
    with sock:
        sock.sendall(b"the handshake")
        assert sock.recv(100) == b"echo: the handshake"
    for thread in threads:
        thread.join(5.0)
    assert asked == [True, False]
    assert len(announced) == 1 and "broke off: dialling relay" in announced[0]


def a_blocking_target(sock: socket.socket, punched: bool) -> None:
    """Breaks a punch off after the caller's Connect; answers an unpunched circuit."""
    with sock:
        sock.settimeout(5.0)
        data = sock.recv(100)
        if not punched:
            sock.sendall(b"echo: " + data)
