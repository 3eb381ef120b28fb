"""A one-shot DHT client over a blocking UDP socket, for `hubnode call` on a small device.

It drives the same sans-IO `DhtProtocol` and `Lookup` as a serving node, without an event
loop (Trio alone costs a Pi about 100 ms to import): one socket, `select` for timeouts,
up to alpha queries in flight. It does not serve, so no node ever adds it to a table.

Given a tokens file, it keeps the tokens the nodes gave it for its next run, and the UDP
port they are for: a node answers a request that carries its token in full, so a caller
that asks again within `TOKEN_REUSE` reads a node's records in one request fewer.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hubnet.dht.ids import node_id
from hubnet.dht.lookup import RPC_TIMEOUT, Lookup, NodeRecordLookup, ProviderLookup, Query, Seed
from hubnet.dht.messages import MAX_DATAGRAM, TOKEN_LEN, AddProvider, Contact, FindNode, Stored
from hubnet.dht.protocol import MAX_TOKENS_KEPT, DhtProtocol, ReplyReceived
from hubnet.dht.records import Address, NodeRecord, ProviderRecord
from hubnet.files import replace_whole
from hubnet.identity.cheap_typing import TypeVar
from hubnet.identity.errors import TransportError
from hubnet.identity.frozen import frozen
from hubnet.identity.keys import Identity

TOKENS_HEADER = "# DHT tokens: the UDP port they are for, then HOST PORT TOKEN GIVEN_AT (Unix s) a line\n"


@frozen
class KeptTokens:
    """What a tokens file holds: the port, and the tokens given to it."""

    port: int
    tokens: tuple[tuple[Address, bytes, int], ...]


def read_tokens(path: Path) -> KeptTokens | None:
    """The tokens file at `path`, or None if there is none (or it names no port). Lines that
    do not parse are skipped: the file only saves round trips."""
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()[: MAX_TOKENS_KEPT + 2]
    except OSError:
        return None
    port = None
    tokens = []
    for line in lines:
        fields = line.split()
        try:
            if len(fields) == 2 and fields[0] == "port":
                port = _port(fields[1])
            elif len(fields) == 4 and len(token := bytes.fromhex(fields[2])) == TOKEN_LEN:
                tokens.append(((fields[0], _port(fields[1])), token, int(fields[3])))
        except ValueError:
            continue
    return None if port is None else KeptTokens(port, tuple(tokens))


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"not a port: {text}")
    return port


def tokens_text(kept: KeptTokens) -> str:
    lines = [f"{host} {port} {token.hex()} {when}\n" for (host, port), token, when in kept.tokens]
    return f"{TOKENS_HEADER}port {kept.port}\n{''.join(lines)}"


@frozen
class _InFlight:
    query: Query
    deadline: float  # time.monotonic()


L = TypeVar("L", bound=Lookup)


class DhtClient:
    """Lookups from a short-lived process; every method returns within its time budget."""

    def __init__(
        self,
        identity: Identity,
        seeds: Sequence[Seed],
        *,
        rpc_timeout: float = RPC_TIMEOUT,
        clock: Callable[[], float] = time.time,
        tokens_file: Path | None = None,
    ) -> None:
        self.protocol = DhtProtocol(identity, serving=False)
        self.seeds = list(seeds)
        self.rpc_timeout = rpc_timeout
        self.clock = clock
        self.tokens_file = tokens_file
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            kept = read_tokens(tokens_file) if tokens_file is not None else None
            if kept is not None and self._bind(kept.port):
                self.protocol.inherit_tokens(kept.tokens, now=int(clock()))
            else:
                self._sock.bind(("0.0.0.0", 0))
        except BaseException:
            self._sock.close()
            raise
        self.seen: dict[bytes, Contact] = {}

    def _bind(self, port: int) -> bool:
        """Bind to the port of the last run (whose tokens are for it); False if it is taken."""
        try:
            self._sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the socket, keeping the tokens for the next run first if there is a file."""
        if self.tokens_file is not None and self._sock.fileno() != -1:
            fresh = tuple(self.protocol.fresh_tokens(now=int(self.clock())))
            kept = KeptTokens(self._sock.getsockname()[1], fresh)
            replace_whole(self.tokens_file, tokens_text(kept).encode("ascii"))
        self._sock.close()

    def __enter__(self) -> DhtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _seed_contacts(self, target: bytes) -> list[Contact]:
        """Contacts to start from: the seeds, whose keys we learn by asking if not given."""
        known = [Contact(s.public_key, *s.address) for s in self.seeds if s.public_key is not None]
        unknown = [s for s in self.seeds if s.public_key is None]
        if unknown:
            # Ask the key-less seeds the lookup's first question; their signed replies name them.
            # Nothing else is in flight yet, so every reply is theirs.
            pending = set()
            for seed in unknown:
                txid, data = self.protocol.request(FindNode(target), seed.address, now=int(self.clock()))
                self._send(data, seed.address)
                pending.add(txid)
            deadline = time.monotonic() + self.rpc_timeout
            while pending and (reply := self._next_reply(deadline)) is not None:
                pending.discard(reply.txid)
                known.append(reply.sender)
            for txid in pending:
                self.protocol.forget(txid)
        if not known:
            raise TransportError("no DHT node answered: check --bootstrap or `bootstrap` in client.toml")
        return known

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        with contextlib.suppress(OSError):  # as good as lost; the timeout will say so
            self._sock.sendto(data, address)

    def _next_reply(self, deadline: float) -> ReplyReceived | None:
        """The next reply to one of our pending requests, or None once `deadline` (monotonic) passed."""
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([self._sock], [], [], remaining)[0]:
                return None
            try:
                data, source = self._sock.recvfrom(MAX_DATAGRAM + 1)
            except OSError:
                continue  # an ICMP error for an earlier send
            now = int(self.clock())
            for event in self.protocol.receive(data, (str(source[0]), int(source[1])), now=now):
                if isinstance(event, ReplyReceived):
                    return event
        return None

    def _run(self, lookup: L) -> L:
        """Drive `lookup` to its end, every reply routed to its query by txid."""
        in_flight: dict[bytes, _InFlight] = {}
        while True:
            for query in lookup.next_queries():
                contact = query.contact
                sent_at = int(self.clock())
                txid, data = self.protocol.request(
                    query.request, contact.address, contact.public_key, now=sent_at
                )
                self._send(data, contact.address)
                in_flight[txid] = _InFlight(query, time.monotonic() + self.rpc_timeout)
            if lookup.finished:
                return lookup
            reply = self._next_reply(min(f.deadline for f in in_flight.values()))
            if reply is not None:
                # DhtProtocol passes only replies to pending requests, and every pending
                # request of ours is in flight here.
                query = in_flight.pop(reply.txid).query
                self.seen[query.contact.id] = query.contact
                lookup.replied(query, reply.message)
            now = time.monotonic()
            for txid in [t for t, f in in_flight.items() if f.deadline <= now]:
                lookup.failed(in_flight.pop(txid).query)
                self.protocol.forget(txid)

    def find_providers(self, key: bytes) -> list[ProviderRecord]:
        """Every valid provider record under `key` that the nodes closest to it hold."""
        lookup = ProviderLookup(key, self._seed_contacts(key), now=int(self.clock()))
        return self._run(lookup).results.records()

    def find_node_record(self, public_key: bytes) -> NodeRecord | None:
        """The newest valid node record that `public_key` published, or None."""
        seeds = self._seed_contacts(node_id(public_key))
        return self._run(NodeRecordLookup(public_key, seeds, now=int(self.clock()))).results.newest

    def find_nodes(self, target: bytes) -> list[Contact]:
        """The k live nodes closest to `target`."""
        return self._run(Lookup(target, self._seed_contacts(target))).closest()

    def publish_provider(self, record: ProviderRecord) -> int:
        """Store `record` at the k nodes closest to its key; how many said they kept it.

        For a process that publishes once and exits (`hubnode org revoke` on a machine
        that never serves); a serving node publishes through its own `DhtNode`.
        """
        pending: set[bytes] = set()
        for contact in self.find_nodes(record.key):
            txid, data = self.protocol.request(
                AddProvider(record.raw), contact.address, contact.public_key, now=int(self.clock())
            )
            self._send(data, contact.address)
            pending.add(txid)
        stored = 0
        deadline = time.monotonic() + self.rpc_timeout
        while pending and (reply := self._next_reply(deadline)) is not None:
            pending.discard(reply.txid)
            stored += isinstance(reply.message, Stored) and reply.message.ok
        for txid in pending:
            self.protocol.forget(txid)
        return stored
