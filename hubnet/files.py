"""Small state files a client keeps in its home, written whole or not at all."""

from __future__ import annotations

import _thread
import contextlib
import os
from pathlib import Path


def replace_whole(path: Path, data: bytes) -> None:
    """Best effort: put `data` at `path` (mode 0600, its folder made if missing) through a
    temporary file beside it, so that a concurrent reader sees the old file or the new one,
    never half of one. A folder that refuses leaves nothing behind: these files only save
    work, and the next run does it again."""
    # Not tempfile: its import (shutil, random, the compressors) cost a call more than the
    # write. The name is unique per process and thread, as the key file's is.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{_thread.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
