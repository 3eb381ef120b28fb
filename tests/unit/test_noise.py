"""Tests of identity.noise: the published cacophony vectors, then properties checked with Hypothesis."""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity import sodium
from hubnet.identity.errors import DecryptError, HandshakeError, LocalProtocolError
from hubnet.identity.noise import (
    _HASHES,
    BULK_MESSAGE,
    MAX_MESSAGE_LEN,
    TAG_LEN,
    CipherState,
    HandshakeState,
    generate_keypair,
    public_key,
)

# The cacophony vectors are carried in the repository (see tests/vectors/noise/README.md).
VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors/noise/cacophony.json"

EXPECTED_VECTOR_PROTOCOLS = {
    "Noise_NN_25519_ChaChaPoly_BLAKE2b",
    "Noise_XX_25519_ChaChaPoly_BLAKE2b",
    "Noise_XX_25519_ChaChaPoly_SHA256",
    "Noise_IK_25519_ChaChaPoly_BLAKE2b",
    "Noise_IK_25519_ChaChaPoly_SHA256",
}

PATTERNS = ("NN", "XX", "IK")
PROTOCOLS = tuple(f"Noise_{p}_25519_ChaChaPoly_{h}" for p in PATTERNS for h in ("BLAKE2b", "SHA256"))
HANDSHAKE_LENGTH = {"NN": 2, "XX": 3, "IK": 2}

FAST = settings(max_examples=100, deadline=None)

protocols = st.sampled_from(PROTOCOLS)
payloads = st.binary(max_size=100)


# --- Test vectors ---------------------------------------------------------------------------------------


def _vector_params() -> list[Any]:
    """One pytest.param per vector, or one that fails when the file cannot be read (never a skip)."""
    try:
        vectors = json.loads(VECTORS_PATH.read_text())["vectors"]
    except (OSError, ValueError, KeyError) as exc:
        return [pytest.param({"error": f"{VECTORS_PATH}: {exc!r}"}, id="vectors-unreadable")]
    if not vectors:
        return [pytest.param({"error": f"{VECTORS_PATH} holds no vectors"}, id="vectors-empty")]
    params = []
    seen: dict[str, int] = {}
    for vector in vectors:
        name = vector["protocol_name"]
        seen[name] = seen.get(name, 0) + 1
        params.append(pytest.param(vector, id=name if seen[name] == 1 else f"{name}-{seen[name]}"))
    return params


def test_vector_file_covers_every_protocol() -> None:
    vectors = json.loads(VECTORS_PATH.read_text())["vectors"]
    assert {v["protocol_name"] for v in vectors} >= EXPECTED_VECTOR_PROTOCOLS


@pytest.mark.parametrize("vector", _vector_params())
def test_vector(vector: dict[str, Any]) -> None:
    if "error" in vector:
        pytest.fail(vector["error"])

    def key(name: str) -> bytes | None:
        return bytes.fromhex(vector[name]) if name in vector else None

    initiator = HandshakeState(
        vector["protocol_name"],
        True,
        prologue=bytes.fromhex(vector["init_prologue"]),
        s=key("init_static"),
        e=key("init_ephemeral"),
        rs=key("init_remote_static"),
    )
    responder = HandshakeState(
        vector["protocol_name"],
        False,
        prologue=bytes.fromhex(vector["resp_prologue"]),
        s=key("resp_static"),
        e=key("resp_ephemeral"),
        rs=key("resp_remote_static"),
    )
    transport: tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]] | None = None
    for index, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        from_initiator = index % 2 == 0
        if transport is None:
            writer, reader = (initiator, responder) if from_initiator else (responder, initiator)
            ciphertext = writer.write_message(payload)
            received = reader.read_message(ciphertext)
            if initiator.complete:
                assert responder.complete
                if "handshake_hash" in vector:
                    assert initiator.handshake_hash.hex() == vector["handshake_hash"]
                    assert responder.handshake_hash.hex() == vector["handshake_hash"]
                transport = (initiator.split(), responder.split())
        else:
            (init_send, init_recv), (resp_recv, resp_send) = transport
            sender, receiver = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
            ciphertext = sender.encrypt_with_ad(b"", payload)
            received = receiver.decrypt_with_ad(b"", ciphertext)
        assert ciphertext.hex() == message["ciphertext"], f"message {index}"
        assert received == payload, f"message {index}"
    assert transport is not None, "the vector never completed its handshake"


# --- Helpers --------------------------------------------------------------------------------------------


def _pattern(protocol: str) -> str:
    return protocol.split("_")[1]


def _peers(
    protocol: str,
    *,
    rs: bytes | None = None,
    initiator_prologue: bytes = b"",
    responder_prologue: bytes = b"",
) -> tuple[HandshakeState, HandshakeState, bytes, bytes]:
    """Fresh initiator and responder for `protocol`, with the static public keys they hold."""
    init_priv, init_pub = generate_keypair()
    resp_priv, resp_pub = generate_keypair()
    pattern = _pattern(protocol)
    statics = pattern != "NN"
    initiator = HandshakeState(
        protocol,
        True,
        prologue=initiator_prologue,
        s=init_priv if statics else None,
        rs=(rs or resp_pub) if pattern == "IK" else None,
    )
    responder = HandshakeState(protocol, False, prologue=responder_prologue, s=resp_priv if statics else None)
    return initiator, responder, init_pub, resp_pub


def _sides(initiator: HandshakeState, responder: HandshakeState, index: int) -> tuple[HandshakeState, ...]:
    """(writer, reader) of handshake message `index`."""
    return (initiator, responder) if index % 2 == 0 else (responder, initiator)


def _handshake(
    initiator: HandshakeState, responder: HandshakeState, handshake_payloads: list[bytes] | None = None
) -> None:
    index = 0
    while not (initiator.complete and responder.complete):
        writer, reader = _sides(initiator, responder, index)
        payload = handshake_payloads[index] if handshake_payloads else b""
        assert reader.read_message(writer.write_message(payload)) == payload
        index += 1


def _transport(protocol: str) -> tuple[tuple[CipherState, CipherState], tuple[CipherState, CipherState]]:
    initiator, responder, _, _ = _peers(protocol)
    _handshake(initiator, responder)
    return initiator.split(), responder.split()


def _tampered_handshake(protocol: str, target: int, tamper: Any) -> int:
    """Run a handshake where message `target` goes through `tamper`; return the index of the read
    that raised HandshakeError, checking the failed side is dead afterwards."""
    initiator, responder, _, _ = _peers(protocol)
    for index in range(HANDSHAKE_LENGTH[_pattern(protocol)]):
        writer, reader = _sides(initiator, responder, index)
        message = writer.write_message(b"payload")
        if index == target:
            message = tamper(message)
        try:
            reader.read_message(message)
        except HandshakeError:
            _assert_dead(reader)
            return index
    pytest.fail("the tampered handshake completed")


def _assert_dead(state: HandshakeState) -> None:
    assert not state.complete
    for call in (
        lambda: state.write_message(b""),
        lambda: state.read_message(bytes(100)),
        state.split,
        lambda: state.handshake_hash,
        lambda: state.remote_static,
    ):
        with pytest.raises(LocalProtocolError):
            call()


def _detected_at(protocol: str, target: int) -> int:
    """Where tampering with message `target` must be caught: at once, except for the first message of NN
    and XX which nothing authenticates yet; the peer notices it in the next message's hash and keys."""
    return target + 1 if target == 0 and _pattern(protocol) != "IK" else target


# --- Round trips ----------------------------------------------------------------------------------------


@FAST
@given(protocol=protocols, data=st.data())
def test_round_trip(protocol: str, data: st.DataObject) -> None:
    initiator, responder, _, _ = _peers(protocol)
    handshake_payloads = data.draw(st.lists(payloads, min_size=3, max_size=3))
    _handshake(initiator, responder, handshake_payloads)
    assert initiator.handshake_hash == responder.handshake_hash
    (init_send, init_recv), (resp_recv, resp_send) = initiator.split(), responder.split()
    for from_initiator, payload in data.draw(st.lists(st.tuples(st.booleans(), payloads), max_size=8)):
        sender, receiver = (init_send, resp_recv) if from_initiator else (resp_send, init_recv)
        ciphertext = sender.encrypt_with_ad(b"ad", payload)
        assert len(ciphertext) == len(payload) + TAG_LEN
        assert receiver.decrypt_with_ad(b"ad", ciphertext) == payload


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_remote_static(protocol: str) -> None:
    initiator, responder, init_pub, resp_pub = _peers(protocol)
    pattern = _pattern(protocol)
    assert initiator.remote_static == (resp_pub if pattern == "IK" else None)
    assert responder.remote_static is None
    _handshake(initiator, responder)
    assert initiator.remote_static == (None if pattern == "NN" else resp_pub)
    assert responder.remote_static == (None if pattern == "NN" else init_pub)


@FAST
@given(protocol=protocols, prologues=st.tuples(st.binary(max_size=8), st.binary(max_size=8)))
def test_prologue_mismatch_fails(protocol: str, prologues: tuple[bytes, bytes]) -> None:
    init_prologue, resp_prologue = prologues
    initiator, responder, _, _ = _peers(
        protocol, initiator_prologue=init_prologue, responder_prologue=resp_prologue
    )
    if init_prologue == resp_prologue:
        _handshake(initiator, responder)
        return
    with pytest.raises(HandshakeError):
        _handshake(initiator, responder)


# --- Tampering ------------------------------------------------------------------------------------------


@FAST
@given(protocol=protocols, data=st.data())
def test_handshake_bit_flip_fails(protocol: str, data: st.DataObject) -> None:
    target = data.draw(st.integers(0, HANDSHAKE_LENGTH[_pattern(protocol)] - 1))

    def flip(message: bytes) -> bytes:
        bit = data.draw(st.integers(0, 8 * len(message) - 1), label="bit")
        changed = bytearray(message)
        changed[bit // 8] ^= 1 << (bit % 8)
        return bytes(changed)

    assert _tampered_handshake(protocol, target, flip) == _detected_at(protocol, target)


@FAST
@given(protocol=protocols, data=st.data())
def test_handshake_truncation_fails(protocol: str, data: st.DataObject) -> None:
    target = data.draw(st.integers(0, HANDSHAKE_LENGTH[_pattern(protocol)] - 1))
    cut = data.draw(st.integers(1, 200))
    failed_at = _tampered_handshake(protocol, target, lambda message: message[: max(0, len(message) - cut)])
    # Cutting into the unauthenticated payload of a first NN/XX message is only noticed by the next read.
    assert failed_at in {target, _detected_at(protocol, target)}


@FAST
@given(protocol=protocols, payload=payloads, data=st.data())
def test_transport_bit_flip_fails_without_consuming_the_nonce(
    protocol: str, payload: bytes, data: st.DataObject
) -> None:
    (send, _), (recv, _) = _transport(protocol)
    ciphertext = send.encrypt_with_ad(b"", payload)
    bit = data.draw(st.integers(0, 8 * len(ciphertext) - 1))
    changed = bytearray(ciphertext)
    changed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", bytes(changed))
    assert recv.decrypt_with_ad(b"", ciphertext) == payload


@FAST
@given(protocol=protocols, payload=payloads, data=st.data())
def test_transport_truncation_fails(protocol: str, payload: bytes, data: st.DataObject) -> None:
    (send, _), (recv, _) = _transport(protocol)
    ciphertext = send.encrypt_with_ad(b"", payload)
    length = data.draw(st.integers(0, len(ciphertext) - 1))
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", ciphertext[:length])
    assert recv.decrypt_with_ad(b"", ciphertext) == payload


@FAST
@given(protocol=protocols, first=payloads, second=payloads)
def test_transport_out_of_order_and_replay_fail(protocol: str, first: bytes, second: bytes) -> None:
    (_, recv), (_, send) = _transport(protocol)  # responder to initiator this time
    message0 = send.encrypt_with_ad(b"", first)
    message1 = send.encrypt_with_ad(b"", second)
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", message1)
    assert recv.decrypt_with_ad(b"", message0) == first
    assert recv.decrypt_with_ad(b"", message1) == second
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", message0)


def test_transport_wrong_ad_fails() -> None:
    (send, _), (recv, _) = _transport("Noise_XX_25519_ChaChaPoly_SHA256")
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"other", send.encrypt_with_ad(b"ad", b"hello"))


@pytest.mark.parametrize("hash_name", ["BLAKE2b", "SHA256"])
def test_ik_wrong_remote_static_fails_at_responder(hash_name: str) -> None:
    protocol = f"Noise_IK_25519_ChaChaPoly_{hash_name}"
    initiator, responder, _, _ = _peers(protocol, rs=generate_keypair()[1])
    with pytest.raises(HandshakeError):
        responder.read_message(initiator.write_message(b"hello"))
    _assert_dead(responder)


def test_low_order_ephemeral_fails_at_the_dh() -> None:
    # NN: the responder reads the bad `e` (no DH yet) and fails on `ee` when it writes.
    initiator, responder, _, _ = _peers("Noise_NN_25519_ChaChaPoly_SHA256")
    initiator.write_message(b"")
    responder.read_message(bytes(32))
    with pytest.raises(HandshakeError):
        responder.write_message(b"")
    _assert_dead(responder)
    # IK: `es` follows `e` in the first message, so the read itself fails.
    initiator, responder, _, _ = _peers("Noise_IK_25519_ChaChaPoly_SHA256")
    message = initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(32) + message[32:])
    _assert_dead(responder)


# --- State machine --------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_wrong_turn_raises_and_leaves_state_usable(protocol: str) -> None:
    initiator, responder, _, _ = _peers(protocol)
    with pytest.raises(LocalProtocolError):
        initiator.read_message(bytes(64))
    with pytest.raises(LocalProtocolError):
        responder.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.split()
    message = initiator.write_message(b"")
    with pytest.raises(LocalProtocolError):
        initiator.write_message(b"")
    responder.read_message(message)
    with pytest.raises(LocalProtocolError):
        responder.read_message(message)
    _handshake_rest(initiator, responder, start=1)
    for state in (initiator, responder):
        with pytest.raises(LocalProtocolError):
            state.write_message(b"")
        with pytest.raises(LocalProtocolError):
            state.read_message(bytes(64))
        state.split()
        with pytest.raises(LocalProtocolError):
            state.split()  # a second pair would reuse nonces


def _handshake_rest(initiator: HandshakeState, responder: HandshakeState, start: int) -> None:
    index = start
    while not (initiator.complete and responder.complete):
        writer, reader = _sides(initiator, responder, index)
        reader.read_message(writer.write_message(b""))
        index += 1


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Noise",
        "noise_XX_25519_ChaChaPoly_SHA256",
        "Noise_KK_25519_ChaChaPoly_SHA256",
        "Noise_XXpsk3_25519_ChaChaPoly_SHA256",
        "Noise_XX_448_ChaChaPoly_SHA256",
        "Noise_XX_25519_AESGCM_SHA256",
        "Noise_XX_25519_ChaChaPoly_SHA512",
        "Noise_XX_25519_ChaChaPoly_SHA256_extra",
    ],
)
def test_bad_protocol_name(name: str) -> None:
    with pytest.raises(LocalProtocolError):
        HandshakeState(name, True, s=generate_keypair()[0])


def test_missing_or_misplaced_keys() -> None:
    s, rs = generate_keypair()[0], generate_keypair()[1]
    xx, ik = "Noise_XX_25519_ChaChaPoly_BLAKE2b", "Noise_IK_25519_ChaChaPoly_BLAKE2b"
    bad: list[dict[str, Any]] = [
        {"protocol_name": xx, "initiator": True},
        {"protocol_name": xx, "initiator": False},
        {"protocol_name": ik, "initiator": True, "s": s},
        {"protocol_name": ik, "initiator": True, "rs": rs},
        {"protocol_name": ik, "initiator": False},
        # rs where the pattern learns it would look like pinning but be overwritten.
        {"protocol_name": xx, "initiator": True, "s": s, "rs": rs},
        {"protocol_name": ik, "initiator": False, "s": s, "rs": rs},
        # Wrong key lengths.
        {"protocol_name": xx, "initiator": True, "s": s[:31]},
        {"protocol_name": ik, "initiator": True, "s": s, "rs": rs + b"\x00"},
        {"protocol_name": xx, "initiator": True, "s": s, "e": b""},
    ]
    for kwargs in bad:
        with pytest.raises(LocalProtocolError):
            HandshakeState(**kwargs)
    HandshakeState("Noise_NN_25519_ChaChaPoly_SHA256", True, s=s)  # an unused static key is ignored


# --- Limits ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_handshake_message_size_limit(protocol: str) -> None:
    initiator, responder, _, _ = _peers(protocol)
    # First message overhead: `e`, plus for IK an encrypted `s` and the payload tag.
    overhead = 32 + (32 + TAG_LEN + TAG_LEN if _pattern(protocol) == "IK" else 0)
    with pytest.raises(LocalProtocolError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - overhead + 1))
    message = initiator.write_message(bytes(MAX_MESSAGE_LEN - overhead))  # still usable
    assert len(message) == MAX_MESSAGE_LEN
    assert responder.read_message(message) == bytes(MAX_MESSAGE_LEN - overhead)

    _, responder, _, _ = _peers(protocol)
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(MAX_MESSAGE_LEN + 1))
    _assert_dead(responder)


def test_transport_message_size_limit() -> None:
    (send, _), (recv, _) = _transport("Noise_NN_25519_ChaChaPoly_BLAKE2b")
    with pytest.raises(LocalProtocolError):
        send.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - TAG_LEN + 1))
    ciphertext = send.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN - TAG_LEN))
    assert len(ciphertext) == MAX_MESSAGE_LEN
    assert recv.decrypt_with_ad(b"", ciphertext) == bytes(MAX_MESSAGE_LEN - TAG_LEN)
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", ciphertext + b"\x00")


def test_nonce_exhaustion() -> None:
    (send, _), (recv, _) = _transport("Noise_XX_25519_ChaChaPoly_BLAKE2b")
    send.set_nonce(2**64 - 2)
    recv.set_nonce(2**64 - 2)
    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(LocalProtocolError):
        send.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(LocalProtocolError):
        recv.decrypt_with_ad(b"", bytes(TAG_LEN))
    for bad in (-1, 2**64):
        with pytest.raises(LocalProtocolError):
            send.set_nonce(bad)


# --- CipherState and keys -------------------------------------------------------------------------------


def test_cipher_state_without_key_passes_through() -> None:
    state = CipherState()
    assert not state.has_key()
    assert state.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert state.decrypt_with_ad(b"ad", b"plain") == b"plain"
    with pytest.raises(LocalProtocolError):
        state.encrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))
    with pytest.raises(DecryptError):
        state.decrypt_with_ad(b"", bytes(MAX_MESSAGE_LEN + 1))
    with pytest.raises(LocalProtocolError):
        CipherState(bytes(31))


def test_rekey_keeps_both_sides_in_step() -> None:
    (send, _), (recv, _) = _transport("Noise_NN_25519_ChaChaPoly_SHA256")
    send.rekey()
    with pytest.raises(DecryptError):
        recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"x"))
    recv.rekey()
    recv.set_nonce(1)
    assert recv.decrypt_with_ad(b"", send.encrypt_with_ad(b"", b"y")) == b"y"


def test_keys() -> None:
    private, public = generate_keypair()
    assert len(private) == len(public) == 32
    assert public_key(private) == public
    assert generate_keypair()[0] != private
    with pytest.raises(LocalProtocolError):
        public_key(private[:16])
    assert "CipherState" in repr(CipherState(bytes(32))) and bytes(32).hex() not in repr(
        CipherState(bytes(32))
    )


# --- two implementations of one AEAD: libsodium for small messages, OpenSSL for bulk ones ------------------


@settings(max_examples=40, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    nonce=st.integers(min_value=0, max_value=2**64 - 2),
    size=st.sampled_from([0, 1, BULK_MESSAGE - 1, BULK_MESSAGE, BULK_MESSAGE + 1, MAX_MESSAGE_LEN - TAG_LEN]),
    ad=st.sampled_from([b"", bytes(64)]),
)
def test_both_cipher_paths_write_the_bytes_libsodium_writes(
    key: bytes, nonce: int, size: int, ad: bytes
) -> None:
    """Small messages go through libsodium, bulk ones through OpenSSL (with or without
    associated data, as handshake payloads have it): the same AEAD, so the same bytes as
    libsodium's own, and each side reads the other's."""
    plaintext = bytes(i % 253 for i in range(size))
    writer, reader = CipherState(key), CipherState(key)
    for cs in (writer, reader):
        cs.set_nonce(nonce)
    expected = bytearray(size + TAG_LEN)
    sodium.aead_encrypt(expected, plaintext, ad, bytes(4) + nonce.to_bytes(8, "little"), key)
    ciphertext = writer.encrypt_with_ad(ad, memoryview(plaintext))
    assert ciphertext == expected and type(ciphertext) is bytes
    back = reader.decrypt_with_ad(ad, memoryview(ciphertext))
    assert back == plaintext and type(back) is bytes


@pytest.mark.parametrize("size", [10, BULK_MESSAGE + 10])
def test_either_path_refuses_a_tampered_message_and_keeps_its_nonce(size: int) -> None:
    sender, receiver = CipherState(bytes(32)), CipherState(bytes(32))
    wire = bytearray(sender.encrypt_with_ad(b"", bytes(size)))
    wire[3] ^= 1
    with pytest.raises(DecryptError):
        receiver.decrypt_with_ad(b"", bytes(wire))
    wire[3] ^= 1
    assert receiver.decrypt_with_ad(b"", bytes(wire)) == bytes(size)  # the failure consumed no nonce


@settings(max_examples=200)
@given(
    name=st.sampled_from(["BLAKE2b", "SHA256"]),
    key=st.binary(max_size=300),  # past both block sizes: a long key is hashed first
    data=st.binary(max_size=300),
)
def test_hmac_is_rfc_2104s(name: str, key: bytes, data: bytes) -> None:
    """Built on the hash itself (hmac's import loads OpenSSL); the standard library's agrees."""
    assert _HASHES[name].hmac(key, data) == hmac.digest(key, data, name.lower())
