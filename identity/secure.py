"""The Trio driver for a secure session: a `trio.abc.Stream` over another stream.

It owns the transport and the timeouts; all protocol decisions are in
`identity.session.NoiseSession`. Its blocking twin, for `hubnode call` on a Pi where
importing Trio would cost more than the call, is `identity.blocking`: same machine,
same method names.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from hubnet.identity.errors import ClosedEarly, HandshakeError, RemoteProtocolError
from hubnet.identity.keys import Identity
from hubnet.identity.session import MAX_RECEIVE, HandshakeComplete, NoiseSession

# Every batch is encrypted and decrypted on the loop's own thread. Handing batches of
# 128 KiB and more to worker threads (the cipher releases the GIL) used to let a stream's two
# directions overlap; but with OpenSSL's ChaCha20-Poly1305 (2.5-3.7 GB/s) a 256 KiB batch
# takes about 85 us, less than the two cross-thread wake-ups of a hand-off on this kind of
# machine. Without them `bench/throughput.py`'s node spent a third less CPU per byte, and a
# round trip through `cat` went from 224-245 to 309-347 MiB/s.


class SecureStream(trio.abc.Stream):
    """Encrypted, authenticated bytes over `transport` once the handshake is done."""

    def __init__(self, transport: trio.abc.Stream, session: NoiseSession, remote_identity: bytes) -> None:
        self.transport = transport
        self.remote_identity = remote_identity
        self._session = session
        self._plaintext: bytes | bytearray = b""
        self._eof = False
        self._send_lock = trio.StrictFIFOLock()
        self._receive_guard = trio.Lock()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_parts((data,))

    async def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """`send_all` of the parts' bytes one after the other, none copied to join the others
        (`NoiseSession.send_parts`): a message's head and its data, say."""
        # Several tasks (stdout and stderr pumps) write; frames must not interleave mid-write.
        async with self._send_lock:
            await _send(self.transport, self._session.send_parts(parts))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        async with self._receive_guard:
            while not self._plaintext and not self._eof:
                data = self._session.next_data()
                if data is not None:
                    self._plaintext = data
                elif not await _receive_into(self.transport, self._session):
                    self._eof = True
            chunk = self._plaintext
            if max_bytes is not None and len(chunk) > max_bytes:
                chunk, self._plaintext = chunk[:max_bytes], chunk[max_bytes:]
            else:
                self._plaintext = b""  # the whole batch, handed over without a copy
            return chunk

    async def aclose(self) -> None:
        await self.transport.aclose()

    def detach(self) -> bytes:
        """Stop decrypting (`NoiseSession.detach`): the bytes read from the transport but
        not decrypted, to be read before the transport's own. Decrypted bytes nobody took
        are the peer breaking the protocol that ended the session."""
        if self._plaintext:
            raise RemoteProtocolError("data after the session's last message")
        return self._session.detach()


async def _send(transport: trio.abc.Stream, data: bytes | bytearray) -> None:
    if not data:
        return
    try:
        await transport.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ClosedEarly("connection closed by peer") from exc


async def _receive_into(transport: trio.abc.Stream, session: NoiseSession) -> bool:
    """Feed the session what the transport has; False on a clean end of stream."""
    try:
        chunk = await transport.receive_some(MAX_RECEIVE)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ClosedEarly("connection lost") from exc
    if not chunk:
        session.check_eof()
        return False
    session.receive_data(chunk)
    return True


async def _handshake(transport: trio.abc.Stream, session: NoiseSession) -> HandshakeComplete:
    while True:
        event = session.next_event()
        await _send(transport, session.data_to_send())
        if isinstance(event, HandshakeComplete):
            return event
        if event is not None:
            raise HandshakeError("data before the handshake finished")
        await _receive_into(transport, session)  # an end of stream here raises HandshakeError


async def accept_secure(transport: trio.abc.Stream, identity: Identity) -> tuple[SecureStream, bytes]:
    """Run the responder side; returns the stream and the data that rode in the handshake.

    The caller bounds this with a timeout: a peer that never finishes must not hold a slot.
    """
    session = NoiseSession(
        initiator=False, identity=identity.public_key, static_private=identity.noise_private_key
    )
    done = await _handshake(transport, session)
    return SecureStream(transport, session, done.remote_identity), done.first_data


async def connect_secure(
    transport: trio.abc.Stream,
    identity: Identity,
    remote_identity: bytes | None,
    first_data: bytes = b"",
) -> SecureStream:
    """Run the initiator side: IK with `remote_identity` (carrying `first_data`), else XX.

    With XX the caller must vet `stream.remote_identity` before sending; `first_data`
    is then refused, since it would go to a peer nobody has checked yet.
    """
    session = NoiseSession(
        initiator=True,
        identity=identity.public_key,
        static_private=identity.noise_private_key,
        remote_identity=remote_identity,
    )
    await _send(transport, session.initiate(first_data))
    done = await _handshake(transport, session)
    return SecureStream(transport, session, done.remote_identity)
