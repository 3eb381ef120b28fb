"""The libsodium calls hubnet makes, straight on the library that PyNaCl bundles.

`nacl.bindings` imports a module for every primitive libsodium has and checks each
argument in Python: about 20 ms of CPU on every `hubnode call`, most of a Pi's budget for
the crypto it needs. This module binds only what hubnet uses (X25519, ChaCha20-Poly1305,
Ed25519 and the conversion between the two curves, random bytes) as thin calls on PyNaCl's
own cffi library. Callers check sizes and keep the protocol's rules; each function here
checks the lengths the C function relies on, so that no call can read or write out of
bounds. cffi releases the GIL around every call.
"""

from __future__ import annotations

from nacl._sodium import ffi, lib

if lib.sodium_init() < 0:  # picks the fastest implementations; required before any other call
    raise ImportError("libsodium could not be initialised")

KEY_LEN = 32  # X25519 scalars and points, Ed25519 public keys and seeds, AEAD keys
NONCE_LEN = 12  # ChaCha20-Poly1305 (IETF)
TAG_LEN = 16
SIGNATURE_LEN = 64
_SECRET_KEY_LEN = 64  # libsodium's Ed25519 secret key: the seed, then the public key

Buffer = bytes | bytearray | memoryview


def _require(value: Buffer, length: int, what: str) -> None:
    if len(value) != length:
        raise ValueError(f"{what} must be {length} bytes, not {len(value)}")


def random_bytes(size: int) -> bytes:
    buf = ffi.new("unsigned char[]", size)
    lib.randombytes(buf, size)
    return bytes(ffi.buffer(buf, size))


def scalarmult_base(scalar: bytes) -> bytes:
    """The X25519 public key of `scalar`."""
    _require(scalar, KEY_LEN, "an X25519 private key")
    point = ffi.new("unsigned char[]", KEY_LEN)
    lib.crypto_scalarmult_base(point, scalar)
    return bytes(ffi.buffer(point, KEY_LEN))


def scalarmult(scalar: bytes, point: bytes) -> bytes | None:
    """The X25519 shared secret of `scalar` and `point`; None when libsodium refuses the
    point (one of small order, which would make the secret public)."""
    _require(scalar, KEY_LEN, "an X25519 private key")
    _require(point, KEY_LEN, "an X25519 public key")
    shared = ffi.new("unsigned char[]", KEY_LEN)
    if lib.crypto_scalarmult(shared, scalar, point) != 0:
        return None
    return bytes(ffi.buffer(shared, KEY_LEN))


def aead_encrypt(out: Buffer, message: Buffer, ad: bytes, nonce: bytes, key: bytes) -> None:
    """ChaCha20-Poly1305 (IETF) of `message` into `out`, a writable buffer of exactly
    len(message) + TAG_LEN bytes."""
    _require(out, len(message) + TAG_LEN, "the ciphertext buffer")
    _require(nonce, NONCE_LEN, "a nonce")
    _require(key, KEY_LEN, "a key")
    with ffi.from_buffer(out, require_writable=True) as c, ffi.from_buffer(message) as m:
        done = lib.crypto_aead_chacha20poly1305_ietf_encrypt(
            c, ffi.NULL, m, len(message), ad or ffi.NULL, len(ad), ffi.NULL, nonce, key
        )
    if done != 0:
        raise ValueError("libsodium refused to encrypt")


def aead_decrypt(out: Buffer, ciphertext: Buffer, ad: bytes, nonce: bytes, key: bytes) -> bool:
    """Check and decrypt `ciphertext` into `out` (exactly len(ciphertext) - TAG_LEN bytes);
    False, with `out` undefined, when it does not authenticate."""
    if len(ciphertext) < TAG_LEN:
        return False
    _require(out, len(ciphertext) - TAG_LEN, "the plaintext buffer")
    _require(nonce, NONCE_LEN, "a nonce")
    _require(key, KEY_LEN, "a key")
    with ffi.from_buffer(out, require_writable=True) as m, ffi.from_buffer(ciphertext) as c:
        done = lib.crypto_aead_chacha20poly1305_ietf_decrypt(
            m, ffi.NULL, ffi.NULL, c, len(ciphertext), ad or ffi.NULL, len(ad), nonce, key
        )
    return bool(done == 0)


def sign_seed_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, libsodium's secret key) of the Ed25519 key pair made from `seed`."""
    _require(seed, KEY_LEN, "an Ed25519 seed")
    public = ffi.new("unsigned char[]", KEY_LEN)
    secret = ffi.new("unsigned char[]", _SECRET_KEY_LEN)
    lib.crypto_sign_seed_keypair(public, secret, seed)
    return bytes(ffi.buffer(public, KEY_LEN)), bytes(ffi.buffer(secret, _SECRET_KEY_LEN))


def sign(message: bytes, secret_key: bytes) -> bytes:
    """The Ed25519 signature of `message`."""
    _require(secret_key, _SECRET_KEY_LEN, "an Ed25519 secret key")
    signed = ffi.new("unsigned char[]", len(message) + SIGNATURE_LEN)
    lib.crypto_sign(signed, ffi.NULL, message, len(message), secret_key)
    return bytes(ffi.buffer(signed, SIGNATURE_LEN))


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is `public_key`'s Ed25519 signature of `message`."""
    if len(public_key) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    signed = signature + message
    opened = ffi.new("unsigned char[]", len(signed))
    return bool(lib.crypto_sign_open(opened, ffi.NULL, signed, len(signed), public_key) == 0)


def ed25519_pk_to_curve25519(public_key: bytes) -> bytes | None:
    """The X25519 public key of an Ed25519 one; None when it is not a valid point."""
    _require(public_key, KEY_LEN, "an Ed25519 public key")
    converted = ffi.new("unsigned char[]", KEY_LEN)
    if lib.crypto_sign_ed25519_pk_to_curve25519(converted, public_key) != 0:
        return None
    return bytes(ffi.buffer(converted, KEY_LEN))


def ed25519_sk_to_curve25519(secret_key: bytes) -> bytes:
    """The X25519 private key of an Ed25519 secret key."""
    _require(secret_key, _SECRET_KEY_LEN, "an Ed25519 secret key")
    converted = ffi.new("unsigned char[]", KEY_LEN)
    lib.crypto_sign_ed25519_sk_to_curve25519(converted, secret_key)
    return bytes(ffi.buffer(converted, KEY_LEN))
