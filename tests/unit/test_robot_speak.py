"""hubnet-speak: real espeak-ng output, its options, its refusals, and the services.toml table.

Each test runs `python -m hubnet_robot.speak` as a real process (about 0.1 s each), the way
a hubnet node does; the WAVs are read back with the stdlib `wave` module.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import wave
from array import array
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubnet.identity.errors import PolicyError
from hubnet.node.services import parse_services
from hubnet_robot import speak
from tests.helpers import require_program

DOC = Path(__file__).resolve().parents[2] / "docs" / "robot-speech.md"


@dataclass(frozen=True)
class Result:
    code: int
    out: bytes
    err: str


def run(
    args: list[str], text: bytes = b"", env: dict[str, str] | None = None, cwd: Path | None = None
) -> Result:
    """`python -m hubnet_robot.speak ARGS` with `text` on stdin."""
    proc = subprocess.run(
        [sys.executable, "-m", "hubnet_robot.speak", *args],
        input=text,
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr.decode())


@pytest.fixture(autouse=True)
def espeak() -> str:
    return require_program("espeak-ng")


def audio(result: Result) -> wave.Wave_read:
    assert result.code == 0, result.err
    assert result.err == ""
    return wave.open(io.BytesIO(result.out))


def duration(result: Result) -> float:
    with audio(result) as w:
        return w.getnframes() / w.getframerate()


def rms(result: Result) -> float:
    with audio(result) as w:
        samples = array("h", w.readframes(w.getnframes()))
    return (sum(s * s for s in samples) / len(samples)) ** 0.5


def assert_one_line_error(result: Result, code: int, *words: str) -> None:
    assert result.code == code, result
    assert result.out == b""
    assert result.err.startswith("hubnet-speak: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in result.err


# --- the WAV ----------------------------------------------------------------------------------


def test_text_on_stdin_gives_a_complete_wav() -> None:
    result = run([], b"Hello, I am a robot.")
    with audio(result) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        frames = w.getnframes()
        assert len(w.readframes(frames)) == 2 * frames
    # The sizes in the header are the real ones, not espeak-ng's streaming placeholders.
    assert result.out[:4] == b"RIFF" and int.from_bytes(result.out[4:8], "little") == len(result.out) - 8
    assert len(result.out) == 44 + 2 * frames
    assert 1.0 < frames / 22050 < 4.0


def test_the_argument_says_the_same_as_stdin() -> None:
    assert run(["Hello, I am a robot."]).out == run([], b"Hello, I am a robot.").out


def test_text_that_looks_like_an_option_is_spoken_not_obeyed(tmp_path: Path) -> None:
    for result in (
        run(["--", "-w evil.wav hello"], cwd=tmp_path),
        run([], b"-w evil.wav hello", cwd=tmp_path),
    ):
        assert duration(result) > 0.5
    assert list(tmp_path.iterdir()) == []


# --- the options ----------------------------------------------------------------------------


def test_speed_changes_the_duration() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    slow, normal, fast = (duration(run(["--speed", s, text])) for s in ("80", "175", "400"))
    assert slow > 1.5 * normal > 2 * fast


def test_amplitude_changes_the_loudness() -> None:
    quiet, loud = (rms(run(["--amplitude", a, "Hello robot"])) for a in ("20", "200"))
    assert loud > 4 * quiet


def test_voice_and_pitch_change_the_sound() -> None:
    plain = run(["Hello robot"]).out
    for args in (["--voice", "en-us"], ["--voice", "en+f3"], ["--pitch", "90"]):
        other = run([*args, "Hello robot"])
        assert duration(other) > 0.3
        assert other.out != plain, args


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--speed", "10", "hi"], ["--speed", "80 to 450"]),
        (["--speed", "fast", "hi"], ["--speed"]),
        (["--pitch", "100", "hi"], ["--pitch", "0 to 99"]),
        (["--amplitude", "-1", "hi"], ["--amplitude"]),
        (["--voice", "../etc/passwd", "hi"], ["--voice", "not a voice name"]),
        (["--voice", "en us", "hi"], ["--voice"]),
        (["-w", "out.wav", "hi"], ["unrecognized arguments: -w"]),
        (["--spe", "100", "hi"], ["unrecognized"]),  # no abbreviations
        (["one", "two"], ["unrecognized arguments: two"]),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], words: list[str]) -> None:
    assert_one_line_error(run(args), 2, *words)


def test_an_unknown_voice_is_a_usage_error() -> None:
    assert_one_line_error(run(["--voice", "xx-nowhere", "hi"]), 2, "unknown voice 'xx-nowhere'")


@pytest.mark.parametrize("text", [b"", b"  \n\t", b"\xff\xfe not UTF-8", b"a" * (speak.MAX_TEXT_CHARS + 1)])
def test_unusable_text_on_stdin_is_a_data_error(text: bytes) -> None:
    assert_one_line_error(run([], text), 65)


def test_an_empty_argument_is_a_data_error() -> None:
    assert_one_line_error(run([""], b"stdin is not read when there is an argument"), 65, "no text")


def test_without_espeak_ng_it_says_so(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": str(tmp_path)}
    assert_one_line_error(run(["hi"], env=env), 69, "espeak-ng is not installed")


def test_a_failing_espeak_ng_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'out of cheese' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": str(tmp_path)}
    assert_one_line_error(run(["hi"], env=env), 70, "espeak-ng failed (exit 3): out of cheese")


def test_espeak_ng_output_that_is_no_wav_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'not a wav'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": str(tmp_path)}
    assert_one_line_error(run(["hi"], env=env), 70, "no usable WAV")


# --- serving it -------------------------------------------------------------------------------


def test_the_service_table_parses_and_its_policy_fits_the_program() -> None:
    service = parse_services(speak.SERVICE_TOML).by_name("speak")
    assert service is not None and service.command == ("hubnet-speak",)
    service.policy.check(
        ["--voice", "en-us+f3", "--speed", "140", "--pitch", "50", "--amplitude", "90", "Hi"]
    )
    service.policy.check(["--", "-w is spoken, not obeyed"])
    for refused in (
        ["-w", "/etc/passwd"],
        ["--voice", "../x"],
        ["--voice", "a/b"],
        ["--speed", "fast"],
        ["a", "b"],
    ):
        with pytest.raises(PolicyError):
            service.policy.check(refused)


def test_the_documentation_shows_the_service_table() -> None:
    assert f"```toml\n{speak.SERVICE_TOML}```\n" in DOC.read_text(encoding="utf-8")
