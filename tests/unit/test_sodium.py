"""identity.sodium against PyNaCl's own bindings: the same libsodium, called the same way."""

from __future__ import annotations

from collections.abc import Callable

import nacl.bindings as nb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.identity import sodium

keys = st.binary(min_size=32, max_size=32)
FAST = settings(max_examples=40, deadline=None)


@FAST
@given(seed=keys, message=st.binary(max_size=300))
def test_ed25519_matches_pynacl(seed: bytes, message: bytes) -> None:
    public, secret = sodium.sign_seed_keypair(seed)
    assert (public, secret) == tuple(bytes(k) for k in nb.crypto_sign_seed_keypair(seed))
    signature = sodium.sign(message, secret)
    assert signature == bytes(nb.crypto_sign(message, secret))[:64]
    assert sodium.verify(public, message, signature)
    assert not sodium.verify(public, message + b"x", signature)
    assert not sodium.verify(public, message, signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not sodium.verify(public[:31], message, signature)  # wrong sizes are a plain no
    assert sodium.ed25519_pk_to_curve25519(public) == bytes(nb.crypto_sign_ed25519_pk_to_curve25519(public))
    assert sodium.ed25519_sk_to_curve25519(secret) == bytes(nb.crypto_sign_ed25519_sk_to_curve25519(secret))


@FAST
@given(scalar=keys, other=keys)
def test_x25519_matches_pynacl(scalar: bytes, other: bytes) -> None:
    point = sodium.scalarmult_base(other)
    assert point == bytes(nb.crypto_scalarmult_base(other))
    assert sodium.scalarmult(scalar, point) == bytes(nb.crypto_scalarmult(scalar, point))


def test_small_order_points_are_refused() -> None:
    assert sodium.scalarmult(bytes(range(32)), bytes(32)) is None
    assert sodium.ed25519_pk_to_curve25519(bytes(32)) is None


@FAST
@given(key=keys, message=st.binary(max_size=200), ad=st.binary(max_size=20))
def test_aead_matches_pynacl(key: bytes, message: bytes, ad: bytes) -> None:
    nonce = bytes(range(12))
    out = bytearray(len(message) + sodium.TAG_LEN)
    sodium.aead_encrypt(out, message, ad, nonce, key)
    assert bytes(out) == nb.crypto_aead_chacha20poly1305_ietf_encrypt(message, ad, nonce, key)
    back = bytearray(len(message))
    assert sodium.aead_decrypt(back, out, ad, nonce, key) and back == message
    out[0] ^= 1
    assert not sodium.aead_decrypt(back, out, ad, nonce, key)
    assert not sodium.aead_decrypt(bytearray(0), bytes(sodium.TAG_LEN - 1), ad, nonce, key)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sodium.scalarmult_base(bytes(31)),
        lambda: sodium.scalarmult(bytes(32), bytes(33)),
        lambda: sodium.aead_encrypt(bytearray(10), b"x", b"", bytes(12), bytes(32)),
        lambda: sodium.aead_encrypt(bytearray(17), b"x", b"", bytes(11), bytes(32)),
        lambda: sodium.aead_decrypt(bytearray(5), bytes(17), b"", bytes(12), bytes(32)),
        lambda: sodium.sign(b"x", bytes(32)),
        lambda: sodium.sign_seed_keypair(bytes(31)),
        lambda: sodium.ed25519_sk_to_curve25519(bytes(32)),
    ],
)
def test_a_buffer_of_the_wrong_size_is_refused_before_libsodium_sees_it(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()
