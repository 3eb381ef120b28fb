"""Which key a node must present: pinned, remembered (trust on first use) or not yet known.

The decisions only; both client drivers (blocking and Trio) run the handshakes:

1. `expected_key`: the key to run IK with, or None for XX. A pinned key that contradicts
   a remembered one is refused before anything is sent (most likely a mistyped id).
2. If an IK handshake with the expected key fails, the driver learns the key the node
   presents now (an XX probe that sends nothing) and `explain_failure` says whether a
   remembered key changed (REMOTE KEY CHANGED, refused loudly, as ssh does), a pinned one
   is not the node's (check the id typed) or the failure was something else.
3. After an XX handshake, `remember` pins the key for next time.

Keys are remembered under `Target.trust_key`, the address as the user typed it: that is
what stays stable for them. A relayed address carries its node's key and never needs this.
"""

from __future__ import annotations

from collections.abc import Callable

from hubnet.identity.cheap_typing import Protocol
from hubnet.identity.errors import ConfigError, HostKeyMismatch
from hubnet.identity.keys import encode_peer_id
from hubnet.node.naming import Target


class KnownHostsStore(Protocol):
    """What the client needs from known_hosts (see `hubnet.known_hosts.KnownHosts`)."""

    def lookup(self, address: str) -> bytes | None: ...

    def add(self, address: str, peer: bytes) -> None: ...


class PinnedKeys:
    """A store for targets whose key is always given (discovered nodes: the key comes from
    their signed offer); it remembers nothing."""

    def lookup(self, address: str) -> bytes | None:
        return None

    def add(self, address: str, peer: bytes) -> None:
        raise AssertionError("a pinned target's key is never learned on first use")


def expected_key(target: Target, known_hosts: KnownHostsStore) -> bytes | None:
    """The key `target` must present, or None if it is unknown (then XX, and `remember`)."""
    if target.peer is None and isinstance(known_hosts, PinnedKeys):
        raise ConfigError(f"no key to check {target.address} by: give it as PEER_ID@{target.address}")
    remembered = known_hosts.lookup(target.trust_key)
    if target.peer is not None and remembered is not None and remembered != target.peer:
        # Not a changed key: nothing was asked of the node yet, and the likelier cause is a
        # slip in the id typed. Either way the pin and the memory disagree, so nothing is sent.
        where = getattr(known_hosts, "path", "known_hosts")
        raise HostKeyMismatch(
            f"{target.address} is remembered as {encode_peer_id(remembered)} in {where}, not the pinned "
            f"{encode_peer_id(target.peer)}: the pinned id does not match the node's key; check the id "
            f"you typed (`hubnode id` on the server prints it), or if the server really changed its "
            f"key, remove its line from {where}"
        )
    return target.peer or remembered


def explain_failure(target: Target, expected: bytes, actual: bytes, known_hosts: KnownHostsStore) -> None:
    """After a failed IK handshake: raise HostKeyMismatch if the node's key is not `expected`."""
    if actual == expected:
        return
    if target.peer is not None:
        raise HostKeyMismatch(
            f"{target.address} is {encode_peer_id(actual)}, not the pinned {encode_peer_id(expected)}: "
            "the pinned id does not match the node's key; check the id you typed "
            "(`hubnode id` on the server prints it)"
        )
    raise HostKeyMismatch(_changed_key_message(target, expected, actual, known_hosts))


def remember(
    target: Target, key: bytes, known_hosts: KnownHostsStore, announce: Callable[[str], None]
) -> None:
    """Pin the key an XX handshake learned, unless one was already remembered."""
    if known_hosts.lookup(target.trust_key) is None:
        known_hosts.add(target.trust_key, key)
        announce(f"hubnode: remembered {target.address} as {encode_peer_id(key)} (trust on first use)")


def _changed_key_message(target: Target, old: bytes, new: bytes, known_hosts: KnownHostsStore) -> str:
    where = getattr(known_hosts, "path", "known_hosts")
    return (
        f"REMOTE KEY CHANGED for {target.address}: remembered {encode_peer_id(old)}, "
        f"now {encode_peer_id(new)}; someone may be intercepting. "
        f"If the server really changed its key, remove its line from {where}"
    )
