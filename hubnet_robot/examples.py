"""`hubnode serve --example-services`: serve the robot services this installation can run.

Each robot module carries the services.toml table that serves it safely (`SERVICE_TOML`,
also shown in the docs). Here those tables are parsed like any services.toml, and their
commands are pointed at this interpreter (`python -m hubnet_robot.NAME`), because a job's
PATH need not contain the virtualenv's scripts. A service whose extra is not installed is
left out, with the reason, rather than offered and failing on every call.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from hubnet.node.services import NodeConfig, Service, parse_services
from hubnet_robot._extras import install_hint

FACE_DB_PLACEHOLDER = "faces.sqlite"


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


def _service(example: Example, data_dir: Path) -> Service:
    text: str = importlib.import_module(example.module).SERVICE_TOML
    [service] = parse_services(text, source=f"{example.module}.SERVICE_TOML").services.values()
    args = [
        str(data_dir / "faces.sqlite") if arg == FACE_DB_PLACEHOLDER else arg for arg in service.command[1:]
    ]
    return dataclasses.replace(service, command=(sys.executable, "-m", example.module, *args))


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
        services[service.id] = service
    return dataclasses.replace(config, services=MappingProxyType(services)), notes
