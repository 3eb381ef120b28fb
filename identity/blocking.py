"""The blocking driver for a secure session: `identity.secure`'s twin over a plain socket.

`hubnode call` on a Pi pays for every import, and Trio alone costs more than a whole
call, so the client drives the same `NoiseSession` over a blocking socket. The method
names are a `trio.abc.Stream`'s (`send_all`, `receive_some`), plus `close`; all protocol
decisions stay in the session machine.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from hubnet.identity.errors import ClosedEarly, HandshakeError, TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.session import MAX_RECEIVE, HandshakeComplete, NoiseSession


class SecureSocket:
    """Encrypted, authenticated bytes over a connected blocking socket."""

    def __init__(self, sock: socket.socket, session: NoiseSession, remote_identity: bytes) -> None:
        self.sock = sock
        self.remote_identity = remote_identity
        self._session = session
        self._eof = False

    def send_all(self, data: bytes | bytearray | memoryview) -> None:
        _send(self.sock, self._session.send(data))

    def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        _send(self.sock, self._session.send_parts(parts))

    def receive_some(self) -> bytes | bytearray:
        """Decrypted bytes, as soon as a frame is whole; b"" once the peer closed cleanly.
        The session decrypts every whole frame at once: a caller that polls the socket never
        leaves data behind in the session, where poll cannot see it."""
        while not self._eof:
            data = self._session.next_data()
            if data is not None:
                return data
            if not _receive_into(self.sock, self._session):
                self._eof = True
        return b""

    def pending(self) -> bytes | bytearray:
        """The data of every whole frame already received (the handshake's last read may
        have brought some), without reading the socket: check it before polling."""
        return self._session.next_data() or b""

    def receive_ready(self) -> bytes | bytearray | None:
        """One read of what the socket has (after poll said it is readable), never more: the
        data of every frame now whole, b"" if none is yet (a frame arrives in pieces), None
        once the peer closed cleanly. A driver with deadlines uses this, as `receive_some`
        waits until a whole frame has come, however long the peer takes to finish it."""
        data = self.pending()
        if data:
            return data
        if not self._eof and not _receive_into(self.sock, self._session):
            self._eof = True
        data = self.pending()
        return None if self._eof and not data else data

    def close(self) -> None:
        self.sock.close()

    def detach(self) -> bytes:
        """Stop decrypting (`NoiseSession.detach`): the bytes read from the socket but not
        decrypted, which come before what the socket has still to give."""
        return self._session.detach()


def _send(sock: socket.socket, data: bytes | bytearray) -> None:
    if not data:
        return
    try:
        sock.sendall(data)
    except OSError as exc:
        raise ClosedEarly(f"connection lost: {exc.strerror or exc}") from exc


def _receive_into(sock: socket.socket, session: NoiseSession) -> bool:
    """Feed the session what the socket has; False on a clean end of stream."""
    try:
        chunk = sock.recv(MAX_RECEIVE)
    except TimeoutError as exc:
        raise TransportError("timed out waiting for the peer") from exc
    except OSError as exc:
        raise ClosedEarly(f"connection lost: {exc.strerror or exc}") from exc
    if not chunk:
        session.check_eof()
        return False
    session.receive_data(chunk)
    return True


def connect_secure_socket(
    sock: socket.socket, identity: Identity, remote_identity: bytes | None, first_data: bytes = b""
) -> SecureSocket:
    """Run the initiator side over `sock`: IK with `remote_identity` (carrying `first_data`), else XX.

    As with `identity.secure.connect_secure`, after XX the caller vets
    `remote_identity` before sending anything. The socket's timeout bounds every read.
    """
    session = NoiseSession(
        initiator=True,
        identity=identity.public_key,
        static_private=identity.noise_private_key,
        remote_identity=remote_identity,
    )
    _send(sock, session.initiate(first_data))
    while True:
        event = session.next_event()
        _send(sock, session.data_to_send())
        if isinstance(event, HandshakeComplete):
            return SecureSocket(sock, session, event.remote_identity)
        if event is not None:
            raise HandshakeError("data before the handshake finished")
        _receive_into(sock, session)  # an end of stream here raises HandshakeError
