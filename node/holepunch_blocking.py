"""The blocking driver of `node.holepunch`, for `hubnode call` (whose import path has no Trio)."""

from __future__ import annotations

import socket
import time

from hubnet.identity.errors import RemoteProtocolError
from hubnet.node.holepunch import (
    DIAL_TIMEOUT,
    MAX_FRAME,
    PUNCH_TIMEOUT,
    Connect,
    HolePunch,
    Outcome,
    PunchFailed,
    Role,
)


def punch(relayed: socket.socket, observed_ip: str, peer_ip: str | None = None) -> socket.socket | None:
    """One punch over `relayed` as the initiator (a caller), dialling from a fresh port at
    `observed_ip` (our IP as the relay sees it): the direct socket when both dials connected,
    else None with `relayed` ready for what follows. PunchFailed when it broke off: `relayed`
    must then be dropped."""
    deadline = time.monotonic() + PUNCH_TIMEOUT
    own = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connected = False
    try:
        # SO_REUSEADDR: the port is dialled from and (by the peer's SYN) at, at once.
        own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        own.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        own.bind(("0.0.0.0", 0))
        machine = HolePunch(Role.INITIATOR, Connect((f"{observed_ip}:{own.getsockname()[1]}",)), peer_ip)
        relayed.sendall(machine.start(time.monotonic()))
        while machine.dial_at is None or machine.dial_to is None:
            relayed.sendall(machine.receive_data(_receive(relayed, deadline), time.monotonic()))
        time.sleep(max(0.0, machine.dial_at - time.monotonic()))
        own.settimeout(min(DIAL_TIMEOUT, max(0.0, deadline - time.monotonic())))
        try:
            own.connect(machine.dial_to)
            connected = True
        except OSError:
            pass
        relayed.sendall(machine.dialled(connected))
        while machine.outcome is None:
            relayed.sendall(machine.receive_data(_receive(relayed, deadline), time.monotonic()))
    except (RemoteProtocolError, OSError) as exc:
        own.close()
        raise PunchFailed(f"the hole punch broke off: {exc or type(exc).__name__}") from exc
    except BaseException:
        own.close()
        raise
    if machine.outcome is Outcome.DIRECT:
        return own
    own.close()
    return None


def _receive(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the hole punch took too long")
    sock.settimeout(left)
    data = sock.recv(MAX_FRAME)
    if not data:
        raise RemoteProtocolError("the peer closed the stream during the hole punch")
    return data
