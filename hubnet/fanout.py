"""The fan-out's Trio driver: many inputs over many providers, and `hubnet.Executor` on it.

`FanOut` drives one `hubnet.schedule.Scheduler` (the decisions: what runs where, retries,
votes, the budget) over `hubnet.trio_client.Client` (the calls): it starts what the
scheduler says, tells it each Accept's hold and each attempt's outcome, and hands every
settled input to its owner. `hubnode map` (hubnet.map_command) and `Executor` are its two
owners, so both schedule, retry and keep a budget alike.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import trio

from hubnet.api import Result, plan_call
from hubnet.call_machine import DEFAULT_MAX_OUTPUT
from hubnet.commands import Context, ServiceCall
from hubnet.identity.errors import ConfigError, HubnetError, Rejected, TransportError
from hubnet.identity.keys import encode_peer_id
from hubnet.node.naming import Target
from hubnet.node.protocol import Accept, Call
from hubnet.schedule import (
    InputDone,
    InputFailed,
    Outcome,
    Provider,
    ProviderAvoided,
    Scheduler,
    Start,
)
from hubnet.trio_api import CALL_FAILURES, Payer, Reachable, client_for, where_to_call
from hubnet.trio_client import Client

# A server named by the caller says nothing of its job slots until asked; asked, a node's
# status gives them. If it does not answer, this many are assumed.
DEFAULT_CAPACITY = 4
# Refusals that will not change with a retry: of the provider (it does not run the service
# for this caller) or of the input itself (its arguments break the service's policy).
REFUSALS = {
    "no-such-service": "provider",
    "not-allowed": "provider",
    "payment-required": "provider",  # no account there, or too little in it
    "too-expensive": "provider",  # its hold is above what the run may spend
    "bad-arguments": "input",
}


@dataclass(frozen=True)
class Job:
    """What one input runs: the program's arguments, and its stdin (bytes, or a file read
    at each attempt, so that a retry sends it again)."""

    args: tuple[str, ...]
    stdin: bytes | Path = b""

    def stdin_bytes(self) -> bytes:
        return self.stdin.read_bytes() if isinstance(self.stdin, Path) else self.stdin


@dataclass
class Attempt:
    """One run of an input on one provider, as it went."""

    seq: int
    provider: Hashable
    started_at: float = field(default_factory=time.time)  # Unix time, for the joblog
    runtime: float = 0.0
    sent: int = 0
    result: Result | None = None  # when an Exit came
    error: HubnetError | None = None  # when none did
    cost: int = 0


@dataclass(frozen=True)
class Settled:
    """An input's end: `attempt` is its accepted one (`ok`), or its last (if one finished);
    `reason` says why it failed; `cost` counts every attempt of it."""

    seq: int
    ok: bool
    attempt: Attempt | None
    reason: str
    cost: int
    address: str

    @property
    def result(self) -> Result | None:
        return None if self.attempt is None else self.attempt.result


@dataclass(frozen=True)
class Place:
    """A provider the fan-out may use: the scheduler's view of it and where to dial it."""

    provider: Provider
    target: Target


def places_for(
    ctx: Context, planned: ServiceCall, bootstrap: tuple[str, ...], servers: Sequence[str]
) -> list[Place]:
    """Every provider of `planned` to spread over (blocking: run it on a thread): the
    `servers` given (each asked for its job slots), else every acceptable offer in the DHT
    (the slots its offer states, its price per call as the worst case until it Accepts)."""
    from hubnet.client import request
    from hubnet.node.protocol import GetStatus, StatusReply

    if servers:
        found = [Reachable(ctx.target(server)) for server in servers]
    else:
        found = where_to_call(ctx, planned, bootstrap, every=True)
    places: list[Place] = []
    for reach in found:
        capacity = reach.capacity
        key: Hashable = reach.target.peer or str(reach.target.address)
        if capacity is None:
            try:
                status = request(
                    reach.target, ctx.identity(), ctx.known_hosts(), GetStatus(), StatusReply, timeout=2.0
                )
                capacity = status.capacity
            except (HubnetError, OSError):
                capacity = DEFAULT_CAPACITY
        if key in {p.provider.key for p in places}:
            continue  # one provider named twice
        places.append(Place(Provider(key, max(capacity, 1), reach.org, reach.per_call), reach.target))
    return places


def provider_text(key: Hashable) -> str:
    return encode_peer_id(key) if isinstance(key, bytes) else str(key)


class FanOut:
    """Runs the inputs added to it over `places`, as its scheduler decides; each settled
    input goes to `settled` (called in the Trio thread)."""

    def __init__(
        self,
        client: Client,
        request: Call,
        places: Sequence[Place],
        scheduler: Scheduler,
        settled: Callable[[Settled], None],
        *,
        timeout: float | None = None,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        avoided: Callable[[ProviderAvoided], None] = lambda event: None,
        payer: Payer,
    ) -> None:
        """`payer` keeps each paid job's receipt, and pays a provider that asks for money
        when the run may pay (`hubnet.trio_api.Payer`: one for the run, so that its jobs wait
        for each other's change). `max_output` bounds what one attempt's output may take in
        memory: an attempt whose node sends more fails (OutputTooLarge) and its input goes to
        another provider."""
        self.client = client
        self.request = request
        self.places = {place.provider.key: place for place in places}
        self.scheduler = scheduler
        for place in places:
            scheduler.add_provider(place.provider)
        self.timeout = timeout
        self.max_output = max_output
        self._settled = settled
        self._avoided = avoided
        self.payer = payer
        self._jobs: dict[int, Job] = {}
        self._attempts: dict[int, Attempt] = {}  # by attempt id, until its input is settled
        self._of_input: dict[int, list[int]] = {}
        self._costs: dict[int, int] = {}
        self._wake = trio.Event()

    def add(self, seq: int, job: Job) -> None:
        """Input `seq` runs `job` (call in the Trio thread)."""
        self._jobs[seq] = job
        self.scheduler.add_input(seq)
        self._wake.set()

    def close(self) -> None:
        """No more inputs: `run` returns once every one is settled."""
        self.scheduler.close()
        self._wake.set()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while not self.scheduler.finished_all:
                starts = self.scheduler.next_starts()
                for start in starts:
                    nursery.start_soon(self._attempt, start)
                if not starts and self.scheduler.running == 0 and self._handle(self.scheduler.settle_stuck()):
                    continue
                await self._wake.wait()
                self._wake = trio.Event()

    async def _attempt(self, start: Start) -> None:
        job = self._jobs[start.seq]
        attempt = Attempt(start.seq, start.provider)
        self._attempts[start.attempt] = attempt
        self._of_input.setdefault(start.seq, []).append(start.attempt)
        target = self.places[start.provider].target
        scope = trio.CancelScope()
        accept: list[Accept] = []

        def accepted(event: Accept) -> None:
            accept.append(event)
            if not self.scheduler.accepted(start.attempt, event.terms.held):
                scope.cancel()

        began = time.monotonic()
        outcome: Outcome
        try:
            stdin = job.stdin_bytes()
            attempt.sent = len(stdin)
            with scope:
                # An alias's arguments (in the request) come first, as with `hubnode call`.
                # The Call carries what the job may cost: the caller's ceiling per job, and what the
                # run's budget has left for it; a node whose hold is larger refuses at once.
                ceiling = self.scheduler.ceiling(start.attempt)
                if self.request.max_cost is not None:
                    ceiling = (
                        self.request.max_cost if ceiling is None else min(ceiling, self.request.max_cost)
                    )
                args = self.request.args + job.args
                request = Call(self.request.service_id, args, self.request.attestations, ceiling)
                run_on = functools.partial(
                    self.client.call,
                    stdin=stdin,
                    timeout=self.timeout,
                    accepted=accepted,
                    max_output=self.max_output,
                )
                # Paid per job when the provider asks (and the run may pay): a paid job is held
                # and charged within `ceiling` as any other, so the budget bounds what it costs.
                output = await self.payer.call(
                    target, request, self.client.known_hosts, run_on, lambda: bool(accept)
                )
            if scope.cancelled_caught:
                raise Rejected("too-expensive", "its hold would take the run above --max-cost")
            exit = output.result.exit
            attempt.result = Result.of(output.result, output.stdout, output.stderr)
            attempt.cost = exit.cost
            digest = hashlib.sha256(output.stdout).digest()
            outcome = Outcome(True, exit.exit_code, exit.signal, digest, exit.cost, exit.error)
        except (*CALL_FAILURES, OSError) as exc:
            error = exc if isinstance(exc, HubnetError) else TransportError(str(exc))
            attempt.error = error
            # After the Accept, the job may have run and cost its hold: the worst case is counted.
            attempt.cost = accept[0].terms.held if accept else 0
            refused = REFUSALS.get(error.code) if isinstance(error, Rejected) else None
            outcome = Outcome(bool(accept), error=str(error), cost=attempt.cost, refused=refused)
        attempt.runtime = time.monotonic() - began
        self._costs[start.seq] = self._costs.get(start.seq, 0) + attempt.cost
        self._handle(self.scheduler.finished(start.attempt, outcome))
        self._wake.set()

    def _handle(self, events: Iterable[InputDone | InputFailed | ProviderAvoided]) -> bool:
        handled = False
        for event in events:
            handled = True
            if isinstance(event, ProviderAvoided):
                self._avoided(event)
                continue
            chosen = self._attempts.get(event.attempt) if event.attempt is not None else None
            reason = "" if isinstance(event, InputDone) else event.reason
            address = str(self.places[chosen.provider].target.address) if chosen else ""
            self._settled(
                Settled(
                    event.seq,
                    isinstance(event, InputDone),
                    chosen,
                    reason,
                    self._costs.pop(event.seq, 0),
                    address,
                )
            )
            for attempt_id in self._of_input.pop(event.seq, []):
                self._attempts.pop(attempt_id, None)
            self._jobs.pop(event.seq, None)
        return handled


# --- hubnet.Executor -----------------------------------------------------------------------------


class Executor(concurrent.futures.Executor):
    """A `concurrent.futures.Executor` whose jobs are calls of network services.

    `submit(service, stdin=b"", args=())` runs `service` on one of its providers and gives a
    Future of its `Result`; `map(service, stdins)` runs one call per item. The calls are
    spread over every provider of the service at once, within each one's job slots and
    `jobs`, retried elsewhere `retries` times, run on `redundancy` distinct providers with
    a majority vote, and kept within `max_cost` for everything submitted: the scheduling
    of `hubnode map`. `pay` as in `hubnet.call`: with "auto" (or client.toml's `pay`), a
    provider that asks for money is paid per call from the home's wallet. A call that
    failed for good raises its error from `Future.result()`; one whose program exited
    non-zero after its retries gives that `Result` (as `call` does).

        with hubnet.Executor(home=home) as pool:
            for found in pool.map("face", photos, itertools.repeat(["identify"])):
                print(found.stdout)
    """

    def __init__(
        self,
        *,
        servers: Sequence[str] = (),
        home: str | os.PathLike[str] | None = None,
        bootstrap: Iterable[str] = (),
        jobs: int | None = None,
        retries: int = 0,
        redundancy: int = 1,
        max_cost: int | None = None,
        timeout: float | None = None,
        max_output: int | None = DEFAULT_MAX_OUTPUT,
        pay: str | None = None,
    ) -> None:
        self._options = _RunOptions(
            tuple(servers),
            home,
            tuple(bootstrap),
            jobs,
            retries,
            redundancy,
            max_cost,
            timeout,
            max_output,
            pay,
        )
        self._lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._shutdown = False
        self._fanouts: dict[str, _ServiceRun] = {}
        self._next_seq = 0
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="hubnet-executor", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _loop(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._ready.set()
                await self._stop.wait()
                for run in self._fanouts.values():
                    run.fanout.close()

        try:
            trio.run(main)
        except BaseException as exc:  # reported to every Future still waiting
            self._failure = exc
        finally:
            self._ready.set()
            for run in self._fanouts.values():
                run.fail_waiting(self._failure)

    def submit(  # type: ignore[override]  # a service's name where the standard Executor has a callable
        self, service: str, /, stdin: bytes | Path = b"", args: Iterable[str] = ()
    ) -> concurrent.futures.Future[Result]:
        if isinstance(args, str):
            raise TypeError("args is a sequence of strings, not one string")
        future: concurrent.futures.Future[Result] = concurrent.futures.Future()
        with self._lock:
            if self._shutdown or self._token is None:
                raise RuntimeError("cannot submit to an Executor after shutdown")
            seq = self._next_seq
            self._next_seq += 1
        job = Job(tuple(args), stdin if isinstance(stdin, Path) else bytes(stdin))
        trio.from_thread.run(self._add, service, seq, job, future, trio_token=self._token)
        return future

    def map(  # type: ignore[override]  # a service's name where the standard Executor has a callable
        self, service: str, /, *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Result]:
        """One call of `service` per item, the Results in order: `map("face", photos,
        itertools.repeat(["identify"]))` is `submit("face", photo, ["identify"])` for each."""
        submitted: Iterator[Any] = super().map(service, *iterables, timeout=timeout, chunksize=chunksize)  # type: ignore[arg-type]
        return cast(Iterator[Result], submitted)

    async def _add(self, service: str, seq: int, job: Job, future: concurrent.futures.Future[Result]) -> None:
        # One scheduler per service (as typed: an alias is a service of its own), since each
        # has its own providers.
        run = self._fanouts.get(service)
        if run is None:
            assert self._nursery is not None
            try:
                run = await _ServiceRun.start(self._nursery, service, self._options)
            except HubnetError as exc:
                future.set_exception(exc)
                return
            self._fanouts[service] = run
        run.add(seq, job, future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            already, self._shutdown = self._shutdown, True
        if not already and self._token is not None and self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):  # it ended on its own meanwhile
                trio.from_thread.run_sync(self._stop_soon, cancel_futures, trio_token=self._token)
        if wait:
            self._thread.join()

    def _stop_soon(self, cancel_futures: bool) -> None:
        if cancel_futures and self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        self._stop.set()


@dataclass(frozen=True)
class _RunOptions:
    servers: tuple[str, ...]
    home: str | os.PathLike[str] | None
    bootstrap: tuple[str, ...]
    jobs: int | None
    retries: int
    redundancy: int
    max_cost: int | None
    timeout: float | None
    max_output: int | None
    pay: str | None


class _ServiceRun:
    """One service's fan-out inside an Executor, and the Futures waiting on it."""

    fanout: FanOut

    def __init__(self) -> None:
        self.futures: dict[int, concurrent.futures.Future[Result]] = {}

    @classmethod
    async def start(cls, nursery: trio.Nursery, service: str, options: _RunOptions) -> _ServiceRun:
        servers = options.servers
        ctx, planned = plan_call(service, (), servers[0] if len(servers) == 1 else None, options.home)
        places = await trio.to_thread.run_sync(places_for, ctx, planned, options.bootstrap, servers)
        if not places:
            raise ConfigError(f"no provider of {planned.label} to run anything on")
        scheduler = Scheduler(
            (),
            jobs=options.jobs,
            retries=options.retries,
            redundancy=options.redundancy,
            max_cost=options.max_cost,
        )
        run = cls()
        client = client_for(ctx, named=bool(servers) or bool(planned.server))
        run.fanout = FanOut(
            client,
            planned.request,
            places,
            scheduler,
            run._settled,
            timeout=options.timeout,
            max_output=options.max_output,
            payer=Payer(ctx, planned.label, auto=ctx.pay(options.pay) == "auto"),
        )
        nursery.start_soon(run.fanout.run)
        return run

    def add(self, seq: int, job: Job, future: concurrent.futures.Future[Result]) -> None:
        if not future.set_running_or_notify_cancel():
            return
        self.futures[seq] = future
        self.fanout.add(seq, job)

    def _settled(self, settled: Settled) -> None:
        future = self.futures.pop(settled.seq)
        result = settled.result
        if result is not None:
            future.set_result(result)
        elif settled.attempt is not None and settled.attempt.error is not None:
            future.set_exception(settled.attempt.error)
        else:
            future.set_exception(TransportError(settled.reason))

    def fail_waiting(self, failure: BaseException | None) -> None:
        for future in self.futures.values():
            if not future.done():
                future.set_exception(failure or RuntimeError("the Executor was shut down"))
        self.futures.clear()
