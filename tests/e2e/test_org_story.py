"""scripts/org-story.sh, the organisation story as docs/organisations.md shows it, really runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers import require_program

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "org-story.sh"


def test_the_org_story_script_runs_to_the_revocation() -> None:
    for program in ("bash", "tr", "echo", "sed", "grep"):
        require_program(program)
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, timeout=360, check=False)
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()
    assert "(unverified) as server" not in out  # the fingerprint comes first, then ", unverified"
    assert ", unverified) as server; free for members of" in out
    assert 'named in client.toml: member of "The Robot Lab" (' in out
    assert "unverified" not in out.split("named in client.toml:")[1].splitlines()[0]
    assert "the robot reads: the charger is in room 101" in out
    assert "the stranger is refused (exit 126)" in out and "members of organisation" in out
    assert "shouts for nothing: HELLO" in out
    assert "the robot is refused:" in out and "the organisation revoked it" in out


def test_the_docs_show_the_script_as_it_is() -> None:
    doc = (ROOT / "docs" / "organisations.md").read_text(encoding="utf-8")
    assert SCRIPT.read_text(encoding="utf-8") in doc
