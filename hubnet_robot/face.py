r"""hubnet-face: who is in this photo? A face recognizer that reads a JPEG or PNG on stdin.

    hubnet-face [--db PATH] identify [--json]                          < photo.jpg
    hubnet-face [--db PATH] enroll --name NAME [--face N] [--json]     < photo.jpg
    hubnet-face [--db PATH] forget --name NAME [--json]

`identify` prints one line per face, largest first: `NAME\tDISTANCE\tLEFT,TOP,RIGHT,BOTTOM`,
where NAME is the nearest enrolled person or `unknown` when none is nearer than
MATCH_THRESHOLD, DISTANCE is the distance to the nearest enrolled face (`-` if nobody is
enrolled) and the box is in the photo's pixels. `enroll` remembers one face under NAME;
`forget` removes every face of NAME. Faces belong to the caller (`HUBNET_CLIENT`, set by
the hubnet node for every job; "local" when run by hand), who alone can identify or forget
them. See docs/robot-face.md for the exit codes and for serving it.

The engine is dlib, used directly: its HOG frontal face detector, the 5-point landmark
model to align each face, and its ResNet model that maps a face to 128 numbers, close
(Euclidean distance under 0.6) for the same person. The models ship in the
face_recognition_models package; nothing is downloaded. numpy, Pillow and dlib are
imported only when a photo is processed, so `SERVICE_TOML` (and `forget`) work without
the `face` extra.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import platformdirs

from hubnet_robot._face_store import FaceStore, StoreError, StoreFull

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

PROG = "hubnet-face"
DB_VARIABLE = "HUBNET_FACE_DB"
LOCAL_OWNER = "local"  # the owner when not run by a hubnet node (no HUBNET_CLIENT)
UNKNOWN = "unknown"  # what identify prints for a face nobody enrolled; so no one may be called that

MATCH_THRESHOLD = 0.6  # dlib's: faces of one person are nearly always closer than this
MAX_NAME_CHARS = 64
MAX_FACES_PER_OWNER = 1000  # bounds what one caller can make the server store
MAX_INPUT_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000  # larger photos are refused before decoding (decompression bombs)
# Detection runs on the photo shrunk to about this many pixels, upsampled once, so its cost
# is bounded; faces down to about 40 pixels across at that size are found.
WORK_PIXELS = 1_000_000
# dlib's detector returns candidates with a score; its own cut-off is 0. Real frontal faces
# score about 1 or more, while round emblems (an astronaut's mission patch) reach 0.1 to 0.2.
MIN_DETECTION_SCORE = 0.5
DESCRIPTOR_DTYPE = "<f8"

# Serving it: the node's services.toml table. "faces.sqlite" is a placeholder for the
# absolute path of the database, and "hubnet-face" for the installed script's absolute
# path; the node substitutes both when it writes this table out. The placeholder is relative
# on purpose: as a job, hubnet-face refuses a relative database path (see `database_path`).
SERVICE_TOML = r"""[services.face]
command = ["hubnet-face", "--db", "/srv/hubnet/face/faces.sqlite"]
writable = ["/srv/hubnet/face"]  # the database's folder: the one place its jobs may write
description = "Who is this? JPEG or PNG on stdin: identify, enroll --name NAME [--face N], forget --name NAME"
timeout = 60
cpu_seconds = 20
memory = "1G"
max_output = "1M"
max_concurrent = 2

[services.face.arguments]
# A subcommand and the options callers need; never --db, which stays the operator's choice.
options = { "--name" = '''re:\w[\w .'-]{0,63}''', "--face" = 're:[1-9][0-9]{0,2}', "--json" = "flag" }
positional = 1
positional_shape = 're:(identify|enroll|forget)'
"""


class Exit(IntEnum):
    """Exit codes besides 0 (success) and 2 (usage error, from argparse)."""

    NO_FACE = 3  # the photo shows no face
    WHICH_FACE = 4  # enroll: several faces and no --face, or --face N beyond them
    NOT_ENROLLED = 5  # forget: the caller has nobody of that name
    FULL = 6  # enroll: the caller already has MAX_FACES_PER_OWNER faces
    DATAERR = 65  # stdin is not a JPEG or PNG we can decode (sysexits EX_DATAERR)
    UNAVAILABLE = 69  # the face extra (dlib, models, numpy, Pillow) is not installed
    IOERR = 74  # the database cannot be opened, read or written
    CONFIG = 78  # as a hubnet job without an absolute database path


class FaceError(Exception):
    """A failure to report as one line on stderr, with its exit code."""

    def __init__(self, code: Exit, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())  # one line, whatever a library said


# --- photos and faces -----------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """Where a face is, in the pixels of the photo as given (after its EXIF rotation)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return (self.right - self.left) * (self.bottom - self.top)

    def __str__(self) -> str:
        return f"{self.left},{self.top},{self.right},{self.bottom}"


@dataclass(frozen=True)
class Photo:
    """A decoded photo: RGB pixels of at most about WORK_PIXELS, and the size it came in."""

    pixels: NDArray[np.uint8]
    width: int
    height: int

    @property
    def scale(self) -> float:
        """Photo pixels per working pixel."""
        return self.width / int(self.pixels.shape[1])


@dataclass(frozen=True)
class Face:
    box: Box
    descriptor: NDArray[np.float64]  # 128 numbers; one person's faces lie close together


def read_input(stdin: BinaryIO) -> bytes:
    """All of stdin, refusing more than MAX_INPUT_BYTES."""
    data = stdin.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise FaceError(Exit.DATAERR, f"input too large: more than {MAX_INPUT_BYTES // 2**20} MiB")
    return data


def decode_image(data: bytes) -> Photo:
    """Decode a JPEG or PNG, upright, shrunk for detection; FaceError(DATAERR) if we cannot."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise FaceError(Exit.DATAERR, "no image on stdin (empty input)")
    try:
        with warnings.catch_warnings():
            # Pillow only warns about huge images below twice its own limit; refuse them all.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
            if opened.width * opened.height > MAX_PIXELS:
                raise Image.DecompressionBombError
            opened.load()
            # Phones store portraits sideways with a tag saying how to turn them. In place, and
            # converted only if need be: a 40-megapixel photo is 120 MB a copy.
            ImageOps.exif_transpose(opened, in_place=True)
            image: Image.Image = opened if opened.mode == "RGB" else opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = f"at most {MAX_PIXELS // 1_000_000} megapixels"
        raise FaceError(Exit.DATAERR, f"image too large ({limit})") from None
    except UnidentifiedImageError:
        raise FaceError(Exit.DATAERR, "input is not a JPEG or PNG image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises on broken files
        raise FaceError(Exit.DATAERR, f"cannot decode the image: {exc}") from None
    width, height = image.size
    if width * height > WORK_PIXELS:
        shrink = math.sqrt(WORK_PIXELS / (width * height))
        size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        image = image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return Photo(np.asarray(image, dtype=np.uint8), width, height)


def _models_dir() -> Path:
    # find_spec, not import: the package's __init__ needs pkg_resources, which recent
    # setuptools no longer ship, and only its data files are used.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        from hubnet_robot._extras import install_hint

        raise FaceError(
            Exit.UNAVAILABLE,
            f"face_recognition_models is not installed (the face extra): {install_hint('face')}",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class Engine:
    """dlib's face detector, landmark model and face descriptor model, loaded once (~1 s)."""

    def __init__(self) -> None:
        import dlib

        models = _models_dir()
        try:
            self._detector = dlib.get_frontal_face_detector()
            self._landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
            self._describer = dlib.face_recognition_model_v1(
                str(models / "dlib_face_recognition_resnet_model_v1.dat")
            )
        except RuntimeError as exc:  # dlib's way of saying a model file is missing or unreadable
            raise FaceError(Exit.UNAVAILABLE, f"cannot load the face models: {exc}") from None

    def faces(self, photo: Photo) -> list[Face]:
        """The faces in `photo`, largest first, each with its descriptor."""
        import numpy as np

        rects, _scores, _kinds = self._detector.run(photo.pixels, 1, MIN_DETECTION_SCORE)
        found = []
        for rect in rects:
            landmarks = self._landmarks(photo.pixels, rect)
            descriptor = np.array(self._describer.compute_face_descriptor(photo.pixels, landmarks))
            found.append(Face(_photo_box(photo, rect), descriptor.astype(np.float64)))
        found.sort(key=lambda f: (-f.box.area, f.box.left, f.box.top))
        return found


def _photo_box(photo: Photo, rect: Any) -> Box:
    """A dlib rectangle (which may stick out of the picture) as a Box in the photo's pixels."""

    def at(value: int, limit: int) -> int:
        return min(max(round(value * photo.scale), 0), limit)

    return Box(
        at(rect.left(), photo.width),
        at(rect.top(), photo.height),
        at(rect.right(), photo.width),
        at(rect.bottom(), photo.height),
    )


@functools.cache
def load_engine() -> Engine:
    """The engine, loaded on first use and kept: tests and benchmarks call main() repeatedly."""
    return Engine()


def nearest(face: Face, enrolled: Sequence[tuple[str, bytes]]) -> tuple[str, float | None]:
    """The enrolled name nearest to `face` (or UNKNOWN if none is near enough), and its distance."""
    import numpy as np

    if not enrolled:
        return UNKNOWN, None
    matrix = np.frombuffer(b"".join(d for _name, d in enrolled), dtype=DESCRIPTOR_DTYPE)
    distances = np.linalg.norm(matrix.reshape(len(enrolled), -1) - face.descriptor, axis=1)
    best = int(np.argmin(distances))
    distance = float(distances[best])
    return (enrolled[best][0] if distance < MATCH_THRESHOLD else UNKNOWN), distance


# --- the command line -----------------------------------------------------------------------


def check_name(text: str) -> str:
    """A person's name as given to --name: printable, 1 to MAX_NAME_CHARS, not `unknown`."""
    if not 1 <= len(text) <= MAX_NAME_CHARS:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_NAME_CHARS} characters")
    if not text.isprintable() or text != text.strip():
        raise argparse.ArgumentTypeError("must be printable, without leading or trailing spaces")
    if text == UNKNOWN:
        raise argparse.ArgumentTypeError(f"{UNKNOWN!r} is what identify prints for strangers")
    return text


def _face_number(text: str) -> int:
    if not text.isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError("must be a face number: 1 is the largest face")
    return int(text)


EPILOG = """\
exit codes: 0 done; 2 usage error; 3 no face in the photo; 4 enroll: several faces (use
--face N) or no face N; 5 forget: nobody of that name; 6 enroll: too many faces enrolled;
65 input not a JPEG or PNG (or empty, truncated, too large); 69 face extra not installed;
74 database error; 78 run as a hubnet job without an absolute --db.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; abbreviations are off so only exact option names work."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Recognize faces in a JPEG or PNG read from stdin.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--db",
        type=Path,
        metavar="PATH",
        help=f"the face database (default: ${DB_VARIABLE}, else {default_database()})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    identify = commands.add_parser("identify", help="name each face, largest first", allow_abbrev=False)
    enroll = commands.add_parser("enroll", help="remember the face under --name", allow_abbrev=False)
    enroll.add_argument("--name", required=True, type=check_name)
    enroll.add_argument("--face", type=_face_number, metavar="N", help="which face, 1 = largest")
    forget = commands.add_parser("forget", help="remove every face of --name", allow_abbrev=False)
    forget.add_argument("--name", required=True, type=check_name)
    for command in (identify, enroll, forget):
        command.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def default_database() -> Path:
    return Path(platformdirs.user_data_dir("hubnet")) / "faces.sqlite"


def database_path(option: Path | None, env: Mapping[str, str]) -> Path:
    """--db, else $HUBNET_FACE_DB, else the user's data folder.

    A hubnet job's HOME and working directory are deleted after each call, so as a job
    (HUBNET_JOB set) only an absolute path given by the operator will do: anything else
    would silently forget every enrolment.
    """
    given = option or (Path(env[DB_VARIABLE]) if env.get(DB_VARIABLE) else None)
    if "HUBNET_JOB" in env and (given is None or not given.is_absolute()):
        raise FaceError(
            Exit.CONFIG,
            "as a hubnet service the database needs an absolute path (--db /srv/faces.sqlite): "
            "the job's own directory is deleted after each call",
        )
    return given or default_database()


def owner_of(env: Mapping[str, str]) -> str:
    """Whose faces: the authenticated caller's peer id, or LOCAL_OWNER when run by hand."""
    return env.get("HUBNET_CLIENT") or LOCAL_OWNER


def run(args: argparse.Namespace, env: Mapping[str, str], stdin: BinaryIO, stdout: TextIO) -> None:
    """Carry out one parsed command; FaceError says what went wrong."""
    db, owner = database_path(args.db, env), owner_of(env)
    if args.command == "forget":
        with FaceStore(db) as store:
            removed = store.forget(owner, args.name)
        if not removed:
            raise FaceError(Exit.NOT_ENROLLED, f"nobody is enrolled as {args.name!r}")
        _say(stdout, args.json, {"name": args.name, "forgotten": removed}, f"forgot {args.name} ({removed})")
        return

    photo = decode_image(read_input(stdin))
    faces = load_engine().faces(photo)
    if not faces:
        raise FaceError(Exit.NO_FACE, "no face found in the image")
    if args.command == "identify":
        with FaceStore(db) as store:
            enrolled = store.faces(owner)
        matches = [(face, *nearest(face, enrolled)) for face in faces]
        lines = [f"{name}\t{'-' if d is None else f'{d:.3f}'}\t{face.box}" for face, name, d in matches]
        report = [
            {
                "name": name,
                "distance": d,
                "box": [face.box.left, face.box.top, face.box.right, face.box.bottom],
            }
            for face, name, d in matches
        ]
        _say(stdout, args.json, {"faces": report}, "\n".join(lines))
        return

    face = _chosen(faces, args.face)
    with FaceStore(db) as store:
        try:
            count = store.add(
                owner,
                args.name,
                face.descriptor.astype(DESCRIPTOR_DTYPE).tobytes(),
                limit=MAX_FACES_PER_OWNER,
            )
        except StoreFull as exc:
            raise FaceError(Exit.FULL, f"cannot enroll more: {exc}; forget someone first") from None
    box = [face.box.left, face.box.top, face.box.right, face.box.bottom]
    _say(
        stdout, args.json, {"name": args.name, "box": box, "faces": count}, f"enrolled {args.name} ({count})"
    )


def _chosen(faces: Sequence[Face], number: int | None) -> Face:
    if number is None and len(faces) > 1:
        raise FaceError(
            Exit.WHICH_FACE, f"{len(faces)} faces in the image: say which with --face N (1 = largest)"
        )
    index = (number or 1) - 1
    if index >= len(faces):
        raise FaceError(Exit.WHICH_FACE, f"no face {number}: the image has {len(faces)}")
    return faces[index]


def _say(stdout: TextIO, as_json: bool, report: object, text: str) -> None:
    print(json.dumps(report) if as_json else text, file=stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: returns the exit code (argparse exits 2 itself on usage errors)."""
    args = build_parser().parse_args(argv)
    try:
        run(args, os.environ, sys.stdin.buffer, sys.stdout)
    except FaceError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.code
    except StoreError as exc:
        print(f"{PROG}: face database: {' '.join(str(exc).split())}", file=sys.stderr)
        return Exit.IOERR
    except ImportError as exc:  # only the face extra's modules are imported late
        from hubnet_robot._extras import install_hint

        hint = install_hint("face")
        print(f"{PROG}: {exc.name or exc} is not installed (the face extra): {hint}", file=sys.stderr)
        return Exit.UNAVAILABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
