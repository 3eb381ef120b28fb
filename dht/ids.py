"""Identifiers in the DHT's 160-bit key space (the `kademlia` package's space).

A node's id is derived from its Ed25519 key, so nobody can place themselves next to a key
they want to eclipse without grinding keys; a service's key is derived from its service id
under a domain of its own, so the two kinds of key never collide by construction.
"""

from __future__ import annotations

from _blake2 import blake2b  # hashlib's, without loading OpenSSL (identity.noise)

ID_LEN = 20
K = 20  # bucket size, and how many nodes store each record
ID_BITS = ID_LEN * 8


def node_id(public_key: bytes) -> bytes:
    """The DHT id of the node whose Ed25519 public key is `public_key`."""
    return blake2b(public_key).digest()[:ID_LEN]


def service_key(service_id: bytes) -> bytes:
    """The DHT key under which the offers for a service are stored."""
    return blake2b(b"hubnet/service-key/1\x00" + service_id).digest()[:ID_LEN]


def distance(a: bytes, b: bytes) -> int:
    """Kademlia's XOR metric."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")
