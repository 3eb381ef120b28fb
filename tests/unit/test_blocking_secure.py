"""Tests of identity.blocking: the blocking driver of the secure session over a real socket pair.

The responder is a NoiseSession driven by hand: in a thread while the initiator's blocking
handshake runs, then from the test itself, so that what is on the wire when the initiator
reads is known exactly.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from hubnet.identity.blocking import SecureSocket, connect_secure_socket
from hubnet.identity.errors import HandshakeError, RemoteProtocolError, TransportError
from hubnet.identity.keys import Identity
from hubnet.identity.session import IK, MAX_RECEIVE, XX, HandshakeComplete, NoiseSession

ALICE = Identity.from_seed(bytes(range(32)))  # the initiator
BOB = Identity.from_seed(bytes(range(32, 64)))  # the responder
CAROL = Identity.from_seed(bytes(range(64, 96)))  # someone else

WAIT = 10.0  # seconds: no step here should take more than a fraction of that

T = TypeVar("T")


def bounded(step: Callable[[], T]) -> T:
    """`step()` in a daemon thread: a driver that loops or hangs fails the test instead of hanging it."""
    outcome: list[tuple[T | None, BaseException | None]] = []

    def run() -> None:
        try:
            outcome.append((step(), None))
        except BaseException as exc:
            outcome.append((None, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert outcome, f"no answer within {WAIT} s"
    value, error = outcome[0]
    if error is not None:
        raise error
    return value  # type: ignore[return-value]


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the initiator's socket, the responder's socket), each with a timeout against hangs."""
    a, b = socket.socketpair()
    a.settimeout(WAIT)
    b.settimeout(WAIT)
    with a, b:
        yield a, b


@pytest.fixture
def background() -> Iterator[ThreadPoolExecutor]:
    """A thread for the responder's side of a blocking exchange."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


class Responder:
    """Bob's end of the session over `sock`, driven by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.session = NoiseSession(
            initiator=False, identity=BOB.public_key, static_private=BOB.noise_private_key
        )

    def handshake(self) -> HandshakeComplete:
        """Answer until the initiator is authenticated (for XX: until its first send)."""
        while True:
            data = self.sock.recv(MAX_RECEIVE)
            if not data:
                raise EOFError("the initiator closed during the handshake")
            self.session.receive_data(data)
            while (event := self.session.next_event()) is not None:
                assert isinstance(event, HandshakeComplete)
                self.sock.sendall(self.session.data_to_send())
                return event
            self.sock.sendall(self.session.data_to_send())

    def read_first_message_and_close(self) -> None:
        self.sock.recv(MAX_RECEIVE)
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.session.send(data))

    def receive(self) -> bytes:
        """Decrypted bytes from the initiator: at least one frame's worth."""
        while (data := self.session.next_data()) is None:
            chunk = self.sock.recv(MAX_RECEIVE)
            assert chunk, "the initiator closed"
            self.session.receive_data(chunk)
        return data


def _ik(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
    first_data: bytes = b"request",
) -> tuple[SecureSocket, Responder]:
    mine, theirs = pair
    bob = Responder(theirs)
    done = background.submit(bob.handshake)
    secure = connect_secure_socket(mine, ALICE, BOB.public_key, first_data)
    assert done.result(WAIT) == HandshakeComplete(ALICE.public_key, first_data)
    return secure, bob


def test_ik_carries_the_first_data(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    secure, bob = _ik(pair, background, b"the request")
    assert secure.remote_identity == BOB.public_key
    assert bob.session.pattern == IK
    bob.send(b"the reply")
    assert secure.receive_some() == b"the reply"
    secure.send_all(b"and more")
    assert bob.receive() == b"and more"


def test_xx_learns_the_key_before_anything_is_sent(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    mine, theirs = pair
    bob = Responder(theirs)
    done = background.submit(bob.handshake)
    secure = connect_secure_socket(mine, ALICE, None)
    assert secure.remote_identity == BOB.public_key  # for the caller to vet, before it sends
    assert not done.done(), "the initiator's last handshake message waits for its first send"
    secure.send_all(b"vetted request")
    assert done.result(WAIT) == HandshakeComplete(ALICE.public_key, b"vetted request")
    assert bob.session.pattern == XX
    bob.send(b"reply")
    assert secure.receive_some() == b"reply"


def test_receive_some_returns_every_whole_frame_at_once(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    secure, bob = _ik(pair, background)
    frames = [bob.session.send(part) for part in (b"one ", b"two ", b"three ", b"four")]
    # Three whole frames and part of the fourth are on the wire before the read.
    bob.sock.sendall(b"".join(frames[:3]) + frames[3][:5])
    assert secure.receive_some() == b"one two three "
    bob.sock.sendall(frames[3][5:])
    assert secure.receive_some() == b"four"


def test_a_long_message_arrives_whole(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    secure, bob = _ik(pair, background)
    data = bytes(range(256)) * 2000  # many frames, more than one read
    sent = background.submit(lambda: bob.send(data))
    received = bytearray()
    while len(received) < len(data):
        chunk = secure.receive_some()
        assert chunk
        received += chunk
    sent.result(WAIT)
    assert received == data


def test_a_clean_close_gives_end_of_stream(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    secure, bob = _ik(pair, background)
    bob.send(b"last words")
    bob.sock.shutdown(socket.SHUT_WR)
    assert secure.receive_some() == b"last words"
    assert bounded(secure.receive_some) == b""
    assert bounded(secure.receive_some) == b"", "the end of the stream stays ended"


def test_a_close_in_the_middle_of_a_frame_is_a_protocol_error(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    secure, bob = _ik(pair, background)
    frame = bob.session.send(b"cut short")
    bob.sock.sendall(frame[:-3])
    bob.sock.shutdown(socket.SHUT_WR)
    with pytest.raises(RemoteProtocolError, match="middle of a message"):
        bounded(secure.receive_some)


@pytest.mark.parametrize("remote", [BOB, None], ids=["IK", "XX"])
def test_a_close_during_the_handshake_is_a_handshake_error(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
    remote: Identity | None,
) -> None:
    mine, theirs = pair
    closed = background.submit(Responder(theirs).read_first_message_and_close)
    key = None if remote is None else remote.public_key
    with pytest.raises(HandshakeError, match="closed during the handshake"):
        bounded(lambda: connect_secure_socket(mine, ALICE, key, b"" if key is None else b"request"))
    closed.result(WAIT)


def test_a_close_after_half_a_reply_is_a_handshake_error(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    mine, theirs = pair
    bob = Responder(theirs)

    def half_reply() -> None:
        bob.session.receive_data(theirs.recv(MAX_RECEIVE))
        assert isinstance(bob.session.next_event(), HandshakeComplete)
        theirs.sendall(bob.session.data_to_send()[:10])
        theirs.close()

    done = background.submit(half_reply)
    with pytest.raises(HandshakeError):
        bounded(lambda: connect_secure_socket(mine, ALICE, BOB.public_key, b"request"))
    done.result(WAIT)


def test_the_wrong_node_fails_the_handshake(
    pair: tuple[socket.socket, socket.socket],
    background: ThreadPoolExecutor,
) -> None:
    mine, theirs = pair
    bob = Responder(theirs)

    def refuse() -> None:
        # Alice's first message is sealed to Carol's key: Bob cannot read it, and hangs up.
        with pytest.raises(HandshakeError):
            bob.session.receive_data(theirs.recv(MAX_RECEIVE))
            bob.session.next_event()
        theirs.close()

    done = background.submit(refuse)
    with pytest.raises(HandshakeError):
        bounded(lambda: connect_secure_socket(mine, ALICE, CAROL.public_key, b"for carol"))
    done.result(WAIT)


def test_a_silent_peer_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    mine, _ = pair
    mine.settimeout(0.1)
    with pytest.raises(TransportError, match="timed out"):
        connect_secure_socket(mine, ALICE, BOB.public_key, b"hello?")
