"""The dialer seam of the blocking client: an address in, a connected socket out.

`hubnet.client` never opens a socket itself; it asks a `Dialer`. `TcpDialer` reaches
direct addresses over TCP, and relayed ones through their relay: it connects to the
relay, asks for the target (`node.relay_protocol`), and hands back the socket once the
relay has linked it to the target, so that the code above runs the same Noise session
with the target end to end inside the relay's splice. With `punching` (`hubnet.punching`),
it asks the relay for a hole punch too, and when the target agrees and the punch gets
through, hands back the direct socket instead: the same Noise session with the same key
then runs over it. The Trio client has the same seam in `hubnet.trio_client`.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from hubnet.dht.addresses import Address, RelayAddress
from hubnet.identity.blocking import connect_secure_socket
from hubnet.identity.cheap_typing import TYPE_CHECKING, Protocol
from hubnet.identity.errors import RemoteProtocolError, TransportError
from hubnet.identity.keys import Identity

if TYPE_CHECKING:
    from hubnet.node.relay_protocol import Linked
    from hubnet.punching import Punching


class Dialer(Protocol):
    """Connects to an address within `timeout` seconds, or raises TransportError."""

    def dial(self, address: Address, timeout: float) -> socket.socket: ...


class TcpDialer:
    """Direct addresses over TCP, relayed ones through their relay (hole-punching past it
    when `punching` says so)."""

    def __init__(self, punching: Punching | None = None) -> None:
        self.punching = punching

    def dial(self, address: Address, timeout: float) -> socket.socket:
        if isinstance(address, RelayAddress):
            return _through_relay(address, timeout, self.punching)
        try:
            sock = socket.create_connection((resolvable(address.host), address.port), timeout=timeout)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise TransportError(f"cannot connect to {address}: timed out") from exc
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror or exc}") from exc
        # Each handshake message goes out in one write; without NODELAY delayed ACKs stall every call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def resolvable(host: str) -> str | bytes:
    """`host` as getaddrinfo should get it. It encodes a str host with the idna codec, whose
    import (stringprep, unicodedata) costs a Pi more than the rest of the connect: an ASCII
    name or IP goes in as bytes, which it takes as they are (typeshed says str only; CPython
    passes the host to getaddrinfo, which takes both)."""
    return host.encode("ascii") if host.isascii() else host


def _through_relay(address: RelayAddress, timeout: float, punching: Punching | None) -> socket.socket:
    """A socket linked to `address.target`, through the relay or, punched, directly: what
    follows is the target's."""
    asked = punching is not None and punching.wanted(address.target)
    sock, answer = _linked_socket(address, timeout, asked)
    if not (asked and answer.punch and punching is not None):
        return sock
    # Only here: a call the relay and the target did not agree to punch never loads it.
    from hubnet.node.holepunch import PunchFailed
    from hubnet.node.holepunch_blocking import punch

    try:
        direct = punch(sock, answer.observed, answer.peer)
    except PunchFailed:
        sock.close()
        punching.punched(address.target, address.relay, None)
        return _linked_socket(address, timeout, False)[0]
    punching.punched(address.target, address.relay, direct is not None)
    if direct is None:
        sock.settimeout(timeout)
        return sock
    sock.close()
    direct.settimeout(timeout)
    return direct


def _linked_socket(address: RelayAddress, timeout: float, punch: bool) -> tuple[socket.socket, Linked]:
    """A socket to the relay, linked to `address.target`, and the relay's Linked."""
    # Only here: a direct call (most calls) does not pay for the relay protocol's import.
    from hubnet.node.relay_protocol import Connect, RelayConnection, Role

    sock = TcpDialer().dial(address.relay, timeout)
    try:
        # A fresh key for the relay hop: the relay needs no name for the caller, and gets none.
        secure = connect_secure_socket(sock, Identity.generate(), address.relay_peer)
        conn = RelayConnection(Role.REQUESTER)
        secure.send_all(conn.send(Connect(address.target, punch)))
        while (event := conn.next_event()) is None:
            conn.receive_data(secure.receive_some())
        answer = linked(event, address)
        if secure.detach():
            raise RemoteProtocolError(f"relay {address.relay} sent data before the target did")
    except TimeoutError as exc:
        sock.close()
        raise TransportError(f"relay {address.relay}: timed out") from exc
    except BaseException:
        sock.close()
        raise
    return sock, answer


def linked(event: object, address: RelayAddress) -> Linked:
    """Check a relay's answer to Connect: Linked, else TransportError naming the refusal."""
    from hubnet.node.relay_protocol import Linked, Refused  # see _linked_socket

    if isinstance(event, Refused):
        raise TransportError(f"relay {address.relay} refused: {event.code}: {event.reason}")
    if not isinstance(event, Linked):
        raise TransportError(f"relay {address.relay} closed before linking the target")
    return event


def dial_first(dialer: Dialer, addresses: Sequence[Address], timeout: float) -> socket.socket:
    """The first of `addresses` that connects (a target's relays, when one refuses or fails)."""
    failures: list[TransportError | RemoteProtocolError] = []
    for address in addresses:
        try:
            return dialer.dial(address, timeout)
        except (TransportError, RemoteProtocolError) as exc:
            failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    raise TransportError("; ".join(str(exc) for exc in failures))
