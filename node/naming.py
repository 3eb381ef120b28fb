"""How things are named on the command line and in config: service ids and HOST:PORT.

Kept apart from `node.services` because the client needs only these, and every import
on `hubnode call`'s path costs a Pi time on every call.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from dht.addresses import parse_hostport
from identity.errors import ConfigError
from identity.keys import decode_peer_id

SERVICE_ID_LEN = 16

_NAME_RE = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,63}")
_HEX_ID_RE = re.compile(r"[0-9A-Fa-f]{32}")


def service_id_for_name(name: str) -> bytes:
    """The default id of a service: a domain-separated hash of its name."""
    return hashlib.blake2b(b"hubnet/service/v1/" + name.encode(), digest_size=32).digest()[:SERVICE_ID_LEN]


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


@dataclass(frozen=True)
class Target:
    """Where to call: `PEER_ID@HOST:PORT` pins the key; `HOST:PORT` trusts on first use."""

    host: str
    port: int
    peer: bytes | None = None

    @classmethod
    def parse(cls, text: str) -> Target:
        peer = None
        if "@" in text:
            peer_text, text = text.split("@", 1)
            peer = decode_peer_id(peer_text)
        host, port = parse_hostport(text)
        return cls(host, port, peer)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
