"""`hubnode serve --example-services`: serve the robot services this installation can run.

Each robot module carries the services.toml table that serves it safely (`SERVICE_TOML`,
also shown in the docs). Here those tables are parsed like any services.toml, and their
commands are pointed at this interpreter (`python -m hubnet_robot.NAME`), because a job's
PATH need not contain the virtualenv's scripts. A service whose extra is not installed is
left out, with the reason, rather than offered and failing on every call. The face
service's folder (its table's `/srv/hubnet/face`) becomes `face/` in the node's data folder,
made writable for its sandboxed jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import hubnet
import hubnet_robot
from hubnet.node.sandbox import state_folder
from hubnet.node.services import NodeConfig, Service, parse_services
from hubnet_robot._extras import install_hint

# The face table's folder for its database, where this node keeps it instead.
FACE_FOLDER_PLACEHOLDER = "/srv/hubnet/face"
FACE_FOLDER = "face"
FACE_DB = "faces.sqlite"


def _missing_modules(*names: str) -> str | None:
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    return f"{', '.join(missing)} not installed" if missing else None


@dataclass(frozen=True)
class Example:
    name: str
    module: str
    extra: str | None  # the extra (pyproject's optional dependencies) it needs, if any
    missing: Callable[[], str | None]  # why it cannot run here, or None
    program: str | None = None  # the program from apt it needs, if any

    def fix(self) -> str:
        """The command that installs what it needs here (called only when something is missing)."""
        fixes = [f"sudo apt-get install {self.program}"] if self.program else []
        if self.extra is not None:
            fixes.append(install_hint(self.extra))
        return "; ".join(fixes)


EXAMPLES = (
    Example(
        "speak",
        "hubnet_robot.speak",
        None,
        lambda: None if shutil.which("espeak-ng") else "no espeak-ng",
        program="espeak-ng",
    ),
    Example("listen", "hubnet_robot.listen", "speech", lambda: _missing_modules("pocketsphinx", "numpy")),
    Example(
        "face",
        "hubnet_robot.face",
        "face",
        lambda: _missing_modules("dlib", "numpy", "PIL", "face_recognition_models"),
    ),
)


def _placed(text: str, data_dir: Path) -> str:
    """`text` with the face table's folder placeholder replaced by this node's folder."""
    if text == FACE_FOLDER_PLACEHOLDER or text.startswith(FACE_FOLDER_PLACEHOLDER + "/"):
        return str(data_dir / FACE_FOLDER) + text[len(FACE_FOLDER_PLACEHOLDER) :]
    return text


def _service(example: Example, data_dir: Path) -> Service:
    text: str = importlib.import_module(example.module).SERVICE_TOML
    [service] = parse_services(text, source=f"{example.module}.SERVICE_TOML").services.values()
    args = [_placed(arg, data_dir) for arg in service.command[1:]]
    writable = tuple(_placed(path, data_dir) for path in service.isolation.writable)
    # This interpreter, its libraries and hubnet's own code: a root node's jobs run as nobody,
    # who may not reach them otherwise (Python installed under /root, say).
    code = {
        str(Path(module.__file__ or sys.prefix).resolve().parents[1]) for module in (hubnet, hubnet_robot)
    }
    readable = tuple(sorted({sys.base_prefix, sys.prefix, *code}))
    return dataclasses.replace(
        service,
        command=(sys.executable, "-m", example.module, *args),
        isolation=dataclasses.replace(service.isolation, writable=writable, readable=readable),
    )


def _move_old_face_store(data_dir: Path) -> None:
    """Before jobs were sandboxed the store lay in the data folder itself, where they may no
    longer write: move it (and SQLite's companions) into its folder, unless one is there."""
    old, folder = data_dir / FACE_DB, data_dir / FACE_FOLDER
    if old.exists() and not (folder / FACE_DB).exists():
        owner = folder.stat()  # the jobs' user's, on a root node
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{old}{suffix}", folder / f"{FACE_DB}{suffix}")
                os.chown(folder / f"{FACE_DB}{suffix}", owner.st_uid, owner.st_gid)


def with_examples(config: NodeConfig, data_dir: Path) -> tuple[NodeConfig, list[str]]:
    """`config` plus every runnable example its services.toml does not already name.

    Returns the new config and one line per example left out, saying why.
    """
    services = dict(config.services)
    names = {s.name for s in services.values()}
    notes = []
    for example in EXAMPLES:
        if example.name in names:
            notes.append(
                f"example service {example.name} not served: services.toml has a service of that name"
            )
            continue
        why = example.missing()
        if why is not None:
            notes.append(f"example service {example.name} not served: {why} ({example.fix()})")
            continue
        service = _service(example, data_dir)
        for path in service.isolation.writable:  # made, and given to the jobs' user if root
            why = state_folder(service.isolation, Path(path))
            if why is not None:
                notes.append(f"example service {example.name} not served: {why}")
                break
        else:
            if service.isolation.writable:
                _move_old_face_store(data_dir)
            services[service.id] = service
    return dataclasses.replace(config, services=MappingProxyType(services)), notes
