"""The Trio driver of `node.holepunch`: the serving node's side of a punch, and the Trio client's."""

from __future__ import annotations

import trio

from hubnet.identity.errors import RemoteProtocolError
from hubnet.node.holepunch import DIAL_TIMEOUT, MAX_FRAME, PUNCH_TIMEOUT, Outcome, PunchFailed, Role
from hubnet.node.holepunch_blocking import punch_machine, punch_socket


async def punch(
    stream: trio.abc.Stream, role: Role, observed_ip: str, peer_ip: str | None = None
) -> tuple[trio.SocketStream | None, bytes]:
    """One punch over `stream` (the relayed one), dialling from a fresh port at `observed_ip`
    (our IP as the relay sees it): (the direct stream, b"") when both dials connected, else
    (None, the bytes the peer sent on `stream` after the exchange: they begin what follows
    there). PunchFailed when it broke off: `stream` must then be dropped."""
    own = punch_socket()
    sock = trio.socket.from_stdlib_socket(own)
    direct: trio.SocketStream | None = None
    try:
        machine = punch_machine(role, own, observed_ip, peer_ip)
        with trio.fail_after(PUNCH_TIMEOUT):
            await stream.send_all(machine.start(trio.current_time()))
            while machine.dial_at is None or machine.dial_to is None:
                await stream.send_all(machine.receive_data(await _receive(stream), trio.current_time()))
            await trio.sleep_until(machine.dial_at)
            with trio.move_on_after(DIAL_TIMEOUT):
                try:
                    await sock.connect(machine.dial_to)
                    direct = trio.SocketStream(sock)
                except OSError:
                    pass
            await stream.send_all(machine.dialled(direct is not None))
            while machine.outcome is None:
                await stream.send_all(machine.receive_data(await _receive(stream), trio.current_time()))
    except (
        RemoteProtocolError,
        OSError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        trio.ClosedResourceError,
    ) as exc:
        sock.close()
        raise PunchFailed(f"the hole punch broke off: {exc or type(exc).__name__}") from exc
    except BaseException:
        sock.close()
        raise
    if machine.outcome is Outcome.DIRECT:
        return direct, b""
    sock.close()
    return None, machine.leftover


async def _receive(stream: trio.abc.Stream) -> bytes:
    data = await stream.receive_some(MAX_FRAME)
    if not data:
        raise RemoteProtocolError("the peer closed the stream during the hole punch")
    return bytes(data)
