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
    own = punch_socket()
    connected = False
    try:
        machine = punch_machine(Role.INITIATOR, own, observed_ip, peer_ip)
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


def punch_socket() -> socket.socket:
    """A TCP socket to punch from, bound to a fresh port (binding never blocks: the Trio
    driver takes its socket from here too). SO_REUSEADDR: the port is dialled from and (by
    the peer's SYN) at, at once."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    except OSError as exc:  # out of descriptors: as any other broken-off punch
        raise PunchFailed(f"the hole punch broke off: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("0.0.0.0", 0))
    except OSError as exc:
        sock.close()
        raise PunchFailed(f"the hole punch broke off: {exc}") from exc
    return sock


def punch_machine(role: Role, sock: socket.socket, observed_ip: str, peer_ip: str | None) -> HolePunch:
    """The exchange for a punch from `sock`: it names `observed_ip` (ours, as the relay sees
    it) and the port `sock` is bound to, which a port-keeping NAT maps to the same number."""
    return HolePunch(role, Connect((f"{observed_ip}:{sock.getsockname()[1]}",)), peer_ip)


def _receive(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the hole punch took too long")
    sock.settimeout(left)
    data = sock.recv(MAX_FRAME)
    if not data:
        raise RemoteProtocolError("the peer closed the stream during the hole punch")
    return data
