"""hubnet-listen: transcripts of espeak-ng's speech, every WAV flavour, malformed input, the table.

Decoding takes 0.1 to 0.5 s a phrase, so only a few phrases are decoded here, mostly with
`listen()` in this process (the model loads once); bench/robot_speech.py measures the word
error rate over a larger set. The errors and one whole pipeline run as real processes.
The speech comes from espeak-ng's US English voice, made fresh by hubnet-speak.
"""

from __future__ import annotations

import functools
import importlib
import io
import struct
import subprocess
import sys
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hubnet.identity.errors import PolicyError
from hubnet.node.services import parse_services
from hubnet_robot import listen
from hubnet_robot._audio import EXTENSIBLE, IEEE_FLOAT, PCM, ProgramError, parse_wav
from hubnet_robot._extras import install_hint
from tests.helpers import require_all, require_program

DOC = Path(__file__).resolve().parents[2] / "docs" / "robot-speech.md"
NAMES = ["jenny", "bob", "alice"]


def _speech_module(name: str) -> ModuleType:
    """A module of the speech extra; skipped without it, except on CI (HUBNET_REQUIRE_ALL=1)."""
    if require_all():
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed: {install_hint('speech')}")


np = _speech_module("numpy")
_speech_module("pocketsphinx")


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def run(args: list[str], data: bytes) -> Result:
    """`python -m hubnet_robot.listen ARGS` as a real process, `data` on stdin."""
    proc = subprocess.run(
        [sys.executable, "-m", "hubnet_robot.listen", *args],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@functools.cache
def spoken(text: str) -> bytes:
    """`text` said by espeak-ng's US English voice: a 22050 Hz mono 16-bit WAV."""
    require_program("espeak-ng")
    proc = subprocess.run(
        [sys.executable, "-m", "hubnet_robot.speak", "--voice", "en-us", text],
        capture_output=True,
        check=True,
    )
    return proc.stdout


def wav_file(
    samples: object, rate: int, encoding: int = PCM, bits: int = 16, extensible: bool = False
) -> bytes:
    """A WAV file written here by hand, independently of the code under test.

    `samples` is an array of frames x channels already in the sample type of the encoding.
    """
    frames = np.asarray(samples)
    channels = frames.shape[1]
    align = channels * bits // 8
    tag = EXTENSIBLE if extensible else encoding
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if extensible:  # cbSize, valid bits, channel mask, then the sub-format GUID
        guid = struct.pack("<H", encoding) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHI", 22, bits, 0) + guid
    data = frames.tobytes()
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def variant(wav: bytes, rate: int, channels: int, kind: str = "<i2") -> bytes:
    """`wav` linearly interpolated to `rate` (a different method from listen's FFT), as
    `channels` channels (the second one half as loud) of type `kind` ("<i2" or "<f4")."""
    with wave.open(io.BytesIO(wav)) as w:
        source = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0
        old_rate = w.getframerate()
    count = len(source) * rate // old_rate
    mono = np.interp(np.arange(count) * old_rate / rate, np.arange(len(source)), source)
    frames = np.stack([mono, mono / 2][:channels], axis=1)
    if kind == "<f4":
        return wav_file(frames.astype("<f4"), rate, IEEE_FLOAT, 32)
    return wav_file((frames * 32767).astype("<i2"), rate)


def overlap(expected: str, heard: str) -> float:
    """The share of the expected words that were heard."""
    want, got = expected.split(), heard.split()
    return sum(min(want.count(w), got.count(w)) for w in set(want)) / len(want)


# --- transcripts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Jenny", "jenny"),
        ("My name is Jenny.", "jenny"),
        ("My name is Bob.", "bob"),
        ("I am Alice.", "alice"),
    ],
)
def test_expected_words_give_exactly_the_name(text: str, name: str) -> None:
    assert listen.listen(spoken(text), words=NAMES) == name


@pytest.mark.parametrize("text", ["What is your name?", "One two three four five."])
def test_free_speech_is_mostly_understood(text: str) -> None:
    expected = text.lower().strip("?.")
    assert overlap(expected, listen.listen(spoken(text))) >= 0.75


def test_a_grammar_gives_the_whole_sentence() -> None:
    grammar = "public <answer> = [my name is | i am] (jenny | bob | alice);"
    assert listen.listen(spoken("My name is Jenny."), grammar=grammar) == "my name is jenny"


@pytest.mark.parametrize(
    ("rate", "channels", "kind"), [(8000, 2, "<i2"), (44100, 1, "<i2"), (48000, 2, "<f4"), (11025, 1, "<f4")]
)
def test_other_rates_channels_and_floats_are_converted(rate: int, channels: int, kind: str) -> None:
    converted = variant(spoken("My name is Jenny."), rate, channels, kind)
    assert listen.listen(converted, words=NAMES) == "jenny"


def test_44100_hz_free_speech_is_understood_too() -> None:
    assert (
        overlap("what is your name", listen.listen(variant(spoken("What is your name?"), 44100, 1))) >= 0.75
    )


def test_speak_piped_into_listen_as_real_processes() -> None:
    result = run(["--words", "jenny, bob, alice"], spoken("My name is Bob."))
    assert (result.code, result.out, result.err) == (0, "bob\n", "")


def test_espeak_ng_streamed_output_with_placeholder_sizes_is_read() -> None:
    raw = subprocess.run(
        [require_program("espeak-ng"), "--stdout", "hello"], capture_output=True, check=True
    ).stdout
    assert struct.unpack_from("<I", raw, 40)[0] >= 0x7FFF0000  # the placeholder this test is about
    assert parse_wav(raw).frames == (len(raw) - 44) // 2


# --- decoding the samples -------------------------------------------------------------------------

LEVELS = [-1.0, -0.5, 0.0, 0.25, 0.5]  # in each encoding, then read back


def _pcm24(levels: list[float]) -> Any:
    """Three bytes a sample: the low three of each little-endian 32-bit integer."""
    return (np.array(levels) * 2**23).astype("<i4").view("u1").reshape(-1, 4)[:, :3]


@pytest.mark.parametrize(
    ("encoding", "bits", "encode"),
    [
        (PCM, 8, lambda x: (np.array(x) * 128 + 128).astype("u1")),
        (PCM, 16, lambda x: (np.array(x) * 32768).astype("<i2")),
        (PCM, 24, _pcm24),
        (PCM, 32, lambda x: (np.array(x) * 2**31).astype("<i4")),
        (IEEE_FLOAT, 32, lambda x: np.array(x, "<f4")),
        (IEEE_FLOAT, 64, lambda x: np.array(x, "<f8")),
    ],
)
@pytest.mark.parametrize("extensible", [False, True])
def test_every_sample_format_is_read_to_the_same_values(
    encoding: int, bits: int, encode: Callable[[list[float]], Any], extensible: bool
) -> None:
    column = encode(LEVELS)
    stereo = np.stack([column, column], axis=1)  # channel by channel, whatever the sample size
    wav = listen.read_audio(wav_file(stereo, 16000, encoding, bits, extensible))
    got = listen.samples(wav)
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got[:, 0], LEVELS, atol=1 / 128)
    np.testing.assert_array_equal(got[:, 0], got[:, 1])


def test_resampling_keeps_a_tone_and_its_length() -> None:
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = listen.resample(tone, 44100, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert int(np.argmax(spectrum)) == 440  # bins are 1 Hz apart for one second
    assert abs(float(np.abs(out[100:-100]).max()) - 1.0) < 0.02


# --- malformed input ----------------------------------------------------------------------------


def _header(
    rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = PCM, align: int | None = None
) -> bytes:
    block = channels * bits // 8 if align is None else align
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) % 2**32, block, bits)
    return b"RIFF\x00\x00\x00\x00WAVEfmt " + struct.pack("<I", 16) + fmt


GOOD = _header() + b"data" + struct.pack("<I", 3200) + bytes(3200)

MALFORMED = {
    "empty": (b"", "no input"),
    "random bytes": (bytes(range(256)) * 4, "not a WAV file"),
    "text": (b"hello robot\n", "not a WAV file"),
    "cut in the header": (GOOD[:30], "truncated"),
    "cut in the data": (GOOD[:1000], "truncated: the data chunk says 3200 bytes"),
    "no data chunk": (GOOD[:36], "no data chunk"),
    "data before fmt": (b"RIFF\x00\x00\x00\x00WAVEdata\x04\x00\x00\x00abcd", "before the fmt chunk"),
    "silly rate": (_header(rate=3) + GOOD[36:], "unsupported sample rate 3 Hz"),
    "huge rate": (_header(rate=4_000_000_000) + GOOD[36:], "unsupported sample rate"),
    "zero channels": (_header(channels=0, align=2) + GOOD[36:], "impossible format"),
    "mu-law": (_header(bits=8, tag=7) + GOOD[36:], "unsupported encoding mu-law"),
    "12-bit PCM": (_header(bits=12, align=2) + GOOD[36:], "unsupported encoding 12-bit PCM"),
    "wrong block size": (_header(align=4) + GOOD[36:], "inconsistent format"),
    "no samples": (_header() + b"data" + struct.pack("<I", 1) + b"\x00", "no audio"),
    "too long": (_header(rate=8000) + b"data" + struct.pack("<I", 0) + bytes(2 * 8000 * 301), "too long"),
    "NaN": (wav_file(np.array([[0.1], [np.nan]], "<f4"), 16000, IEEE_FLOAT, 32), "NaN"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_input_is_a_one_line_data_error(name: str) -> None:
    data, words = MALFORMED[name]
    result = run([], data)
    assert result.code == 65, result
    assert result.out == ""
    assert result.err.startswith("hubnet-listen: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err
    assert words in result.err


def test_input_beyond_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listen, "MAX_INPUT_BYTES", len(GOOD) - 1)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(GOOD)))
    assert listen.main([]) == 65


# --- what to expect -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--words", "jenny zzqx qqq"], "not in the dictionary: 'zzqx', 'qqq'"),
        (["--words", " , "], "no words"),
        (["--words", "<s>"], "not a dictionary word"),
        (["--grammar", "public <a> = yes | zzqx;"], "not in the dictionary: 'zzqx'"),
        (["--grammar", "import <x.y>; public <a> = <y> | no;"], "import is not allowed"),
        (["--grammar", "public <a> = (yes | no;"], "not a JSGF grammar"),
        (["--grammar", "hello"], "no rules"),
        (["--words", "yes", "--grammar", "public <a> = yes;"], "not allowed with"),
        (["--lm", "/etc/passwd"], "unrecognized arguments"),
    ],
)
def test_bad_words_and_grammars_are_usage_errors(args: list[str], words: str) -> None:
    result = run(args, GOOD)
    assert result.code == 2, result
    assert result.err.startswith("hubnet-listen: ") and result.err.count("\n") == 1, result.err
    assert words in result.err


def test_words_are_lower_cased_and_split_at_commas_and_spaces() -> None:
    assert listen.parse_words("Jenny, BOB  alice,jenny") == ["jenny", "bob", "alice"]


def test_grammar_words_skip_rule_names_tags_weights_and_comments() -> None:
    jsgf = (
        "#JSGF V1.0;\ngrammar g; // a robot\npublic <a> = /2/ yes {y} | <b> [please]*;\n<b> = no /* nope */;"
    )
    assert listen.grammar_words(jsgf) == ["yes", "please", "no"]
    with pytest.raises(ProgramError):
        listen.grammar_words("  import <com.x.*>;")


# --- serving it -----------------------------------------------------------------------------------


def test_the_service_table_parses_and_its_policy_fits_the_program() -> None:
    service = parse_services(listen.SERVICE_TOML).by_name("listen")
    assert service is not None and service.command == ("hubnet-listen",)
    service.policy.check(["--words", "jenny bob alice"])
    service.policy.check(["--grammar", "public <a> = [my name is] (jenny | bob);"])
    for refused in (["--lm", "/x"], ["speech.wav"], ["--words", "-x"]):
        with pytest.raises(PolicyError):
            service.policy.check(refused)


def test_the_documentation_shows_the_service_table() -> None:
    assert f"```toml\n{listen.SERVICE_TOML}```\n" in DOC.read_text(encoding="utf-8")
