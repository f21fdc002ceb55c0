"""atomic_write: the file is the previous content or one writer's new content, whole, even with concurrent
writers in one process."""

import threading

import pytest

from recsys.atomic import atomic_write


def test_a_failed_write_leaves_the_previous_file_and_no_temp_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")

    def fail(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_two_threads_writing_one_file_each_write_whole(tmp_path):
    # Both writers are held half-way until the other has started: with one temp name per process, the second
    # open truncated the first writer's file and the rename of one moved the other's temp file away.
    target = tmp_path / "recs.bin"
    halfway = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []
    payloads = {name: name.encode() * 50_000 for name in ("a", "b")}

    def writer(name: str) -> None:
        def write(fh):
            data = payloads[name]
            fh.write(data[: len(data) // 2])
            halfway.wait()
            fh.write(data[len(data) // 2 :])

        try:
            atomic_write(target, write)
        except BaseException as exc:  # collected, so the test names what went wrong
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(name,)) for name in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_bytes() in payloads.values()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.bin"]


def test_the_bytes_are_on_disk_before_the_rename(tmp_path, monkeypatch):
    # a crash right after the rename (power loss) must not leave an empty file: the temp file's whole content
    # is flushed out of Python's buffer and fsync-ed before os.replace puts it in place
    import os
    from stat import S_ISDIR

    from recsys import atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        stat = os.fstat(fd)
        events.append(("fsync folder" if S_ISDIR(stat.st_mode) else "fsync", stat.st_size))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write(tmp_path / "out.bin", lambda fh: fh.write(b"x" * 100))
    # then the folder, whose entry the rename changed: until it is flushed, a power loss may undo the rename
    folder_size = os.stat(tmp_path).st_size
    assert events == [("fsync", 100), ("replace", 100), ("fsync folder", folder_size)]


def test_a_folder_that_refuses_fsync_still_gets_the_file(tmp_path, monkeypatch):
    # some file systems refuse fsync on a folder (EINVAL): the rename has happened and stands
    import errno
    import os
    from stat import S_ISDIR

    from recsys import atomic

    real_fsync = os.fsync

    def fsync(fd):
        if S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic_write(tmp_path / "out.bin", lambda fh: fh.write(b"new"))
    assert (tmp_path / "out.bin").read_bytes() == b"new" and os.listdir(tmp_path) == ["out.bin"]
