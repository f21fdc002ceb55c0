"""Writing a file so that a crash never leaves it torn: the one helper behind checkpoints and result files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, flush it to disk, then rename it into place: whenever
    a crash comes, ``path`` holds the previous content or the new one, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call, not per process: two threads of one service writing the same file must not share (and
    # tear) one temp file. "x" refuses a name that exists; the file keeps the umask's permissions.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
