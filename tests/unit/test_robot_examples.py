"""`hubnode serve --example-services`: which robot services are added, and how they run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from hubnet.node.services import parse_services
from hubnet_robot import examples
from hubnet_robot.examples import EXAMPLES, with_examples

BASE = parse_services('listen = "127.0.0.1:0"\n[services.cat]\ncommand = ["cat"]\n')


def test_every_runnable_example_is_added_and_runs_from_this_interpreter(tmp_path: Path) -> None:
    runnable = {e.name for e in EXAMPLES if e.missing() is None}
    config, notes = with_examples(BASE, tmp_path)
    by_name = {s.name: s for s in config.services.values()}
    assert set(by_name) == {"cat"} | runnable
    assert len(notes) == len(EXAMPLES) - len(runnable)
    for name in runnable:
        command = by_name[name].command
        assert command[:3] == (sys.executable, "-m", f"hubnet_robot.{name}")
    if "face" in by_name:
        # The placeholder becomes an absolute path in the node's data folder: jobs run in
        # throwaway folders, so a relative database would be lost after every call.
        assert by_name["face"].command[3:] == ("--db", str(tmp_path / "faces.sqlite"))


def test_services_toml_wins_over_an_example_of_the_same_name(tmp_path: Path) -> None:
    own = parse_services('[services.speak]\ncommand = ["espeak-ng", "--stdout"]\n')
    config, notes = with_examples(own, tmp_path)
    speak = [s for s in config.services.values() if s.name == "speak"]
    assert [s.command for s in speak] == [("espeak-ng", "--stdout")]
    assert any("speak not served: services.toml has a service of that name" in n for n in notes)


def test_an_example_whose_extra_is_missing_is_left_out_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tuple(dataclasses.replace(e, missing=lambda: "dlib not installed") for e in EXAMPLES)
    monkeypatch.setattr(examples, "EXAMPLES", gone)
    config, notes = with_examples(BASE, tmp_path)
    assert [s.name for s in config.services.values()] == ["cat"]
    assert len(notes) == 3 and all("not installed (pip install 'hubnet[" in n for n in notes)
