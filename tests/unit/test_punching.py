"""hubnet.punching: a target a punch failed for rests (in the home's file), a success clears it."""

from __future__ import annotations

from pathlib import Path

from hubnet.punching import PUNCH_REST_FIRST, PUNCH_REST_MAX, Punching
from hubnet.rests import Rests

TARGET, OTHER = b"t" * 32, b"o" * 32


def test_a_failed_or_broken_punch_rests_its_target_across_calls_and_a_success_clears_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "punch-failed"
    said: list[str] = []
    first = Punching(path, said.append)
    assert first.wanted(TARGET)
    first.punched(TARGET, "198.18.1.10:4200", False)
    assert not first.wanted(TARGET) and first.wanted(OTHER)
    assert "failed: the call stays on relay 198.18.1.10:4200" in said[-1]
    # The next `hubnode call` reads the file.
    second = Punching(path)
    assert not second.wanted(TARGET)
    second.punched(OTHER, "relay", None)
    assert not Punching(path).wanted(OTHER)
    second.punched(TARGET, "relay", True)
    assert Punching(path).wanted(TARGET)


def test_in_memory_without_a_file() -> None:
    punching = Punching()
    punching.punched(TARGET, "relay", False)
    assert not punching.wanted(TARGET)


def test_the_rest_doubles_with_each_failure_in_a_row_up_to_a_day() -> None:
    now = [1000.0]
    rests = Rests(None, first=PUNCH_REST_FIRST, most=PUNCH_REST_MAX, header="", clock=lambda: now[0])
    ends = []
    for _ in range(10):
        rests.failed("t")
        ends.append(rests.until("t"))
    assert ends[0] == 1000.0 + PUNCH_REST_FIRST and ends[1] == 1000.0 + 2 * PUNCH_REST_FIRST
    assert ends[-1] == 1000.0 + PUNCH_REST_MAX
    now[0] += PUNCH_REST_MAX + 1
    assert rests.until("t") is None
