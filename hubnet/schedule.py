"""The fan-out's scheduler: which input runs where next, and when an input is settled.

`hubnode map` and `hubnet.Executor` both drive this one sans-IO core: inputs, providers
(each with the job slots its offer states) and the outcomes of attempts go in; the
attempts to start, the attempts to cancel and each input's end come out. No sockets, no
clock, no Trio: the drivers own those, and the tests feed it any order of outcomes.

The rules, and why:
- A provider gets work when it has a free slot, so a slow one takes less of it on its own.
  It starts with one slot and gains one per success up to its capacity (at most
  `MAX_SLOTS`, whatever its offer claims); one that fails sees its slots halved (AIMD, as
  TCP does). So an offer that lies about its capacity, or leads nowhere, draws one job at a
  time, and a provider that failed three times in a row is rested for the rest of the run.
- An attempt that fails (no connection, a refusal, a node that died, the program's non-zero
  exit) is run again, on a provider that has not tried that input if there is one, until
  the input's `retries` are spent. Inputs can be replayed, so this holds after the Accept
  too; its cost is counted. An attempt that a node refused or that never connected ran
  nothing: it is retried without spending a retry, up to `MAX_UNSTARTED` times per input.
- With `redundancy` N, each input runs on N distinct providers (distinct organisations
  first, when the providers say theirs), and the output that a majority of them (N // 2 + 1)
  agree on is accepted. Providers whose output differed are reported and get no more work.
- With a budget, no attempt starts whose worst case (the provider's largest hold, else the
  estimate given for it) could take what is spent and held above it; a hold that turns out
  larger at the Accept cancels the attempt. A provider's first job runs alone (one slot),
  so its Accept says what it holds before a second starts there.
- A job paid per call (a provider that asks for money, a run that may pay) is one attempt
  here like any other: the driver pays it within the attempt (`hubnet.trio_api.Payer`), its
  Accept holds and its Exit costs what the node charges, so the budget counts what paid
  jobs are charged. The token is a deposit whose change comes back, not a cost; the Call's
  ceiling (`ceiling`) bounds the hold it may pay for (`hubnet.pay.token_size`).

Every input ends exactly once: `InputDone` with the accepted attempt, or `InputFailed` with
its last attempt (if any) and why (tests/unit/test_schedule.py checks it over random
outcomes).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

MAX_CONSECUTIVE_FAILURES = 3  # then a provider is rested for the rest of the run
MAX_UNSTARTED = 8  # attempts per input that ran nothing before it fails anyway
MAX_SLOTS = 64  # jobs at once on one provider, whatever its offer says


@dataclass(frozen=True)
class Provider:
    """One provider as the scheduler sees it: a key (its peer id), how many jobs it runs at
    once (its offer's capacity), its organisation if known, and the most a job there may
    cost before its first Accept has said (its price per call, from its offer)."""

    key: Hashable
    capacity: int
    org: Hashable | None = None
    estimate: int = 0


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. `started`: the node accepted it (it may have run, and cost).
    `exit_code`/`signal`: the program's end (None for both: no Exit came). `digest`: a
    digest of what it wrote, for the vote. `cost`: what it was charged."""

    started: bool
    exit_code: int | None = None
    signal: int | None = None
    digest: bytes = b""
    cost: int = 0
    error: str | None = None
    # A refusal that says more than "not now": "provider" (it does not run this service, or
    # not for this caller: no more work there), "input" (the input itself is refused, as its
    # arguments would be anywhere: it fails now, without retries).
    refused: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.signal is None and self.error is None


@dataclass(frozen=True)
class Start:
    """Start attempt `attempt` of input `seq` on `provider`."""

    attempt: int
    seq: int
    provider: Hashable


@dataclass(frozen=True)
class InputDone:
    """Input `seq` is settled: `attempt`'s output is the accepted one."""

    seq: int
    attempt: int


@dataclass(frozen=True)
class InputFailed:
    """Input `seq` failed for good; `attempt` is its last finished attempt (None if none ran)."""

    seq: int
    attempt: int | None
    reason: str


@dataclass(frozen=True)
class ProviderAvoided:
    """`provider` gets no more work in this run, because of `reason`."""

    provider: Hashable
    reason: str


Event = InputDone | InputFailed | ProviderAvoided


@dataclass
class _ProviderState:
    info: Provider
    slots: int  # how many jobs it may run now (AIMD between 1 and its capacity)
    running: int = 0
    consecutive_failures: int = 0
    worst: int = 0  # the largest hold it asked for so far (before any: its offer's price)
    held_known: bool = False  # an Accept of its has said what it holds
    avoided: bool = False
    failed: int = 0
    succeeded: int = 0


@dataclass
class _InputState:
    seq: int
    tried: set[Hashable] = field(default_factory=set)  # providers with a started or running attempt
    orgs: set[Hashable] = field(default_factory=set)
    running: int = 0
    failures: int = 0  # started attempts that failed (each spends a retry)
    unstarted: int = 0
    votes: dict[bytes, list[tuple[int, Hashable]]] = field(
        default_factory=dict
    )  # digest -> (attempt, provider)
    last: int | None = None
    last_failure: str = ""
    settled: bool = False
    accepted_digest: bytes | None = None


@dataclass
class _Attempt:
    seq: int
    provider: Hashable
    reserved: int
    accepted: bool = False
    digest: bytes | None = None  # its output's, if it succeeded


class Scheduler:
    """The plan of one fan-out run (see the module's docstring)."""

    def __init__(
        self,
        providers: Iterable[Provider],
        *,
        jobs: int | None = None,
        retries: int = 0,
        redundancy: int = 1,
        max_cost: int | None = None,
    ) -> None:
        if redundancy < 1 or retries < 0 or (jobs is not None and jobs < 1):
            raise ValueError("redundancy and jobs are at least 1, retries at least 0")
        self.jobs = jobs
        self.retries = retries
        self.redundancy = redundancy
        self.quorum = redundancy // 2 + 1
        self.max_cost = max_cost
        self._providers: dict[Hashable, _ProviderState] = {}
        for info in providers:
            self.add_provider(info)
        self._inputs: dict[int, _InputState] = {}
        self._waiting: deque[int] = deque()  # inputs that want another attempt, oldest first
        self._attempts: dict[int, _Attempt] = {}
        self._next_attempt = 0
        self.spent = 0
        self.retried = 0  # attempts started again after one failed
        self.failed_inputs = 0
        self.done_inputs = 0
        self._closed = False

    # --- what goes in ------------------------------------------------------------------

    def add_provider(self, info: Provider) -> None:
        if info.capacity < 1:
            return  # a provider with no job slots can take no work
        capped = Provider(info.key, min(info.capacity, MAX_SLOTS), info.org, info.estimate)
        self._providers[info.key] = _ProviderState(capped, slots=1, worst=info.estimate)

    def add_input(self, seq: int) -> None:
        """Input `seq` (unique) wants running."""
        if seq in self._inputs or self._closed:
            raise ValueError(f"input {seq} was added already, or the inputs were closed")
        self._inputs[seq] = _InputState(seq)
        self._waiting.append(seq)

    def close(self) -> None:
        """No more inputs will come: once the last is settled, the run is `finished`."""
        self._closed = True

    def accepted(self, attempt: int, held: int) -> bool:
        """The node accepted `attempt`, holding `held` (the most it may charge). False: that
        is more than the budget allows now, and the attempt must be cancelled (its outcome
        still goes to `finished`)."""
        state = self._attempts[attempt]
        provider = self._providers[state.provider]
        provider.worst = max(provider.worst, held) if provider.held_known else held
        provider.held_known = True
        state.accepted = True
        if self.max_cost is None:
            return True
        others = self.reserved - state.reserved
        if self.spent + others + held > self.max_cost:
            return False
        state.reserved = held
        return True

    def ceiling(self, attempt: int) -> int | None:
        """The most `attempt` may cost without the run going over its budget (None: no budget):
        the Call carries it, so that a node whose hold is larger refuses before running it."""
        if self.max_cost is None:
            return None
        others = self.reserved - self._attempts[attempt].reserved
        return max(self.max_cost - self.spent - others, 0)

    def finished(self, attempt: int, outcome: Outcome) -> list[Event]:
        """`attempt` ended with `outcome`: what that settles."""
        state = self._attempts.pop(attempt)
        provider = self._providers[state.provider]
        entry = self._inputs[state.seq]
        provider.running -= 1
        entry.running -= 1
        self.spent += outcome.cost
        events: list[Event] = []
        if outcome.refused == "provider" and not provider.avoided:
            provider.avoided = True
            events.append(ProviderAvoided(provider.info.key, f"it refused: {outcome.error}"))
        if outcome.succeeded:
            provider.consecutive_failures = 0
            provider.succeeded += 1
            provider.slots = min(provider.slots + 1, provider.info.capacity)
        else:
            provider.failed += 1
            provider.consecutive_failures += 1
            provider.slots = max(provider.slots // 2, 1)
            if provider.consecutive_failures >= MAX_CONSECUTIVE_FAILURES and not provider.avoided:
                provider.avoided = True
                events.append(
                    ProviderAvoided(
                        provider.info.key, f"failed {provider.consecutive_failures} times in a row"
                    )
                )
        if entry.settled:
            # A copy that was still running when the vote was decided: checked all the same.
            if outcome.succeeded and outcome.digest != entry.accepted_digest:
                events += self._disagreed(state.provider)
            return events
        entry.last = attempt
        if outcome.refused == "input":
            entry.last_failure = outcome.error or "refused"
            return events + self._fail(entry, entry.last_failure)
        if outcome.succeeded:
            entry.votes.setdefault(outcome.digest, []).append((attempt, state.provider))
        elif outcome.started:
            entry.failures += 1
            entry.last_failure = outcome.error or _exit_text(outcome)
        else:
            entry.unstarted += 1
            entry.tried.discard(state.provider)  # it ran nothing there: that provider may try again
            entry.last_failure = outcome.error or "not started"
        events += self._settle(entry)
        return events

    # --- what comes out ----------------------------------------------------------------

    def next_starts(self) -> list[Start]:
        """Every attempt that may start now (each input at most as often as it still needs)."""
        starts: list[Start] = []
        unplaced: list[int] = []
        while self._waiting and self._room() and self._any_free():
            seq = self._waiting.popleft()
            entry = self._inputs[seq]
            if entry.settled:
                continue
            provider = self._choose(entry)
            if provider is None:
                unplaced.append(seq)
                continue
            starts.append(self._start(entry, provider))
            if self._copies_wanted(entry) > 0:
                self._waiting.appendleft(seq)
        self._waiting.extendleft(reversed(unplaced))
        return starts

    def settle_stuck(self) -> list[Event]:
        """When nothing runs and nothing can start: the inputs that wait fail, each saying why.
        Drivers call this when `next_starts` gave nothing and no attempt is running."""
        if self.running or not self._waiting:
            return []
        events: list[Event] = []
        while self._waiting:
            entry = self._inputs[self._waiting.popleft()]
            if entry.settled:
                continue
            why = self._why_stuck(entry)
            events += self._fail(entry, why)
        return events

    @property
    def running(self) -> int:
        return len(self._attempts)

    @property
    def reserved(self) -> int:
        return sum(attempt.reserved for attempt in self._attempts.values())

    @property
    def finished_all(self) -> bool:
        """Closed, and every input settled."""
        return self._closed and self.done_inputs + self.failed_inputs == len(self._inputs)

    @property
    def providers_in_use(self) -> int:
        return sum(1 for p in self._providers.values() if p.running > 0)

    @property
    def providers_left(self) -> int:
        return sum(1 for p in self._providers.values() if not p.avoided)

    # --- the decisions -----------------------------------------------------------------

    def _room(self) -> bool:
        return self.jobs is None or self.running < self.jobs

    def _copies_wanted(self, entry: _InputState) -> int:
        """More attempts `entry` wants started now: enough for `redundancy` results that
        count, or for its best output to reach the quorum, less those already running."""
        if entry.settled:
            return 0
        valid = sum(len(v) for v in entry.votes.values())
        best = max((len(v) for v in entry.votes.values()), default=0)
        wanted = max(self.redundancy - valid, self.quorum - best) - entry.running
        return max(min(wanted, self._attempts_left(entry)), 0)

    def _attempts_left(self, entry: _InputState) -> int:
        return (
            self.redundancy
            + self.retries
            - entry.failures
            - sum(len(v) for v in entry.votes.values())
            - entry.running
        )

    def _choose(self, entry: _InputState) -> _ProviderState | None:
        """The provider for `entry`'s next attempt: free, not avoided, within the budget; one
        that has not tried it (with redundancy, only such), another organisation's first;
        the least loaded of its slots, then the one with the fewest failures."""
        free = [
            p
            for p in self._providers.values()
            if not p.avoided and p.running < p.slots and self._affordable(p)
        ]
        fresh = [p for p in free if p.info.key not in entry.tried]
        if not fresh and self.redundancy == 1 and not self._untried_exists(entry):
            fresh = free  # one provider (or every one tried): a retry may go where it failed
        if not fresh:
            return None
        new_org = [p for p in fresh if p.info.org is None or p.info.org not in entry.orgs]
        pool = new_org or fresh
        return min(pool, key=lambda p: (p.running / p.slots, p.failed - p.succeeded, str(p.info.key)))

    def _any_free(self) -> bool:
        return any(
            not p.avoided and p.running < p.slots and self._affordable(p) for p in self._providers.values()
        )

    def _untried_exists(self, entry: _InputState) -> bool:
        return any(not p.avoided and p.info.key not in entry.tried for p in self._providers.values())

    def _affordable(self, provider: _ProviderState) -> bool:
        if self.max_cost is None:
            return True
        return self.spent + self.reserved + provider.worst <= self.max_cost

    def _start(self, entry: _InputState, provider: _ProviderState) -> Start:
        attempt = self._next_attempt
        self._next_attempt += 1
        if entry.failures or entry.unstarted:
            self.retried += 1
        self._attempts[attempt] = _Attempt(entry.seq, provider.info.key, provider.worst)
        provider.running += 1
        entry.running += 1
        entry.tried.add(provider.info.key)
        if provider.info.org is not None:
            entry.orgs.add(provider.info.org)
        return Start(attempt, entry.seq, provider.info.key)

    def _settle(self, entry: _InputState) -> list[Event]:
        for digest, attempts in entry.votes.items():
            if len(attempts) >= self.quorum:
                entry.settled = True
                entry.accepted_digest = digest
                self.done_inputs += 1
                events: list[Event] = [InputDone(entry.seq, attempts[0][0])]
                for other, losers in entry.votes.items():
                    if other != digest:
                        for _, loser in losers:
                            events += self._disagreed(loser)
                return events
        if entry.unstarted >= MAX_UNSTARTED:
            return self._fail(entry, f"no provider took it in {entry.unstarted} tries ({entry.last_failure})")
        if self._copies_wanted(entry) > 0:
            if entry.seq not in self._waiting:
                self._waiting.append(entry.seq)
            return []
        if entry.running:
            return []
        # Nothing runs and no attempt is left (else more copies would be wanted).
        if entry.votes:
            return self._fail(entry, f"no {self.quorum} of {self.redundancy} providers agreed on its output")
        return self._fail(entry, entry.last_failure)

    def _fail(self, entry: _InputState, reason: str) -> list[Event]:
        entry.settled = True
        self.failed_inputs += 1
        return [InputFailed(entry.seq, entry.last, reason)]

    def _why_stuck(self, entry: _InputState) -> str:
        live = [p for p in self._providers.values() if not p.avoided]
        if live and self.max_cost is not None and not any(self._affordable(p) for p in live):
            return f"the budget of {self.max_cost} msat would be exceeded ({self.spent} msat spent)"
        if self.redundancy > 1 and len(live) < self.redundancy:
            return f"fewer than {self.redundancy} distinct providers left"
        return (
            f"no provider left to run it ({entry.last_failure})"
            if entry.last_failure
            else "no provider left to run it"
        )

    def _disagreed(self, key: Hashable) -> list[Event]:
        provider = self._providers[key]
        if provider.avoided:
            return []
        provider.avoided = True
        return [ProviderAvoided(key, "its output disagreed with the majority")]


def _exit_text(outcome: Outcome) -> str:
    if outcome.signal is not None:
        return f"killed by signal {outcome.signal}"
    if outcome.exit_code is not None:
        return f"exit status {outcome.exit_code}"
    return "ended without an exit status"
