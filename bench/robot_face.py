#!/usr/bin/env python
"""The face service: how far apart faces are, and how long a call takes.

Distances: dlib descriptors of the test photos (tests/photos.py: Eileen Collins from
scikit-image, Grace Hopper from matplotlib), each against variations of itself (the same
person; the only photos of them that ship) and against the other person. The service says
"same person" below 0.6.

Latency: whole `python -m hubnet_robot.face` processes (fork to exit, so model loading
included), median of --runs after one warm-up, for identify (one face, two faces, a
12-megapixel JPEG), enroll and forget, on a temporary database. `command_latency()` takes the
command prefix, so the same figures can be taken through a node with
`["hubnode", "call", "--server", TARGET, "face"]`. Then the same work done warm, in this
process, to show what is model loading and what is computing.

    .venv/bin/python bench/robot_face.py [--runs 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PYTHON, bytecode_cache, command_latency

from hubnet_robot import face
from tests import photos


def as_jpeg(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(photos.encode(image, "JPEG")))


def print_distances(engine: face.Engine) -> None:
    def descriptor(image: Image.Image) -> NDArray[np.float64]:
        (found,) = engine.faces(face.decode_image(photos.encode(image)))
        return found.descriptor

    people = {"Eileen Collins": photos.astronaut(), "Grace Hopper": photos.grace_hopper()}
    variations: dict[str, Callable[[Image.Image], Image.Image]] = {
        "mirrored": photos.mirrored,
        "cropped, half size": photos.cropped_half_size,
        "darker": photos.darker,
        "all three, as JPEG": lambda i: as_jpeg(photos.cropped_half_size(photos.mirrored(photos.darker(i)))),
    }
    print(f"face distances (same person below {face.MATCH_THRESHOLD}):")
    originals = {name: descriptor(image) for name, image in people.items()}
    for name, image in people.items():
        for label, vary in variations.items():
            d = np.linalg.norm(originals[name] - descriptor(vary(image)))
            print(f"  same       {name:15} vs {name + ', ' + label:36} {d:.3f}")
    (a, da), (b, db) = originals.items()
    print(f"  different  {a:15} vs {b:36} {np.linalg.norm(da - db):.3f}")
    for label, vary in variations.items():
        d = np.linalg.norm(da - descriptor(vary(people[b])))
        print(f"  different  {a:15} vs {b + ', ' + label:36} {d:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs

    start = time.perf_counter()
    engine = face.load_engine()
    print(f"loading the models in-process: {time.perf_counter() - start:.2f} s\n")
    print_distances(engine)

    one = photos.encode(photos.astronaut())
    two = photos.encode(photos.side_by_side(photos.astronaut(), photos.grace_hopper()))
    big = photos.encode(photos.astronaut().resize((3464, 3464), Image.Resampling.BICUBIC), "JPEG")
    cases: list[tuple[str, list[str], bytes, int]] = [
        ("identify, 1 face, 512x512 PNG", ["identify"], one, 0),
        ("identify, 2 faces, 1024x600 PNG", ["identify"], two, 0),
        ("identify, 12 MP JPEG", ["identify"], big, 0),
        ("enroll, 1 face", ["enroll", "--name", "Eileen Collins"], one, 0),
        ("forget, nobody of that name", ["forget", "--name", "nobody"], b"", face.Exit.NOT_ENROLLED),
    ]
    with tempfile.TemporaryDirectory(prefix="hubnet-bench-face-") as work, bytecode_cache() as env:
        db = str(Path(work) / "faces.sqlite")
        prefix = [PYTHON, "-m", "hubnet_robot.face", "--db", db]
        print(f"\nwall time per call, whole process, median of {runs}:")
        for label, args, stdin, expect in cases:
            print(f"  {label:34} {command_latency(prefix, args, stdin, runs, env, expect) * 1000:6.0f} ms")

    print(f"\nthe same work warm, in-process (decode, detect, describe), median of {runs}:")
    for label, _args, stdin, _expect in cases[:3]:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            engine.faces(face.decode_image(stdin))
            times.append(time.perf_counter() - start)
        print(f"  {label:34} {statistics.median(times) * 1000:6.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
