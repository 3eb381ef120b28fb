"""The face service: recognition on real photos, the per-caller store, errors, the policy.

Photos come from installed packages (see tests.photos); a person's "other photo" is a
variation of their one photo. Most calls run `main()` in this process so the models load
once; the tests marked as such run `python -m hubnet_robot.face` as a real subprocess, the
way a hubnet node does. Every test uses a real SQLite file.
"""

from __future__ import annotations

import io
import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image

from hubnet.identity.errors import PolicyError
from hubnet.node.services import parse_services
from hubnet_robot import face
from hubnet_robot._face_store import FaceStore
from tests import photos

DOC = Path(__file__).resolve().parents[2] / "docs" / "robot-face.md"

EILEEN, GRACE = "Eileen Collins", "Grace Hopper"


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def lines(self) -> list[list[str]]:
        """identify's output, each line split at its tabs."""
        return [line.split("\t") for line in self.out.splitlines()]


Call = Callable[..., Result]


def _environment(client: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBNET_")}
    if client is not None:
        env["HUBNET_CLIENT"] = client
    return env


def run_program(args: list[str], data: bytes = b"", client: str | None = None, **env: str) -> Result:
    """`python -m hubnet_robot.face ARGS` as a real process, stdin `data`."""
    proc = subprocess.run(
        [sys.executable, "-m", "hubnet_robot.face", *args],
        input=data,
        capture_output=True,
        env={**_environment(client), **env},
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.fixture
def call(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Call:
    """main() in this process against a fresh database: call(ARGS, stdin bytes, client=ID)."""
    db = tmp_path / "faces.sqlite"

    def invoke(args: list[str], data: bytes = b"", client: str | None = None) -> Result:
        for key in [k for k in os.environ if k.startswith("HUBNET_")]:
            monkeypatch.delenv(key)
        if client is not None:
            monkeypatch.setenv("HUBNET_CLIENT", client)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        capsys.readouterr()
        code = face.main(["--db", str(db), *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return invoke


@pytest.fixture(scope="module")
def engine() -> face.Engine:
    return face.load_engine()


def descriptors(engine: face.Engine, image: Image.Image) -> list[NDArray[np.float64]]:
    return [f.descriptor for f in engine.faces(face.decode_image(photos.encode(image)))]


def distance(engine: face.Engine, a: Image.Image, b: Image.Image) -> float:
    (da,), (db,) = descriptors(engine, a), descriptors(engine, b)
    return float(np.linalg.norm(da - db))


def two_faces() -> bytes:
    """Eileen Collins (face ~90 px) left, Grace Hopper (face ~190 px) right."""
    return photos.encode(photos.side_by_side(photos.astronaut(), photos.grace_hopper()))


# --- recognition ----------------------------------------------------------------------------

VARIATIONS = [photos.mirrored, photos.cropped_half_size, photos.darker]


@pytest.mark.parametrize("vary", VARIATIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("person", [photos.astronaut, photos.grace_hopper], ids=lambda f: f.__name__)
def test_variations_of_one_person_are_near(
    engine: face.Engine, person: Callable[[], Image.Image], vary: Callable[[Image.Image], Image.Image]
) -> None:
    assert distance(engine, person(), vary(person())) < face.MATCH_THRESHOLD


@pytest.mark.parametrize("vary", [lambda i: i, *VARIATIONS])
def test_different_people_are_far(engine: face.Engine, vary: Callable[[Image.Image], Image.Image]) -> None:
    assert distance(engine, photos.astronaut(), vary(photos.grace_hopper())) > face.MATCH_THRESHOLD


def test_a_face_before_any_enrolment_is_unknown(call: Call) -> None:
    result = call(["identify"], photos.encode(photos.astronaut()))
    assert result.code == 0, result.err
    assert result.lines() == [["unknown", "-", "175,76,265,166"]]


def test_enrolled_person_is_named_in_another_variation_and_a_stranger_is_not(call: Call) -> None:
    enrolled = call(["enroll", "--name", EILEEN], photos.encode(photos.astronaut()))
    assert (enrolled.code, enrolled.out) == (0, f"enrolled {EILEEN} (1)\n")

    variation = photos.cropped_half_size(photos.mirrored(photos.darker(photos.astronaut())))
    [[name, dist, _box]] = call(["identify"], photos.encode(variation, "JPEG")).lines()
    assert name == EILEEN
    assert float(dist) < face.MATCH_THRESHOLD

    [[name, dist, _box]] = call(["identify"], photos.encode(photos.grace_hopper())).lines()
    assert name == "unknown"
    assert float(dist) >= face.MATCH_THRESHOLD


def test_two_faces_give_two_lines_largest_first(call: Call) -> None:
    assert call(["enroll", "--name", EILEEN], photos.encode(photos.astronaut())).code == 0
    lines = call(["identify"], two_faces()).lines()
    assert [name for name, _d, _box in lines] == ["unknown", EILEEN]
    boxes = [[int(v) for v in box.split(",")] for _n, _d, box in lines]
    assert boxes[0][0] >= 512 > boxes[1][2], "Grace Hopper is on the right, Eileen Collins on the left"
    areas = [(r - left) * (b - t) for left, t, r, b in boxes]
    assert areas[0] > areas[1]


def test_json_output(call: Call) -> None:
    assert json.loads(
        call(["enroll", "--name", GRACE, "--json"], photos.encode(photos.grace_hopper())).out
    ) == {
        "name": GRACE,
        "box": [180, 139, 366, 325],
        "faces": 1,
    }
    report = json.loads(call(["identify", "--json"], two_faces()).out)
    assert [(f["name"], f["distance"] < 0.6) for f in report["faces"]] == [(GRACE, True), ("unknown", False)]
    assert json.loads(call(["forget", "--name", GRACE, "--json"]).out) == {"name": GRACE, "forgotten": 1}


def test_enroll_with_two_faces_needs_to_be_told_which(call: Call) -> None:
    refused = call(["enroll", "--name", EILEEN], two_faces())
    assert refused.code == face.Exit.WHICH_FACE
    assert refused.err == "hubnet-face: 2 faces in the image: say which with --face N (1 = largest)\n"
    assert call(["enroll", "--name", EILEEN, "--face", "3"], two_faces()).code == face.Exit.WHICH_FACE
    assert call(["identify"], two_faces()).lines()[1][0] == "unknown", "a refused enrolment stores nothing"

    assert call(["enroll", "--name", EILEEN, "--face", "2"], two_faces()).code == 0
    assert call(["identify"], photos.encode(photos.astronaut())).lines()[0][0] == EILEEN
    assert call(["identify"], photos.encode(photos.grace_hopper())).lines()[0][0] == "unknown"


def test_several_enrolments_per_name_and_forget(call: Call) -> None:
    assert (
        call(["enroll", "--name", GRACE], photos.encode(photos.grace_hopper())).out
        == f"enrolled {GRACE} (1)\n"
    )
    darker = photos.encode(photos.darker(photos.grace_hopper()))
    assert call(["enroll", "--name", GRACE], darker).out == f"enrolled {GRACE} (2)\n"
    assert call(["enroll", "--name", EILEEN], photos.encode(photos.astronaut())).code == 0

    assert call(["forget", "--name", GRACE]).out == f"forgot {GRACE} (2)\n"
    assert call(["identify"], photos.encode(photos.grace_hopper())).lines()[0][0] == "unknown"
    assert call(["identify"], photos.encode(photos.astronaut())).lines()[0][0] == EILEEN
    again = call(["forget", "--name", GRACE])
    assert (again.code, again.out, again.err) == (
        face.Exit.NOT_ENROLLED,
        "",
        f"hubnet-face: nobody is enrolled as '{GRACE}'\n",
    )


def test_callers_never_see_each_others_people(call: Call) -> None:
    alice, bob = "a" * 52, "b" * 52
    assert call(["enroll", "--name", EILEEN], photos.encode(photos.astronaut()), client=alice).code == 0
    assert call(["identify"], photos.encode(photos.astronaut()), client=bob).lines()[0][:2] == [
        "unknown",
        "-",
    ]
    assert call(["identify"], photos.encode(photos.astronaut())).lines()[0][:2] == ["unknown", "-"], "local"
    assert call(["forget", "--name", EILEEN], client=bob).code == face.Exit.NOT_ENROLLED
    assert call(["identify"], photos.encode(photos.astronaut()), client=alice).lines()[0][0] == EILEEN


def test_a_sideways_phone_photo_is_turned_upright(call: Call) -> None:
    """A JPEG stored rotated, with EXIF orientation 6 ("turn 90 degrees clockwise to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    out = io.BytesIO()
    photos.astronaut().transpose(Image.Transpose.ROTATE_90).save(out, format="JPEG", exif=exif.tobytes())
    [[name, _d, box]] = call(["identify"], out.getvalue()).lines()
    left, top, right, bottom = (int(v) for v in box.split(","))
    assert name == "unknown"
    assert abs(left - 175) < 15 and abs(top - 76) < 15 and abs(right - 265) < 15 and abs(bottom - 166) < 15


def test_enrolments_per_caller_are_bounded(call: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(face, "MAX_FACES_PER_OWNER", 2)
    image = photos.encode(photos.grace_hopper())
    assert call(["enroll", "--name", GRACE], image).code == 0
    assert call(["enroll", "--name", EILEEN, "--face", "2"], two_faces()).code == 0
    full = call(["enroll", "--name", GRACE], image)
    assert full.code == face.Exit.FULL
    assert (
        full.err
        == "hubnet-face: cannot enroll more: 2 faces already enrolled (at most 2); forget someone first\n"
    )
    assert call(["enroll", "--name", GRACE], image, client="c" * 52).code == 0, "the bound is per caller"


# --- errors ---------------------------------------------------------------------------------


def _truncated_png() -> bytes:
    data = photos.encode(photos.astronaut())
    return data[: len(data) // 2]


def _png_of_48_megapixels() -> bytes:
    return photos.encode(Image.new("1", (8000, 6000)))


BAD_INPUT: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "no image on stdin (empty input)"),
    "text": (lambda: b"hello, world\n", "input is not a JPEG or PNG image"),
    "random": (lambda: random.Random(7).randbytes(5000), "input is not a JPEG or PNG image"),
    "gif": (lambda: photos.encode(Image.new("RGB", (8, 8)), "GIF"), "input is not a JPEG or PNG image"),
    "truncated PNG": (_truncated_png, "cannot decode the image: "),
    "truncated JPEG": (lambda: photos.encode(photos.astronaut(), "JPEG")[:9000], "cannot decode the image: "),
    "48 megapixels": (_png_of_48_megapixels, "image too large (at most 40 megapixels)"),
}


@pytest.mark.parametrize(("data", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_input_that_is_not_a_usable_image_exits_65(
    data: Callable[[], bytes], message: str, tmp_path: Path
) -> None:
    """As a real process: one line on stderr, no traceback, nothing on stdout."""
    result = run_program(["--db", str(tmp_path / "faces.sqlite"), "identify"], data())
    assert (result.code, result.out) == (65, "")
    assert result.err.startswith(f"hubnet-face: {message}")
    assert result.err.count("\n") == 1


def test_too_many_bytes_exits_65(call: Call, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(face, "MAX_INPUT_BYTES", 1000)
    result = call(["enroll", "--name", EILEEN], photos.encode(photos.astronaut()))
    assert (result.code, result.err) == (65, "hubnet-face: input too large: more than 0 MiB\n")


@pytest.mark.parametrize("image", [lambda: Image.new("RGB", (300, 200), (128, 128, 128)), photos.coffee])
def test_an_image_without_a_face(call: Call, image: Callable[[], Image.Image]) -> None:
    for args in (["identify"], ["enroll", "--name", EILEEN]):
        result = call(args, photos.encode(image(), "JPEG"))
        assert (result.code, result.out, result.err) == (
            face.Exit.NO_FACE,
            "",
            "hubnet-face: no face found in the image\n",
        )


@pytest.mark.parametrize(
    "args",
    [
        ["identify", "--db", "x.sqlite"],
        ["enroll"],
        ["enroll", "--name", "unknown"],
        ["enroll", "--name", ""],
        ["enroll", "--name", "tab\there"],
        ["enroll", "--name", "x" * 65],
        ["enroll", "--name", "Eileen", "--face", "0"],
        ["forget", "--nam", "Eileen"],
        ["list"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = run_program(["--db", str(tmp_path / "faces.sqlite"), *args], photos.encode(photos.astronaut()))
    assert result.code == 2
    assert "usage: hubnet-face" in result.err
    assert not (tmp_path / "faces.sqlite").exists()


def test_as_a_job_the_database_must_be_an_absolute_path(tmp_path: Path) -> None:
    for args in (["identify"], ["--db", "faces.sqlite", "identify"]):
        result = run_program(args, photos.encode(photos.astronaut()), HUBNET_JOB="0123456789abcdef")
        assert result.code == face.Exit.CONFIG
        assert result.err.startswith("hubnet-face: as a hubnet service the database needs an absolute path")


def test_a_broken_database_exits_74(call: Call, tmp_path: Path) -> None:
    (tmp_path / "faces.sqlite").write_bytes(b"this is not a database, it is a shopping list" * 100)
    result = call(["forget", "--name", EILEEN])
    assert result.code == face.Exit.IOERR
    assert result.err.startswith("hubnet-face: face database: cannot use ")
    assert result.err.count("\n") == 1


# --- the program as the node runs it ---------------------------------------------------------


def test_the_program_end_to_end(tmp_path: Path) -> None:
    """Real processes sharing one database file, as successive hubnet jobs would."""
    db, alice = tmp_path / "faces.sqlite", "a" * 52
    enroll = run_program(
        ["--db", str(db), "enroll", "--name", EILEEN], photos.encode(photos.astronaut()), alice
    )
    assert (enroll.code, enroll.out, enroll.err) == (0, f"enrolled {EILEEN} (1)\n", "")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600, "faces are personal data"

    [[name, dist, box]] = run_program(
        ["--db", str(db), "identify"], photos.encode(photos.mirrored(photos.astronaut())), alice
    ).lines()
    assert name == EILEEN
    left, top, right, bottom = (int(v) for v in box.split(","))
    assert (top, bottom) == (76, 166)
    assert abs(left - (512 - 265)) <= 4 and abs(right - (512 - 175)) <= 4, "the box of the mirrored face"
    assert float(dist) < 0.3

    stranger = run_program(["identify"], photos.encode(photos.astronaut()), "b" * 52, HUBNET_FACE_DB=str(db))
    assert stranger.lines() == [["unknown", "-", "175,76,265,166"]]

    assert (
        run_program(["--db", str(db), "forget", "--name", EILEEN], client=alice).out
        == f"forgot {EILEEN} (1)\n"
    )
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM faces").fetchone() == (0,)


def test_concurrent_writers_do_not_lose_enrolments(tmp_path: Path) -> None:
    """Four processes enrolling into one new database at once: every row arrives."""
    db = tmp_path / "faces.sqlite"
    script = (
        "import sys; from pathlib import Path; from hubnet_robot._face_store import FaceStore\n"
        "for i in range(25):\n"
        "    with FaceStore(Path(sys.argv[1])) as s: s.add(sys.argv[2], f'n{i}', bytes(1024), limit=1000)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(db), f"owner{n}"]) for n in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    with FaceStore(db) as store:
        assert [len(store.faces(f"owner{n}")) for n in range(4)] == [25, 25, 25, 25]


# --- serving it -----------------------------------------------------------------------------


def test_service_toml_lets_callers_use_every_subcommand_but_never_choose_the_database() -> None:
    service = parse_services(face.SERVICE_TOML).by_name("face")
    assert service is not None
    assert service.command == ("hubnet-face", "--db", "/srv/hubnet/face/faces.sqlite")
    assert service.isolation.writable == ("/srv/hubnet/face",)
    assert service.memory_bytes == 2**30 and service.timeout == 60

    allowed = [
        ["identify"],
        ["identify", "--json"],
        ["enroll", "--name", "Eileen Collins", "--face", "2", "--json"],
        ["enroll", "--name=José O'Brien-Núñez"],
        ["forget", "--name", "Grace Hopper"],
    ]
    for args in allowed:
        service.policy.check(args)
        face.build_parser().parse_args(list(service.command[1:]) + args)  # the program takes them too

    refused = [
        ["--db", "/tmp/x.sqlite", "identify"],
        ["identify", "--db", "/tmp/x.sqlite"],
        ["identify", "--db=/tmp/x.sqlite"],
        ["identify", "--", "--db"],
        ["enroll", "--name=--db"],
        ["enroll", "--name", "../../etc/passwd"],
        ["enroll", "--name", "x" * 65],
        ["enroll", "--face", "0"],
        ["identify", "enroll"],
        ["list"],
    ]
    for args in refused:
        with pytest.raises(PolicyError):
            service.policy.check(args)


def test_the_documentation_shows_the_same_table() -> None:
    assert f"```toml\n{face.SERVICE_TOML}```\n" in DOC.read_text(encoding="utf-8")
