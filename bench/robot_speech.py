#!/usr/bin/env python
"""The speech services: how well hubnet-listen understands hubnet-speak, and how long a call takes.

Word error rate: PHRASES (robot commands, names, numbers) are spoken by hubnet-speak in
espeak-ng's US English voice and its default (British) voice, and transcribed by
hubnet-listen with the free vocabulary, and restricted to the words of all the phrases
(`--words`). WER is the standard one: word-level edit distance (substitutions, deletions,
insertions) over all phrases, divided by the number of words said. Transcription runs
in this process, so the model loads once; `-v` prints every transcript.

Latency: whole processes (fork to exit, so imports and model loading included), median of
--runs after one warm-up: hubnet-speak of a short sentence, hubnet-listen of its WAV with
the free vocabulary and with `--words`. `command_latency()` takes the command prefix, so the same
figures can be taken through a node with `["hubnode", "call", "--server", TARGET, "speak"]`.

    .venv/bin/python bench/robot_speech.py [--runs 5] [-v]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, BenchError, bytecode_cache, command_latency

from hubnet_robot import listen

PHRASES = [
    "hello robot",
    "what is your name",
    "my name is jenny",
    "turn left",
    "turn right and stop",
    "go forward three steps",
    "please bring me the red ball",
    "the battery is low",
    "i am a robot",
    "bob is in the kitchen",
    "alice is at the door",
    "seven three five",
    "one two three four five",
    "the time is ten fifteen",
    "open the door please",
    "where is the charging station",
    "i can not see you",
    "hello alice how are you",
    "good morning bob",
    "move back two meters",
    "the quick brown fox jumps over the lazy dog",
    "look at the camera",
    "say hello to jenny",
    "shut down now",
    "set a timer for twenty minutes",
    "nine eight seven six",
    "where are my keys",
    "pick up the blue box",
    "follow me",
    "it is raining outside",
]
VOICES = ["en-us", "en"]
SPEAK = [PYTHON, "-m", "hubnet_robot.speak"]
LISTEN = [PYTHON, "-m", "hubnet_robot.listen"]


def edit_distance(said: Sequence[str], heard: Sequence[str]) -> int:
    """Substitutions, deletions and insertions that turn `said` into `heard`."""
    row = list(range(len(heard) + 1))
    for i, word in enumerate(said, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(heard, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def say(text: str, voice: str) -> bytes:
    proc = subprocess.run([*SPEAK, "--voice", voice, text], capture_output=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"hubnet-speak {text!r} exited {proc.returncode}: {proc.stderr.decode()}")
    return proc.stdout


def word_error_rate(wavs: Sequence[bytes], words: Sequence[str] | None, verbose: bool) -> tuple[float, float]:
    """WER over PHRASES spoken as `wavs`, and the mean time to transcribe one (warm, in process)."""
    errors, said, seconds = 0, 0, 0.0
    for phrase, wav in zip(PHRASES, wavs, strict=True):
        start = time.perf_counter()
        heard = listen.listen(wav, words)
        seconds += time.perf_counter() - start
        errors += edit_distance(phrase.split(), heard.split())
        said += len(phrase.split())
        if verbose:
            print(f"    {phrase!r:48} -> {heard!r}")
    return errors / said, seconds / len(wavs)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per latency figure (default 5)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    args = parser.parse_args()

    vocabulary = sorted({word for phrase in PHRASES for word in phrase.split()})
    said = sum(len(phrase.split()) for phrase in PHRASES)
    print(f"word error rate: {len(PHRASES)} phrases, {said} words, vocabulary of {len(vocabulary)} words")
    print(f"  {'voice':8} {'vocabulary':12} {'WER':>6} {'decode (warm)':>14}")
    for voice in VOICES:
        wavs = [say(phrase, voice) for phrase in PHRASES]
        for name, words in (("free", None), ("restricted", vocabulary)):
            wer, seconds = word_error_rate(wavs, words, args.verbose)
            print(f"  {voice:8} {name:12} {wer:6.3f} {seconds * 1000:11.0f} ms")

    sentence = "Hello, I am a robot. What is your name?"
    print(f"\nlatency: whole processes, median of {args.runs} after a warm-up; {sentence!r}")
    with bytecode_cache() as env:
        wav = say(sentence, "en-us")
        rows = [
            ("hubnet-speak", SPEAK, ["--voice", "en-us", sentence], b""),
            ("hubnet-listen", LISTEN, [], wav),
            ("hubnet-listen --words", LISTEN, ["--words", " ".join(vocabulary)], wav),
        ]
        for label, prefix, call_args, stdin in rows:
            seconds = command_latency(prefix, call_args, stdin, args.runs, env)
            print(f"  {label:24} {seconds * 1000:7.0f} ms")
    seconds_of_audio = (len(wav) - 44) / 2 / 22050
    print(f"  (the WAV: {len(wav)} bytes, {seconds_of_audio:.1f} s of audio)")


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        sys.exit(f"robot_speech: {exc}")
