"""The routing table: the `kademlia` package's k-buckets, without its asyncio.

`kademlia.routing.RoutingTable` is transport-free except in one place: when a full bucket
meets a new contact it schedules an asyncio ping of the bucket's least-recently-seen
contact. Here that decision is returned to the driver instead (sans-IO), which pings and
then calls `evict` or `add_contact` again. Bucket refresh times are kept here too, on the
caller's clock, because the package reads `time.monotonic` itself.
"""

from __future__ import annotations

import heapq

from kademlia.routing import RoutingTable as _KademliaTable

from hubnet.dht.ids import ID_BITS, ID_LEN, K
from hubnet.dht.messages import Contact

__all__ = ["K", "RoutingTable"]


class RoutingTable(_KademliaTable):  # type: ignore[misc]  # kademlia is untyped
    """The contacts a node knows, at most k per bucket, most recently seen last."""

    def __init__(self, own: Contact, *, k: int = K) -> None:
        super().__init__(protocol=None, ksize=k, node=own)
        self._refreshed: dict[int, float] = {}

    def add_contact(self, node: Contact) -> Contact | None:
        """Add or refresh `node`; if its bucket is full, return the contact to ping.

        Kademlia keeps old contacts that still answer (they tend to stay up), so a full
        bucket parks the newcomer as a replacement and asks for its head to be pinged.
        """
        if node.id == self.node.id:
            return None
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        if bucket.add_node(node):
            return None
        # Split as the paper (section 4.2) says: our own range, or depth not 0 mod 5.
        if bucket.has_in_range(self.node) or bucket.depth() % 5 != 0:
            self.split_bucket(index)
            return self.add_contact(node)
        head: Contact = bucket.head()
        return head

    def evict(self, node: Contact) -> None:
        """`node` stopped answering: drop it, promoting a parked replacement if any."""
        self.remove_contact(node)

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
