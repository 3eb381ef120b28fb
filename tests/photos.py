"""Test photos for the face service, from files that ship inside installed packages.

Nothing is downloaded: scikit-image's wheel holds `skimage/data/astronaut.png` (Eileen
Collins, NASA portrait) and `skimage/data/coffee.png` (a cup, no face); matplotlib's holds
`mpl-data/sample_data/grace_hopper.jpg`. The packages are found with `find_spec`, not
imported: the files are all we need, and skimage's data functions could fetch what is
missing. Without them a test skips, or fails under HUBNET_REQUIRE_ALL=1 (as on CI).

Each person has a single photo, so "another photo of the same person" is an honest
variation of it (mirrored, cropped and scaled, darkened): close to the original by
construction, which tests the program (detection, alignment, storage, matching), not the
model's accuracy across real photos.
"""

from __future__ import annotations

import functools
import importlib.util
import io
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance, ImageOps

from tests.helpers import REQUIRE_ALL_VARIABLE, require_all


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package; skip (or fail on CI) if it is not there."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0], *parts) if locations else None
    if path is not None and path.is_file():
        return path
    reason = f"test photo {package}/{'/'.join(parts)} not found: pip install {package}"
    if require_all():
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@functools.cache
def _open(package: str, *parts: str) -> Image.Image:
    with Image.open(package_file(package, *parts)) as image:
        return image.convert("RGB")


def astronaut() -> Image.Image:
    """Eileen Collins, 512x512, face about 90 pixels wide near the top middle."""
    return _open("skimage", "data", "astronaut.png").copy()


def grace_hopper() -> Image.Image:
    """Grace Hopper, 512x600, face about 190 pixels wide."""
    return _open("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg").copy()


def coffee() -> Image.Image:
    """A cup of coffee on a saucer: a photo with no face."""
    return _open("skimage", "data", "coffee.png").copy()


def mirrored(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)


def cropped_half_size(image: Image.Image) -> Image.Image:
    """The upper middle of the photo (where both portraits have the face), at half size."""
    w, h = image.size
    part = image.crop((w // 8, 0, w - w // 8, h * 3 // 4))
    return part.resize((part.width // 2, part.height // 2), Image.Resampling.LANCZOS)


def darker(image: Image.Image) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(0.6)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two photos in one, on a grey background: an image with two faces."""
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def encode(image: Image.Image, image_format: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()
