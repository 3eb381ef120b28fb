"""How to install an extra, said as a command that works where this program runs.

hubnet is not on PyPI, so `pip install 'hubnet[face]'` would find nothing (or someone else's
package). The packages an extra adds are on PyPI, though: the hint names them, read from the
installed metadata so that it cannot drift from pyproject.toml, with the command that adds
them to this very environment: `pipx inject hubnet ...` in a pipx venv (which has a
pipx_metadata.json at its root), `PYTHON -m pip install ...` with this interpreter anywhere
else. Only error paths call this, so its imports stay out of every program's start-up.
"""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import sys
from pathlib import Path

DISTRIBUTION = "hubnet"


def extra_requirements(extra: str) -> list[str]:
    """The requirements the extra adds (`numpy>=1.26`, ...), as the installed metadata lists them.

    Empty when hubnet's metadata is not there (the checkout used without installing it).
    """
    try:
        requires = importlib.metadata.requires(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    marker = re.compile(rf"""^extra\s*==\s*["']{re.escape(extra)}["']$""")
    found = []
    for line in requires:
        requirement, _, condition = line.partition(";")
        if marker.match(condition.strip()):
            found.append(requirement.strip())
    return found


def install_hint(extra: str) -> str:
    """The command that installs the extra into the environment this interpreter runs in."""
    requirements = extra_requirements(extra)
    if not requirements:
        return f"pip install '.[{extra}]' in the hubnet checkout"
    packages = " ".join(shlex.quote(r) for r in requirements)
    prefix = Path(sys.prefix)
    if (prefix / "pipx_metadata.json").is_file():
        return f"pipx inject {shlex.quote(prefix.name)} {packages}"
    return f"{shlex.quote(sys.executable)} -m pip install {packages}"
