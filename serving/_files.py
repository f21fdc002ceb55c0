"""File-system helpers for index folders: checksums, durable writes, atomic publication, snapshot reads.

Kept apart from the index format so that the "how do we put a folder in place safely" logic has one home.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: writers are not serialised, leftovers not cleaned
    fcntl = None  # type: ignore[assignment]

_CHUNK = 1 << 20


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def fsync_path(path: Path) -> None:
    """Flush a file (or, on POSIX, a folder entry list) to stable storage."""
    flags = (os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # folders cannot be opened on Windows; nothing to flush there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def new_sibling(target: Path, tag: str) -> Path:
    """A fresh hidden path next to ``target`` (same file system, so a rename is atomic)."""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns False when the platform, C library or file system does not support it; the caller then falls
    back to two renames.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


_HELD = threading.local()  # the folders whose write lock this thread holds (the lock is reentrant)


@contextlib.contextmanager
def write_lock(final: Path) -> Iterator[None]:
    """Hold the exclusive write lock of the folder ``final`` (an OS lock on the sibling file
    ``.<name>.lock``, released when the process ends), so that writers of one folder take turns: a
    read-modify-write such as :func:`serving.add_items` must not lose another writer's update, and a writer
    that holds the lock knows that every temporary sibling it finds was left by a writer that died.
    Reentrant within a thread (``add_items`` holds it while ``build_index`` writes)."""
    held = getattr(_HELD, "folders", None)
    if held is None:
        held = _HELD.folders = set()
    key = str(final)
    if key in held or fcntl is None:
        yield
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        held.add(key)
        try:
            _remove_leftovers(final)
            yield
        finally:
            held.discard(key)
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(final: Path) -> None:
    """Remove the temporary siblings of ``final`` (``.<name>.building-*``, ``.<name>.replaced-*``) that a
    killed writer left; called with the write lock held, so none belongs to a live writer of this version."""
    for leftover in final.parent.glob(f".{final.name}.*-*"):
        if leftover.is_dir() and leftover.name.split(".")[-1].startswith(("building-", "replaced-")):
            shutil.rmtree(leftover, ignore_errors=True)


def publish_folder(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``, replacing a previous ``final`` only once ``tmp`` is done.

    * ``final`` absent: one ``rename`` (atomic).
    * ``final`` present, Linux: one atomic exchange, then the old folder (now at ``tmp``) is deleted. Readers
      see either the old folder or the new one, never a mix and never nothing.
    * otherwise: ``final`` is renamed aside, ``tmp`` renamed in, the old one deleted; if the second rename
      fails the old folder is put back. ``final`` is briefly absent, but never half-written.
    """
    if not final.exists() and not final.is_symlink():
        try:
            os.rename(tmp, final)
        except OSError as exc:
            # Another writer (one without the lock: an older version) published first: replace its folder.
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        else:
            fsync_path(final.parent)
            return
    if _exchange(tmp, final):
        fsync_path(final.parent)
        _remove_old(tmp)
        return
    backup = new_sibling(final, "replaced")
    os.rename(final, backup)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(backup, final)
        raise
    fsync_path(final.parent)
    _remove_old(backup)


def _remove_old(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except OSError as exc:  # the new folder is in place; a leftover old copy is not worth failing the build
        warnings.warn(f"could not delete the replaced index folder {path}: {exc}", stacklevel=3)


class FolderSnapshot:
    """Reads whole files of one folder through a directory handle (POSIX), so that every file comes from the
    same folder even if another process atomically swaps a new folder in under the same name meanwhile.

    Use as a context manager; :meth:`read` returns ``None`` for a missing file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def __enter__(self) -> FolderSnapshot:
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            self._fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def replaced(self) -> bool:
        """Whether the path now names another folder than the one this snapshot reads (a writer swapped a
        new one in and may be deleting the old one's files)."""
        if self._fd is None:
            return False
        try:
            now = os.stat(self.folder)
        except FileNotFoundError:
            return True
        then = os.fstat(self._fd)
        return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)

    def read(self, name: str) -> bytes | None:
        try:
            if self._fd is not None:
                fd = os.open(name, os.O_RDONLY, dir_fd=self._fd)
            else:
                fd = os.open(self.folder / name, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()
