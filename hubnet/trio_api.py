"""The Python API, Trio form: `await hubnet.trio_api.call(...)` and `hubnet.trio_api.stream(...)`.

The same calls as `hubnet.call` and `hubnet.stream` (same home, identity, aliases, client.toml
and discovery, through `hubnet.commands`), for a Trio program that runs many at once: each
call is a task on `hubnet.trio_client.Client`, and cancelling it (a cancel scope, a
deadline) cancels the job on its node. Discovery's DHT lookup and probes are blocking code
shared with `hubnode call`; they run on a worker thread.

    async with trio.open_nursery() as nursery:
        for photo in photos:
            nursery.start_soon(identify, photo)   # each awaits hubnet.trio_api.call("face", ...)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from hubnet.api import Result, plan_call, too_expensive
from hubnet.call_machine import DEFAULT_MAX_OUTPUT, CallResult
from hubnet.commands import Context, ServiceCall, keep_call_receipt, naming_missing_services
from hubnet.identity.errors import (
    HandshakeError,
    HostKeyMismatch,
    HubnetError,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from hubnet.node.naming import Target
from hubnet.node.protocol import Accept
from hubnet.trio_client import CallOutput, Client, Stdin

if TYPE_CHECKING:
    from hubnet.discover import Found
from hubnet.trust import PinnedKeys

MAX_ATTEMPTS = 5  # providers a discovered call is tried on (as hubnet.discover's)
# How a call fails on its provider (before its Accept: having run nothing, so the next one is tried).
CALL_FAILURES = (TransportError, RemoteProtocolError, HandshakeError, HostKeyMismatch, Rejected)


@dataclass(frozen=True)
class Reachable:
    """A node that runs the service: where to dial it, and what its offer said (none for a
    server given by the caller): its job slots, its price per call, and an organisation
    it proved membership of (one that the client's rules name; None if none)."""

    target: Target
    capacity: int | None = None
    per_call: int = 0
    org: bytes | None = None


def where_to_call(
    ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...] = (), *, every: bool = False
) -> list[Reachable]:
    """The nodes to call `planned` on, best first (blocking: run it on a thread).

    Its server, if it has one; else the DHT's offers: with `every` (the fan-out), every
    offer the client's rules accept, ranked; without, the candidates `hubnode call` would
    try, probed and chosen by power-of-two-choices. NotOffered if there is none.
    """
    if planned.server:
        return [Reachable(ctx.target(planned.server))]
    from hubnet.discover import (
        BACKOFF_FILE,
        Backoff,
        candidates,
        find_offers,
        nobody_offers,
        none_acceptable,
        ranked_offers,
        target_of,
    )

    rules = ctx.selection_rules()
    found = find_offers(ctx.identity(), ctx.bootstrap(bootstrap), planned.request.service_id, rules.orgs)
    if not found.offers:
        raise nobody_offers(planned.label)
    if every:
        offers, _ = ranked_offers(found, rules, verbose=ctx.verbose)
    else:
        backoff = Backoff(ctx.home.data_dir / BACKOFF_FILE)
        offers = candidates(ctx.identity(), found, rules, verbose=ctx.verbose, backoff=backoff)
        backoff.save()
    if not offers:
        raise none_acceptable(planned.label, len(found.offers), ctx.client_config.source)
    orgs = _proven_orgs(found, rules.orgs)
    return [Reachable(target_of(o), o.load.capacity, o.price.per_call, orgs.get(o.publisher)) for o in offers]


def _proven_orgs(found: Found, named: Collection[bytes]) -> dict[bytes, bytes]:
    """For each publisher, one organisation named in the client's rules that its offer's
    attestations prove (checked against that organisation's revocation list), so that a
    fan-out's redundant runs can go to distinct organisations. Organisations the rules do
    not name prove nothing here: anyone can make one."""
    from hubnet.select import proven_memberships

    if not named:
        return {}
    proven, _ = proven_memberships(found.offers, int(time.time()), found.revocations)
    return {
        publisher: min(org for org, _ in memberships if org in named)
        for publisher, memberships in proven.items()
        if any(org in named for org, _ in memberships)
    }


def client_for(ctx: Context, *, named: bool) -> Client:
    """A Trio client with the home's identity and client.toml's timeouts; the home's
    known_hosts for servers the user `named` (trust on first use, as the CLI), pinned keys
    for discovered offers."""
    config = ctx.client_config
    known_hosts = ctx.known_hosts() if named else PinnedKeys()
    return Client(
        ctx.identity(),
        known_hosts=known_hosts,
        connect_timeout=config.connect_timeout,
        timeouts=config.timeouts,
    )


class _Budget:
    """Refuses a call whose Accept holds more than `max_cost`: the job is cancelled at once."""

    def __init__(self, max_cost: int | None, target: Target) -> None:
        self.max_cost = max_cost
        self.target = target
        self.scope = trio.CancelScope()
        self.accepted = False
        self.too_expensive: Rejected | None = None

    def check(self, accept: Accept) -> None:
        self.accepted = True
        if self.max_cost is not None and accept.terms.held > self.max_cost:
            self.too_expensive = too_expensive(self.target.address, accept.terms.held, self.max_cost)
            self.scope.cancel()


async def _call_once(
    client: Client,
    planned: ServiceCall,
    target: Target,
    stdin: Stdin,
    timeout: float | None,
    budget: _Budget,
    max_output: int | None,
) -> CallOutput:
    with budget.scope:
        return await client.call(
            target,
            planned.request,
            stdin=stdin,
            timeout=timeout,
            accepted=budget.check,
            max_output=max_output,
        )
    assert budget.too_expensive is not None  # only the budget cancels this scope
    raise budget.too_expensive


async def call(
    service: str,
    args: Iterable[str] = (),
    stdin: bytes = b"",
    *,
    server: str | None = None,
    timeout: float | None = None,
    max_cost: int | None = None,
    home: str | os.PathLike[str] | None = None,
    bootstrap: Iterable[str] = (),
    max_output: int | None = DEFAULT_MAX_OUTPUT,
) -> Result:
    """`hubnet.call` for Trio: run `service`, feed it `stdin`, return its `Result` (at most
    `max_output` bytes of output kept, as in `hubnet.call`).

    Without a server, the discovered providers are tried in turn until one accepts (a
    provider that fails before its Accept ran nothing); after the Accept a failure is raised.
    """
    ctx, planned = plan_call(service, args, server, home, max_cost)
    reachable = await trio.to_thread.run_sync(where_to_call, ctx, planned, tuple(bootstrap))
    client = client_for(ctx, named=bool(planned.server))
    failures: list[str] = []
    for place in reachable[:MAX_ATTEMPTS]:
        budget = _Budget(max_cost, place.target)
        try:
            with naming_missing_services(ctx, planned):
                output = await _call_once(client, planned, place.target, stdin, timeout, budget, max_output)
        except CALL_FAILURES as exc:
            if budget.accepted or len(reachable) == 1:
                raise
            failures.append(f"{place.target.address}: {exc}")
            continue
        keep_call_receipt(ctx, output.result)
        return Result.of(output.result, output.stdout, output.stderr)
    raise TransportError(f"every provider of {planned.label} failed before accepting: {'; '.join(failures)}")


class TrioCallStream:
    """A running remote job in a Trio program: `send` stdin in pieces, `receive` stdout (or
    `async for` over it), `end_stdin`; `result` once the `stream` block has ended."""

    def __init__(self) -> None:
        self.result: Result | None = None
        self.finished: CallResult | None = None
        self.failure: HubnetError | None = None
        self._stdin_in, self._stdin_out = trio.open_memory_channel[bytes](0)
        # Unread stdout is kept, so that sending never waits for reading (see hubnet.api.CallStream).
        self._stdout_in, self._stdout_out = trio.open_memory_channel[bytes](math.inf)

    async def send(self, data: bytes) -> None:
        """Send `data` to the job's stdin (waiting while the node is not taking it)."""
        try:
            await self._stdin_in.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportError("the job takes no more stdin: it has ended") from None

    async def end_stdin(self) -> None:
        await self._stdin_in.aclose()

    async def receive(self) -> bytes:
        """The next piece of stdout as it comes; b"" once the job has exited."""
        try:
            return await self._stdout_out.receive()
        except trio.EndOfChannel:
            return b""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        while piece := await self.receive():
            yield piece

    async def _stdin(self) -> AsyncIterator[bytes]:
        async with self._stdin_out:
            async for piece in self._stdin_out:
                yield piece

    async def _run(
        self, client: Client, planned: ServiceCall, target: Target, timeout: float | None, budget: _Budget
    ) -> None:
        async def out(data: bytes) -> None:
            await self._stdout_in.send(data)

        # Failures are kept for `stream` to raise: out of the nursery, not wrapped in a group.
        try:
            async with self._stdout_in:
                with budget.scope:
                    done = await client.call(
                        target,
                        planned.request,
                        stdin=self._stdin(),
                        stdout=out,
                        timeout=timeout,
                        accepted=budget.check,
                    )
                    self.finished = done.result
                    self.result = Result.of(done.result, b"", done.stderr)
        except HubnetError as exc:
            self.failure = exc
        finally:
            await self._stdin_out.aclose()  # a job that exited takes no more: `send` says so
        self.failure = self.failure or budget.too_expensive


@asynccontextmanager
async def stream(
    service: str,
    args: Iterable[str] = (),
    *,
    server: str | None = None,
    timeout: float | None = None,
    max_cost: int | None = None,
    home: str | os.PathLike[str] | None = None,
    bootstrap: Iterable[str] = (),
) -> AsyncIterator[TrioCallStream]:
    """`hubnet.stream` for Trio: `async with stream(...) as job:` send, receive, and after
    the block `job.result`. Leaving the block ends stdin and waits for the job's exit;
    leaving it on an exception cancels the job. A discovered service runs on the best
    candidate (a stream's stdin cannot be replayed on another)."""
    ctx, planned = plan_call(service, args, server, home, max_cost)
    [place, *_] = await trio.to_thread.run_sync(where_to_call, ctx, planned, tuple(bootstrap))
    client = client_for(ctx, named=bool(planned.server))
    job = TrioCallStream()
    with naming_missing_services(ctx, planned):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                job._run, client, planned, place.target, timeout, _Budget(max_cost, place.target)
            )
            try:
                yield job
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            await job.end_stdin()
    if job.failure is not None:
        raise job.failure
    if job.finished is not None:
        keep_call_receipt(ctx, job.finished)
