"""What one connection can make a node hold is bounded (docs/running-a-node.md, Memory).

Structural, not timed: each buffer a peer can fill is capped in the sans-IO layer that
owns it, and a peer that pushes past a cap gets a protocol error instead of more memory.
"""

from __future__ import annotations

import re
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import RemoteProtocolError
from hubnet.identity.keys import Identity
from hubnet.identity.session import MAX_BUFFER, MAX_PAYLOAD, MAX_RECEIVE, NoiseSession
from hubnet.node.protocol import MAX_MESSAGE, STDIN_WINDOW, Call, JobConnection, Role, Start, Stdin
from hubnet.node.server import CONNECTION_BUFFERS

DOC = Path(__file__).resolve().parents[2] / "docs" / "running-a-node.md"
CLIENT = Identity.from_seed(bytes(range(32)))
NODE = Identity.from_seed(bytes(range(32, 64)))


def sessions() -> tuple[NoiseSession, NoiseSession]:
    """A client and a node session, the IK handshake done."""
    client = NoiseSession(
        initiator=True,
        identity=CLIENT.public_key,
        static_private=CLIENT.noise_private_key,
        remote_identity=NODE.public_key,
    )
    node = NoiseSession(initiator=False, identity=NODE.public_key, static_private=NODE.noise_private_key)
    node.receive_data(client.initiate())
    assert node.next_event() is not None
    client.receive_data(node.data_to_send())
    assert client.next_event() is not None
    return client, node


def test_the_docs_state_the_bound_the_code_computes() -> None:
    text = " ".join(DOC.read_text(encoding="utf-8").split())
    assert f"{CONNECTION_BUFFERS:,} bytes" in text
    assert f"{MAX_BUFFER:,} bytes" in text
    assert re.search(r"8\.25 MiB", text) and round(CONNECTION_BUFFERS / 2**20, 2) == 8.25


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=3 * MAX_PAYLOAD), min_size=1, max_size=6),
    reads=st.lists(st.integers(min_value=1, max_value=MAX_RECEIVE), min_size=1, max_size=8),
)
def test_a_driver_never_holds_more_than_the_session_bound(sizes: list[int], reads: list[int]) -> None:
    """Fed as the node's driver feeds it (reads of at most MAX_RECEIVE, every whole frame
    decoded before the next read), a session holds at most MAX_BUFFER undecoded, and each
    batch it hands on is smaller still."""
    client, node = sessions()
    wire = b"".join(bytes(client.send(bytes(size))) for size in sizes)
    at, read = 0, 0
    while at < len(wire):
        piece = wire[at : at + reads[read % len(reads)]]
        at, read = at + len(piece), read + 1
        node.receive_data(piece)
        assert len(node._buffer) <= MAX_BUFFER
        batch = node.next_data()
        assert batch is None or len(batch) <= MAX_BUFFER
        assert len(node._buffer) < MAX_RECEIVE  # only a partial frame stays behind


def test_a_session_refuses_input_past_its_bound() -> None:
    _, node = sessions()
    node.receive_data(b"\xff\xff")  # a frame that never finishes
    with pytest.raises(RemoteProtocolError):
        while True:  # bounded: each read adds MAX_RECEIVE, and the bound is a few of them
            node.receive_data(bytes(MAX_RECEIVE))
    assert len(node._buffer) <= MAX_BUFFER


def test_the_decoder_refuses_a_message_past_its_bound() -> None:
    """A peer that announces a message larger than MAX_MESSAGE and keeps sending gets a
    protocol error before the node's decoder holds more than two messages' worth."""
    node = JobConnection(Role.SERVER)
    node.receive_data(msgpack.packb([1, [bytes(16), []]]))
    assert isinstance(node.next_event(), Call)
    node.receive_data(msgpack.packb([4, []]))
    assert isinstance(node.next_event(), Start)
    with pytest.raises(RemoteProtocolError):  # at the announcement, or once past the bound
        node.receive_data(b"\x92\x05\x91\xc6" + (4 * MAX_MESSAGE).to_bytes(4, "big"))  # [5, [bin32 ...]]
        for _ in range(2 * MAX_MESSAGE // MAX_RECEIVE + 2):  # bounded by the cap itself
            assert node.next_event() is None
            assert node.buffered <= 2 * MAX_MESSAGE
            node.receive_data(bytes(MAX_RECEIVE))
    assert node.buffered <= 2 * MAX_MESSAGE


def test_stdin_ahead_of_the_job_is_capped_by_the_window() -> None:
    node = JobConnection(Role.SERVER)
    client = JobConnection(Role.CLIENT)
    node.receive_data(client.send(Call(bytes(16), ())))
    node.next_event()
    node.receive_data(client.send(Start()))
    node.next_event()
    for _ in range(4):  # the whole window, in messages of at most MAX_DATA
        node.receive_data(client.send(Stdin(bytes(STDIN_WINDOW // 4))))
        assert isinstance(node.next_event(), Stdin)
    node.receive_data(msgpack.packb([5, [b"x"]]))  # one byte past the window, no credit given
    with pytest.raises(RemoteProtocolError, match="window"):
        node.next_event()
