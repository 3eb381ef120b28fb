"""The dialer seam of the blocking client: an address in, a connected socket out.

`hubnet.client` never opens a socket itself; it asks a `Dialer`. `TcpDialer` reaches
direct addresses; a relay client, later, is one more dialer for relayed addresses, and
the code above it does not change (the Noise session then runs end to end inside the
relay's splice). The Trio client has the same seam in `hubnet.trio_client`.
"""

from __future__ import annotations

import socket
from typing import Protocol

from hubnet.dht.addresses import Address, DirectAddress
from hubnet.identity.errors import TransportError


class Dialer(Protocol):
    """Connects to an address within `timeout` seconds, or raises TransportError."""

    def dial(self, address: Address, timeout: float) -> socket.socket: ...


class TcpDialer:
    """Direct addresses over TCP."""

    def dial(self, address: Address, timeout: float) -> socket.socket:
        if not isinstance(address, DirectAddress):
            raise TransportError(f"cannot reach {address}: this client has no relay dialer yet")
        # getaddrinfo encodes a str host with the idna codec, whose import (stringprep,
        # unicodedata) costs a Pi more than the rest of the connect: an ASCII name or IP
        # goes in as bytes, which it takes as they are (typeshed says str only; CPython
        # passes the host to getaddrinfo, which takes both).
        host = address.host.encode("ascii") if address.host.isascii() else address.host
        try:
            sock = socket.create_connection((host, address.port), timeout=timeout)  # type: ignore[arg-type]
        except TimeoutError as exc:
            raise TransportError(f"cannot connect to {address}: timed out") from exc
        except OSError as exc:
            raise TransportError(f"cannot connect to {address}: {exc.strerror or exc}") from exc
        # Each handshake message goes out in one write; without NODELAY delayed ACKs stall every call.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
