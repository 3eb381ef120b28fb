"""The node's table of open connections: bounded in all and per source, shed before refused.

Every connection costs a socket, memory and a task, and until its caller has sent `Start`
it has proved nothing (an idle socket, a length prefix and nothing, half a handshake, a
replayed first message). So the table holds at most `max_connections`, and at most
`per_source` from one source; when a new connection finds it full, the node sheds one that
has not started a job (one still in the handshake, waiting for its request or its `Start`,
or lingering after its answer), from the source that holds the most of those, its oldest
first; only when every connection in the table has a job queued or running is the new one
refused. Once the table is three quarters full, every wait before `Start` is cut short
(`pressed_wait`), those already under way included.

A source is an IPv4 address, or an IPv6 /64 (one subscriber's LAN; IPv4-mapped IPv6
counts as its IPv4 address). Loopback sources (127.0.0.0/8, ::1) are exempt from the
per-source bound unless it is configured explicitly: the node's own machine (the demo,
tests, local robots) may make many calls at once, and each loopback address is still a
source of its own for shedding. A stream without a peer address (an in-memory stream in
tests; later, a relayed one) is exempt too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import trio

from hubnet.dht.sources import parse_ip

log = logging.getLogger("hubnet.node")

MAX_CONNECTIONS = 256
DEFAULT_PER_SOURCE = 32  # when services.toml does not say (loopback exempt; see the module docstring)
PRESSED_WAIT = 2.0  # seconds a handshake, a request or a Start may take once the table is pressed
PRESSURE = 0.75  # the share of max_connections from which the table is pressed
REPORT_EVERY = 10.0  # seconds between two warnings about shed or refused connections


class Phase(IntEnum):
    """Where a connection is; all but ACTIVE may be shed."""

    HANDSHAKE = 0  # the Noise handshake (and any first bytes)
    REQUEST = 1  # secure; waiting for the request, or after a call's admission for Start
    LINGER = 2  # answered; waiting for the caller to close
    ACTIVE = 3  # Start received: a job queued or running


@dataclass(eq=False)
class Connection:
    """One entry of the table."""

    source: str | None  # see `source_of`
    since: float  # trio.current_time() when it came
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # cancelled to shed it
    phase: Phase = Phase.HANDSHAKE
    shed: bool = False
    _wait: trio.CancelScope | None = None
    _wait_started: float = 0.0

    def tighten(self, wait: float) -> None:
        """End the current wait, if any, `wait` seconds after it began (or at its own deadline)."""
        if self._wait is not None:
            self._wait.deadline = min(self._wait.deadline, self._wait_started + wait)


def source_of(stream: trio.abc.Stream) -> tuple[str | None, bool]:
    """The source `stream` counts under, and whether it is exempt from the default per-source
    bound (loopback, or no peer address)."""
    sock = getattr(stream, "socket", None)
    try:
        host = sock.getpeername()[0] if sock is not None else None
    except OSError:
        host = None
    if not isinstance(host, str):
        return None, True
    ip = parse_ip(host)
    if ip is None:
        return host, False
    if isinstance(ip, ipaddress.IPv6Address) and not ip.is_loopback:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)), False
    return str(ip), ip.is_loopback


class ConnectionTable:
    """Which connections the node holds; see the module docstring."""

    def __init__(
        self,
        max_connections: int = MAX_CONNECTIONS,
        per_source: int | None = None,
        *,
        pressed_wait: float = PRESSED_WAIT,
    ) -> None:
        self.max_connections = max_connections
        self.per_source = per_source  # None: DEFAULT_PER_SOURCE, loopback exempt
        self.pressed_wait = pressed_wait
        self._all: dict[Connection, None] = {}  # oldest first
        self._by_source: dict[str | None, dict[Connection, None]] = {}
        self.shed_count = 0
        self.refused_count = 0
        self._reported = (0, 0)
        self._last_report = -REPORT_EVERY

    def __len__(self) -> int:
        return len(self._all)

    @property
    def pressed(self) -> bool:
        return len(self._all) >= self.max_connections * PRESSURE

    def _limit(self, source: str | None, exempt: bool) -> int | None:
        if self.per_source is not None:
            return None if source is None else self.per_source
        return None if exempt else DEFAULT_PER_SOURCE

    def admit(self, source: str | None, exempt: bool) -> Connection | None:
        """A new connection from `source`, after shedding what must go; None to refuse it."""
        now = trio.current_time()
        mine = self._by_source.get(source, {})
        limit = self._limit(source, exempt)
        if limit is not None and len(mine) >= limit and not self._shed_one(mine):
            self._refuse(f"{source} holds {len(mine)} connections, each past its Start")
            return None
        if len(self._all) >= self.max_connections and not self._shed_one(self._all):
            self._refuse(f"all {len(self._all)} connections are past their Start")
            return None
        connection = Connection(source, now)
        self._all[connection] = None
        self._by_source.setdefault(source, {})[connection] = None
        if self.pressed:
            for other in self._all:
                if other.phase < Phase.ACTIVE:
                    other.tighten(self.pressed_wait)
        self._report()
        return connection

    def release(self, connection: Connection) -> None:
        """`connection` ended (shed or not)."""
        self._forget(connection)

    @contextlib.contextmanager
    def waiting(self, connection: Connection | None, timeout: float) -> Iterator[None]:
        """`trio.fail_after(timeout)` for a wait before Start: cut to `pressed_wait` while the
        table is pressed (and cut later, if it becomes pressed meanwhile)."""
        now = trio.current_time()
        limit = min(timeout, self.pressed_wait) if self.pressed else timeout
        with trio.fail_after(limit) as scope:
            if connection is not None:
                connection._wait, connection._wait_started = scope, now
            try:
                yield
            finally:
                if connection is not None:
                    connection._wait = None

    def _shed_one(self, among: Iterable[Connection]) -> bool:
        """Shed one of `among` that is not past Start: of the source holding the most of
        those, the earliest phase, then the oldest. False if there is none."""
        candidates = [c for c in among if c.phase < Phase.ACTIVE]
        if not candidates:
            return False
        counts = Counter(c.source for c in candidates)
        victim = min(candidates, key=lambda c: (-counts[c.source], c.phase, c.since))
        victim.shed = True
        victim.scope.cancel()
        self._forget(victim)
        self.shed_count += 1
        log.debug("shed a connection from %s (%s)", victim.source, victim.phase.name.lower())
        return True

    def _forget(self, connection: Connection) -> None:
        self._all.pop(connection, None)
        mine = self._by_source.get(connection.source)
        if mine is not None:
            mine.pop(connection, None)
            if not mine:
                del self._by_source[connection.source]

    def _refuse(self, why: str) -> None:
        self.refused_count += 1
        log.debug("refused a connection: %s", why)
        self._report()

    def _report(self) -> None:
        """A warning, at most every REPORT_EVERY seconds, when connections were shed or refused."""
        now = trio.current_time()
        counts = (self.shed_count, self.refused_count)
        if counts == self._reported or now - self._last_report < REPORT_EVERY:
            return
        shed, refused = counts[0] - self._reported[0], counts[1] - self._reported[1]
        self._reported, self._last_report = counts, now
        log.warning(
            "connections: %d shed, %d refused (holding %d of %d; sources holding the most: %s)",
            shed,
            refused,
            len(self._all),
            self.max_connections,
            ", ".join(f"{s} {n}" for s, n in self._top_sources()) or "none",
        )

    def _top_sources(self, count: int = 3) -> list[tuple[str, int]]:
        sizes = sorted(((len(c), s) for s, c in self._by_source.items()), reverse=True, key=lambda x: x[0])
        return [(str(source), size) for size, source in sizes[:count]]
