"""Installing hubnet: beside PyPI's `identity` and `node`, and what `make demo` installs.

Two distributions on PyPI own the names of hubnet's layers: Microsoft's `identity` and `node`.
hubnet's wheel puts only `hubnet` and `hubnet_robot` at the top level (the layers install as
hubnet.identity, hubnet.dht and hubnet.node; see README, "Layout"), so all three install into
one environment, each imports as itself, and uninstalling hubnet leaves the others whole.
Shown in a throwaway venv: the PyPI pair first, then hubnet from a copy of this checkout (a
wheel built in the copy, so no build/ lands here), every check in a fresh interpreter whose
working directory is not the checkout.

And `make demo` installs only what the demo uses: the pip commands that `make -n` says the
demo target runs are resolved with `--dry-run --report` into an empty venv, and nothing heavy
(dlib, scipy, scikit-image, matplotlib, pocketsphinx, mypy, ...) may be in what pip would
install. The same is done for `make test`, which must install dlib: the check is seen to bite.

Both need the package index. When it cannot be reached the tests skip, saying why; with
HUBNET_REQUIRE_ALL=1 (CI) they fail instead. pip's cache is used as usual.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import REQUIRE_ALL_VARIABLE, require_all, require_program

ROOT = Path(__file__).resolve().parents[2]
PIP_TIMEOUT = 300  # one pip run, cold cache included
RUN_TIMEOUT = 60  # one interpreter or make -n
# What the demo never needs; the test extras bring each of them (dlib via dlib-bin).
HEAVY = {
    "dlib",
    "dlib-bin",
    "face-recognition-models",
    "scipy",
    "scikit-image",
    "matplotlib",
    "pocketsphinx",
    "mypy",
    "numpy",
    "pillow",
}
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.wav",
    "demo-home",
)


def _env() -> dict[str, str]:
    """This environment without what would point a child at the checkout or at our venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: Sequence[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{shlex.join(done.args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    )
    return done.stdout


def _pip(python: Path, *args: str | Path) -> list[str | Path]:
    """pip (this interpreter's) acting on the environment of `python`, which needs no pip of its own."""
    return [sys.executable, "-m", "pip", "--python", python, *args]


def _venv(where: Path) -> Path:
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", where], where.parent, RUN_TIMEOUT))
    return where / "bin" / "python"


def _unreachable(why: str) -> None:
    reason = f"the package index cannot be reached: {why}"
    print(reason)
    if require_all():
        pytest.fail(f"{reason} ({REQUIRE_ALL_VARIABLE}=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Skip (or on CI fail) the module's tests unless pip can fetch from the package index."""
    where = tmp_path_factory.mktemp("probe")
    python = _venv(where / "venv")
    done = _run(_pip(python, "install", "--dry-run", "--no-deps", "-q", "identity"), where, PIP_TIMEOUT)
    if done.returncode != 0:
        _unreachable((done.stderr.strip().splitlines() or ["pip failed"])[-1])


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout (symlinks kept), to build and resolve in without touching it."""
    copy = tmp_path_factory.mktemp("checkout") / "hubnet"
    shutil.copytree(ROOT, copy, symlinks=True, ignore=NOT_COPIED)
    return copy


def _python(python: Path, code: str, cwd: Path) -> str:
    return _ok(_run([python, "-c", code], cwd, RUN_TIMEOUT)).strip()


THEIRS = """
import importlib.metadata as m, identity, node, node.base
assert identity.__version__ == m.version("identity"), (identity.__version__, identity.__file__)
assert "site-packages" in identity.__file__ and list(node.__path__)[0].endswith("site-packages/node")
print(identity.__version__, m.version("node"))
"""

OURS = """
import importlib.metadata as m, hubnet.identity.keys, hubnet.dht, hubnet.node, hubnet_robot
assert "site-packages" in hubnet.identity.keys.__file__, hubnet.identity.keys.__file__
top = {f.parts[0] for f in m.files("hubnet") if not f.parts[0].endswith(".dist-info") and f.parts[0] != ".."}
print(" ".join(sorted(top)))
"""


def test_hubnet_installs_beside_pypis_identity_and_node_and_leaves_them_whole(
    index: None, checkout: Path, tmp_path: Path
) -> None:
    python = _venv(tmp_path / "venv")
    if _run(_pip(python, "install", "-q", "identity", "node"), tmp_path, PIP_TIMEOUT).returncode != 0:
        _unreachable("pip could not install PyPI's identity and node")
    before = _python(python, THEIRS, tmp_path)

    _ok(_run(_pip(python, "install", "-q", checkout), tmp_path, PIP_TIMEOUT))
    assert _python(python, THEIRS, tmp_path) == before  # still Microsoft's identity, still node's node
    assert _python(python, OURS, tmp_path) == "hubnet hubnet_robot"  # the wheel's only top-level names
    assert "Usage: hubnode" in _ok(
        _run([tmp_path / "venv" / "bin" / "hubnode", "--help"], tmp_path, RUN_TIMEOUT)
    )
    _ok(_run(_pip(python, "check"), tmp_path, RUN_TIMEOUT))

    _ok(_run(_pip(python, "uninstall", "-y", "-q", "hubnet"), tmp_path, PIP_TIMEOUT))
    assert _python(python, THEIRS, tmp_path) == before
    gone = _run([python, "-c", "import hubnet"], tmp_path, RUN_TIMEOUT)
    assert gone.returncode != 0 and "No module named 'hubnet'" in gone.stderr


def _make_installs(target: str, checkout: Path, tmp_path: Path) -> list[list[str]]:
    """The arguments of every `pip install` of the project that `make TARGET` would run."""
    make = require_program("make")
    venv = tmp_path / f"{target}-venv"  # never created: -n only prints, -B as if nothing were built
    lines = _ok(_run([make, "-n", "-B", target, f"VENV={venv}"], checkout, RUN_TIMEOUT)).splitlines()
    installs = []
    for line in lines:
        words = shlex.split(line)
        if words[:4] == [f"{venv}/bin/python", "-m", "pip", "install"]:
            installs.append(words[4:])
    assert installs, f"make -n {target} runs no pip install:\n" + "\n".join(lines)
    return installs


def _normal(name: str) -> str:
    """A distribution's name as PEP 503 compares them: face_recognition_models is face-recognition-models."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _would_install(target: str, checkout: Path, tmp_path: Path) -> set[str]:
    """The distributions that `make TARGET`'s pip commands would install into a fresh venv."""
    python = _venv(tmp_path / f"{target}-empty")
    names: set[str] = set()
    for n, args in enumerate(_make_installs(target, checkout, tmp_path)):
        report = tmp_path / f"{target}-{n}.json"
        _ok(_run(_pip(python, "install", *args, "--dry-run", "--report", report), checkout, PIP_TIMEOUT))
        names |= {_normal(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    return names


def test_make_demo_installs_only_the_base_package(index: None, checkout: Path, tmp_path: Path) -> None:
    demo = _would_install("demo", checkout, tmp_path)
    assert "hubnet" in demo and "trio" in demo
    assert not demo & HEAVY, f"make demo would install {sorted(demo & HEAVY)}"


def test_make_test_installs_the_test_extras(index: None, checkout: Path, tmp_path: Path) -> None:
    tests = _would_install("test", checkout, tmp_path)
    assert {"dlib-bin", "pocketsphinx", "scikit-image", "matplotlib", "mypy", "pytest"} <= tests
