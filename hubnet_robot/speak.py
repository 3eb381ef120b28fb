"""hubnet-speak: text to speech. Text on stdin (or as the one argument), a WAV file on stdout.

    hubnet-speak [--voice VOICE] [--speed WPM] [--pitch 0-99] [--amplitude 0-200] [TEXT]

The engine is espeak-ng, run as a subprocess with an argv list and the text on its stdin,
so no text (not even one starting with '-') can become an option. Only the four options
above reach it: nothing that writes files, reads files or turns on SSML. espeak-ng writes
its WAV to a pipe with placeholder sizes; the WAV printed here has the real ones, so any
reader (Python's `wave`, players, hubnet-listen) knows its length. See docs/robot-speech.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence

from hubnet_robot._audio import Exit, Parser, ProgramError, WavError, parse_wav, read_stdin, run_main

PROG = "hubnet-speak"
ESPEAK = "espeak-ng"
MAX_TEXT_CHARS = 10_000  # about 12 minutes of speech, a WAV of about 30 MB
# A language (en, en-us, pt-br), a voice file's name (mb-en1) and an optional variant
# (en-us+f3): never a path, never an option.
VOICE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}(\+[A-Za-z0-9_-]{1,32})?"
SPEED = (80, 450)  # words per minute; espeak-ng's own limits
PITCH = (0, 99)
AMPLITUDE = (0, 200)

SERVICE_TOML = f"""[services.speak]
command = ["hubnet-speak"]
description = "Text to speech (espeak-ng): text on stdin or as the argument, WAV on stdout"
timeout = 30
max_output = "64M"

[services.speak.arguments]
options = {{ "--voice" = 're:{VOICE_PATTERN}', "--speed" = "int", "--pitch" = "int", "--amplitude" = "int" }}
positional = 1              # the text, instead of stdin
allow_double_dash = true    # hubnet-speak honours `--`: after it, a text may start with '-'
"""

EPILOG = f"""\
The text is the argument if given, else stdin (UTF-8, at most {MAX_TEXT_CHARS} characters).

exit codes: 0 done; 2 usage error (bad option or value, unknown voice); 65 no text,
text not UTF-8 or too long; 69 {ESPEAK} is not installed; 70 {ESPEAK} failed.
"""


def _voice(text: str) -> str:
    if re.fullmatch(VOICE_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a voice name like en, en-us or en-us+f3")
    return text


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,4}", text) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, not {text!r}")
        return int(text)

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(PROG, "Speak text with espeak-ng: a WAV file on stdout.", EPILOG)
    parser.add_argument("--voice", type=_voice, help="an espeak-ng voice: en, en-us, en-us+f3 (default en)")
    parser.add_argument("--speed", type=_int_in(*SPEED), metavar="WPM", help="words per minute (175)")
    parser.add_argument("--pitch", type=_int_in(*PITCH), metavar="0-99", help="(50)")
    parser.add_argument("--amplitude", type=_int_in(*AMPLITUDE), metavar="0-200", help="volume (100)")
    parser.add_argument("text", nargs="?", help="what to say (default: read stdin)")
    return parser


def text_to_say(argument: str | None) -> bytes:
    """The argument, else stdin, as UTF-8; ProgramError(DATAERR) if empty or unusable."""
    too_long = f"text too long: more than {MAX_TEXT_CHARS} characters"
    try:
        if argument is None:
            argument = read_stdin(4 * MAX_TEXT_CHARS, too_long).decode("utf-8")
        text = argument.encode("utf-8")  # an argv that was not UTF-8 holds surrogates: refused here
    except UnicodeError:
        raise ProgramError(Exit.DATAERR, "the text is not UTF-8") from None
    if not argument.strip():
        raise ProgramError(Exit.DATAERR, "no text to speak (empty input)")
    if len(argument) > MAX_TEXT_CHARS:
        raise ProgramError(Exit.DATAERR, too_long)
    return text


def espeak_argv(program: str, args: argparse.Namespace) -> list[str]:
    """The espeak-ng command line: WAV to stdout, UTF-8 text from stdin, the chosen options."""
    argv = [program, "--stdout", "-b", "1"]
    for flag, value in (("-v", args.voice), ("-s", args.speed), ("-p", args.pitch), ("-a", args.amplitude)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def speak(text: bytes, args: argparse.Namespace) -> bytes:
    """The WAV file espeak-ng makes of `text`, with its sizes filled in."""
    program = shutil.which(ESPEAK)
    if program is None:
        raise ProgramError(Exit.UNAVAILABLE, f"{ESPEAK} is not installed (Debian: apt-get install {ESPEAK})")
    done = subprocess.run(espeak_argv(program, args), input=text, capture_output=True, check=False)
    if done.returncode != 0:
        if args.voice is not None and not known_voice(program, args.voice):
            raise ProgramError(Exit.USAGE, f"unknown voice {args.voice!r} ({ESPEAK} --voices lists them)")
        said = done.stderr.decode(errors="replace").strip() or "no message"
        raise ProgramError(Exit.SOFTWARE, f"{ESPEAK} failed (exit {done.returncode}): {said}")
    try:
        wav = parse_wav(done.stdout)
    except WavError as exc:
        raise ProgramError(Exit.SOFTWARE, f"{ESPEAK} wrote no usable WAV: {exc}") from None
    return wav.to_bytes()


def known_voice(program: str, voice: str) -> bool:
    """Whether `espeak-ng --voices` lists the voice (its language, name or file), variant aside.

    Asked only after espeak-ng failed, to tell a caller's typo from a broken installation.
    """
    listing = subprocess.run([program, "--voices"], capture_output=True, text=True, check=False).stdout
    names: set[str] = set()
    for line in listing.splitlines()[1:]:
        columns = line.split()
        if len(columns) >= 5:
            names.update((columns[1], columns[3], columns[4].rsplit("/", 1)[-1]))
    return voice.partition("+")[0].lower() in {name.lower() for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns the exit code."""

    def body() -> None:
        args = build_parser().parse_args(argv)
        wav = speak(text_to_say(args.text), args)
        sys.stdout.buffer.write(wav)
        sys.stdout.buffer.flush()

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
