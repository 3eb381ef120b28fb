"""hubnet-listen: speech to text. A WAV file on stdin, what was said on stdout as one line.

    hubnet-listen [--words "jenny bob alice" | --grammar JSGF] < speech.wav

The engine is PocketSphinx (the `pocketsphinx` wheel, with its US English model inside:
nothing is downloaded). It runs offline and fast, and is far from perfect on free speech;
a robot that knows what kind of answer to expect should say so:

- `--words`: the answer uses only these words, in any order (a uniform unigram language
  model over them). "my name is jenny" heard with `--words "jenny bob alice"` gives "jenny".
- `--grammar`: the answer follows a small JSGF grammar, e.g.
  `public <name> = [my name is | i am] (jenny | bob | alice);`.

Every word must be in the model's dictionary (CMUdict, lower case): pocketsphinx 5 has no
spelling-to-sound rules, so an unknown word is refused rather than guessed.

Any PCM (8, 16, 24, 32 bits) or float (32, 64 bits) WAV of 8 to 96 kHz and up to 8 channels
is mixed down to mono and resampled to the model's 16 kHz. Then a faint noise floor is
added (see NOISE_FLOOR_DB): synthetic or gated audio has stretches of exact digital
silence, which throw PocketSphinx's noise and loudness estimates off.

numpy and pocketsphinx are imported only once a WAV has been read, so bad options and bad
input fail fast, and SERVICE_TOML needs neither. See docs/robot-speech.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hubnet_robot._audio import (
    IEEE_FLOAT,
    PCM,
    Exit,
    Parser,
    ProgramError,
    Wav,
    WavError,
    parse_wav,
    read_stdin,
    run_main,
)

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

PROG = "hubnet-listen"
MODEL_RATE = 16_000  # the acoustic model's sample rate
MIN_RATE, MAX_RATE = 8_000, 96_000
MAX_CHANNELS = 8
MAX_SECONDS = 300
MAX_INPUT_BYTES = 64 * 2**20
# Gaussian noise this far below the loudest sample. On bench/robot_speech.py's phrases in
# espeak-ng's US voice (exact zeros between words) the word error rate is 0.86 without it
# and 0.40 with it; -40 to -60 dB all did about as well. A microphone's recording has a
# noise floor of about this level anyway.
NOISE_FLOOR_DB = -50.0
# A fixed seed: the same WAV always gives the same transcript.
NOISE_SEED = 0
JSGF_HEADER = "#JSGF V1.0;\ngrammar hubnet;\n"  # added to a --grammar that has none

# (encoding, bits): numpy type, zero point and full scale of one sample. 24-bit PCM has no
# numpy type and is widened to 32 bits first.
_SAMPLE_TYPES = {
    (PCM, 8): ("u1", 128, 2**7),
    (PCM, 16): ("<i2", 0, 2**15),
    (PCM, 24): ("<i4", 0, 2**31),
    (PCM, 32): ("<i4", 0, 2**31),
    (IEEE_FLOAT, 32): ("<f4", 0, 1),
    (IEEE_FLOAT, 64): ("<f8", 0, 1),
}
_ENCODING_NAMES = {0x0002: "MS ADPCM", 0x0006: "A-law", 0x0007: "mu-law", 0x0011: "IMA ADPCM", 0x0055: "MP3"}
_WORD_RE = re.compile(r"[a-z0-9'][a-z0-9'._-]{0,63}")
# What is not a word in a JSGF rule: comments, <rule references>, {tags}, /weights/.
_JSGF_NOT_WORDS = re.compile(r"//[^\n]*|/\*.*?\*/|<[^>]*>|\{[^}]*\}|/[0-9.eE+-]+/", re.S)
_JSGF_WORD = re.compile(r"[^\s()\[\]|*+\"]+")

SERVICE_TOML = """[services.listen]
command = ["hubnet-listen"]
description = "Speech to text (English, offline): WAV on stdin, one line of text; --words or --grammar"
timeout = 120
max_output = "1M"
max_concurrent = 2

[services.listen.arguments]
# Both are checked against the dictionary; a grammar may not import other grammars.
options = { "--words" = "text", "--grammar" = "text" }
"""

EPILOG = f"""\
The WAV: PCM 8/16/24/32-bit or float 32/64-bit, {MIN_RATE} to {MAX_RATE} Hz, 1 to
{MAX_CHANNELS} channels, at most {MAX_SECONDS} seconds. Prints an empty line if nothing was
recognized. Words must be in the CMU dictionary (lower case).

exit codes: 0 done; 2 usage error (bad option, unknown word, bad grammar); 65 input
not a WAV we can read (empty, truncated, unsupported encoding or rate, too long);
69 pocketsphinx or numpy not installed; 70 the recognizer failed.
"""


# --- the audio ----------------------------------------------------------------------------


def read_audio(blob: bytes) -> Wav:
    """The WAV in `blob`, checked to be one we can decode; ProgramError(DATAERR) if not."""
    if not blob:
        raise ProgramError(Exit.DATAERR, "no input: expected a WAV file on stdin")
    try:
        wav = parse_wav(blob)
    except WavError as exc:
        raise ProgramError(Exit.DATAERR, str(exc)) from None
    if (wav.encoding, wav.bits) not in _SAMPLE_TYPES:
        raise ProgramError(
            Exit.DATAERR,
            f"unsupported encoding {_encoding_name(wav)}: want 8, 16, 24 or 32-bit PCM or 32 or 64-bit float",
        )
    if wav.block_align != wav.channels * wav.bits // 8:
        raise ProgramError(Exit.DATAERR, f"inconsistent format: blocks of {wav.block_align} bytes")
    if not MIN_RATE <= wav.rate <= MAX_RATE:
        raise ProgramError(
            Exit.DATAERR, f"unsupported sample rate {wav.rate} Hz: want {MIN_RATE} to {MAX_RATE}"
        )
    if wav.channels > MAX_CHANNELS:
        raise ProgramError(Exit.DATAERR, f"too many channels ({wav.channels}, at most {MAX_CHANNELS})")
    if wav.frames == 0:
        raise ProgramError(Exit.DATAERR, "the WAV holds no audio")
    if wav.frames > MAX_SECONDS * wav.rate:
        raise ProgramError(Exit.DATAERR, f"too long: {wav.frames // wav.rate} s, at most {MAX_SECONDS} s")
    return wav


def _encoding_name(wav: Wav) -> str:
    if wav.encoding in (PCM, IEEE_FLOAT):
        return f"{wav.bits}-bit {'PCM' if wav.encoding == PCM else 'float'}"
    return _ENCODING_NAMES.get(wav.encoding, f"0x{wav.encoding:04x}")


def samples(wav: Wav) -> NDArray[np.float32]:
    """The audio as floats, full scale 1.0: one row per frame, one column per channel."""
    import numpy as np

    dtype, zero, full_scale = _SAMPLE_TYPES[(wav.encoding, wav.bits)]
    data = wav.data
    if wav.bits == 24:  # each sample into the top three bytes of a 32-bit one
        wide = np.zeros((len(data) // 3, 4), np.uint8)
        wide[:, 1:] = np.frombuffer(data, np.uint8).reshape(-1, 3)
        data = wide.tobytes()
    values = (np.frombuffer(data, dtype).astype(np.float32) - zero) / full_scale
    if not np.isfinite(values).all():
        raise ProgramError(Exit.DATAERR, "the float samples include NaN or infinity")
    return values.reshape(-1, wav.channels).astype(np.float32, copy=False)


def resample(signal: NDArray[np.float32], rate: int, to: int) -> NDArray[np.float32]:
    """`signal` at `to` Hz: its spectrum cut (or zero-padded) at the new Nyquist frequency.

    Band-limited resampling for any pair of rates in a few lines. The whole input is in
    memory anyway; five minutes of audio take 1 to 5 seconds, little beside decoding them.
    """
    import numpy as np

    length = max(1, round(len(signal) * to / rate))
    spectrum = np.fft.rfft(signal)[: length // 2 + 1]
    return (np.fft.irfft(spectrum, length) * (length / len(signal))).astype(np.float32)


def model_pcm(wav: Wav) -> bytes:
    """What the recognizer reads: 16 kHz, mono, 16-bit little-endian, with the noise floor."""
    import numpy as np

    mono = samples(wav).mean(axis=1, dtype=np.float32)
    if wav.rate != MODEL_RATE:
        mono = resample(mono, wav.rate, MODEL_RATE)
    peak = float(np.abs(mono).max())
    noise = np.random.default_rng(NOISE_SEED).normal(0.0, peak * 10 ** (NOISE_FLOOR_DB / 20), len(mono))
    mono = mono + noise.astype(np.float32)
    scale = 32767 / max(1.0, float(np.abs(mono).max()))  # float WAVs may go past full scale
    pcm: NDArray[np.int16] = np.round(mono * scale).astype("<i2")
    return pcm.tobytes()


# --- what to expect -------------------------------------------------------------------------


def parse_words(text: str) -> list[str]:
    """--words: words separated by spaces or commas, lower-cased, each once."""
    words = list(dict.fromkeys(text.lower().replace(",", " ").split()))
    if not words:
        raise ProgramError(Exit.USAGE, "--words: no words given")
    for word in words:
        if not _WORD_RE.fullmatch(word):
            raise ProgramError(Exit.USAGE, f"--words: {word!r} is not a dictionary word")
    return words


def grammar_words(jsgf: str) -> list[str]:
    """The words a JSGF grammar uses, to check them against the dictionary before decoding.

    `import` is refused: PocketSphinx would look for the imported grammar's file in the
    working directory or $JSGF_PATH, i.e. read files on the server.
    """
    words: list[str] = []
    for statement in _JSGF_NOT_WORDS.sub(" ", jsgf).split(";"):
        if statement.split()[:1] == ["import"]:
            raise ProgramError(Exit.USAGE, "--grammar: import is not allowed; write the rules out")
        _head, is_rule, body = statement.partition("=")
        if is_rule:
            words += _JSGF_WORD.findall(body)
    if not words:
        raise ProgramError(Exit.USAGE, "--grammar: no rules with words (want e.g. 'public <a> = yes | no;')")
    return list(dict.fromkeys(words))


def unigram_arpa(words: Sequence[str]) -> str:
    """A language model in ARPA format in which each word (and the end) is equally likely."""
    log_p = f"{-math.log10(len(words) + 1):.4f}"
    unigrams = [f"{log_p} </s>", "-99 <s>", *(f"{log_p} {word}" for word in words)]
    return "\n".join(["\\data\\", f"ngram 1={len(unigrams)}", "", "\\1-grams:", *unigrams, "", "\\end\\", ""])


# --- the recognizer ---------------------------------------------------------------------------


@functools.cache
def free_decoder() -> Any:
    """A decoder with the full US English model (about 0.3 s to load), kept for further calls."""
    from pocketsphinx import Decoder

    return Decoder(loglevel="FATAL")  # its log would go to our stderr


def dictionary_lines(words: Sequence[str]) -> list[str]:
    """The model dictionary's lines for `words`, every pronunciation; a usage error for unknown words."""
    from pocketsphinx import Config

    wanted, found, lines = set(words), set(), []
    with open(Config()["dict"], encoding="utf-8", errors="replace") as dictionary:
        for line in dictionary:
            word = line.split(" ", 1)[0].partition("(")[0]  # "word(2)" is word's second pronunciation
            if word in wanted:
                found.add(word)
                lines.append(line)
    unknown = [word for word in words if word not in found]
    if unknown:
        raise ProgramError(
            Exit.USAGE,
            f"not in the dictionary: {', '.join(map(repr, unknown))} "
            "(the words of CMUdict, in lower case; there is no guessing how other words sound)",
        )
    return lines


def words_decoder(words: Sequence[str]) -> Any:
    """A decoder that hears only `words`, in any order, each equally likely."""
    return _small_decoder(words, "lm", "words.arpa", unigram_arpa(words))


def grammar_decoder(jsgf: str) -> Any:
    """A decoder that hears only sentences of a JSGF grammar (its header lines may be left out)."""
    text = jsgf if jsgf.lstrip().startswith("#JSGF") else JSGF_HEADER + jsgf
    try:
        return _small_decoder(grammar_words(jsgf), "jsgf", "answer.gram", text)
    except (ValueError, RuntimeError):
        raise ProgramError(Exit.USAGE, "--grammar: not a JSGF grammar PocketSphinx can read") from None


def _small_decoder(words: Sequence[str], option: str, file_name: str, text: str) -> Any:
    """A decoder whose dictionary holds just `words`, with a language model or grammar file.

    pocketsphinx takes seconds to add even a three-word language model to its full
    130,000-word dictionary, and milliseconds to start afresh with a dictionary this small.
    """
    from pocketsphinx import Decoder

    with tempfile.TemporaryDirectory(prefix="hubnet-listen-") as folder:
        dictionary, model = Path(folder, "words.dict"), Path(folder, file_name)
        dictionary.write_text("".join(dictionary_lines(words)), encoding="utf-8")
        model.write_text(text, encoding="utf-8")
        return Decoder(dict=str(dictionary), loglevel="FATAL", **{option: str(model)})


def transcribe(decoder: Any, pcm: bytes) -> str:
    """What was said in `pcm` (16 kHz mono 16-bit), as lower-case words; "" for nothing."""
    try:
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
    except RuntimeError as exc:
        raise ProgramError(Exit.SOFTWARE, f"the recognizer failed: {exc}") from None
    hypothesis = decoder.hyp()
    return "" if hypothesis is None else str(hypothesis.hypstr)


def listen(wav: bytes, words: Sequence[str] | None = None, grammar: str | None = None) -> str:
    """The transcript of a WAV file, expecting only `words` or `grammar` if either is given."""
    audio = read_audio(wav)
    try:
        pcm = model_pcm(audio)
        if words is not None:
            decoder = words_decoder(words)
        elif grammar is not None:
            decoder = grammar_decoder(grammar)
        else:
            decoder = free_decoder()
    except ImportError as exc:  # only the speech extra's modules are imported late
        from hubnet_robot._extras import install_hint

        raise ProgramError(
            Exit.UNAVAILABLE, f"{exc.name} is not installed (the speech extra): {install_hint('speech')}"
        ) from None
    return transcribe(decoder, pcm)


# --- the command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(PROG, "Transcribe English speech in a WAV file read from stdin.", EPILOG)
    expect = parser.add_mutually_exclusive_group()
    expect.add_argument("--words", metavar="WORDS", help='the only words to expect: "jenny bob alice"')
    expect.add_argument(
        "--grammar", metavar="JSGF", help="a JSGF grammar the answer follows: 'public <a> = yes | no;'"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns the exit code."""

    def body() -> None:
        args = build_parser().parse_args(argv)
        words = None if args.words is None else parse_words(args.words)
        if args.grammar is not None:
            grammar_words(args.grammar)  # refuse a bad grammar before reading stdin
        too_large = f"input too large: more than {MAX_INPUT_BYTES // 2**20} MiB"
        print(listen(read_stdin(MAX_INPUT_BYTES, too_large), words, args.grammar))

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
