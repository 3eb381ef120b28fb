"""The secure session as a sans-IO machine: Noise handshake, framing, transport.

Bytes from the socket go in through `receive_data`; `next_event` returns what they
meant. `initiate` and `send` return bytes to write. Every Noise message travels in a
frame with a 2-byte big-endian length, so a frame can never exceed Noise's own
65535-byte limit.

Patterns: IK when the initiator knows the responder's static key (the first
application bytes ride in the first handshake message, so a request costs one round
trip), XX otherwise (the first application bytes ride in the third message, after
the initiator has seen and vetted the responder's key). The responder learns which
pattern from the first frame's length: an XX first message is exactly one public key.

Noise authenticates X25519 keys, but a peer id is an Ed25519 key, and the conversion
only goes one way. So the first encrypted handshake payload each side sends begins
with its 32-byte Ed25519 key, and the reader checks that it converts to the static
key Noise just authenticated.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from hubnet.identity.errors import (
    ConfigError,
    HandshakeClosed,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN, noise_public_key
from hubnet.identity.noise import MAX_MESSAGE_LEN, TAG_LEN, CipherState, HandshakeState

PROLOGUE = b"hubnet/1"
IK = "Noise_IK_25519_ChaChaPoly_BLAKE2b"
XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
_DH_LEN = 32
_XX_FIRST_LEN = _DH_LEN
# The IK first message carries e, encrypted s and a tagged payload: it is always longer.
_IK_FIRST_MIN = _DH_LEN + _DH_LEN + TAG_LEN + TAG_LEN
MAX_PAYLOAD = MAX_MESSAGE_LEN - TAG_LEN
# Drivers read at most this much per `receive_data` and drain events before reading more,
# so the buffer never needs to hold more than a frame and a read. Four whole frames: under
# a bulk stream each system call, and each batch decrypted, carries that many.
MAX_RECEIVE = 4 * (MAX_MESSAGE_LEN + 2)
# The most undecoded input a session holds: a frame and a read (see MAX_RECEIVE).
MAX_BUFFER = 2 * (MAX_MESSAGE_LEN + 2) + MAX_RECEIVE
# Handshake payloads carry at most this much application data; the rest follows as transport.
_MAX_HANDSHAKE_PAYLOAD = MAX_MESSAGE_LEN - 2 * _DH_LEN - 3 * TAG_LEN - PUBLIC_KEY_LEN


@frozen
class HandshakeComplete:
    """The peer is authenticated as `remote_identity` (its Ed25519 key, the peer id);
    `first_data` rode in the handshake."""

    remote_identity: bytes
    first_data: bytes


@frozen
class Data:
    """Decrypted application bytes."""

    data: bytes


Event = HandshakeComplete | Data


class _State(enum.Enum):
    IDLE = "idle"
    HANDSHAKE = "handshake"
    # XX initiator: responder authenticated, our final message waits for the first send().
    FINISHING = "finishing"
    TRANSPORT = "transport"
    FAILED = "failed"


class NoiseSession:
    """One end of a hubnet secure session.

    `identity` is this end's Ed25519 public key and `static_private` the X25519
    private key converted from it. An initiator passes `remote_identity` to use IK;
    without it XX runs and the caller must check `HandshakeComplete.remote_identity`
    before sending anything.
    """

    def __init__(
        self,
        *,
        initiator: bool,
        identity: bytes,
        static_private: bytes,
        remote_identity: bytes | None = None,
        max_buffer: int = MAX_BUFFER,
    ) -> None:
        if not initiator and remote_identity is not None:
            raise LocalProtocolError("a responder learns the remote key from the handshake")
        self.initiator = initiator
        self._identity = identity
        self._static = static_private
        self._remote_identity = remote_identity
        self._remote_static = None if remote_identity is None else _noise_key(remote_identity)
        self._max_buffer = max_buffer
        self._buffer = bytearray()  # a frame cut by a read's end, or input not taken as is
        self._held: bytes | None = None  # a read kept as it came (`receive_data`)
        self._held_at = 0  # where its undecoded part starts
        self._state = _State.IDLE
        self._hs: HandshakeState | None = None
        self._pattern: str | None = None
        self._send_cs: CipherState | None = None
        self._recv_cs: CipherState | None = None
        self._outgoing = bytearray()
        self._pending = b""  # first data beyond what the IK first message can carry

    @property
    def pattern(self) -> str | None:
        """IK or XX once the handshake has started."""
        return self._pattern

    @property
    def buffered(self) -> int:
        """Bytes received and not yet decoded."""
        held = 0 if self._held is None else len(self._held) - self._held_at
        return len(self._buffer) + held

    @property
    def handshake_done(self) -> bool:
        return self._state in (_State.TRANSPORT, _State.FINISHING)

    def initiate(self, first_data: bytes = b"") -> bytes:
        """Start the handshake; returns the first frame. `first_data` needs IK."""
        if not self.initiator or self._state is not _State.IDLE:
            raise LocalProtocolError("initiate() is for a fresh initiator")
        if self._remote_static is None:
            if first_data:
                raise LocalProtocolError("XX cannot carry data before the responder is authenticated")
            self._pattern = XX
        else:
            self._pattern = IK
            # What does not fit in the first message follows as transport data as soon as the
            # handshake completes (`data_to_send`), so a request of any size can be sent early.
            first_data, self._pending = (
                first_data[:_MAX_HANDSHAKE_PAYLOAD],
                first_data[_MAX_HANDSHAKE_PAYLOAD:],
            )
        self._hs = HandshakeState(
            self._pattern, True, prologue=PROLOGUE, s=self._static, rs=self._remote_static
        )
        self._state = _State.HANDSHAKE
        payload = b"" if self._pattern == XX else self._identity + first_data
        return _frame(self._hs.write_message(payload))

    def data_to_send(self) -> bytes:
        """Bytes the machine produced on its own: the responder's handshake replies, and the
        initiator's first data that did not fit in its first message."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def send(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt application bytes into frames, finishing an XX handshake if needed.

        Every frame of one call goes into one buffer: a driver writes the batch with one
        system call.
        """
        return self.send_parts((data,))

    def send_parts(self, parts: Sequence[bytes | bytearray | memoryview]) -> bytes:
        """`send` of the parts' bytes one after the other, each part framed as it is (a part
        starts a frame), so that no part is first copied into one buffer with the others."""
        if self._state is _State.FINISHING:
            assert self._hs is not None
            data = b"".join(parts)
            head = data[:_MAX_HANDSHAKE_PAYLOAD]
            final = _frame(self._hs.write_message(self._identity + head))
            self._enter_transport()
            return final + self.send(data[len(head) :])
        if self._state is not _State.TRANSPORT or self._send_cs is None:
            raise LocalProtocolError("send() before the handshake completed")
        # Each frame's ciphertext is the cipher's own buffer; one join lays them out behind
        # their lengths, the only copy on the way to the socket.
        frames: list[bytes] = []
        for part in parts:
            with memoryview(part) as plain:
                for start in range(0, len(plain), MAX_PAYLOAD):
                    ciphertext = self._send_cs.encrypt_with_ad(b"", plain[start : start + MAX_PAYLOAD])
                    frames += (len(ciphertext).to_bytes(2, "big"), ciphertext)
        return b"".join(frames)

    def receive_data(self, data: bytes | bytearray) -> None:
        """Buffer bytes from the peer; refuse to buffer without bound.

        `bytes` (what a socket read returns) are kept as they are, not copied: whole frames
        are decrypted straight out of them, and only a frame cut at either end of a read is
        copied into the session's own buffer (see `_next_frame_at`).
        """
        if self._state is _State.FAILED:
            raise LocalProtocolError("session already failed")
        if self.buffered + len(data) > self._max_buffer:
            self._state = _State.FAILED
            raise RemoteProtocolError("peer sent more than the session will buffer")
        self._fold_held()
        if type(data) is bytes and data:
            self._held, self._held_at = data, 0
        else:
            self._buffer += data

    def next_event(self) -> Event | None:
        """The next complete event, or None when more bytes are needed."""
        if self._state is _State.TRANSPORT:
            data = self._decrypt_frames(1)
            return None if data is None else Data(bytes(data))
        frame = self._next_frame()
        if frame is None:
            return None
        try:
            return self._handle_frame(frame)
        except RemoteProtocolError:
            self._state = _State.FAILED
            raise

    def next_data(self) -> bytes | None:
        """Decrypted application bytes once the handshake is done, or None for more input.

        A session has exactly one handshake: drivers switch to this after
        HandshakeComplete, and every frame from then on is transport data or a failure.
        Every whole frame buffered is decrypted at once, into one buffer.
        """
        if not self.handshake_done:
            raise LocalProtocolError("next_data() before the handshake completed")
        if self._state is not _State.TRANSPORT:
            # An XX initiator that has not sent its final message yet: the responder may not
            # send before reading it, so any frame now is a violation; next_event says so.
            event = self.next_event()
            assert event is None, "a frame before our final handshake message raises"
            return None
        data = self._decrypt_frames(None)
        return data if data else None

    def _decrypt_frames(self, limit: int | None) -> bytes | None:
        """Decrypt up to `limit` (None: all) whole transport frames into one buffer; None when
        not one frame is whole. A frame that fails ends the session, but the frames before
        it in the batch are still delivered (it fails on the next call)."""
        assert self._recv_cs is not None
        plaintexts: list[bytes] = []
        while limit is None or len(plaintexts) < limit:
            found = self._next_frame_at()
            if found is None:
                break
            source, at, length = found
            ciphertext = memoryview(source)[at + 2 : at + 2 + length]
            try:
                plaintexts.append(self._recv_cs.decrypt_with_ad(b"", ciphertext))
            except RemoteProtocolError:
                if not plaintexts:
                    self._state = _State.FAILED
                    raise
                break  # deliver what came before; the bad frame is the next call's
            finally:
                ciphertext.release()  # a bytearray with a view on it cannot be resized
            if source is self._buffer:
                del self._buffer[: 2 + length]
            else:
                self._held_at += 2 + length
                if self._held_at == len(source):
                    self._held = None
        if self._held is not None and _whole_frame(self._held, self._held_at) is None:
            self._fold_held()  # at most one frame's start: the next read completes it
        if not plaintexts:
            return None
        return plaintexts[0] if len(plaintexts) == 1 else b"".join(plaintexts)

    def _next_frame_at(self) -> tuple[bytes | bytearray, int, int] | None:
        """Where the next whole frame is, in place, and its length: in the session's buffer
        (completed from the held read when it was cut there), else in the held read."""
        buffer = self._buffer
        if buffer and self._held is not None:
            self._complete_buffered_frame()
        source: bytes | bytearray
        if buffer:
            source, at = buffer, 0
        elif self._held is not None:
            source, at = self._held, self._held_at
        else:
            return None
        length = _whole_frame(source, at)
        return None if length is None else (source, at, length)

    def _complete_buffered_frame(self) -> None:
        """Move from the held read into the buffer just what the buffer's frame lacks."""
        assert self._held is not None
        buffer = self._buffer
        if len(buffer) < 2:
            self._take_held(2 - len(buffer))
        if len(buffer) >= 2 and self._held is not None:
            self._take_held(2 + int.from_bytes(buffer[:2], "big") - len(buffer))

    def _take_held(self, size: int) -> None:
        assert self._held is not None
        end = min(self._held_at + max(size, 0), len(self._held))
        self._buffer += self._held[self._held_at : end]
        self._held_at = end
        if end == len(self._held):
            self._held = None

    def _fold_held(self) -> None:
        """Copy what is left of the held read into the buffer, behind what it holds."""
        if self._held is not None:
            self._take_held(len(self._held) - self._held_at)

    def detach(self) -> bytes:
        """End the session where the stream goes on without it: the bytes received but not
        decoded, which belong to whoever reads the stream next (a relay circuit, whose own
        end-to-end session follows the relay's). The session refuses everything after."""
        if not self.handshake_done:
            raise LocalProtocolError("detach() before the handshake completed")
        self._fold_held()
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._state = _State.FAILED
        return rest

    def check_eof(self) -> None:
        """Call when the peer closed: an incomplete frame or handshake is truncation."""
        if not self.handshake_done:
            self._state = _State.FAILED
            raise HandshakeClosed("connection closed during the handshake")
        if self.buffered:
            self._state = _State.FAILED
            raise RemoteProtocolError("connection closed in the middle of a message")

    def _next_frame(self) -> bytes | None:
        self._fold_held()  # handshake frames are small: no need to read them in place
        if len(self._buffer) < 2:
            return None
        length = int.from_bytes(self._buffer[:2], "big")
        if len(self._buffer) < 2 + length:
            return None
        frame = bytes(self._buffer[2 : 2 + length])
        del self._buffer[: 2 + length]
        return frame

    def _handle_frame(self, frame: bytes) -> Event | None:
        if self._state is _State.IDLE and not self.initiator:
            return self._respond_first(frame)
        if self._state is _State.HANDSHAKE and self._hs is not None:
            return self._continue_handshake(frame)
        raise RemoteProtocolError("unexpected message before the handshake finished")

    def _respond_first(self, frame: bytes) -> Event | None:
        if len(frame) == _XX_FIRST_LEN:
            self._pattern = XX
        elif len(frame) >= _IK_FIRST_MIN:
            self._pattern = IK
        else:
            raise HandshakeError("first handshake message has an impossible length")
        self._hs = HandshakeState(self._pattern, False, prologue=PROLOGUE, s=self._static)
        self._state = _State.HANDSHAKE
        return self._continue_handshake(frame)

    def _continue_handshake(self, frame: bytes) -> Event | None:
        hs = self._hs
        assert hs is not None
        payload = hs.read_message(frame)
        if not self.initiator and hs.remote_static is None:
            # XX message 1: only an ephemeral key, nothing to authenticate yet.
            if payload:
                raise HandshakeError("XX first message may not carry data")
            self._outgoing += _frame(hs.write_message(self._identity))
            return None
        remote, data = self._authenticate(hs, payload)
        if not self.initiator and not hs.complete:
            # IK message 1 read: our reply completes the handshake.
            self._outgoing += _frame(hs.write_message(self._identity))
        if hs.complete:
            self._enter_transport()
            if self._pending:
                self._outgoing += self.send(self._pending)
                self._pending = b""
        else:
            # XX message 2 read: the responder is known; our final message waits for send().
            self._state = _State.FINISHING
        return HandshakeComplete(remote, data)

    def _authenticate(self, hs: HandshakeState, payload: bytes) -> tuple[bytes, bytes]:
        """Split off the peer's Ed25519 key and check it against what Noise authenticated."""
        claimed, data = payload[:PUBLIC_KEY_LEN], payload[PUBLIC_KEY_LEN:]
        if len(claimed) != PUBLIC_KEY_LEN or hs.remote_static is None:
            raise HandshakeError("handshake payload lacks the peer's identity")
        try:
            matches = _noise_key(claimed) == hs.remote_static
        except ConfigError:
            matches = False
        if not matches:
            raise HandshakeError("peer's identity key does not match its Noise key")
        if self._remote_identity is not None and claimed != self._remote_identity:
            raise HandshakeError("peer's identity is not the one expected")
        self._remote_identity = claimed
        return claimed, data

    def _enter_transport(self) -> None:
        assert self._hs is not None
        first, second = self._hs.split()
        self._send_cs, self._recv_cs = (first, second) if self.initiator else (second, first)
        self._state = _State.TRANSPORT


def _noise_key(identity: bytes) -> bytes:
    return noise_public_key(identity)


def _whole_frame(source: bytes | bytearray, at: int) -> int | None:
    """The length of the frame at `at` in `source` if all of it is there, else None."""
    if len(source) - at < 2:
        return None
    length = int.from_bytes(source[at : at + 2], "big")
    return length if len(source) - at - 2 >= length else None


def _frame(message: bytes) -> bytes:
    if len(message) > MAX_MESSAGE_LEN:
        raise LocalProtocolError("Noise message too large for a frame")
    return len(message).to_bytes(2, "big") + message
