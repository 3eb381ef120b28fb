"""The robot's story, end to end, through a real `hubnode serve --example-services`.

The robot sees a face it does not know, asks "What is your name?", hears the answer,
learns the face under that name, and knows her the next time; a different person stays
unknown, and another robot (another identity) sees none of what this one learned.

The photos are real and ship inside installed packages: scikit-image's astronaut.png
(Eileen Collins, whom the robot learns as "jenny") and matplotlib's grace_hopper.jpg. Only
one photo of each person exists there, so "a second photo of the same person" is an
honest variation of the first: mirrored, cropped to half size, darkened, sent as JPEG.
The answer's audio is made with espeak-ng on the robot's side, as a person's voice
would arrive from its microphone.
"""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import photos
from tests.e2e.harness import Client, Server, base_env
from tests.helpers import require_program

NAMES = "jenny alice bob carol dave"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_program("espeak-ng")
    home = tmp_path_factory.mktemp("desktop")
    with Server(home, 'listen = "127.0.0.1:0"\n', serve_args=("--no-lan", "--example-services")) as node:
        assert node.service_count == 3, node.log
        yield node


def _call(
    client: Client, server: Server, *args: str, input: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return client.run("call", "--server", server.target, *args, input=input)


def _identify(client: Client, server: Server, image: bytes) -> list[list[str]]:
    result = _call(client, server, "face", "identify", input=image)
    assert result.returncode == 0, result.stderr.decode()
    return [line.split("\t") for line in result.stdout.decode().splitlines()]


def test_the_robot_learns_a_face_and_knows_it_next_time(server: Server, tmp_path: Path) -> None:
    robot = Client(tmp_path / "robot")
    eileen = photos.astronaut()

    # 1. A face it has never seen.
    [[name, _distance, _box]] = _identify(robot, server, photos.encode(eileen))
    assert name == "unknown"

    # 2. It asks.
    question = _call(robot, server, "speak", "What is your name?")
    assert question.returncode == 0, question.stderr.decode()
    with wave.open(io.BytesIO(question.stdout)) as wav:
        assert wav.getnframes() / wav.getframerate() > 0.5  # a real utterance, not an empty WAV

    # 3. It hears the answer (made with espeak-ng, as a microphone would give it) and
    #    transcribes it, expecting a name.
    answer = subprocess.run(
        [require_program("espeak-ng"), "--stdout", "Jenny"], capture_output=True, check=True
    ).stdout
    heard = _call(robot, server, "listen", "--words", NAMES, input=answer)
    assert heard.returncode == 0, heard.stderr.decode()
    learned = heard.stdout.decode().strip()
    assert learned == "jenny"

    # 4. It stores the name with the face.
    enrolled = _call(robot, server, "face", "enroll", "--name", learned, input=photos.encode(eileen))
    assert enrolled.returncode == 0, enrolled.stderr.decode()

    # 5. Next time, another photo of her: known by name.
    again = photos.darker(photos.cropped_half_size(photos.mirrored(eileen)))
    [[name, distance, _box]] = _identify(robot, server, photos.encode(again, "JPEG"))
    assert name == "jenny" and float(distance) < 0.6

    # 6. A different person is still unknown.
    [[name, _distance, _box]] = _identify(robot, server, photos.encode(photos.grace_hopper()))
    assert name == "unknown"

    # 7. Another robot, another identity: it sees none of this robot's people.
    other = Client(tmp_path / "other-robot")
    [[name, _distance, _box]] = _identify(other, server, photos.encode(eileen))
    assert name == "unknown"


def test_bad_input_to_each_robot_service_is_a_clear_error(server: Server, tmp_path: Path) -> None:
    robot = Client(tmp_path / "robot")
    not_audio = _call(robot, server, "listen", input=b"this is not a WAV file")
    assert not_audio.returncode == 65 and b"Traceback" not in not_audio.stderr
    not_image = _call(robot, server, "face", "identify", input=b"\x89PNG\r\n\x1a\n truncated")
    assert not_image.returncode == 65 and b"Traceback" not in not_image.stderr
    no_face = _call(robot, server, "face", "identify", input=photos.encode(photos.coffee()))
    assert no_face.returncode == 3
    refused = _call(robot, server, "face", "--db", "/tmp/x", "identify")
    assert refused.returncode == 126  # the node's policy refuses it; the program never runs
    no_text = _call(robot, server, "speak", input=b"")
    assert no_text.returncode == 65


def test_the_python_story_from_the_docs(server: Server, tmp_path: Path) -> None:
    """scripts/robot_story.py, shown whole in docs/python-api.md, against the real node."""
    root = Path(__file__).resolve().parents[2]
    script = root / "scripts" / "robot_story.py"
    assert script.read_text(encoding="utf-8") in (root / "docs" / "python-api.md").read_text(encoding="utf-8")
    still, later, answer = tmp_path / "still.png", tmp_path / "later.jpg", tmp_path / "answer.wav"
    eileen = photos.astronaut()
    still.write_bytes(photos.encode(eileen))
    later.write_bytes(photos.encode(photos.darker(photos.mirrored(eileen)), "JPEG"))
    answer.write_bytes(
        subprocess.run(
            [require_program("espeak-ng"), "--stdout", "Jenny"], capture_output=True, check=True
        ).stdout
    )
    env = {**base_env(), "HUBNET_HOME": str(tmp_path / "robot")}

    def story(photo: Path) -> tuple[str, bytes]:
        done = subprocess.run(
            [sys.executable, str(script), server.target, str(photo), str(answer)],
            capture_output=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stderr.decode(), done.stdout

    told, hello = story(still)
    assert told.splitlines() == [
        "the robot sees a face: unknown",
        told.splitlines()[1],
        "the robot hears: jenny",
        "the robot says: Hello jenny!",
    ]
    assert told.splitlines()[1].startswith("the robot asks (")
    with wave.open(io.BytesIO(hello)) as wav:
        assert wav.getnframes() / wav.getframerate() > 0.3
    told, _ = story(later)
    assert told.splitlines() == ["the robot sees a face: jenny", "the robot says: Hello jenny!"]


def test_the_map_examples_in_the_docs_run(server: Server, tmp_path: Path) -> None:
    """docs/map.md's `bash` blocks, in a folder of photos and recordings, with client.toml
    naming the node: a batch of photos through face, a folder of WAVs through listen."""
    from tests.unit.test_docs import fenced_blocks

    root = Path(__file__).resolve().parents[2]
    doc = root / "docs" / "map.md"
    blocks = [b for b in fenced_blocks(doc.read_text(encoding="utf-8"), doc.name) if b.lang == "bash"]
    assert len(blocks) == 3
    home = tmp_path / "robot"
    home.mkdir()
    (home / "client.toml").write_text(f'server = "{server.target}"\n', encoding="utf-8")
    work = tmp_path / "work"
    (work / "photos").mkdir(parents=True)
    (work / "answers").mkdir()
    eileen = photos.astronaut()
    (work / "photos" / "1-eileen.jpg").write_bytes(photos.encode(eileen, "JPEG"))
    (work / "photos" / "2-grace.jpg").write_bytes(photos.encode(photos.grace_hopper(), "JPEG"))
    (work / "photos" / "3-eileen-again.jpg").write_bytes(photos.encode(photos.mirrored(eileen), "JPEG"))
    for name in ("jenny", "bob"):
        spoken = subprocess.run(
            [require_program("espeak-ng"), "--stdout", name], capture_output=True, check=True
        )
        (work / "answers" / f"{name}.wav").write_bytes(spoken.stdout)
    enrolled = _call(Client(home), server, "face", "enroll", "--name", "jenny", input=photos.encode(eileen))
    assert enrolled.returncode == 0, enrolled.stderr.decode()
    env = {
        **base_env(),
        "HUBNET_HOME": str(home),
        "PATH": f"{Path(sys.executable).parent}:{base_env()['PATH']}",
    }

    def run(block: str) -> str:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=work,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    faces = [line.split("\t")[0] for line in run(blocks[0].body).splitlines()]
    assert faces == ["jenny", "unknown", "jenny"]
    assert len((work / "faces.log").read_text().splitlines()) == 4  # the header and three inputs
    assert run(blocks[1].body).split() == ["bob", "jenny"]  # heard/bob.wav.stdout, heard/jenny.wav.stdout
    assert run(blocks[2].body).split() == ["bob", "jenny"]  # spoken/bob.stdout, spoken/jenny.stdout
