"""Writing a file so that a crash never leaves it torn: the one helper behind checkpoints and result files."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, flush it to disk, then rename it into place and flush the
    folder: whenever a crash (or a power loss) comes, ``path`` holds the previous content or the new one,
    whole."""
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
        _fsync_folder(path.parent)  # the rename is an entry of the folder: on disk only once it is flushed
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk where the system allows it (POSIX; Windows opens no folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: the rename stands, only less durably
        pass
    finally:
        os.close(fd)
