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
