"""`hubnode serve --example-services`: which robot services are added, and how they run."""

from __future__ import annotations

import dataclasses
import os
import pwd
import sys
from pathlib import Path

import pytest

from hubnet.node.services import parse_services
from hubnet_robot import _extras, examples
from hubnet_robot._extras import extra_requirements, install_hint
from hubnet_robot.examples import EXAMPLES, with_examples

BASE = parse_services('listen = "127.0.0.1:0"\n[services.cat]\ncommand = ["cat"]\n')


def test_every_runnable_example_is_added_and_runs_from_this_interpreter(tmp_path: Path) -> None:
    runnable = {e.name for e in EXAMPLES if e.missing() is None}
    config, notes = with_examples(BASE, tmp_path)
    by_name = {s.name: s for s in config.services.values()}
    assert set(by_name) == {"cat"} | runnable
    assert len(notes) == len(EXAMPLES) - len(runnable)
    for name in runnable:
        command = by_name[name].command
        assert command[:3] == (sys.executable, "-m", f"hubnet_robot.{name}")
    if "face" in by_name:
        # The placeholder becomes an absolute path in the node's data folder: jobs run in
        # throwaway folders, so a relative database would be lost after every call.
        assert by_name["face"].command[3:] == ("--db", str(tmp_path / "face" / "faces.sqlite"))
        # ... in a folder of its own, the only place its sandboxed jobs may write.
        assert by_name["face"].isolation.writable == (str(tmp_path / "face"),)


def test_services_toml_wins_over_an_example_of_the_same_name(tmp_path: Path) -> None:
    own = parse_services('[services.speak]\ncommand = ["espeak-ng", "--stdout"]\n')
    config, notes = with_examples(own, tmp_path)
    speak = [s for s in config.services.values() if s.name == "speak"]
    assert [s.command for s in speak] == [("espeak-ng", "--stdout")]
    assert any("speak not served: services.toml has a service of that name" in n for n in notes)


def test_an_example_whose_extra_is_missing_is_left_out_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tuple(dataclasses.replace(e, missing=lambda: "dlib not installed") for e in EXAMPLES)
    monkeypatch.setattr(examples, "EXAMPLES", gone)
    config, notes = with_examples(BASE, tmp_path)
    assert [s.name for s in config.services.values()] == ["cat"]
    assert len(notes) == 3
    by_name = {n.split()[2]: n for n in notes}  # "example service NAME not served: ..."
    assert "(sudo apt-get install espeak-ng)" in by_name["speak"]
    for name, extra in [("listen", "speech"), ("face", "face")]:
        assert f"dlib not installed ({install_hint(extra)})" in by_name[name]


# hubnet is not on PyPI: a hint names the extra's own packages, from the installed metadata.


def test_an_install_hint_names_the_extras_packages_for_this_interpreter() -> None:
    assert extra_requirements("speech") == ["pocketsphinx>=5.0", "numpy>=1.26"]
    hint = install_hint("face")
    assert hint.startswith(f"{sys.executable} -m pip install ")
    assert "'dlib-bin>=20.0'" in hint and "'pillow>=10'" in hint and "hubnet[" not in hint


def test_in_a_pipx_venv_the_hint_is_pipx_inject(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = tmp_path / "venvs" / "hubnet"
    venv.mkdir(parents=True)
    (venv / "pipx_metadata.json").write_text("{}")
    monkeypatch.setattr(sys, "prefix", str(venv))
    assert install_hint("speech") == "pipx inject hubnet 'pocketsphinx>=5.0' 'numpy>=1.26'"


def test_without_metadata_the_hint_names_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_extras, "DISTRIBUTION", "hubnet-never-installed")
    assert install_hint("face") == "pip install '.[face]' in the hubnet checkout"


def test_a_face_store_left_in_the_data_folder_moves_into_its_own_folder(tmp_path: Path) -> None:
    if next(e for e in EXAMPLES if e.name == "face").missing() is not None:
        pytest.skip("the face extra is not installed")
    for suffix in ("", "-wal"):
        (tmp_path / f"faces.sqlite{suffix}").write_bytes(b"old" + suffix.encode())
    config, _ = with_examples(BASE, tmp_path)
    [face] = [s for s in config.services.values() if s.name == "face"]
    folder = tmp_path / "face"
    assert face.isolation.writable == (str(folder),)
    assert (folder / "faces.sqlite").read_bytes() == b"old"
    assert (folder / "faces.sqlite-wal").read_bytes() == b"old-wal"
    assert not (tmp_path / "faces.sqlite").exists()
    if os.geteuid() == 0:  # a root node's jobs run as nobody: the folder and store are theirs
        nobody = pwd.getpwnam("nobody").pw_uid
        assert folder.stat().st_uid == nobody == (folder / "faces.sqlite").stat().st_uid
