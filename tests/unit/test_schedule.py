"""The fan-out scheduler (hubnet.schedule), fed outcomes in any order.

The hypothesis test is the promise of `hubnode map`: whatever providers do (fail before or
after the Accept, exit non-zero, lie, cost money), every input ends exactly once, with
an accepted result or a failure, within a bounded number of attempts, never on more jobs
at once than the providers' slots and -j allow, never above the budget, and with
redundancy only on distinct providers.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from hubnet.schedule import (
    MAX_SLOTS,
    MAX_UNSTARTED,
    InputDone,
    InputFailed,
    Outcome,
    Provider,
    ProviderAvoided,
    Scheduler,
    Start,
)


def _honest(seq: int) -> bytes:
    return f"digest of {seq}".encode()


def _run(
    scheduler: Scheduler,
    behaviour: dict[str, str],
    inputs: int,
    rng: random.Random,
    capacities: dict[str, int],
    *,
    held: int = 0,
) -> tuple[dict[int, list[InputDone | InputFailed]], dict[int, Start], list[ProviderAvoided]]:
    """Drive `scheduler` to the end: each provider fails, lies or answers as `behaviour` says."""
    for seq in range(inputs):
        scheduler.add_input(seq)
    scheduler.close()
    ends: dict[int, list[InputDone | InputFailed]] = {seq: [] for seq in range(inputs)}
    starts: dict[int, Start] = {}
    avoided: list[ProviderAvoided] = []
    running: list[Start] = []
    for _ in range(10_000):
        if scheduler.finished_all:
            break
        new = scheduler.next_starts()
        for start in new:
            starts[start.attempt] = start
        running += new
        if scheduler.jobs is not None:
            assert len(running) <= scheduler.jobs
        for key, capacity in capacities.items():
            assert sum(start.provider == key for start in running) <= capacity
        if not running:
            events = scheduler.settle_stuck()
            assert events, "nothing runs, nothing starts, and nothing was settled"
        else:
            start = running.pop(rng.randrange(len(running)))
            kind = behaviour[str(start.provider)]
            roll = rng.random()
            if kind == "dead" or (kind == "flaky" and roll < 0.3):
                outcome = Outcome(started=False, error="cannot connect")
            else:
                keep = scheduler.accepted(start.attempt, held)
                if not keep:
                    outcome = Outcome(started=True, error="cancelled: over budget")
                elif kind == "flaky" and roll < 0.5:
                    outcome = Outcome(started=True, error="the node closed", cost=held // 2)
                elif kind == "liar":
                    outcome = Outcome(True, 0, None, b"wrong " + _honest(start.seq), cost=held)
                elif kind == "crashy" and roll < 0.5:
                    outcome = Outcome(True, 1, None, b"", cost=held)
                else:
                    outcome = Outcome(True, 0, None, _honest(start.seq), cost=held)
            events = scheduler.finished(start.attempt, outcome)
        for event in events:
            if isinstance(event, ProviderAvoided):
                avoided.append(event)
            else:
                ends[event.seq].append(event)
    else:
        raise AssertionError("the run did not end within 10,000 steps")
    return ends, starts, avoided


behaviours = st.lists(st.sampled_from(["good", "dead", "flaky", "liar", "crashy"]), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    kinds=behaviours,
    capacities=st.lists(st.integers(1, 4), min_size=6, max_size=6),
    inputs=st.integers(0, 25),
    retries=st.integers(0, 3),
    redundancy=st.integers(1, 3),
    jobs=st.none() | st.integers(1, 5),
    seed=st.integers(0, 2**32),
)
def test_every_input_ends_exactly_once(
    kinds: list[str],
    capacities: list[int],
    inputs: int,
    retries: int,
    redundancy: int,
    jobs: int | None,
    seed: int,
) -> None:
    behaviour = {f"p{i}": kind for i, kind in enumerate(kinds)}
    providers = [Provider(key, capacities[i]) for i, key in enumerate(behaviour)]
    scheduler = Scheduler(providers, jobs=jobs, retries=retries, redundancy=redundancy)
    capacity = {key: capacities[i] for i, key in enumerate(behaviour)}
    ends, starts, _ = _run(scheduler, behaviour, inputs, random.Random(seed), capacity)
    assert all(len(settled) == 1 for settled in ends.values()), ends
    assert scheduler.done_inputs + scheduler.failed_inputs == inputs
    for seq, [end] in ends.items():
        tries = [s for s in starts.values() if s.seq == seq]
        assert len(tries) <= (redundancy + retries) + MAX_UNSTARTED
        if isinstance(end, InputDone):
            winner = starts[end.attempt]
            assert winner.seq == seq
            # An accepted output came from a provider that answers honestly, or from a
            # majority of liars (impossible: each lies differently from the honest digest
            # only, so liars agree among themselves; a majority needs enough of them).
            if redundancy == 1:
                assert behaviour[str(winner.provider)] != "dead"
        if redundancy > 1:
            # A vote counts distinct providers only.
            ran_on = [s.provider for s in tries]
            assert len(ran_on) - len(set(ran_on)) <= MAX_UNSTARTED


def test_capacity_and_jobs_bound_what_runs_at_once() -> None:
    scheduler = Scheduler([Provider("a", 2), Provider("b", 3)], jobs=4)
    for seq in range(20):
        scheduler.add_input(seq)
    running = scheduler.next_starts()
    assert [s.seq for s in running] == [0, 1]  # one slot each to begin with, in input order
    most = {"a": 0, "b": 0}
    while running:
        start = running.pop(0)
        scheduler.finished(start.attempt, Outcome(True, 0, None, b"x"))
        running += scheduler.next_starts()
        assert len(running) <= 4  # -j
        for key in most:
            most[key] = max(most[key], sum(s.provider == key for s in running))
    assert most == {"a": 2, "b": 3} or sum(most.values()) == 4  # each up to its capacity, within -j


def test_an_offer_cannot_claim_more_than_max_slots() -> None:
    scheduler = Scheduler([Provider("boastful", 10**6)])
    for seq in range(200):
        scheduler.add_input(seq)
    running = scheduler.next_starts()
    peak = len(running)
    while running:
        start = running.pop()
        scheduler.finished(start.attempt, Outcome(True, 0, None, b"x"))
        running += scheduler.next_starts()
        peak = max(peak, len(running))
    assert peak == MAX_SLOTS


def test_a_failing_provider_gets_less_work_then_none() -> None:
    scheduler = Scheduler([Provider("bad", 4), Provider("good", 4)], retries=5)
    for seq in range(40):
        scheduler.add_input(seq)
    scheduler.close()
    bad_starts = 0
    avoided = []
    while not scheduler.finished_all:
        for start in scheduler.next_starts():
            if start.provider == "bad":
                bad_starts += 1
                outcome = Outcome(started=False, error="cannot connect")
            else:
                outcome = Outcome(True, 0, None, b"ok")
            avoided += [
                e for e in scheduler.finished(start.attempt, outcome) if isinstance(e, ProviderAvoided)
            ]
    assert scheduler.done_inputs == 40
    assert [e.provider for e in avoided] == ["bad"]
    assert bad_starts == 3  # one slot at first, never more: rested after three failures in a row


def test_a_retry_goes_to_another_provider() -> None:
    scheduler = Scheduler([Provider("a", 1), Provider("b", 1)], retries=1)
    scheduler.add_input(0)
    [first] = scheduler.next_starts()
    scheduler.accepted(first.attempt, 0)
    assert scheduler.finished(first.attempt, Outcome(True, None, None, error="the node closed")) == []
    [second] = scheduler.next_starts()
    assert second.provider != first.provider and scheduler.retried == 1
    assert scheduler.finished(second.attempt, Outcome(True, 0, None, b"x")) == [InputDone(0, second.attempt)]


def test_retries_spent_fail_the_input_with_its_last_exit() -> None:
    scheduler = Scheduler([Provider("a", 1)], retries=1)
    scheduler.add_input(0)
    events = []
    for _ in range(2):
        [start] = scheduler.next_starts()
        events = scheduler.finished(start.attempt, Outcome(True, 3, None, b""))
    assert events == [InputFailed(0, start.attempt, "exit status 3")]
    assert scheduler.next_starts() == []


def test_the_majority_wins_and_the_dissenter_is_avoided() -> None:
    scheduler = Scheduler([Provider("a", 1), Provider("b", 1), Provider("liar", 1)], redundancy=3)
    scheduler.add_input(0)
    starts = scheduler.next_starts()
    assert sorted(str(s.provider) for s in starts) == ["a", "b", "liar"]
    by = {s.provider: s for s in starts}
    assert scheduler.finished(by["liar"].attempt, Outcome(True, 0, None, b"lie")) == []
    assert scheduler.finished(by["a"].attempt, Outcome(True, 0, None, b"truth")) == []
    events = scheduler.finished(by["b"].attempt, Outcome(True, 0, None, b"truth"))
    assert events == [
        InputDone(0, by["a"].attempt),
        ProviderAvoided("liar", "its output disagreed with the majority"),
    ]


def test_redundancy_never_counts_one_provider_twice() -> None:
    scheduler = Scheduler([Provider("a", 4)], redundancy=2)
    scheduler.add_input(0)
    [start] = scheduler.next_starts()
    scheduler.finished(start.attempt, Outcome(True, 0, None, b"x"))
    assert scheduler.next_starts() == []
    [failed] = scheduler.settle_stuck()
    assert isinstance(failed, InputFailed) and "distinct providers" in failed.reason


def test_no_job_starts_that_could_exceed_the_budget() -> None:
    scheduler = Scheduler([Provider("a", 10, estimate=30)], max_cost=100)
    for seq in range(10):
        scheduler.add_input(seq)
    scheduler.close()
    running = scheduler.next_starts()
    peak = 0
    while running:
        peak = max(peak, len(running))
        start = running.pop(0)
        assert scheduler.accepted(start.attempt, 30)
        scheduler.finished(start.attempt, Outcome(True, 0, None, b"x", cost=25))
        running += scheduler.next_starts()
    assert peak <= 3  # 3 x 30 held fits in 100, a fourth would not
    assert scheduler.spent == 75
    assert scheduler.next_starts() == []  # 75 + 30 > 100
    failures = scheduler.settle_stuck()
    assert len(failures) == 7 and all("budget" in f.reason for f in failures if isinstance(f, InputFailed))
    assert scheduler.finished_all


def test_a_hold_above_the_budget_at_the_accept_cancels_the_attempt() -> None:
    scheduler = Scheduler([Provider("a", 2)], max_cost=50)
    scheduler.add_input(0)
    [start] = scheduler.next_starts()
    assert not scheduler.accepted(start.attempt, 80)


@settings(max_examples=100, deadline=None)
@given(
    inputs=st.integers(1, 20), held=st.integers(1, 40), budget=st.integers(0, 300), seed=st.integers(0, 2**32)
)
def test_the_budget_holds_whatever_happens(inputs: int, held: int, budget: int, seed: int) -> None:
    behaviour = {"p0": "good", "p1": "flaky", "p2": "crashy"}
    scheduler = Scheduler([Provider(k, 3, estimate=held) for k in behaviour], retries=2, max_cost=budget)
    ends, _, _ = _run(
        scheduler, behaviour, inputs, random.Random(seed), dict.fromkeys(behaviour, 3), held=held
    )
    assert all(len(settled) == 1 for settled in ends.values())
    assert scheduler.spent <= budget


def test_a_refusal_avoids_the_provider_or_fails_the_input_at_once() -> None:
    scheduler = Scheduler([Provider("a", 1), Provider("b", 1)], retries=3)
    scheduler.add_input(0)
    scheduler.add_input(1)
    first, second = scheduler.next_starts()
    no_service = Outcome(False, error="no-such-service: no", refused="provider")
    events = scheduler.finished(first.attempt, no_service)
    assert events == [ProviderAvoided(first.provider, "it refused: no-such-service: no")]
    bad = Outcome(False, error="bad-arguments: -x", refused="input")
    assert scheduler.finished(second.attempt, bad) == [InputFailed(1, second.attempt, "bad-arguments: -x")]
    [again] = scheduler.next_starts()
    assert again.seq == 0 and again.provider == second.provider


def test_a_providers_first_accept_tells_its_price_before_a_second_job_starts() -> None:
    scheduler = Scheduler([Provider("named", 8)], max_cost=35)  # named: no offer, no price known
    for seq in range(10):
        scheduler.add_input(seq)
    scheduler.close()
    [first] = scheduler.next_starts()
    assert scheduler.accepted(first.attempt, 10)
    assert scheduler.next_starts() == []
    scheduler.finished(first.attempt, Outcome(True, 0, None, b"x", cost=10))
    assert len(scheduler.next_starts()) == 2  # 10 spent + 2 x 10 held fits in 35, a third would not


def test_redundant_runs_go_to_distinct_organisations_first() -> None:
    providers = [Provider("a1", 1, "lab-a"), Provider("a2", 1, "lab-a"), Provider("b1", 1, "lab-b")]
    scheduler = Scheduler(providers, redundancy=2)
    scheduler.add_input(0)
    starts = scheduler.next_starts()
    assert sorted(str(s.provider) for s in starts) == ["a1", "b1"]  # not a1 and a2, one lab twice
