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

import functools
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from hubnet.api import Result, plan_call, too_expensive
from hubnet.call_machine import DEFAULT_MAX_OUTPUT, CallResult
from hubnet.client import PaymentRequired
from hubnet.commands import Context, ServiceCall, discover_offers, keep_call_receipt, naming_missing_services
from hubnet.identity.errors import (
    HandshakeError,
    HostKeyMismatch,
    HubnetError,
    Rejected,
    RemoteProtocolError,
    TransportError,
)
from hubnet.node.naming import Target
from hubnet.node.protocol import Accept, Call, RejectCode
from hubnet.pay import no_token, paid, put_back, take_token, token_size, token_still_ours
from hubnet.trio_client import CallOutput, Client, TcpStreamDialer
from hubnet.trust import KnownHostsStore, PinnedKeys, expected_key

if TYPE_CHECKING:
    from hubnet.discover import Found
    from hubnet.wallet import StoredToken

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
        none_acceptable,
        ranked_offers,
        target_of,
    )

    rules = ctx.selection_rules()
    found = discover_offers(ctx, planned, bootstrap, rules)
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
        dialer=TcpStreamDialer(ctx.punching()),
        connect_timeout=config.connect_timeout,
        timeouts=config.timeouts,
    )


class _Budget:
    """Refuses a call whose Accept holds more than `max_cost`: the job is cancelled at once.
    `accepted` is set when a node accepts a call it guards (one call, or one refused for
    money and the same paid: a token that call carried was redeemed by then)."""

    def __init__(self, max_cost: int | None) -> None:
        self.max_cost = max_cost
        self.accepted = trio.Event()

    async def guard(self, target: Target, call: Callable[..., Awaitable[CallOutput]]) -> CallOutput:
        """`call(accepted=...)`, the job on `target`, cancelled if its Accept holds too much."""
        held: list[int] = []
        with trio.CancelScope() as scope:

            def check(accept: Accept) -> None:
                self.accepted.set()
                if self.max_cost is not None and accept.terms.held > self.max_cost:
                    held.append(accept.terms.held)
                    scope.cancel()

            return await call(accepted=check)
        assert self.max_cost is not None  # only the check cancels this scope
        raise too_expensive(target.address, held[0], self.max_cost)


# One run of a call on a node: the request (with a token, when paid) to the target.
Attempt = Callable[[Target, Call], Awaitable[CallOutput]]


def asked_for_money(
    exc: BaseException, target: Target, known_hosts: KnownHostsStore
) -> PaymentRequired | None:
    """A refusal of the call on `target` for want of money, naming its amount, as the blocking
    client's PaymentRequired: pinned to the key that asked, the target's own or else the one
    known_hosts holds for it (trust on first use remembered it at this call's handshake)."""
    if not isinstance(exc, Rejected) or exc.code != RejectCode.PAYMENT_REQUIRED or exc.needed is None:
        return None
    pinned = Target(target.address, expected_key(target, known_hosts), target.fallbacks)
    return PaymentRequired(exc.reason, exc.needed, pinned)


class Payer:
    """The caller's money in Trio calls, by `hubnet.pay`'s rules: every paid job's receipt is
    checked and kept, and with `auto` a node that refuses a call for want of money is paid
    with a token from the home's wallet (put back if the node did not spend it; its change
    kept). The wallet is SQLite: its steps run on a worker thread.

    The calls of one run (a map, an Executor's service) share one Payer, so that a call that
    finds no token that covers it while others of the run have theirs out waits for their
    change instead of failing: a wallet of one token pays a run's jobs one after another.
    """

    def __init__(self, ctx: Context, label: str, *, auto: bool) -> None:
        self.ctx = ctx
        self.label = label
        self.auto = auto
        self._out = 0  # tokens of this Payer's calls that are with a node now
        self._back = trio.Event()  # set when one of them is settled (its change kept, or not)
        self._lock = trio.Lock()  # over the wallet and `_out` together

    async def call(
        self,
        target: Target,
        request: Call,
        known_hosts: KnownHostsStore,
        attempt: Attempt,
        accepted: Callable[[], bool],
    ) -> CallOutput:
        """`attempt` of `request` on `target`, and if the node asks for money, `pay` it.
        `accepted` says whether the node accepted the attempt (the paid one: the unpaid one
        was refused)."""
        try:
            output = await attempt(target, request)
        except Rejected as exc:
            asked = asked_for_money(exc, target, known_hosts) if self.auto else None
            if asked is None:
                raise
        else:
            self.keep(output.result)
            return output
        return await self.pay(asked, request, attempt, accepted)

    def keep(self, result: CallResult) -> None:
        """The receipt of a job that carried no token (one paid from an account has one),
        checked and kept in the home: a few small files, written here."""
        keep_call_receipt(self.ctx, result)

    async def pay(
        self, asked: PaymentRequired, request: Call, attempt: Attempt, accepted: Callable[[], bool]
    ) -> CallOutput:
        """`request` again on the node that `asked`, with a token from the wallet; the token
        back in the wallet if the node did not spend it, and the change it returned kept with
        the receipt. Rejected (payment-required) if no token covers it."""
        token = await self._take(asked, request.max_cost)
        try:
            output = await attempt(asked.target, paid(request, token))
        except BaseException as exc:
            await self._settle(token if token_still_ours(exc, accepted=accepted()) else None)
            raise
        await self._settle(None, output.result)
        return output

    async def _take(self, asked: PaymentRequired, max_cost: int | None) -> StoredToken:
        sat = token_size(asked, max_cost)
        # It ends: each pass after the first follows the settling of one of the run's paid
        # calls, and they are finitely many.
        while True:
            # Under the lock the wallet and `_out` agree (`_settle` changes both under it too):
            # finding no token with none out means there is none to wait for.
            async with self._lock:
                token = await trio.to_thread.run_sync(take_token, self.ctx, sat)
                if token is not None:
                    self._out += 1
                    return token
                if not self._out:
                    raise no_token(self.label, asked)
                settled = self._back
            await settled.wait()

    async def _settle(self, unspent: StoredToken | None, result: CallResult | None = None) -> None:
        """A paid call has ended: its `unspent` token back into the wallet, or the `result`'s
        receipt and change kept; then the calls waiting for a token look again. Shielded: a
        cancelled call's token goes back all the same."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                try:
                    if unspent is not None:
                        await trio.to_thread.run_sync(put_back, self.ctx, unspent)
                    elif result is not None:
                        keep = functools.partial(keep_call_receipt, self.ctx, result, token_sent=True)
                        await trio.to_thread.run_sync(keep)
                finally:
                    self._out -= 1
                    self._back.set()
                    self._back = trio.Event()


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
    pay: str | None = None,
) -> Result:
    """`hubnet.call` for Trio: run `service`, feed it `stdin`, return its `Result` (at most
    `max_output` bytes of output kept, as in `hubnet.call`; `pay` as there too).

    Without a server, the discovered providers are tried in turn until one accepts (a
    provider that fails before its Accept ran nothing); after the Accept a failure is raised.
    When none takes it and one asked for money, that one is paid (`pay="auto"`), as
    `hubnode call` pays: a provider where the caller has an account is used first.
    """
    ctx, planned = plan_call(service, args, server, home, max_cost)
    payer = Payer(ctx, planned.label, auto=ctx.pay(pay) == "auto")
    reachable = await trio.to_thread.run_sync(where_to_call, ctx, planned, tuple(bootstrap))
    client = client_for(ctx, named=bool(planned.server))
    failures: list[str] = []
    asked: PaymentRequired | None = None
    for place in reachable[:MAX_ATTEMPTS]:
        budget = _Budget(max_cost)
        attempt = _attempt(client, budget, stdin, timeout, max_output)
        try:
            with naming_missing_services(ctx, planned):
                output = await attempt(place.target, planned.request)
        except CALL_FAILURES as exc:
            asking = asked_for_money(exc, place.target, client.known_hosts)
            if budget.accepted.is_set() or (len(reachable) == 1 and not (asking and payer.auto)):
                raise
            asked = asked or asking
            failures.append(f"{place.target.address}: {exc}")
            continue
        payer.keep(output.result)
        return Result.of(output.result, output.stdout, output.stderr)
    if asked is None:
        tried = "; ".join(failures)
        raise TransportError(f"every provider of {planned.label} failed before accepting: {tried}")
    if not payer.auto:
        from hubnet.discover import asked_by_provider  # loaded already: the places came from it

        raise asked_by_provider(planned.label, asked)
    budget = _Budget(max_cost)
    attempt = _attempt(client, budget, stdin, timeout, max_output)
    output = await payer.pay(asked, planned.request, attempt, budget.accepted.is_set)
    return Result.of(output.result, output.stdout, output.stderr)


def _attempt(
    client: Client, budget: _Budget, stdin: bytes, timeout: float | None, max_output: int | None
) -> Attempt:
    """A call's attempts through `client`, each guarded by `budget`."""

    async def attempt(target: Target, request: Call) -> CallOutput:
        return await budget.guard(
            target,
            functools.partial(
                client.call, target, request, stdin=stdin, timeout=timeout, max_output=max_output
            ),
        )

    return attempt


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

    async def _stdin(self, gate: trio.Event | None) -> AsyncIterator[bytes]:
        if gate is not None:
            # Paying: no stdin before the node's Accept, so that a call refused for money
            # consumed none of it and can go again, paid (as `hubnode call --pay auto` waits).
            await gate.wait()
        async for piece in self._stdin_out:
            yield piece

    async def _run(
        self,
        client: Client,
        planned: ServiceCall,
        target: Target,
        timeout: float | None,
        max_cost: int | None,
        payer: Payer,
    ) -> None:
        async def out(data: bytes) -> None:
            await self._stdout_in.send(data)

        budget = _Budget(max_cost)
        gate = budget.accepted if payer.auto else None

        async def attempt(to: Target, request: Call) -> CallOutput:
            call = functools.partial(
                client.call, to, request, stdin=self._stdin(gate), stdout=out, timeout=timeout
            )
            return await budget.guard(to, call)

        # Failures are kept for `stream` to raise: out of the nursery, not wrapped in a group.
        try:
            async with self._stdout_in:
                done = await payer.call(
                    target, planned.request, client.known_hosts, attempt, budget.accepted.is_set
                )
                self.finished = done.result
                self.result = Result.of(done.result, b"", done.stderr)
        except HubnetError as exc:
            self.failure = exc
        finally:
            await self._stdin_out.aclose()  # a job that exited takes no more: `send` says so


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
    pay: str | None = None,
) -> AsyncIterator[TrioCallStream]:
    """`hubnet.stream` for Trio: `async with stream(...) as job:` send, receive, and after
    the block `job.result`. Leaving the block ends stdin and waits for the job's exit;
    leaving it on an exception cancels the job. A discovered service runs on the best
    candidate (a stream's stdin cannot be replayed on another). With `pay="auto"` (`pay` as
    in `call`), stdin flows once the node has accepted the call, paid if it asked."""
    ctx, planned = plan_call(service, args, server, home, max_cost)
    payer = Payer(ctx, planned.label, auto=ctx.pay(pay) == "auto")
    [place, *_] = await trio.to_thread.run_sync(where_to_call, ctx, planned, tuple(bootstrap))
    client = client_for(ctx, named=bool(planned.server))
    job = TrioCallStream()
    with naming_missing_services(ctx, planned):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(job._run, client, planned, place.target, timeout, max_cost, payer)
            try:
                yield job
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            await job.end_stdin()
    if job.failure is not None:
        raise job.failure
