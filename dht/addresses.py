"""Typed addresses: where a node's job port can be dialled.

An address is either **direct** (`HOST:PORT`, a TCP port that accepts connections) or
**via a relay** (the relay's peer id and direct address, and the peer id of the node
behind it). Offers and node records carry these, the client dials them through a dialer,
and the node accepts through listeners; a relay reservation is then one more listener.

Text form (config files, `--server`, logs):

    HOST:PORT | [V6]:PORT                          direct
    RELAY_PEER@HOST:PORT/circuit/TARGET_PEER        via the relay RELAY_PEER at HOST:PORT

Wire form (msgpack, inside signed offers and node records):

    [0, host, port]                                 direct
    [1, relay_public_key, host, port, target_public_key]   via a relay

A decoder meets every value from the network as hostile: `decode_address` raises
`InvalidAddress` for anything but these shapes within their limits. Records written before
typed addresses carried direct addresses only, offers as "HOST:PORT" strings and node
records as `[host, port]` pairs; `decode_address` still reads both as direct addresses
(see docs/protocol.md, "Versioning"). Neither can be mistaken for a typed one: a typed
address starts with an integer kind, a legacy pair with a string host.
"""

from __future__ import annotations

import re

from hubnet.identity.errors import ConfigError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import PUBLIC_KEY_LEN, decode_peer_id, encode_peer_id

DEFAULT_PORT = 7070
MAX_HOST_CHARS = 253
MAX_ADDRESS_CHARS = 400  # the longest text form: a relay address with an IPv6 relay

_HOST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}")
_DIRECT = 0
_RELAYED = 1
_CIRCUIT = "/circuit/"


class InvalidAddress(ValueError):
    """An address from the wire that is not one of the two shapes, or out of limits."""


@frozen
class DirectAddress:
    """A TCP port that accepts connections."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@frozen
class RelayAddress:
    """`target` reached through the relay `relay_peer` at `relay`: the relay splices the stream,
    and Noise runs end to end inside it, so the relay sees only ciphertext."""

    relay_peer: bytes
    relay: DirectAddress
    target: bytes

    def __str__(self) -> str:
        return f"{encode_peer_id(self.relay_peer)}@{self.relay}{_CIRCUIT}{encode_peer_id(self.target)}"


Address = DirectAddress | RelayAddress


def parse_hostport(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse "HOST:PORT", "[v6]:PORT", ":PORT" or a bare "HOST" / "[v6]".

    An empty host (":PORT") means every interface when listening; callers decide what it
    means elsewhere. Port 0 is accepted so a listener can ask for any free port. Bare IPv6
    without brackets is refused: "::1:7070" has no single reading.
    """
    bad = ConfigError(f"not a HOST:PORT address: {text!r}")
    s = text.strip()
    port_text: str | None = None
    if s.startswith("["):
        host, close, rest = s[1:].partition("]")
        import ipaddress  # only bracketed IPv6 needs it

        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad from None
        if not close or (rest and not rest.startswith(":")):
            raise bad
        port_text = rest[1:] if rest else None
    else:
        host, colon, port_text = s.rpartition(":") if ":" in s else (s, "", None)
        if ":" in host:
            raise ConfigError(f"not a HOST:PORT address: {text!r} (write IPv6 as [addr]:port)")
        if (host or not colon) and not _HOST_RE.fullmatch(host):
            raise bad
    if port_text is None:
        return host, default_port
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or int(port_text) > 65535:
        raise bad
    return host, int(port_text)


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """An address in its text form (see the module docstring); ConfigError names what was typed."""
    if _CIRCUIT not in text:
        host, port = parse_hostport(text, default_port)
        if not host or port == 0:
            raise ConfigError(f"not a dialable HOST:PORT address: {text!r}")
        return DirectAddress(host, port)
    head, _, target_text = text.partition(_CIRCUIT)
    relay_text, at, relay_hostport = head.partition("@")
    if not at:
        raise ConfigError(f"a relay address is RELAY_PEER@HOST:PORT/circuit/TARGET_PEER, not {text!r}")
    relay = parse_address(relay_hostport, default_port)
    assert isinstance(relay, DirectAddress)
    return RelayAddress(decode_peer_id(relay_text), relay, decode_peer_id(target_text))


def encode_address(address: Address) -> list[object]:
    """The wire form of `address` (a msgpack-ready list)."""
    if isinstance(address, DirectAddress):
        return [_DIRECT, address.host, address.port]
    return [_RELAYED, address.relay_peer, address.relay.host, address.relay.port, address.target]


def _direct(host: object, port: object) -> DirectAddress:
    if not (isinstance(host, str) and 0 < len(host) <= MAX_HOST_CHARS and host.isprintable()):
        raise InvalidAddress("an address host must be a short printable string")
    if any(c.isspace() for c in host) or host.startswith("[") or "/" in host or "@" in host:
        raise InvalidAddress(f"not a host: {host!r}")
    if not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        raise InvalidAddress("an address port must be in 1..65535")
    return DirectAddress(host, port)


def _key(value: object) -> bytes:
    if not (isinstance(value, bytes) and len(value) == PUBLIC_KEY_LEN):
        raise InvalidAddress("a peer id in an address must be 32 bytes")
    return value


def decode_address(value: object) -> Address:
    """An address from the wire; raises InvalidAddress for anything else."""
    if isinstance(value, str):
        # The form offers had before typed addresses: "HOST:PORT".
        if len(value) > MAX_ADDRESS_CHARS or _CIRCUIT in value:
            raise InvalidAddress("an address string must be a short HOST:PORT")
        try:
            host, port = parse_hostport(value)
        except ConfigError as exc:
            raise InvalidAddress(str(exc)) from None
        return _direct(host, port)
    if not (isinstance(value, list | tuple) and value):
        raise InvalidAddress("an address must be [kind, ...]")
    if len(value) == 2 and isinstance(value[0], str):
        # The form node records had before typed addresses: [host, port].
        return _direct(*value)
    kind, *fields = value
    if not (isinstance(kind, int) and not isinstance(kind, bool)):
        raise InvalidAddress("an address must be [kind, ...] with an integer kind")
    if kind == _DIRECT and len(fields) == 2:
        return _direct(*fields)
    if kind == _RELAYED and len(fields) == 4:
        relay_peer, host, port, target = fields
        return RelayAddress(_key(relay_peer), _direct(host, port), _key(target))
    raise InvalidAddress(f"unknown address kind {kind!r} or wrong field count")
