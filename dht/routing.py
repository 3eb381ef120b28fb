"""The routing table: the `kademlia` package's k-buckets, without its asyncio.

`kademlia.routing.RoutingTable` is transport-free except in one place: when a full bucket
meets a new contact it schedules an asyncio ping of the bucket's least-recently-seen
contact. Here that decision is returned to the driver instead (sans-IO), which pings and
then calls `evict` or `add_contact` again. Bucket refresh times are kept here too, on the
caller's clock, because the package reads `time.monotonic` itself.

Keys are free, so the table also bounds what one source address may hold (as libp2p's
diversity filter does): one contact per address (`ip:port`), and from one network
(`dht.sources`: a public /24 or IPv6 /48) at most `MAX_PER_NETWORK_PER_BUCKET` contacts in
a bucket and `MAX_PER_NETWORK` in the table. A loopback or private `ip:port` is a network of
its own, so a dozen nodes on one machine or LAN all fit.
"""

from __future__ import annotations

import heapq
from typing import Any

from kademlia.routing import RoutingTable as _KademliaTable

from hubnet.dht.ids import ID_BITS, ID_LEN, K
from hubnet.dht.messages import Contact
from hubnet.dht.sources import classify

__all__ = ["MAX_PER_NETWORK", "MAX_PER_NETWORK_PER_BUCKET", "K", "RoutingTable"]

MAX_PER_NETWORK_PER_BUCKET = 2
MAX_PER_NETWORK = 10


class RoutingTable(_KademliaTable):  # type: ignore[misc]  # kademlia is untyped
    """The contacts a node knows, at most k per bucket, most recently seen last."""

    def __init__(self, own: Contact, *, k: int = K) -> None:
        super().__init__(protocol=None, ksize=k, node=own)
        self._refreshed: dict[int, float] = {}
        # The buckets' contacts (not the parked replacements) by address, and per network.
        self._at: dict[tuple[str, int], Contact] = {}
        self._per_network: dict[str, int] = {}

    def _index(self, contact: Contact) -> None:
        self._at[contact.address] = contact
        network = classify(contact.address).network
        self._per_network[network] = self._per_network.get(network, 0) + 1

    def _unindex(self, contact: Contact) -> None:
        del self._at[contact.address]
        network = classify(contact.address).network
        if self._per_network[network] == 1:
            del self._per_network[network]
        else:
            self._per_network[network] -= 1

    def add_contact(self, node: Contact) -> Contact | None:
        """Add or refresh `node`; if its bucket is full, return the contact to ping.

        Kademlia keeps old contacts that still answer (they tend to stay up), so a full
        bucket parks the newcomer as a replacement and asks for its head to be pinged. A
        newcomer at the address of another contact asks for that one to be pinged instead
        (it is added once the other has gone); one over its network's quota is left out.
        """
        if node.id == self.node.id:
            return None
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        known: Contact | None = bucket.nodes.get(node.id)
        if known is None or known.address != node.address:
            clash, admissible = self._admissible(node)
            if clash is not None:
                return clash
            if not admissible:
                return None
        if bucket.add_node(node):
            if known is not None:
                self._unindex(known)
            self._index(node)
            return None
        # Split as the paper (section 4.2) says: our own range, or depth not 0 mod 5.
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            for contact in bucket.nodes.values():
                self._unindex(contact)
            self.split_bucket(index)
            for half in self.buckets[index : index + 2]:
                self._prune(half)  # a split promotes parked replacements: check them all again
            return self.add_contact(node)
        head: Contact = bucket.head()
        return head

    def find(self, node: Contact) -> Contact | None:
        """The contact the table holds with `node`'s id (at whatever address), or None."""
        found: Contact | None = self.buckets[self.get_bucket_for(node)].nodes.get(node.id)
        return found

    def wants(self, node: Contact) -> bool:
        """Whether `add_contact(node)` would add it now (not park it, refuse it or ask a ping)."""
        if node.id == self.node.id:
            return False
        bucket = self.buckets[self.get_bucket_for(node)]
        clash, admissible = self._admissible(node)
        if clash is not None or not admissible:
            return False
        if node.id in bucket.nodes:
            return True
        # As add_contact would: split while the bucket is full and may split, then look.
        low, high = bucket.range
        ids = [c.long_id for c in bucket.nodes.values()]
        while len(ids) >= self.ksize:
            if not (low <= self.node.long_id <= high or _depth(ids) % 5 != 0):
                return False
            middle = (low + high) // 2
            low, high = (low, middle) if node.long_id <= middle else (middle + 1, high)
            ids = [i for i in ids if low <= i <= high]
        return True

    def _admissible(self, node: Contact) -> tuple[Contact | None, bool]:
        """(another contact at `node`'s address, or None; whether `node`'s network has room)."""
        clash = self._at.get(node.address)
        if clash is not None and clash.id != node.id:
            return clash, False
        source = classify(node.address)
        if source.local:  # a network of its own, which holds this address only
            return None, True
        bucket = self.buckets[self.get_bucket_for(node)]
        known = bucket.nodes.get(node.id)
        in_table = self._per_network.get(source.network, 0)
        if known is not None and classify(known.address).network == source.network:
            in_table -= 1
        in_bucket = sum(
            1
            for c in bucket.nodes.values()
            if c.id != node.id and classify(c.address).network == source.network
        )
        return None, in_bucket < MAX_PER_NETWORK_PER_BUCKET and in_table < MAX_PER_NETWORK

    def _prune(self, bucket: Any) -> None:
        """Keep (and index) the contacts of a bucket not yet indexed that are admissible, oldest first."""
        for contact in list(bucket.nodes.values()):
            del bucket.nodes[contact.id]
            if self._admissible(contact) == (None, True):
                bucket.nodes[contact.id] = contact
                self._index(contact)

    def evict(self, node: Contact) -> None:
        """`node` stopped answering: drop it, promoting an admissible parked replacement if any.

        Only the very contact (key and address): a contact named at another address did not
        fail at the one the table knows.
        """
        bucket = self.buckets[self.get_bucket_for(node)]
        if bucket.nodes.get(node.id) != node:
            if bucket.replacement_nodes.get(node.id) == node:
                del bucket.replacement_nodes[node.id]
            return
        del bucket.nodes[node.id]
        self._unindex(node)
        while bucket.replacement_nodes:
            _, candidate = bucket.replacement_nodes.popitem()
            if self._admissible(candidate) == (None, True):
                bucket.nodes[candidate.id] = candidate
                self._index(candidate)
                break

    def contacts(self) -> list[Contact]:
        return [c for bucket in self.buckets for c in bucket.get_nodes()]

    def closest(self, target: bytes, count: int | None = None) -> list[Contact]:
        """The `count` (default k) known contacts closest to `target`.

        Not the package's `find_neighbors`: its traverser stops at the first empty bucket
        on the right even when buckets on the left still hold contacts.
        """
        long_id = int.from_bytes(target, "big")
        return heapq.nsmallest(count or self.ksize, self.contacts(), key=lambda c: c.long_id ^ long_id)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self.buckets)

    # -- refresh, on the caller's clock ----------------------------------------------

    def mark_refreshed(self, target: bytes, now: float) -> None:
        """A lookup for `target` just ran: its bucket needs no refresh for a while."""
        self._refreshed[self._bucket_start(target)] = now

    def stale_buckets(self, now: float, interval: float) -> list[bytes]:
        """A target inside each bucket not looked up for `interval` seconds, to look up now."""
        targets = []
        for bucket in self.buckets:
            low, high = bucket.range
            if self._refreshed.get(low, float("-inf")) < now - interval:
                self._refreshed[low] = now
                middle = min((low + high) // 2, 2**ID_BITS - 1)
                targets.append(middle.to_bytes(ID_LEN, "big"))
        return targets

    def _bucket_start(self, target: bytes) -> int:
        long_id = int.from_bytes(target, "big")
        for bucket in self.buckets:
            if long_id < bucket.range[1]:
                low: int = bucket.range[0]
                return low
        return 0


def _depth(ids: list[int]) -> int:
    """The bits that all of `ids` share from the top (the package's `KBucket.depth`)."""
    spread = max((i ^ ids[0] for i in ids), default=0)
    return ID_BITS - spread.bit_length()
