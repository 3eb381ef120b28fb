"""Ed25519 identities and peer ids.

A peer id is the node's Ed25519 public key. People see it as lowercase base32 (52
characters, no padding); hex is accepted too. The Noise static key is the X25519 key
converted from the Ed25519 key, so one key file is the whole identity.
"""

from __future__ import annotations

import _thread  # threading's get_ident, without threading's import
import base64
import binascii
import os
from pathlib import Path

# libsodium through `identity.sodium` rather than nacl.signing or nacl.bindings: their
# modules cost a Pi many milliseconds on every call.
from hubnet.identity import sodium
from hubnet.identity.errors import ConfigError

PUBLIC_KEY_LEN = 32
SEED_LEN = 32
SIGNATURE_LEN = 64
_KEY_FILE_MAGIC = b"hubnet-ed25519-seed:"


def encode_peer_id(public_key: bytes) -> str:
    """The canonical text form of a peer id: lowercase base32 without padding."""
    if len(public_key) != PUBLIC_KEY_LEN:
        raise ValueError("a peer id is a 32-byte Ed25519 public key")
    return base64.b32encode(public_key).decode("ascii").rstrip("=").lower()


def decode_peer_id(text: str) -> bytes:
    """Parse a peer id given as base32 (52 chars) or hex (64 chars)."""
    text = text.strip()
    try:
        if len(text) == 2 * PUBLIC_KEY_LEN:
            raw = bytes.fromhex(text)
        elif len(text) == 52:
            raw = base64.b32decode(text.upper() + "====")
        else:
            raise ConfigError(f"not a peer id (want 52 base32 or 64 hex characters): {text!r}")
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"not a peer id: {text!r}") from exc
    if len(raw) != PUBLIC_KEY_LEN:
        raise ConfigError(f"not a peer id: {text!r}")
    if len(text) == 52 and encode_peer_id(raw) != text.lower():
        # 52 characters carry 260 bits and a key has 256: the last character's four low bits
        # must be zero, or 16 spellings would name one key (and a typo there would go unseen).
        raise ConfigError(
            f"not a peer id: {text!r} ends in {text[-1]!r}, but the last character of a peer id "
            "is always 'a' or 'q' (only its top bit is part of the key); check the id you typed"
        )
    return raw


def fingerprint(public_key: bytes) -> str:
    """A short form for logs and prompts; never used to authenticate."""
    return encode_peer_id(public_key)[:8]


def noise_public_key(public_key: bytes) -> bytes:
    """The X25519 public key a peer uses in Noise, derived from its Ed25519 key."""
    converted = sodium.ed25519_pk_to_curve25519(public_key) if len(public_key) == PUBLIC_KEY_LEN else None
    if converted is None:
        shown = encode_peer_id(public_key) if len(public_key) == PUBLIC_KEY_LEN else public_key.hex()
        raise ConfigError(f"peer id {shown} is not a valid Ed25519 public key (no node can have it)")
    return converted


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is `public_key`'s Ed25519 signature of `message`."""
    return sodium.verify(public_key, message, signature)


class Identity:
    """A node's or client's long-term key pair, made from a 32-byte seed.

    A plain class rather than a `hubnet.identity.frozen` one: its keys derive from the seed
    rather than being given, and the seed stays out of repr() so it never reaches a log.
    Immutable, and equal to another identity made from the same seed."""

    __slots__ = ("_secret_key", "public_key", "seed")
    seed: bytes
    public_key: bytes
    _secret_key: bytes

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("an identity seed is 32 bytes")
        public, secret = sodium.sign_seed_keypair(seed)
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "_secret_key", secret)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"an Identity is immutable: cannot assign {name!r}")

    def __eq__(self, other: object) -> bool:
        return other.__class__ is Identity and other.seed == self.seed

    def __hash__(self) -> int:
        return hash(self.seed)

    def __repr__(self) -> str:
        return f"Identity(public_key={self.public_key!r})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(sodium.random_bytes(SEED_LEN))

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        return cls(seed)

    @property
    def peer_id(self) -> str:
        return encode_peer_id(self.public_key)

    @property
    def noise_private_key(self) -> bytes:
        """The X25519 private key for Noise, converted from the Ed25519 key."""
        return sodium.ed25519_sk_to_curve25519(self._secret_key)

    def sign(self, message: bytes) -> bytes:
        return sodium.sign(message, self._secret_key)


def load_or_create_identity(path: Path) -> Identity:
    """Read the key file at `path`, creating it (mode 0600) on first use.

    The file holds a tagged hex seed; it is written via a temporary file and
    `os.link` so two processes starting at once cannot both write a key.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create_identity(path)
    mode = path.stat().st_mode & 0o077
    if mode:
        raise ConfigError(f"{path}: identity key is readable by others; run: chmod 600 {path}")
    data = data.strip()
    if not data.startswith(_KEY_FILE_MAGIC):
        raise ConfigError(f"{path}: not a hubnet identity key")
    try:
        seed = bytes.fromhex(data[len(_KEY_FILE_MAGIC) :].decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: damaged identity key") from exc
    if len(seed) != SEED_LEN:
        raise ConfigError(f"{path}: damaged identity key")
    return Identity(seed)


def _create_identity(path: Path) -> Identity:
    identity = Identity.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per thread too: the Python API may create a home's key from many threads at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{_thread.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_KEY_FILE_MAGIC + identity.seed.hex().encode("ascii") + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            # Another process won the race; its key is the identity.
            return load_or_create_identity(path)
    finally:
        tmp.unlink(missing_ok=True)
    return identity
