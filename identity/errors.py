"""The one exception hierarchy of hubnet.

It lives in the lowest layer so that every package can raise its own subclasses;
`hubnet.cli` maps them to one-line messages and exit codes in one place.
"""

from __future__ import annotations


class HubnetError(Exception):
    """Root of every error hubnet raises on purpose."""


class LocalProtocolError(HubnetError):
    """Our own code drove a protocol machine wrongly: a bug, never the peer's fault."""


class RemoteProtocolError(HubnetError):
    """The peer sent something the protocol does not allow; close the connection."""


class HandshakeError(RemoteProtocolError):
    """The Noise handshake failed: wrong key, tampered or truncated message."""


class DecryptError(RemoteProtocolError):
    """A transport message failed authentication."""


class TransportError(HubnetError):
    """The connection could not be opened, or it closed or timed out mid-stream."""


class ClosedEarly(TransportError):
    """The peer closed or reset the connection before it said its last word: a node that
    was killed, or that shed the connection while it was full."""


class OutputTooLarge(TransportError):
    """A node sent more output than the caller keeps in memory (`max_output`): a broken or
    hostile node cannot take the caller's memory; the call ends and the job with it."""


class HandshakeClosed(HandshakeError):
    """The peer closed the connection in the middle of the handshake."""


class HostKeyMismatch(HubnetError):
    """The server presented a different static key than the one pinned or remembered."""


class ConfigError(HubnetError):
    """A configuration file or command-line value is invalid."""


class PolicyError(HubnetError):
    """A request breaks a service's policy (arguments, allow list)."""


class NotOffered(HubnetError):
    """The service asked for is to be had nowhere the caller looked: the server has no
    service by that name or id, or nobody in the DHT offers it (or nobody acceptably)."""


class Rejected(HubnetError):
    """The server refused the request; `code` says why in one word; `needed` the msat the
    call needs, when it was refused for money."""

    def __init__(self, code: str, reason: str, needed: int | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.needed = needed
