"""SHA256 of files, memoised per process.

Files are keyed by (path, size, mtime, inode, ctime), so a file that is replaced or rewritten is hashed again
while repeated ``prepare()`` calls in one process (a test session, a sweep) hash each source file once. The
change time is in the key because a rewrite can restore the size and mtime (``cp -p``, ``rsync -a``, ``tar x``),
and nothing but the file system sets ``ctime``.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

_MEMO: dict[tuple[str, int, int, int, int], str] = {}
_RACY_NS = 2_000_000_000


def file_state(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten or replaced: (size, mtime, inode, ctime), nanoseconds."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA256 of a file's bytes."""
    now = time.time_ns()  # before the stat: the file may change while it is read
    state = file_state(path)
    key = (str(path.resolve()), *state)
    hit = _MEMO.get(key)
    if hit is not None:
        return hit
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    # A file changed within the file system's timestamp resolution of now (a second on some) could change
    # again with the same key: remember only files that have been still for a while (git's "racily clean").
    if now - max(state[1], state[3]) > _RACY_NS:  # the modification and change times
        _MEMO[key] = digest
    return digest


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
