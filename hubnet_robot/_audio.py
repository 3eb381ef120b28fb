"""What hubnet-speak and hubnet-listen share: exit codes, one-line errors, and WAV files.

Both are filters run by a hubnet node for callers who see only stderr and the exit status,
so every failure is one line, `PROG: what went wrong`, with a sysexits-style code. The WAV
reader is pure Python: speak uses it to check and complete espeak-ng's output, listen to
read what it is given before the heavy imports.
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NoReturn


class Exit(IntEnum):
    """Exit codes besides 0 (success)."""

    USAGE = 2  # a bad command line: an unknown option, a value out of range, an unknown word
    DATAERR = 65  # stdin is not what the program reads (sysexits EX_DATAERR)
    UNAVAILABLE = 69  # the engine (espeak-ng, pocketsphinx) is not installed
    SOFTWARE = 70  # the engine failed on valid input


class ProgramError(Exception):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())  # one line, whatever a library said


class Parser(argparse.ArgumentParser):
    """argparse with exact option names only, whose usage errors are a one-line ProgramError."""

    def __init__(self, prog: str, description: str, epilog: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,  # `--vo` must not reach a program as `--voice`
        )

    def error(self, message: str) -> NoReturn:
        raise ProgramError(Exit.USAGE, f"{message} (see {self.prog} --help)")


def run_main(prog: str, body: Callable[[], None]) -> int:
    """Run a program's body; turn a ProgramError into its line on stderr and its exit code."""
    try:
        body()
    except ProgramError as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return exc.code
    return 0


def read_stdin(limit: int, too_large: str) -> bytes:
    """All of stdin; ProgramError(DATAERR, too_large) past `limit` bytes (memory is not unlimited)."""
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise ProgramError(Exit.DATAERR, too_large)
    return data


# --- WAV files ----------------------------------------------------------------------------

PCM = 0x0001
IEEE_FLOAT = 0x0003
EXTENSIBLE = 0xFFFE
# The fixed tail of the sub-format GUID of WAVE_FORMAT_EXTENSIBLE; its first two bytes are
# the real format tag (PCM, IEEE_FLOAT, ...).
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# A program writing a WAV to a pipe cannot seek back to fill in the sizes, so it writes a
# placeholder: espeak-ng and SoX write about 2**31, others 0 or 2**32 - 1. A data size this
# large, or 0, means "until the end of the stream"; any other size must be there in full.
_STREAM_SIZE = 0x7FFF0000


class WavError(ValueError):
    """The bytes are not a WAV file this reader understands; the message says why."""


@dataclass(frozen=True)
class Wav:
    """A WAV file: its `fmt ` chunk, as read, and its audio, a whole number of frames."""

    fmt: bytes
    data: bytes

    @property
    def tag(self) -> int:
        return int(struct.unpack_from("<H", self.fmt)[0])

    @property
    def channels(self) -> int:
        return int(struct.unpack_from("<H", self.fmt, 2)[0])

    @property
    def rate(self) -> int:
        return int(struct.unpack_from("<I", self.fmt, 4)[0])

    @property
    def block_align(self) -> int:
        return int(struct.unpack_from("<H", self.fmt, 12)[0])

    @property
    def bits(self) -> int:
        return int(struct.unpack_from("<H", self.fmt, 14)[0])

    @property
    def encoding(self) -> int:
        """The format tag, looking through WAVE_FORMAT_EXTENSIBLE to its sub-format."""
        if self.tag == EXTENSIBLE and len(self.fmt) >= 40 and self.fmt[26:40] == _GUID_TAIL:
            return int(struct.unpack_from("<H", self.fmt, 24)[0])
        return self.tag

    @property
    def frames(self) -> int:
        return len(self.data) // self.block_align

    def to_bytes(self) -> bytes:
        """The file with exact sizes: RIFF, `fmt `, `data` (and its pad byte if odd)."""
        pad = b"\x00" * (len(self.data) % 2)
        body = b"".join(
            (
                b"WAVE",
                _chunk_header(b"fmt ", len(self.fmt)),
                self.fmt,
                b"\x00" * (len(self.fmt) % 2),
                _chunk_header(b"data", len(self.data)),
                self.data,
                pad,
            )
        )
        return _chunk_header(b"RIFF", len(body)) + body


def _chunk_header(kind: bytes, size: int) -> bytes:
    return kind + struct.pack("<I", size)


def parse_wav(blob: bytes) -> Wav:
    """Read a RIFF WAVE file (its `fmt ` and `data` chunks); WavError says what is wrong.

    The RIFF size is ignored (streamed files get it wrong); the data size is trusted unless
    it is a streaming placeholder, and a file shorter than it says is truncated.
    """
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise WavError("not a WAV file (no RIFF WAVE header)")
    fmt: bytes | None = None
    at = 12
    while at + 8 <= len(blob):
        kind, size = blob[at : at + 4], struct.unpack_from("<I", blob, at + 4)[0]
        start = at + 8
        if kind == b"data":
            if fmt is None:
                raise WavError("the data chunk comes before the fmt chunk")
            if size == 0 or size >= _STREAM_SIZE:
                size = len(blob) - start
            elif start + size > len(blob):
                raise WavError(f"truncated: the data chunk says {size} bytes, {len(blob) - start} are there")
            align = struct.unpack_from("<H", fmt, 12)[0]
            return Wav(fmt, blob[start : start + size - size % align])
        if start + size > len(blob):
            raise WavError(f"truncated in the {kind.decode('latin-1')!r} chunk")
        if kind == b"fmt ":
            fmt = _checked_fmt(blob[start : start + size])
        at = start + size + size % 2  # chunks are padded to an even length
    raise WavError("truncated: no data chunk" if fmt else "truncated: no fmt chunk")


def _checked_fmt(fmt: bytes) -> bytes:
    if len(fmt) < 16:
        raise WavError(f"fmt chunk too short ({len(fmt)} bytes)")
    _tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", fmt)
    if 0 in (channels, rate, align, bits):
        raise WavError(f"impossible format: {channels} channels, {rate} Hz, {bits} bits, blocks of {align}")
    return fmt
