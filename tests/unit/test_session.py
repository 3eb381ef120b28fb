"""Tests of identity.session.NoiseSession: the sans-IO secure session, driven in memory."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity.errors import (
    DecryptError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from hubnet.identity.keys import Identity
from hubnet.identity.noise import MAX_MESSAGE_LEN
from hubnet.identity.session import (
    IK,
    MAX_BUFFER,
    MAX_PAYLOAD,
    MAX_RECEIVE,
    XX,
    Data,
    Event,
    HandshakeComplete,
    NoiseSession,
)

ALICE = Identity.from_seed(bytes(range(32)))  # the initiator in these tests
BOB = Identity.from_seed(bytes(range(32, 64)))  # the responder
CAROL = Identity.from_seed(bytes(range(64, 96)))  # a third party

FAST = settings(max_examples=60, deadline=None)

# Largest first_data an IK first message (or the XX third message) can carry.
MAX_HANDSHAKE_DATA = MAX_MESSAGE_LEN - 2 * 32 - 3 * 16 - 32


def initiator(remote: Identity | None, me: Identity = ALICE) -> NoiseSession:
    return NoiseSession(
        initiator=True,
        identity=me.public_key,
        static_private=me.noise_private_key,
        remote_identity=None if remote is None else remote.public_key,
    )


def responder(me: Identity = BOB) -> NoiseSession:
    return NoiseSession(initiator=False, identity=me.public_key, static_private=me.noise_private_key)


def drain(session: NoiseSession) -> list[Event]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def feed(session: NoiseSession, data: bytes) -> list[Event]:
    session.receive_data(data)
    return drain(session)


def frames(data: bytes) -> list[bytes]:
    """Split bytes written by a session into its length-prefixed frames (prefix included)."""
    out = []
    while data:
        length = int.from_bytes(data[:2], "big")
        assert len(data) >= 2 + length, "a session wrote a partial frame"
        out.append(data[: 2 + length])
        data = data[2 + length :]
    return out


def ik_pair(first_data: bytes = b"") -> tuple[NoiseSession, NoiseSession]:
    """An IK handshake run to completion; both sides in transport."""
    a, b = initiator(BOB), responder()
    assert feed(b, a.initiate(first_data)) == [HandshakeComplete(ALICE.public_key, first_data)]
    assert feed(a, b.data_to_send()) == [HandshakeComplete(BOB.public_key, b"")]
    return a, b


def xx_pair(first_data: bytes = b"hi") -> tuple[NoiseSession, NoiseSession]:
    """An XX handshake run to completion by the initiator's first send."""
    a, b = initiator(None), responder()
    assert feed(b, a.initiate()) == []
    assert feed(a, b.data_to_send()) == [HandshakeComplete(BOB.public_key, b"")]
    assert feed(b, a.send(first_data)) == [HandshakeComplete(ALICE.public_key, first_data)]
    return a, b


# --- Handshakes and data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ik_pair, xx_pair], ids=["IK", "XX"])
def test_handshake_then_data_both_ways(make: Callable[[], tuple[NoiseSession, NoiseSession]]) -> None:
    a, b = make()
    assert a.handshake_done and b.handshake_done
    assert a.pattern == b.pattern == (IK if make is ik_pair else XX)
    assert a.data_to_send() == b"" and b.data_to_send() == b""
    assert feed(b, a.send(b"to bob")) == [Data(b"to bob")]
    assert feed(a, b.send(b"to alice")) == [Data(b"to alice")]
    for i in range(5):
        assert feed(a, b.send(bytes([i]) * 10)) == [Data(bytes([i]) * 10)]
    a.check_eof()
    b.check_eof()


@pytest.mark.parametrize("make", [ik_pair, xx_pair], ids=["IK", "XX"])
def test_large_data_is_split_into_many_frames(make: Callable[[], tuple[NoiseSession, NoiseSession]]) -> None:
    a, b = make()
    payload = bytes(range(256)) * 1500  # 384000 bytes
    for sender, receiver in ((a, b), (b, a)):
        wire = sender.send(payload)
        parts = frames(wire)
        assert len(parts) == -(-len(payload) // MAX_PAYLOAD) >= 6
        assert all(len(p) <= 2 + MAX_MESSAGE_LEN for p in parts)
        got = bytearray()
        for part in parts:  # one frame at a time, as the driver reads them, so the buffer stays bounded
            for event in feed(receiver, part):
                assert isinstance(event, Data)
                got += event.data
        assert got == payload


def test_wire_fed_one_byte_at_a_time() -> None:
    a, b = initiator(BOB), responder()
    events: list[Event] = []
    for byte in a.initiate(b"early"):
        events += feed(b, bytes([byte]))
    assert events == [HandshakeComplete(ALICE.public_key, b"early")]
    events = []
    for byte in b.data_to_send() + b.send(b"reply"):
        events += feed(a, bytes([byte]))
    assert events == [HandshakeComplete(BOB.public_key, b""), Data(b"reply")]


def test_ik_early_data_arrives_in_the_responders_handshake_complete() -> None:
    a, b = initiator(BOB), responder()
    first = a.initiate(b"CALL espeak")
    assert len(frames(first)) == 1  # one write for the whole request
    [event] = feed(b, first)
    assert event == HandshakeComplete(ALICE.public_key, b"CALL espeak")
    assert b.pattern == IK


def test_ik_early_data_at_its_size_limit() -> None:
    big = b"x" * MAX_HANDSHAKE_DATA
    a, b = initiator(BOB), responder()
    [event] = feed(b, a.initiate(big))
    assert event == HandshakeComplete(ALICE.public_key, big)


def test_ik_first_data_beyond_the_limit_follows_as_soon_as_the_handshake_completes() -> None:
    request = bytes(range(256)) * 600  # a long call: more than one handshake message holds
    a, b = initiator(BOB), responder()
    [event] = feed(b, a.initiate(request))
    assert event == HandshakeComplete(ALICE.public_key, request[:MAX_HANDSHAKE_DATA])
    assert a.data_to_send() == b""  # nothing may go before the responder is authenticated
    [done] = feed(a, b.data_to_send())
    assert isinstance(done, HandshakeComplete)
    rest = a.data_to_send()
    assert rest and all(len(f) <= 2 + 65535 for f in frames(rest))
    b.receive_data(rest)
    received = b""
    while (data := b.next_data()) is not None:
        received += data
    assert received == request[MAX_HANDSHAKE_DATA:]
    assert a.data_to_send() == b""


def test_xx_initiator_cannot_send_first_data() -> None:
    with pytest.raises(LocalProtocolError):
        initiator(None).initiate(b"request")


def test_xx_first_send_rides_in_message_3() -> None:
    a, b = initiator(None), responder()
    assert feed(b, a.initiate()) == []
    assert b.pattern == XX and not b.handshake_done
    [done] = feed(a, b.data_to_send())
    assert done == HandshakeComplete(BOB.public_key, b"")
    assert a.handshake_done
    msg3 = a.send(b"request")
    assert len(frames(msg3)) == 1
    assert feed(b, msg3) == [HandshakeComplete(ALICE.public_key, b"request")]
    assert b.handshake_done


def test_xx_first_send_too_big_for_message_3_continues_as_transport() -> None:
    a, b = initiator(None), responder()
    feed(b, a.initiate())
    feed(a, b.data_to_send())
    data = bytes(range(256)) * 400  # more than one handshake payload
    events = feed(b, a.send(data))
    assert isinstance(events[0], HandshakeComplete) and events[0].remote_identity == ALICE.public_key
    assert all(isinstance(e, Data) for e in events[1:]) and len(events) >= 2
    assert events[0].first_data + b"".join(e.data for e in events[1:] if isinstance(e, Data)) == data


def test_xx_empty_first_send_completes_the_handshake() -> None:
    a, b = initiator(None), responder()
    feed(b, a.initiate())
    feed(a, b.data_to_send())
    assert feed(b, a.send(b"")) == [HandshakeComplete(ALICE.public_key, b"")]
    assert feed(a, b.send(b"ok")) == [Data(b"ok")]


# --- Identity binding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ["IK", "XX"])
def test_each_side_learns_the_others_ed25519_key(pattern: str) -> None:
    a, b = initiator(BOB if pattern == "IK" else None), responder()
    seen_by_bob = feed(b, a.initiate())
    [seen_by_alice] = feed(a, b.data_to_send())
    if pattern == "XX":
        seen_by_bob = feed(b, a.send(b""))
    assert seen_by_alice == HandshakeComplete(BOB.public_key, b"")
    assert seen_by_bob == [HandshakeComplete(ALICE.public_key, b"")]


def test_ik_responder_sees_the_initiators_key() -> None:
    a, b = initiator(BOB, me=CAROL), responder()
    [event] = feed(b, a.initiate())
    assert isinstance(event, HandshakeComplete)
    assert event.remote_identity == CAROL.public_key != ALICE.public_key


def test_ik_with_the_wrong_expected_responder_fails_at_the_responder() -> None:
    a = initiator(CAROL)  # thinks it talks to Carol, reaches Bob
    b = responder()
    with pytest.raises(HandshakeError):
        feed(b, a.initiate(b"secret request"))
    with pytest.raises(LocalProtocolError):  # a failed session stays failed
        b.receive_data(b"\x00")


def test_impostor_initiator_is_refused() -> None:
    # Claims Carol's peer id but holds only Alice's key.
    a = NoiseSession(
        initiator=True,
        identity=CAROL.public_key,
        static_private=ALICE.noise_private_key,
        remote_identity=BOB.public_key,
    )
    with pytest.raises(HandshakeError):
        feed(responder(), a.initiate(b"run as carol"))


def test_impostor_xx_initiator_is_refused_in_message_3() -> None:
    a = NoiseSession(initiator=True, identity=CAROL.public_key, static_private=ALICE.noise_private_key)
    b = responder()
    feed(b, a.initiate())
    feed(a, b.data_to_send())
    with pytest.raises(HandshakeError):
        feed(b, a.send(b"x"))


@pytest.mark.parametrize("pattern", ["IK", "XX"])
def test_impostor_responder_is_refused(pattern: str) -> None:
    # Bob's Noise key, but it claims to be Carol.
    b = NoiseSession(initiator=False, identity=CAROL.public_key, static_private=BOB.noise_private_key)
    a = initiator(BOB if pattern == "IK" else None)
    feed(b, a.initiate())
    with pytest.raises(HandshakeError):
        feed(a, b.data_to_send())


def test_ik_refuses_a_different_ed25519_key_with_the_same_noise_key() -> None:
    # Flipping the sign bit of an Ed25519 key negates the point; the X25519 conversion keeps
    # only the u-coordinate, so both keys give the same Noise key. IK must still insist on the
    # exact peer id it was asked to reach.
    twin = BOB.public_key[:31] + bytes([BOB.public_key[31] ^ 0x80])
    b = NoiseSession(initiator=False, identity=twin, static_private=BOB.noise_private_key)
    a = initiator(BOB)
    feed(b, a.initiate())
    with pytest.raises(HandshakeError, match="not the one expected"):
        feed(a, b.data_to_send())


def test_identity_that_is_not_a_curve_point_is_refused() -> None:
    bogus = bytes([2]) + bytes(31)  # y = 2 is not on the Edwards curve
    a = NoiseSession(
        initiator=True, identity=bogus, static_private=ALICE.noise_private_key, remote_identity=BOB.public_key
    )
    with pytest.raises(HandshakeError):
        feed(responder(), a.initiate())


# --- Tampering, truncation, replay -----------------------------------------------------------------------

Tamper = Callable[[int, bytes], bytes]


def deliver(receiver: NoiseSession, data: bytes, expect: list[Event]) -> None:
    """Feed one step's bytes; the events must be exactly `expect`, or the step must fail remotely."""
    events = feed(receiver, data)
    assert events == expect[: len(events)], "a tampered message produced a wrong event"
    if len(events) < len(expect):
        receiver.check_eof()  # the peer has nothing more to say: a stalled step is a truncation
        raise AssertionError("the session stalled without reporting an error")


def run_ik(tamper: Tamper) -> None:
    a, b = initiator(BOB), responder()
    deliver(b, tamper(0, a.initiate(b"early")), [HandshakeComplete(ALICE.public_key, b"early")])
    deliver(a, tamper(1, b.data_to_send()), [HandshakeComplete(BOB.public_key, b"")])
    deliver(b, tamper(2, a.send(b"start")), [Data(b"start")])
    deliver(a, tamper(3, b.send(b"output")), [Data(b"output")])


def run_xx(tamper: Tamper) -> None:
    a, b = initiator(None), responder()
    deliver(b, tamper(0, a.initiate()), [])
    deliver(a, tamper(1, b.data_to_send()), [HandshakeComplete(BOB.public_key, b"")])
    deliver(b, tamper(2, a.send(b"request")), [HandshakeComplete(ALICE.public_key, b"request")])
    deliver(a, tamper(3, b.send(b"output")), [Data(b"output")])
    deliver(b, tamper(4, a.send(b"more")), [Data(b"more")])


RUNS = {"IK": (run_ik, 4), "XX": (run_xx, 5)}


@pytest.mark.parametrize("pattern", RUNS)
def test_untampered_exchange_succeeds(pattern: str) -> None:
    run, _ = RUNS[pattern]
    run(lambda index, data: data)


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.sampled_from(sorted(RUNS)),
    frame=st.integers(min_value=0, max_value=4),
    position=st.integers(min_value=0, max_value=1 << 16),
    mask=st.integers(min_value=1, max_value=255),
)
def test_tampering_any_byte_of_any_frame_fails(pattern: str, frame: int, position: int, mask: int) -> None:
    run, count = RUNS[pattern]
    target = frame % count

    def tamper(index: int, data: bytes) -> bytes:
        if index != target:
            return data
        flipped = bytearray(data)
        flipped[position % len(data)] ^= mask
        return bytes(flipped)

    with pytest.raises(RemoteProtocolError):
        run(tamper)


def test_tampered_transport_frame_is_a_decrypt_error() -> None:
    a, b = ik_pair()
    wire = bytearray(a.send(b"payload"))
    wire[-1] ^= 1
    with pytest.raises(DecryptError):
        feed(b, bytes(wire))


def test_truncated_transport_frame_is_caught_at_eof() -> None:
    a, b = ik_pair()
    wire = a.send(b"the end of the output")
    assert feed(b, wire[:-1]) == []
    with pytest.raises(RemoteProtocolError):
        b.check_eof()


def test_truncated_length_prefix_is_caught_at_eof() -> None:
    a, b = ik_pair()
    assert feed(b, a.send(b"x")[:1]) == []
    with pytest.raises(RemoteProtocolError):
        b.check_eof()


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_eof_during_the_handshake_is_truncation(side: str) -> None:
    a, b = initiator(BOB), responder()
    first = a.initiate()
    if side == "responder":
        with pytest.raises(RemoteProtocolError):
            b.check_eof()  # nothing arrived at all
    else:
        feed(b, first)
        with pytest.raises(RemoteProtocolError):
            a.check_eof()  # the reply never came


def test_clean_eof_after_whole_frames_is_not_an_error() -> None:
    a, b = ik_pair()
    feed(b, a.send(b"x"))
    b.check_eof()
    a.check_eof()


def test_replayed_transport_frame_fails() -> None:
    a, b = ik_pair()
    old = a.send(b"pay 100")
    assert feed(b, old) == [Data(b"pay 100")]
    with pytest.raises(DecryptError):
        feed(b, old)


def test_reordered_transport_frames_fail() -> None:
    a, b = ik_pair()
    first, second = a.send(b"one"), a.send(b"two")
    with pytest.raises(DecryptError):
        feed(b, second + first)


def test_replayed_ik_first_message_cannot_be_followed_by_transport() -> None:
    # The first IK message is replayable by design (ARCHITECTURE "Replay"); what the server must wait
    # for - the caller's first transport frame - cannot be replayed into the new session.
    a, b = initiator(BOB), responder()
    recorded_first = a.initiate(b"request")
    feed(b, recorded_first)
    feed(a, b.data_to_send())
    recorded_start = a.send(b"start")
    assert feed(b, recorded_start) == [Data(b"start")]

    fresh = responder()
    assert feed(fresh, recorded_first) == [HandshakeComplete(ALICE.public_key, b"request")]
    with pytest.raises(DecryptError):
        feed(fresh, recorded_start)


def test_frame_from_another_session_fails() -> None:
    a1, b1 = ik_pair()
    _, b2 = ik_pair()
    frame = a1.send(b"cross-session")
    assert feed(b1, frame) == [Data(b"cross-session")]
    with pytest.raises(DecryptError):
        feed(b2, frame)


# --- Garbage and limits ----------------------------------------------------------------------------------


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


garbage = st.one_of(
    st.binary(max_size=300),
    st.binary(min_size=32, max_size=32).map(_framed),  # an "XX message 1"
    st.binary(min_size=96, max_size=400).map(_framed),  # an "IK message 1"
    st.tuples(st.binary(min_size=32, max_size=32), st.binary(max_size=200)).map(
        lambda t: _framed(t[0]) + _framed(t[1])  # "XX message 1" then a bogus message 3
    ),
    st.binary(max_size=200).map(_framed),
)


@FAST
@given(data=garbage, splits=st.lists(st.integers(min_value=0, max_value=400), max_size=4))
def test_garbage_to_a_fresh_responder_only_raises_remote_errors(data: bytes, splits: list[int]) -> None:
    b = responder()
    cuts = sorted({0, len(data), *(s % (len(data) + 1) for s in splits)})
    try:
        for start, end in itertools.pairwise(cuts):
            assert feed(b, data[start:end]) == [], "garbage produced an event"
            b.data_to_send()
        b.check_eof()
    except RemoteProtocolError:
        return
    raise AssertionError("garbage led to a finished handshake")


@FAST
@given(data=garbage)
def test_garbage_to_an_initiator_only_raises_remote_errors(data: bytes) -> None:
    for a in (initiator(BOB), initiator(None)):
        a.initiate()
        with pytest.raises(RemoteProtocolError):
            feed(a, data)
            a.check_eof()


@pytest.mark.parametrize("body_len", [0, 1, 31, 33, 95])
def test_first_message_of_impossible_length_is_refused(body_len: int) -> None:
    with pytest.raises(HandshakeError):
        feed(responder(), _framed(bytes(body_len)))


def test_low_order_ephemeral_key_is_refused() -> None:
    with pytest.raises(HandshakeError):
        feed(responder(), _framed(bytes(32)))  # XX message 1 with the all-zero point


def test_buffer_bound() -> None:
    b = responder()
    b.receive_data(b"\xff\xff")  # a frame header announcing 65535 bytes that never finish
    with pytest.raises(RemoteProtocolError):
        for _ in range(10):
            b.receive_data(bytes(MAX_RECEIVE))
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"x")


def test_buffer_bound_allows_a_frame_and_a_read() -> None:
    a, b = ik_pair()
    wire = a.send(bytes(MAX_PAYLOAD))  # one maximal frame
    assert len(wire) == 2 + MAX_MESSAGE_LEN
    b.receive_data(wire[:-1])
    assert b.next_event() is None
    # A driver's next read completes the frame and brings three more whole frames and the
    # start of a fifth: the most a session ever holds undecrypted.
    b.receive_data(wire[-1:] + a.send(bytes(5 * MAX_PAYLOAD))[: MAX_RECEIVE - 1])
    assert b.next_event() == Data(bytes(MAX_PAYLOAD))
    assert b.next_data() == bytes(3 * MAX_PAYLOAD)
    assert b.next_data() is None


def test_small_buffer_bound_is_honoured() -> None:
    b = NoiseSession(
        initiator=False, identity=BOB.public_key, static_private=BOB.noise_private_key, max_buffer=100
    )
    b.receive_data(bytes(100))
    with pytest.raises(RemoteProtocolError):
        b.receive_data(b"x")


# --- Batches: many frames per send and per read ------------------------------------------------------------


def test_one_send_is_one_buffer_of_whole_frames() -> None:
    a, b = ik_pair()
    data = bytes(range(256)) * 1000  # four frames' worth
    wire = a.send(memoryview(data))
    assert [len(f) - 2 for f in frames(bytes(wire))] == [MAX_MESSAGE_LEN] * 3 + [
        len(data) - 3 * MAX_PAYLOAD + 16
    ]
    b.receive_data(wire)
    assert b.next_data() == data  # every whole frame at once
    assert b.next_data() is None


def test_empty_frames_in_a_batch_carry_nothing() -> None:
    a, b = ik_pair()
    cs = a._send_cs  # a frame with an empty plaintext is valid; `send` never makes one
    assert cs is not None
    empty = [cs.encrypt_with_ad(b"", b"") for _ in range(2)]
    b.receive_data(b"".join(len(e).to_bytes(2, "big") + e for e in empty))
    assert b.next_data() is None  # consumed, and nothing to deliver
    b.receive_data(a.send(b"after"))
    assert b.next_data() == b"after"


def test_a_bad_frame_after_good_ones_in_one_read_delivers_the_good_ones_first() -> None:
    a, b = ik_pair()
    good = a.send(b"good")
    bad = bytearray(a.send(b"bad"))
    bad[-1] ^= 1
    b.receive_data(bytes(good) + bytes(bad))
    assert b.next_data() == b"good"
    with pytest.raises(DecryptError):
        b.next_data()
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"x")


@FAST
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3 * MAX_PAYLOAD), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=MAX_RECEIVE), max_size=20),
    kinds=st.lists(st.sampled_from(["bytes", "bytearray", "bytes, not drained"]), min_size=1, max_size=6),
)
def test_messages_of_any_size_cut_anywhere_arrive_whole_and_in_order(
    sizes: list[int], cuts: list[int], kinds: list[str]
) -> None:
    """Sends of any size (across frame boundaries) read in pieces of any size up to a driver's
    read: the receiver gets exactly the bytes sent, never holding more than its bound. Reads
    come as bytes (kept as they are, decrypted in place) or bytearrays (copied), and a
    driver may feed a read before taking what the last one completed."""
    a, b = ik_pair()
    sent = b"".join(bytes([i % 251]) * size for i, size in enumerate(sizes))
    wire = b"".join(bytes(a.send(bytes([i % 251]) * size)) for i, size in enumerate(sizes))
    received = bytearray()
    pieces = itertools.cycle(cuts or [MAX_RECEIVE])
    how = itertools.cycle(kinds)
    at = 0
    while at < len(wire):
        kind = next(how)
        piece = wire[at : at + next(pieces)]
        at += len(piece)
        b.receive_data(bytearray(piece) if kind == "bytearray" else piece)
        assert b.buffered <= MAX_BUFFER
        if kind == "bytes, not drained" and at < len(wire) and b.buffered + MAX_RECEIVE <= MAX_BUFFER:
            continue
        while (data := b.next_data()) is not None:
            received += data
    b.check_eof()  # nothing left half-read
    assert received == sent


@FAST
@given(parts=st.lists(st.integers(min_value=0, max_value=2 * MAX_PAYLOAD + 3), max_size=4))
def test_parts_arrive_as_their_bytes_one_after_the_other(parts: list[int]) -> None:
    """send_parts frames each part by itself (a part starts a frame); the peer reads the
    parts' bytes in order, as if they had been joined and sent at once."""
    a, b = ik_pair()
    data = [bytes([i + 1]) * size for i, size in enumerate(parts)]
    wire = a.send_parts(data)
    received = bytearray()
    for start in range(0, len(wire), MAX_RECEIVE):  # a driver's reads
        b.receive_data(wire[start : start + MAX_RECEIVE])
        while (chunk := b.next_data()) is not None:
            received += chunk
    b.check_eof()
    assert received == b"".join(data)


# --- Misuse is a local error -----------------------------------------------------------------------------


def test_responder_cannot_be_told_the_remote_key() -> None:
    with pytest.raises(LocalProtocolError):
        NoiseSession(
            initiator=False,
            identity=BOB.public_key,
            static_private=BOB.noise_private_key,
            remote_identity=ALICE.public_key,
        )


def test_responder_cannot_initiate() -> None:
    with pytest.raises(LocalProtocolError):
        responder().initiate()


def test_initiate_twice() -> None:
    a = initiator(BOB)
    a.initiate()
    with pytest.raises(LocalProtocolError):
        a.initiate()


@pytest.mark.parametrize("remote", [BOB, None], ids=["IK", "XX"])
def test_send_before_the_handshake(remote: Identity | None) -> None:
    a = initiator(remote)
    with pytest.raises(LocalProtocolError):
        a.send(b"too early")
    a.initiate()
    with pytest.raises(LocalProtocolError):
        a.send(b"still too early")
    with pytest.raises(LocalProtocolError):
        responder().send(b"x")


def test_responder_cannot_send_before_xx_message_3() -> None:
    a, b = initiator(None), responder()
    feed(b, a.initiate())
    assert not b.handshake_done
    with pytest.raises(LocalProtocolError):
        b.send(b"before alice proved who she is")


def test_receive_after_failure_is_local_misuse() -> None:
    b = responder()
    with pytest.raises(HandshakeError):
        feed(b, _framed(b"bad"))
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"more")


def test_peer_speaking_out_of_turn_is_remote() -> None:
    # An initiator that has not started, or an XX initiator waiting to send message 3, gets a frame.
    with pytest.raises(RemoteProtocolError):
        feed(initiator(BOB), _framed(bytes(100)))
    a, b = initiator(None), responder()
    feed(b, a.initiate())
    feed(a, b.data_to_send())
    with pytest.raises(RemoteProtocolError):
        feed(a, _framed(bytes(48)))
