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
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

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


@contextlib.contextmanager
def write_lock(final: Path) -> Iterator[None]:
    """Hold the exclusive write lock of the folder ``final`` (an OS lock on the sibling file
    ``.<name>.lock``, released when the process ends), so that writers of one folder take turns: a
    read-modify-write such as :func:`serving.add_items` must not lose another writer's update, and the
    holder may clean up after writers that died (:func:`_recover_leftovers`).

    No lock where there is none to take: without ``fcntl`` (Windows), or when the lock file cannot be
    created or opened (a read-only or foreign-owned folder), writers are not serialised, as before. On NFS,
    Linux emulates ``flock`` with per-process locks, so threads of one process are not serialised there."""
    if fcntl is None:
        yield
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Read-only and 0o666 (less the umask): another user who may write the folder can still take it.
        fd = os.open(final.parent / f".{final.name}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _recover_leftovers(final)
        yield
    finally:
        os.close(fd)  # releases the lock


def _leftovers(final: Path) -> list[Path]:
    """``final``'s own temporary siblings, ``.<name>.building-<pid>-*`` and ``.<name>.replaced-<pid>-*``
    (exact prefixes: ``.idx.v2.building-*`` belongs to the folder ``idx.v2``), whose writer process is gone."""
    found = []
    with os.scandir(final.parent) as entries:
        for entry in entries:
            for tag in ("building", "replaced"):
                prefix = f".{final.name}.{tag}-"
                if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                    pid = entry.name[len(prefix) :].split("-", 1)[0]
                    if not (pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid))):
                        found.append(Path(entry.path))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def has_replaced_copy(final: Path) -> bool:
    """Whether ``final`` is missing while a copy moved aside by a killed writer is there to put back."""
    return (
        not final.exists()
        and final.parent.is_dir()
        and any(".replaced-" in p.name for p in _leftovers(final))
    )


def _recover_leftovers(final: Path) -> None:
    """With the write lock held: a writer killed between the two renames of the fallback path left ``final``
    missing and the served folder at ``.<name>.replaced-*``; put it back. Then remove the dead writers'
    temporary folders (a killed build's half-written copy stayed forever)."""
    leftovers = _leftovers(final)
    if not final.exists() and not final.is_symlink():
        replaced = [p for p in leftovers if ".replaced-" in p.name]
        if replaced:
            newest = max(replaced, key=lambda p: p.stat().st_mtime_ns)
            os.rename(newest, final)
            fsync_path(final.parent)
            leftovers.remove(newest)
    for leftover in leftovers:
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


class SnapshotReplaced(Exception):
    """A file was missing from a folder that a writer replaced meanwhile (read the new folder)."""


class FolderSnapshot:
    """Reads whole files of one folder through a directory handle (POSIX), so that every file comes from the
    same folder even if another process atomically swaps a new folder in under the same name meanwhile.

    Use as a context manager; :meth:`read` returns ``None`` for a missing file, or, with
    ``raise_if_replaced``, raises :class:`SnapshotReplaced` when the folder was replaced meanwhile (the
    writer deletes the old folder's files right after the swap, so the file may have been good).
    """

    def __init__(self, folder: Path, *, raise_if_replaced: bool = False) -> None:
        self.folder = folder
        self._fd: int | None = None
        self._raise_if_replaced = raise_if_replaced

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
        if self._fd is None:  # no directory handle (Windows): only an absent folder shows a writer at work
            return not self.folder.is_dir() or _being_replaced(self.folder)
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
            if self._raise_if_replaced and self.replaced():
                raise SnapshotReplaced(self.folder) from None
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()


T = TypeVar("T")


def _being_replaced(folder: Path) -> bool:
    """Whether ``folder`` is absent while a writer's ``.<name>.replaced-*`` sibling exists: the fallback
    publication's moment between its two renames (or a killed writer's leftover, put back by the next)."""
    try:
        with os.scandir(folder.parent) as entries:
            return any(entry.name.startswith(f".{folder.name}.replaced-") for entry in entries)
    except OSError:
        return False


def read_snapshot(
    folder: Path, read: Callable[[FolderSnapshot], T], absent: Callable[[], Exception], attempts: int = 5
) -> T:
    """``read(snapshot)`` of one folder, read again from the new folder when a writer replaced it meanwhile
    (up to ``attempts`` times, then once more where a missing file is just missing), and waited for while it
    is briefly absent between a fallback publication's two renames. A folder that is absent with no writer
    at work raises ``absent()`` at once."""
    for attempt in range(1, attempts + 1):
        if not folder.is_dir() and not _being_replaced(folder):
            break
        try:
            with FolderSnapshot(folder, raise_if_replaced=True) as snapshot:
                return read(snapshot)
        except (SnapshotReplaced, FileNotFoundError):  # FileNotFoundError: the folder itself was gone
            time.sleep(0.02 * attempt)
    if not folder.is_dir():
        raise absent()
    with FolderSnapshot(folder) as snapshot:
        return read(snapshot)


def check_replaceable(folder: Path, ours: Callable[[Path], bool], what: str, marker: str) -> None:
    """Refuse to replace ``folder`` unless it is absent, empty, or one of ours (``ours(folder)``): a folder
    the user pointed an ``--out`` at by mistake (``.``, a dataset) must never be deleted. ``what`` names our
    kind of folder ("serving index"), ``marker`` what makes one ("a manifest.json of format ...")."""
    if folder.is_symlink():
        raise FileExistsError(f"{folder} is a symlink; pass the folder it points to, or remove the link")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; refusing to replace it with a {what}")
    if any(folder.iterdir()) and not ours(folder):
        raise FileExistsError(
            f"{folder} is a non-empty folder without {marker}, so it is not a {what}; refusing to replace it: "
            "choose another folder, or remove this one"
        )
