"""scripts/robot-story.sh, the story as the docs show it, really runs and ends in a greeting."""

from __future__ import annotations

import os
import subprocess
import wave
from pathlib import Path

from tests.helpers import require_program

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "robot-story.sh"


def test_the_story_script_greets_jenny(tmp_path: Path) -> None:
    require_program("espeak-ng")
    hello = tmp_path / "hello.wav"
    done = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**os.environ, "HELLO_WAV": str(hello)},
        capture_output=True,
        timeout=180,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "the robot sees a face: unknown" in out
    assert "the robot hears: jenny" in out
    assert "says: Hello jenny!" in out
    with wave.open(str(hello)) as wav:
        assert wav.getnframes() > 0


def test_the_docs_show_the_script_as_it_is() -> None:
    doc = (ROOT / "docs" / "robot-services.md").read_text(encoding="utf-8")
    assert SCRIPT.read_text(encoding="utf-8") in doc
