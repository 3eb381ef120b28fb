"""The Noise Protocol Framework (revision 34), sans-IO.

Only what hubnet speaks: handshake patterns NN, XX and IK over DH 25519 and ChaChaPoly, with BLAKE2b or
SHA256 as the hash. The module does no I/O, reads no clock and imports no event loop: callers feed it bytes
and get bytes back, so the same code runs under trio, in tests and against the published test vectors.

The objects and methods carry the specification's names (`CipherState.encrypt_with_ad`,
`HandshakeState.write_message`, `split`, ...) so that the spec can be read alongside the code. Primitives
come from libsodium (PyNaCl's build, through `identity.sodium`); HMAC (RFC 2104) and HKDF are built on
the hash as section 4.3 prescribes. Pre-shared keys (and so `MixKeyAndHash`) are not supported.
"""

from __future__ import annotations

# hashlib's own BLAKE2b and the comparison behind hmac.compare_digest, built into the
# interpreter: importing hashlib or hmac loads OpenSSL (`_hashlib`), which cost a cold
# `hubnode call` about 6 ms before it had sent a byte.
from _blake2 import blake2b
from _operator import _compare_digest as compare_digest
from collections.abc import Callable
from enum import Enum

from hubnet.identity import sodium
from hubnet.identity.cheap_typing import TYPE_CHECKING, Protocol
from hubnet.identity.errors import DecryptError, HandshakeError, LocalProtocolError
from hubnet.identity.frozen import frozen

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

__all__ = [
    "DHLEN",
    "MAX_MESSAGE_LEN",
    "TAG_LEN",
    "CipherState",
    "HandshakeState",
    "generate_keypair",
    "public_key",
]

MAX_MESSAGE_LEN = 65535
"""Largest Noise message, handshake or transport, in bytes (spec section 3)."""

TAG_LEN = 16
"""Length of the ChaChaPoly authentication tag appended to every ciphertext."""

DHLEN = 32
"""Length of an X25519 public key, private key and shared secret."""

_KEY_LEN = 32
# Nonce 2**64 - 1 is reserved (spec section 5.1); reaching it means the CipherState is used up.
_MAX_NONCE = 2**64 - 1
# Messages from this size on go through OpenSSL's ChaCha20-Poly1305 (the
# `cryptography` package), which runs several times faster per byte here than the portable
# libsodium that PyNaCl bundles: the same AEAD (RFC 8439), so the same bytes on the wire.
# It is imported at the first such message, so a small call never pays for its import.
BULK_MESSAGE = 4096


# --- DH 25519 -------------------------------------------------------------------------------------------


def public_key(private: bytes) -> bytes:
    """Return the X25519 public key of a 32-byte private key."""
    _check_key_length(private, "private key")
    return sodium.scalarmult_base(private)


def generate_keypair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 key pair as (private, public).

    Any 32 random bytes are a valid private key: X25519 clamps the scalar itself.
    """
    private = sodium.random_bytes(DHLEN)
    return private, public_key(private)


def _dh(private: bytes, remote_public: bytes) -> bytes:
    """X25519 shared secret; raise HandshakeError when it is all zeros.

    An all-zero result means the peer sent a low-order point, which would make the "secret" public.
    libsodium already refuses it (`sodium.scalarmult` then says None); the explicit check keeps us safe
    whichever way the binding reports it. `compare_digest` keeps the comparison constant-time on secret data.
    """
    shared = sodium.scalarmult(private, remote_public)
    if shared is None:
        raise HandshakeError("DH with the peer's key failed (low-order point)")
    if compare_digest(shared, bytes(DHLEN)):
        raise HandshakeError("DH with the peer's key gave an all-zero secret (low-order point)")
    return shared


def _check_key_length(key: bytes, what: str) -> None:
    if len(key) != DHLEN:
        raise LocalProtocolError(f"{what} must be {DHLEN} bytes, not {len(key)}")


@frozen
class _KeyPair:
    """A local X25519 key pair; the private half is kept out of repr() so it never reaches a log."""

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        return f"_KeyPair(public={self.public!r})"

    @classmethod
    def from_private(cls, private: bytes) -> _KeyPair:
        return cls(private, public_key(private))


# --- Hash functions -------------------------------------------------------------------------------------


class _Hasher(Protocol):
    def digest(self) -> bytes: ...


def _sha256(data: bytes) -> _Hasher:
    import hashlib  # only here: SHA256 serves the published test vectors, never a hubnet session

    return hashlib.sha256(data)


# HMAC's key pads (RFC 2104): each key byte XORed with 0x36 (inner) or 0x5C (outer).
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))


@frozen
class _Hash:
    """A Noise hash function: how to start one over some data, HASHLEN and BLOCKLEN."""

    new: Callable[[bytes], _Hasher]
    hashlen: int
    blocklen: int

    def hash(self, data: bytes) -> bytes:
        return self.new(data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-HASH(key, data), RFC 2104."""
        if len(key) > self.blocklen:
            key = self.hash(key)
        key = key.ljust(self.blocklen, b"\x00")
        inner = self.hash(key.translate(_IPAD) + data)
        return self.hash(key.translate(_OPAD) + inner)

    def hkdf(self, chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
        """HKDF with two outputs (spec section 4.3); Noise without PSKs never needs the third."""
        temp_key = self.hmac(chaining_key, input_key_material)
        output1 = self.hmac(temp_key, b"\x01")
        output2 = self.hmac(temp_key, output1 + b"\x02")
        return output1, output2


_HASHES = {
    "BLAKE2b": _Hash(blake2b, 64, 128),
    "SHA256": _Hash(_sha256, 32, 64),
}


# --- Handshake patterns ---------------------------------------------------------------------------------


class _Token(Enum):
    """A handshake token. For the DH tokens the first letter is the initiator's key, the second the
    responder's: `es` is DH(initiator's e, responder's s)."""

    E = "e"
    S = "s"
    EE = "ee"
    ES = "es"
    SE = "se"
    SS = "ss"


E, S, EE, ES, SE, SS = _Token.E, _Token.S, _Token.EE, _Token.ES, _Token.SE, _Token.SS


@frozen
class _Pattern:
    """A handshake pattern: pre-messages and message token lists.

    Messages alternate, the initiator writing the even-numbered ones (0, 2, ...).
    """

    initiator_pre: tuple[_Token, ...]
    responder_pre: tuple[_Token, ...]
    messages: tuple[tuple[_Token, ...], ...]

    def uses_static(self, initiator: bool) -> bool:
        """Whether the given side's static key takes part: pre-known, sent, or used in a DH."""
        own_pre = self.initiator_pre if initiator else self.responder_pre
        if S in own_pre:
            return True
        position = 0 if initiator else 1  # which letter of a DH token is this side's key
        for index, tokens in enumerate(self.messages):
            writes = (index % 2 == 0) == initiator
            for token in tokens:
                if (token is S and writes) or (len(token.value) == 2 and token.value[position] == "s"):
                    return True
        return False


_PATTERNS = {
    "NN": _Pattern((), (), ((E,), (E, EE))),
    "XX": _Pattern((), (), ((E,), (E, EE, S, ES), (S, SE))),
    # IK: the initiator knows the responder's static key beforehand ("<- s" pre-message).
    "IK": _Pattern((), (S,), ((E, ES, S, SS), (E, EE, SE))),
}


@frozen
class _Protocol:
    """A parsed protocol name such as ``Noise_XX_25519_ChaChaPoly_BLAKE2b``."""

    name: str
    pattern: _Pattern
    hash: _Hash

    @classmethod
    def parse(cls, name: str) -> _Protocol:
        parts = name.split("_")
        if len(parts) != 5 or parts[0] != "Noise":
            raise LocalProtocolError(f"not a Noise protocol name: {name!r}")
        _, pattern, dh, cipher, hash_name = parts
        if pattern not in _PATTERNS:
            raise LocalProtocolError(f"unsupported handshake pattern {pattern!r} in {name!r}")
        if dh != "25519":
            raise LocalProtocolError(f"unsupported DH function {dh!r} in {name!r}")
        if cipher != "ChaChaPoly":
            raise LocalProtocolError(f"unsupported cipher {cipher!r} in {name!r}")
        if hash_name not in _HASHES:
            raise LocalProtocolError(f"unsupported hash {hash_name!r} in {name!r}")
        return cls(name, _PATTERNS[pattern], _HASHES[hash_name])


# --- CipherState ----------------------------------------------------------------------------------------


class CipherState:
    """A key `k` (possibly empty) and a 64-bit nonce `n` (spec section 5.1).

    With no key, encryption and decryption pass the data through unchanged, as the spec requires for
    the first handshake messages. Each direction of a transport gets its own CipherState from `split`.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._k: bytes | None = None
        self._bulk: ChaCha20Poly1305 | None = None  # OpenSSL's cipher under `_k`, once needed
        self._n = 0
        self.initialize_key(key)

    def __repr__(self) -> str:
        # Never show the key.
        return f"<CipherState has_key={self.has_key()} n={self._n}>"

    def initialize_key(self, key: bytes | None) -> None:
        """Set the key (None empties it) and reset the nonce to zero."""
        if key is not None and len(key) != _KEY_LEN:
            raise LocalProtocolError(f"cipher key must be {_KEY_LEN} bytes, not {len(key)}")
        self._k = key
        self._bulk = None
        self._n = 0

    def has_key(self) -> bool:
        """Whether a key is set, i.e. whether this CipherState really encrypts."""
        return self._k is not None

    def set_nonce(self, nonce: int) -> None:
        """Set the nonce of the next encryption or decryption (for out-of-band counters and tests)."""
        if not 0 <= nonce <= _MAX_NONCE:
            raise LocalProtocolError(f"nonce out of range: {nonce}")
        self._n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt and authenticate `plaintext`, authenticating `ad` too; the nonce then advances.

        The ciphertext comes back as the cipher wrote it, never copied into another buffer
        here. Raises LocalProtocolError if the result would exceed MAX_MESSAGE_LEN or the
        nonces are used up.
        """
        if self._k is None:
            if len(plaintext) > MAX_MESSAGE_LEN:
                raise LocalProtocolError(f"message of {len(plaintext)} bytes exceeds {MAX_MESSAGE_LEN}")
            return bytes(plaintext)
        if len(plaintext) + TAG_LEN > MAX_MESSAGE_LEN:
            raise LocalProtocolError(
                f"plaintext of {len(plaintext)} bytes exceeds {MAX_MESSAGE_LEN - TAG_LEN} with the tag"
            )
        self._check_nonce()
        if len(plaintext) >= BULK_MESSAGE:
            # It takes any buffer (its stubs before 45 say bytes), so no copy goes in.
            ciphertext = self._bulk_aead().encrypt(_nonce(self._n), plaintext, ad or None)  # type: ignore[arg-type]
        else:
            out = bytearray(len(plaintext) + TAG_LEN)
            sodium.aead_encrypt(out, plaintext, ad, _nonce(self._n), self._k)
            ciphertext = bytes(out)
        self._n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes | bytearray | memoryview) -> bytes:
        """Check and decrypt `ciphertext` against `ad`; the nonce advances only on success.

        Raises DecryptError on a bad tag, a too short or too long message; LocalProtocolError when the
        nonces are used up.
        """
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise DecryptError(f"message of {len(ciphertext)} bytes exceeds {MAX_MESSAGE_LEN}")
        if self._k is None:
            return bytes(ciphertext)
        if len(ciphertext) < TAG_LEN:
            raise DecryptError(f"message of {len(ciphertext)} bytes is shorter than the tag")
        self._check_nonce()
        if len(ciphertext) - TAG_LEN >= BULK_MESSAGE:
            from cryptography.exceptions import InvalidTag

            try:
                plaintext = self._bulk_aead().decrypt(_nonce(self._n), ciphertext, ad or None)  # type: ignore[arg-type]
            except InvalidTag:
                raise DecryptError("message failed authentication") from None
        else:
            out = bytearray(len(ciphertext) - TAG_LEN)
            if not sodium.aead_decrypt(out, ciphertext, ad, _nonce(self._n), self._k):
                # Leave n alone: the spec says a failed decryption does not consume a nonce.
                raise DecryptError("message failed authentication")
            plaintext = bytes(out)
        self._n += 1
        return plaintext

    def _bulk_aead(self) -> ChaCha20Poly1305:
        assert self._k is not None
        if self._bulk is None:
            from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

            self._bulk = ChaCha20Poly1305(self._k)
        return self._bulk

    def rekey(self) -> None:
        """Replace the key by REKEY(k) (spec sections 4.2 and 11.3); the nonce is kept."""
        if self._k is None:
            raise LocalProtocolError("rekey without a key")
        encrypted = bytearray(_KEY_LEN + TAG_LEN)
        sodium.aead_encrypt(encrypted, bytes(_KEY_LEN), b"", _nonce(_MAX_NONCE), self._k)
        self._k = bytes(encrypted[:_KEY_LEN])
        self._bulk = None

    def _check_nonce(self) -> None:
        if self._n >= _MAX_NONCE:
            raise LocalProtocolError("nonces exhausted: this CipherState must not be used any more")


def _nonce(n: int) -> bytes:
    """ChaChaPoly's 96-bit nonce for Noise: 32 zero bits, then n as a little-endian 64-bit integer."""
    return bytes(4) + n.to_bytes(8, "little")


# --- SymmetricState -------------------------------------------------------------------------------------


class _SymmetricState:
    """The chaining key `ck`, the handshake hash `h` and a CipherState (spec section 5.2)."""

    def __init__(self, protocol: _Protocol) -> None:
        """InitializeSymmetric: h is the padded name, or its hash when longer than HASHLEN."""
        self._hash = protocol.hash
        name = protocol.name.encode("ascii")
        hashlen = self._hash.hashlen
        self.h = name.ljust(hashlen, b"\x00") if len(name) <= hashlen else self._hash.hash(name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = self._hash.hkdf(self.ck, input_key_material)
        # A 64-byte hash output is cut to the 32-byte cipher key.
        self.cipher.initialize_key(temp_k[:_KEY_LEN])

    def mix_hash(self, data: bytes) -> None:
        self.h = self._hash.hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        temp_k1, temp_k2 = self._hash.hkdf(self.ck, b"")
        return CipherState(temp_k1[:_KEY_LEN]), CipherState(temp_k2[:_KEY_LEN])


# --- HandshakeState -------------------------------------------------------------------------------------


class HandshakeState:
    """One side of a Noise handshake (spec section 5.3).

    `s` and `e` are 32-byte X25519 private keys; `e` is normally left out and generated when the pattern
    needs it (tests pass it to replay vectors). `rs` is the remote static public key: required by an IK
    initiator, refused where the pattern learns it during the handshake (a caller passing it there would
    wrongly believe it pinned the peer; compare `remote_static` after the handshake instead). A static
    key the pattern never uses is accepted and ignored.

    Once a read or a DH fails the state is dead: every later call raises LocalProtocolError, so a
    half-authenticated handshake can never be continued by mistake.
    """

    def __init__(
        self,
        protocol_name: str,
        initiator: bool,
        *,
        prologue: bytes = b"",
        s: bytes | None = None,
        e: bytes | None = None,
        rs: bytes | None = None,
    ) -> None:
        protocol = _Protocol.parse(protocol_name)
        pattern = protocol.pattern
        self._pattern = pattern
        self._initiator = initiator
        self._s = _KeyPair.from_private(s) if s is not None else None
        self._e = _KeyPair.from_private(e) if e is not None else None
        self._re: bytes | None = None
        self._rs: bytes | None = None
        if rs is not None:
            _check_key_length(rs, "remote static key")
            self._rs = rs

        remote_pre = pattern.responder_pre if initiator else pattern.initiator_pre
        if pattern.uses_static(initiator) and self._s is None:
            raise LocalProtocolError(f"{protocol_name} needs a local static key (s)")
        if S in remote_pre and self._rs is None:
            raise LocalProtocolError(f"{protocol_name} needs the remote static key (rs) beforehand")
        if S not in remote_pre and self._rs is not None:
            raise LocalProtocolError(f"{protocol_name} learns the remote static key; do not pass rs")

        self._symmetric = _SymmetricState(protocol)
        self._symmetric.mix_hash(prologue)
        # Pre-messages are hashed in pattern order, initiator's first, whichever side we are.
        for pre_initiator, tokens in ((True, pattern.initiator_pre), (False, pattern.responder_pre)):
            for token in tokens:
                self._symmetric.mix_hash(self._pre_message_key(token, local=pre_initiator == initiator))

        self._message_index = 0
        self._failed = False
        self._split_done = False

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return f"<HandshakeState {role} message={self._message_index} complete={self.complete}>"

    # -- public properties --

    @property
    def complete(self) -> bool:
        """Whether every handshake message has been written or read successfully."""
        return not self._failed and self._message_index == len(self._pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        """The handshake hash `h`; once complete it identifies the session (channel binding)."""
        self._check_alive()
        return self._symmetric.h

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key once known (given up front for IK, learned for XX), else None."""
        self._check_alive()
        return self._rs

    # -- the handshake --

    def write_message(self, payload: bytes) -> bytes:
        """Produce our next handshake message carrying `payload` (encrypted once a key exists).

        Raises LocalProtocolError when it is not our turn, when the handshake is over or the message
        would exceed MAX_MESSAGE_LEN (checked before any state changes), HandshakeError when a DH with
        the peer's key fails.
        """
        tokens = self._next_tokens(writing=True)
        size = self._message_size(tokens, len(payload))
        if size > MAX_MESSAGE_LEN:
            raise LocalProtocolError(f"handshake message of {size} bytes would exceed {MAX_MESSAGE_LEN}")
        try:
            message = bytearray()
            for token in tokens:
                if token is E:
                    if self._e is None:
                        self._e = _KeyPair.from_private(generate_keypair()[0])
                    message += self._e.public
                    self._symmetric.mix_hash(self._e.public)
                elif token is S:
                    assert self._s is not None  # checked in __init__
                    message += self._symmetric.encrypt_and_hash(self._s.public)
                else:
                    self._symmetric.mix_key(self._dh_token(token))
            message += self._symmetric.encrypt_and_hash(payload)
        except HandshakeError:
            self._failed = True
            raise
        self._message_index += 1
        return bytes(message)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload.

        Raises LocalProtocolError when it is not our turn or the handshake is over, HandshakeError on
        any failure of the message itself (too long, truncated, tampered, low-order key); after a
        HandshakeError this object is dead.
        """
        tokens = self._next_tokens(writing=False)
        try:
            payload = self._read_tokens(tokens, message)
        except HandshakeError:
            self._failed = True
            raise
        except DecryptError as exc:
            # A bad tag inside the handshake is the handshake's failure, not a transport one.
            self._failed = True
            raise HandshakeError("handshake message failed authentication") from exc
        self._message_index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """Return the transport CipherStates (initiator-to-responder, responder-to-initiator).

        Allowed once: a second pair would reuse the same keys from nonce zero, which breaks ChaChaPoly.
        """
        self._check_alive()
        if not self.complete:
            raise LocalProtocolError("split before the handshake is complete")
        if self._split_done:
            raise LocalProtocolError("split may be called only once")
        self._split_done = True
        return self._symmetric.split()

    # -- internals --

    def _read_tokens(self, tokens: tuple[_Token, ...], message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise HandshakeError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE_LEN}")
        view = memoryview(message)
        for token in tokens:
            if token is E:
                self._re = _take(view, DHLEN, "ephemeral key")
                view = view[DHLEN:]
                self._symmetric.mix_hash(self._re)
            elif token is S:
                length = DHLEN + (TAG_LEN if self._symmetric.cipher.has_key() else 0)
                encrypted = _take(view, length, "static key")
                view = view[length:]
                self._rs = self._symmetric.decrypt_and_hash(encrypted)
            else:
                self._symmetric.mix_key(self._dh_token(token))
        if self._symmetric.cipher.has_key() and len(view) < TAG_LEN:
            raise HandshakeError("handshake message too short for its payload tag")
        return self._symmetric.decrypt_and_hash(bytes(view))

    def _next_tokens(self, *, writing: bool) -> tuple[_Token, ...]:
        """Check that the call fits the state machine and return the tokens of the next message."""
        self._check_alive()
        if self.complete:
            raise LocalProtocolError("the handshake is complete; use the CipherStates from split()")
        initiator_turn = self._message_index % 2 == 0
        if (initiator_turn == self._initiator) != writing:
            verb = "write" if writing else "read"
            raise LocalProtocolError(f"cannot {verb} handshake message {self._message_index}: wrong turn")
        return self._pattern.messages[self._message_index]

    def _check_alive(self) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake failed; this HandshakeState cannot be used")

    def _message_size(self, tokens: tuple[_Token, ...], payload_len: int) -> int:
        """Length of the message `tokens` and a payload would produce, without touching any state."""
        keyed = self._symmetric.cipher.has_key()
        size = 0
        for token in tokens:
            if token is E:
                size += DHLEN
            elif token is S:
                size += DHLEN + (TAG_LEN if keyed else 0)
            else:
                keyed = True  # every DH token ends in MixKey
        return size + payload_len + (TAG_LEN if keyed else 0)

    def _dh_token(self, token: _Token) -> bytes:
        """The DH a token asks for, seen from our side: `es` is DH(e, rs) for the initiator and
        DH(s, re) for the responder."""
        initiator_letter, responder_letter = token.value[0], token.value[1]
        local, remote = (
            (initiator_letter, responder_letter) if self._initiator else (responder_letter, initiator_letter)
        )
        local_pair = self._e if local == "e" else self._s
        remote_public = self._re if remote == "e" else self._rs
        # Patterns are fixed and keys were checked in __init__, so a missing key is a bug here.
        assert local_pair is not None and remote_public is not None
        return _dh(local_pair.private, remote_public)

    def _pre_message_key(self, token: _Token, *, local: bool) -> bytes:
        """The public key a pre-message token stands for: ours if we are its sender, else the peer's."""
        if token is not S:
            raise LocalProtocolError(f"unsupported pre-message token {token.value!r}")
        if local:
            assert self._s is not None
            return self._s.public
        assert self._rs is not None
        return self._rs


def _take(view: memoryview, length: int, what: str) -> bytes:
    """The first `length` bytes of `view`; HandshakeError when the message ends before."""
    if len(view) < length:
        raise HandshakeError(f"handshake message truncated in its {what}")
    return bytes(view[:length])
