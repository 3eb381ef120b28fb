"""How things are named on the command line and in config: service ids and HOST:PORT.

Kept apart from `node.services` because the client needs only these, and every import
on `hubnode call`'s path costs a Pi time on every call.
"""

from __future__ import annotations

import re
from _blake2 import blake2b  # hashlib's, without loading OpenSSL (identity.noise)

from hubnet.dht.addresses import Address, DirectAddress, RelayAddress, parse_address
from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import decode_peer_id

SERVICE_ID_LEN = 16

_NAME_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")
_HEX_ID_RE = re.compile(r"[0-9A-Fa-f]{32}")


def service_id_for_name(name: str) -> bytes:
    """The default id of a service: a domain-separated hash of its name."""
    return blake2b(b"hubnet/service/v1/" + name.encode(), digest_size=32).digest()[:SERVICE_ID_LEN]


def format_service_id(sid: bytes) -> str:
    """A service id as 32 upper-case hex digits."""
    return sid.hex().upper()


def parse_service_id(text: str) -> bytes | None:
    """The id if `text` is exactly 32 hex digits (any case), else None."""
    return bytes.fromhex(text) if _HEX_ID_RE.fullmatch(text) else None


def is_service_name(text: str) -> bool:
    """1-64 of A-Z a-z 0-9 . _ -, not starting with '-'."""
    return _NAME_RE.fullmatch(text) is not None


def resolve_service_ref(text: str) -> bytes:
    """What a user typed to name a service: a raw 32-hex id wins, else a service name."""
    sid = parse_service_id(text)
    if sid is not None:
        return sid
    if not is_service_name(text):
        raise ConfigError(
            f"not a service name or id: {text!r} (1-64 of A-Z a-z 0-9 . _ -, not starting with '-')"
        )
    return service_id_for_name(text)


@frozen
class Target:
    """Where to call: a typed address and, when known, the node's key.

    `PEER_ID@HOST:PORT` pins the key; `HOST:PORT` trusts on first use; a relayed address
    (`RELAY_PEER@HOST:PORT/circuit/PEER_ID`) names the node's key itself.
    """

    address: Address
    peer: bytes | None = None
    # More addresses of the same node, tried in order when `address` fails: its other relays.
    fallbacks: tuple[Address, ...] = ()

    @property
    def addresses(self) -> tuple[Address, ...]:
        return (self.address, *self.fallbacks)

    @classmethod
    def parse(cls, text: str) -> Target:
        if "/circuit/" in text:
            relayed = parse_address(text)
            assert isinstance(relayed, RelayAddress)
            return cls(relayed, relayed.target)
        peer = None
        if "@" in text:
            peer_text, text = text.split("@", 1)
            peer = decode_peer_id(peer_text)
        return cls(parse_address(text), peer)

    @property
    def direct(self) -> DirectAddress:
        """The direct address, for what only a direct address can reach (a DHT seed's UDP port)."""
        if not isinstance(self.address, DirectAddress):
            raise ConfigError(f"{self.address} is a relayed address; a DHT seed needs HOST:PORT")
        return self.address

    @property
    def trust_key(self) -> str:
        """What trust on first use remembers a key under: the address as the user gave it.

        Only direct addresses need it; a relayed address carries its node's key.
        """
        return str(self.address)
