"""The robot's story in Python: identify -> unknown -> ask -> listen -> enroll -> greet.

The robot's own code calls the desktop's services with `hubnet`, no `hubnode` process:

    python scripts/robot_story.py PEER_ID@HOST:PORT still.jpg answer.wav > hello.wav

`answer.wav` stands for the robot's microphone: it is streamed to `listen` in pieces, as
audio arrives. Leave out the server (pass "") to let client.toml or the DHT choose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hubnet

NAMES = "jenny alice bob carol dave"  # the names the robot expects to hear
PIECE = 4096  # bytes of audio per write, as a microphone would deliver them


def who_is(photo: bytes, server: str | None) -> str:
    found = hubnet.call("face", ["identify"], photo, server=server)
    return found.stdout.decode().split("\t")[0]  # NAME<TAB>DISTANCE<TAB>BOX, one line per face


def hear_name(microphone: bytes, server: str | None) -> str:
    with hubnet.stream("listen", ["--words", NAMES], server=server) as job:
        for start in range(0, len(microphone), PIECE):
            job.write(microphone[start : start + PIECE])
        job.close_stdin()
        return job.read().decode().strip()


def meet(photo: bytes, microphone: bytes, server: str | None = None) -> tuple[str, bytes]:
    """Who is in `photo` (asking and learning the name if unknown), and a WAV greeting them."""
    name = who_is(photo, server)
    print(f"the robot sees a face: {name}", file=sys.stderr)
    if name == "unknown":
        question = hubnet.call("speak", ["I don't think I know you. What is your name?"], server=server)
        print(f"the robot asks ({len(question.stdout)} bytes of WAV)", file=sys.stderr)
        name = hear_name(microphone, server)
        print(f"the robot hears: {name}", file=sys.stderr)
        hubnet.call("face", ["enroll", "--name", name], photo, server=server)
    greeting = hubnet.call("speak", [f"Hello {name}!"], server=server)
    print(f"the robot says: Hello {name}!", file=sys.stderr)
    return name, greeting.stdout


if __name__ == "__main__":
    server, photo, answer = sys.argv[1:4]
    _, hello = meet(Path(photo).read_bytes(), Path(answer).read_bytes(), server or None)
    sys.stdout.buffer.write(hello)
