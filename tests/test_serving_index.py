"""serving.build_index / load_index: folder layout, input validation, integrity checks, atomic replacement."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from serving import IndexIntegrityError, ItemIndex, Retriever, build_index, load_index

N_ITEMS, N_USERS, DIM = 40, 12, 6


def _beside(folder: Path) -> list[str]:
    """What lies in ``folder`` besides the write-lock files (``.<name>.lock``, kept for the next writer)."""
    return sorted(
        p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".lock"))
    )


def make_data(seed: int = 0, n_items: int = N_ITEMS, n_users: int = N_USERS, dim: int = DIM) -> dict:
    rng = np.random.default_rng(seed)
    seen = sp.random(n_users, n_items, density=0.2, random_state=seed, format="csr", dtype=np.float32)
    return {
        "item_emb": rng.integers(-3, 4, size=(n_items, dim)).astype(np.float32),
        "item_ids": [f"item-{i}" for i in range(n_items)],
        "user_emb": rng.integers(-3, 4, size=(n_users, dim)).astype(np.float32),
        "user_ids": [f"user-{u}" for u in range(n_users)],
        "seen": seen,
        "item_titles": [None if i % 3 == 0 else f"Title {i}" for i in range(n_items)],
    }


@pytest.fixture()
def data() -> dict:
    return make_data()


@pytest.fixture()
def built(tmp_path, data) -> Path:
    return build_index(
        data["item_emb"],
        data["item_ids"],
        tmp_path / "idx",
        user_emb=data["user_emb"],
        user_ids=data["user_ids"],
        seen=data["seen"],
        item_titles=data["item_titles"],
        run_id="run-123",
        metadata={"model": "mf", "dataset_manifest_hash": "abc"},
    )


# ---- layout and round trip ---------------------------------------------------------------------------------
def test_folder_layout_and_manifest(built, data):
    names = sorted(p.name for p in built.iterdir())
    assert names == sorted(
        ["manifest.json", "items.faiss", "item_ids.parquet", "users.parquet", "user_emb.npy", "seen.npz"]
    )
    m = json.loads((built / "manifest.json").read_text())
    assert m["schema_version"] == 1
    assert m["metric"] == "inner_product" and m["index_type"] == "IndexFlatIP" and m["normalized"] is False
    assert (m["dim"], m["n_items"], m["n_users"], m["n_seen"]) == (DIM, N_ITEMS, N_USERS, data["seen"].nnz)
    assert m["run_id"] == "run-123" and m["metadata"] == {"model": "mf", "dataset_manifest_hash": "abc"}
    assert m["bias_columns"] == 0 and load_index(built).bias_columns == 0
    assert m["created_at"]
    for name, rec in m["files"].items():
        blob = (built / name).read_bytes()
        assert rec == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    assert set(m["files"]) == set(names) - {"manifest.json"}
    # nothing but the index folder next to it: the temporary build folder is gone
    assert _beside(built.parent) == ["idx"]


def test_load_round_trip(built, data):
    idx = load_index(built)
    assert isinstance(idx, ItemIndex)
    assert (idx.dim, idx.n_items, idx.n_users, idx.run_id) == (DIM, N_ITEMS, N_USERS, "run-123")
    assert idx.item_ids == tuple(data["item_ids"]) and idx.user_ids == tuple(data["user_ids"])
    assert idx.item_titles == tuple(data["item_titles"])
    np.testing.assert_array_equal(idx.user_emb, data["user_emb"])
    np.testing.assert_array_equal(idx.item_vectors(np.arange(N_ITEMS)), data["item_emb"])
    assert (idx.seen != (data["seen"] != 0)).nnz == 0
    assert idx.faiss_index.ntotal == N_ITEMS
    with pytest.raises(ValueError):  # the loaded arrays are read-only: the index is immutable
        idx.user_emb[0, 0] = 1.0


def test_items_only_index(tmp_path, data):
    out = build_index(data["item_emb"], data["item_ids"], tmp_path / "items_only")
    assert sorted(p.name for p in out.iterdir()) == ["item_ids.parquet", "items.faiss", "manifest.json"]
    idx = load_index(out)
    assert idx.n_users == 0 and not idx.has_users and not idx.has_seen
    assert idx.item_titles == (None,) * N_ITEMS


def test_float64_and_noncontiguous_inputs_are_accepted(tmp_path, data):
    emb = np.asfortranarray(data["item_emb"].astype(np.float64))
    idx = load_index(build_index(emb, data["item_ids"], tmp_path / "f64"))
    np.testing.assert_array_equal(idx.item_vectors(np.arange(N_ITEMS)), data["item_emb"])


def test_normalize_gives_cosine(tmp_path, data):
    emb = data["item_emb"].copy()
    emb[np.linalg.norm(emb, axis=1) == 0] = 1.0
    out = build_index(emb, data["item_ids"], tmp_path / "cos", normalize=True)
    idx = load_index(out)
    assert idx.normalized
    np.testing.assert_allclose(np.linalg.norm(idx.item_vectors(np.arange(N_ITEMS)), axis=1), 1.0, rtol=1e-6)
    rec = Retriever(idx).recommend_for_vector(np.full(DIM, 5.0, dtype=np.float32), k=1)[0][0]
    assert rec.score <= 1.0 + 1e-6
    zero = emb.copy()
    zero[3] = 0.0
    with pytest.raises(ValueError, match="all-zero"):
        build_index(zero, data["item_ids"], tmp_path / "cos0", normalize=True)


# ---- input validation ----------------------------------------------------------------------------------------
def _bad_inputs(data):
    nan_items = data["item_emb"].copy()
    nan_items[5, 2] = np.nan
    inf_users = data["user_emb"].copy()
    inf_users[1, 0] = np.inf
    dup = list(data["item_ids"])
    dup[7] = dup[3]
    return {
        "item rows vs ids": ({"item_ids": data["item_ids"][:-1]}, ValueError, "item_ids has 39 entries"),
        "duplicate item ids": ({"item_ids": dup}, ValueError, "duplicated"),
        "duplicate user ids": ({"user_ids": ["u"] * N_USERS}, ValueError, "duplicated"),
        "nan in items": ({"item_emb": nan_items}, ValueError, "NaN or inf"),
        "inf in users": ({"user_emb": inf_users}, ValueError, "NaN or inf"),
        "1-d items": ({"item_emb": data["item_emb"][0]}, ValueError, "2-D"),
        "int items": ({"item_emb": data["item_emb"].astype(np.int64)}, TypeError, "floating"),
        "user dim": ({"user_emb": data["user_emb"][:, :3]}, ValueError, "dimension 3"),
        "user rows vs ids": ({"user_ids": data["user_ids"][:5]}, ValueError, "user_ids has 5 entries"),
        "seen shape": ({"seen": data["seen"][:, :-1]}, ValueError, r"seen has shape \(12, 39\)"),
        "seen dense": ({"seen": data["seen"].toarray()}, TypeError, "scipy.sparse"),
        "non-str id": ({"item_ids": list(range(N_ITEMS))}, TypeError, "entry 0 is 0"),
        "single str ids": ({"item_ids": "abc"}, TypeError, "single str"),
        "titles length": ({"item_titles": ["t"]}, ValueError, "item_titles has 1 entries"),
        "metadata": ({"metadata": {"x": object()}}, TypeError, "JSON"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(make_data()).keys()))
def test_invalid_inputs_are_rejected_clearly(tmp_path, data, case):
    override, exc, pattern = _bad_inputs(data)[case]
    kwargs = {k: data[k] for k in ("user_emb", "user_ids", "seen", "item_titles")} | override
    item_emb = kwargs.pop("item_emb", data["item_emb"])
    item_ids = kwargs.pop("item_ids", data["item_ids"])
    with pytest.raises(exc, match=pattern):
        build_index(item_emb, item_ids, tmp_path / "idx", **kwargs)
    assert list(tmp_path.iterdir()) == []  # validation happens before anything is written


def test_users_and_seen_need_each_other(tmp_path, data):
    with pytest.raises(ValueError, match="go together"):
        build_index(data["item_emb"], data["item_ids"], tmp_path / "a", user_emb=data["user_emb"])
    with pytest.raises(ValueError, match="seen needs user_emb"):
        build_index(data["item_emb"], data["item_ids"], tmp_path / "b", seen=data["seen"])


# ---- integrity checks on load --------------------------------------------------------------------------------
def _expect_integrity_error(folder: Path, file: str, *, verify: bool = True) -> IndexIntegrityError:
    with pytest.raises(IndexIntegrityError) as info:
        load_index(folder, verify=verify)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.file == file and err.folder == folder
    assert str(folder) in str(err) and file in str(err) and "expected" in str(err) and "found" in str(err)
    return err


def _edit_manifest(folder: Path, **changes) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_flipped_byte_in_faiss_file(built):
    path = built / "items.faiss"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    err = _expect_integrity_error(built, "items.faiss")
    assert "sha256" in str(err) and "modified or corrupted" in str(err)


def test_truncated_user_embeddings(built):
    path = built / "user_emb.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 8)
    err = _expect_integrity_error(built, "user_emb.npy")
    assert f"{size} bytes" in str(err) and f"{size - 8} bytes" in str(err)
    _expect_integrity_error(built, "user_emb.npy", verify=False)  # sizes are checked even without checksums


def test_missing_item_id_file(built):
    (built / "item_ids.parquet").unlink()
    err = _expect_integrity_error(built, "item_ids.parquet")
    assert "no such file" in str(err)


def test_missing_manifest(built):
    (built / "manifest.json").unlink()
    _expect_integrity_error(built, "manifest.json")


def test_manifest_dim_edited(built):
    _edit_manifest(built, dim=DIM + 1)
    err = _expect_integrity_error(built, "items.faiss")
    assert (
        f"dimension {DIM + 1}" in str(err) and f"dimension {DIM}" in str(err) and "manifest.json" in str(err)
    )


def test_manifest_item_count_edited(built):
    _edit_manifest(built, n_items=N_ITEMS - 1)
    err = _expect_integrity_error(built, "items.faiss")
    assert f"{N_ITEMS - 1} vectors" in str(err)


def test_unknown_schema_version(built):
    _edit_manifest(built, schema_version=99)
    err = _expect_integrity_error(built, "manifest.json")
    assert "schema_version 1" in str(err) and "schema_version 99" in str(err)


def test_manifest_not_json(built):
    (built / "manifest.json").write_text("{ not json")
    _expect_integrity_error(built, "manifest.json")


def test_manifest_missing_file_record(built):
    m = json.loads((built / "manifest.json").read_text())
    del m["files"]["seen.npz"]
    (built / "manifest.json").write_text(json.dumps(m))
    err = _expect_integrity_error(built, "manifest.json")
    assert "seen.npz" in str(err)


def test_file_from_another_index_with_matching_checksum(tmp_path, built):
    """A consistent-looking folder assembled from two builds: checksums pass, the cross-checks do not."""
    other = make_data(seed=1, n_items=N_ITEMS + 5)
    other_dir = build_index(other["item_emb"], other["item_ids"], tmp_path / "other")
    (built / "items.faiss").write_bytes((other_dir / "items.faiss").read_bytes())
    m = json.loads((built / "manifest.json").read_text())
    blob = (built / "items.faiss").read_bytes()
    m["files"]["items.faiss"] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    (built / "manifest.json").write_text(json.dumps(m))
    err = _expect_integrity_error(built, "items.faiss")
    assert f"{N_ITEMS} vectors" in str(err) and f"{N_ITEMS + 5}" in str(err)


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_index(tmp_path / "nowhere")


def test_integrity_error_is_picklable(built):
    import pickle

    err = IndexIntegrityError(built, "items.faiss", "x", "y", "z")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.file == "items.faiss"


# ---- atomic build ----------------------------------------------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_failed_rebuild_leaves_previous_folder_intact(built, data, monkeypatch):
    import faiss

    before = _snapshot(built)

    def broken_write_index(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(faiss, "write_index", broken_write_index)
    with pytest.raises(OSError, match="simulated"):
        build_index(data["item_emb"][:10], data["item_ids"][:10], built)
    assert _snapshot(built) == before
    assert _beside(built.parent) == ["idx"]  # no temporary folder left behind
    assert load_index(built).n_items == N_ITEMS


def test_failed_first_build_leaves_nothing(tmp_path, data, monkeypatch):
    import faiss

    monkeypatch.setattr(faiss, "write_index", lambda *a, **k: (_ for _ in ()).throw(OSError("simulated")))
    with pytest.raises(OSError):
        build_index(data["item_emb"], data["item_ids"], tmp_path / "idx")
    assert _beside(tmp_path) == []  # the lock file stays


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_rebuild_replaces_folder_completely(built, data, monkeypatch, exchange):
    if not exchange:
        import serving._files

        monkeypatch.setattr(serving._files, "_exchange", lambda a, b: False)
    (built / "stale-note.txt").write_text("from the old folder")
    build_index(data["item_emb"][:10], data["item_ids"][:10], built, run_id="new")
    idx = load_index(built)
    assert idx.n_items == 10 and idx.run_id == "new" and not idx.has_users
    assert not (built / "stale-note.txt").exists()
    assert _beside(built.parent) == ["idx"]


def test_failed_swap_restores_previous_folder(built, data, monkeypatch):
    import serving._files

    before = _snapshot(built)
    monkeypatch.setattr(serving._files, "_exchange", lambda a, b: False)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # moving the new folder into place fails after the old one was moved aside
            raise OSError("simulated rename failure")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="simulated"):
        build_index(data["item_emb"][:10], data["item_ids"][:10], built)
    monkeypatch.undo()
    assert _snapshot(built) == before
    assert _beside(built.parent) == ["idx"]


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path, data):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="not a serving index"):
        build_index(data["item_emb"], data["item_ids"], precious)
    assert (precious / "thesis.tex").read_text() == "do not delete"
    # A manifest.json alone does not make a folder an index: web apps and prepared datasets have one.
    for name, manifest in (
        ("webapp", '{"name": "app"}'),
        ("dataset", '{"format": "recsys.prepared"}'),
        ("x", "[]"),
    ):
        other = tmp_path / name
        other.mkdir()
        (other / "manifest.json").write_text(manifest)
        (other / "app.js").write_text("keep me")
        with pytest.raises(FileExistsError, match="not a serving index"):
            build_index(data["item_emb"], data["item_ids"], other)
        assert sorted(p.name for p in other.iterdir()) == ["app.js", "manifest.json"]
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        build_index(data["item_emb"], data["item_ids"], a_file)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_index(build_index(data["item_emb"], data["item_ids"], empty)).n_items == N_ITEMS


def test_importing_serving_does_not_import_faiss():
    code = (
        "import sys, serving\n"
        "from serving import build_index, load_index, ItemIndex, Retriever, Recommendation, IndexIntegrityError\n"
        "heavy = [m for m in ('faiss', 'pyarrow', 'scipy', 'torch') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_add_items_checks_its_input_like_build_index(tmp_path):
    from serving import Retriever, add_items

    out = build_index(np.eye(4, dtype=np.float32), ["0", "1", "2", "3"], tmp_path / "idx")
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="not a single str"):
        add_items(out, rng.normal(size=(3, 4)), "abc")  # was added as the ids "a", "b", "c"
    with pytest.raises(TypeError, match="entry 0 is None"):
        add_items(out, np.ones((1, 4)), [None])  # was the id "None"
    with pytest.raises(TypeError, match="floating-point"):
        add_items(out, np.ones((1, 4), dtype=np.int64), ["x"])
    with pytest.raises(ValueError, match="NaN or inf"):
        add_items(out, np.full((1, 4), np.nan), ["x"])
    add_items(out, np.array([[0.0, 0.0, 0.0, 2.0]]), ["x"])
    retriever = Retriever.load(out)
    assert retriever.index.item_ids == ("0", "1", "2", "3", "x")
    # ids given as ints are the same text ids in exclusions, as everywhere in the Retriever
    recs = retriever.recommend_for_vector(np.array([[0.0, 0.0, 1.0, 1.0]]), k=2, exclude_items=[[3]])
    assert [r.item_id for r in recs[0]] == ["x", "2"]


def test_add_items_edge_cases(tmp_path):
    from serving import Retriever, add_items

    out = build_index(np.eye(4, dtype=np.float32), ["0", "1", "2", "3"], tmp_path / "idx")
    assert add_items(out, np.zeros((0, 4)), []) == out  # an empty batch is a no-op
    copy = add_items(out, np.zeros((0, 4)), [], out_dir=tmp_path / "copy")
    assert Retriever.load(copy).index.item_ids == ("0", "1", "2", "3")
    with pytest.raises(TypeError, match="item_ids must be str"):
        add_items(out, np.ones((1, 4)), [7])  # written ids are text, as build_index writes them
    retriever = Retriever.load(out)
    q = np.array([[0.0, 0.0, 1.0, 1.0]])
    for bad in ([b"2"], [None], [1.0]):  # were turned into the ids "b'2'", "None", "1.0"
        with pytest.raises(TypeError, match="item ids are text"):
            retriever.recommend_for_vector(q, k=2, exclude_items=[bad])
    with pytest.raises(TypeError, match="not the string"):
        retriever.recommend_for_vector(q, k=2, exclude_items=[b"12"])


# ---- writers and readers of one folder at once ------------------------------------------------------------
def test_a_reader_of_a_folder_swapped_meanwhile_reads_the_new_one(built, data, monkeypatch):
    """The writer deletes the replaced folder's files right after the swap: a reader holding the old folder
    failed with "items.faiss: no such file" on a good index."""
    from serving import _files

    real, swapped = _files.FolderSnapshot.read, []

    def read_then_swap(self, name):
        out = real(self, name)
        if name == "manifest.json" and not swapped:
            swapped.append(True)  # another process republishes the index right after the manifest was read
            build_index(data["item_emb"][:10], data["item_ids"][:10], built)
        return out

    monkeypatch.setattr(_files.FolderSnapshot, "read", read_then_swap)
    index = load_index(built)
    assert swapped and index.n_items == 10  # the new folder, whole


def test_concurrent_add_items_keep_both_batches(built, data, monkeypatch):
    """Each add_items loads, extends and publishes: two at once used to publish the index plus their own
    item, and the second publication dropped the first one's item."""
    import threading
    import time

    import serving.index as index_module
    from serving import add_items

    real = index_module.publish_folder

    def slow_publish(tmp, final):
        time.sleep(0.3)  # the other writer loads the index meanwhile
        real(tmp, final)

    monkeypatch.setattr(index_module, "publish_folder", slow_publish)
    vector = data["item_emb"][:1]
    errors = []

    def add(item_id):
        try:
            add_items(built, vector, [item_id])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(f"new-{c}",)) for c in "AB"]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert errors == []
    index = load_index(built)
    assert sorted(index.item_ids[-2:]) == ["new-A", "new-B"]
    assert index.manifest["metadata"]["added_items"] == 2


def test_a_killed_writers_temporary_folders_are_removed(built, data):
    leftover = built.parent / ".idx.building-99999-0123456789"
    leftover.mkdir()
    (leftover / "items.faiss").write_bytes(b"x" * 1000)  # a killed build's half-written copy
    replaced = built.parent / ".idx.replaced-99999-0123456789"
    replaced.mkdir()
    build_index(data["item_emb"], data["item_ids"], built)
    assert _beside(built.parent) == ["idx"]


def test_bias_columns_in_the_manifest(built, tmp_path, data):
    """Written, read back, kept by add_items; a folder from before the key (none) reads as 0; a value that
    does not fit the index is refused by name."""
    from serving import add_items

    folder = build_index(data["item_emb"], data["item_ids"], tmp_path / "b", bias_columns=2)
    assert json.loads((folder / "manifest.json").read_text())["bias_columns"] == 2
    add_items(folder, data["item_emb"][:1], ["new"])
    assert load_index(folder).bias_columns == 2 and load_index(folder).n_items == N_ITEMS + 1
    m = json.loads((built / "manifest.json").read_text())
    del m["bias_columns"]
    (built / "manifest.json").write_text(json.dumps(m))
    assert load_index(built).bias_columns == 0
    for bad in (DIM + 1, -1, True, "1"):
        _edit_manifest(built, bias_columns=bad)
        err = _expect_integrity_error(built, "manifest.json")
        assert "'bias_columns': an int from 0 to 'dim'" in str(err)
    _edit_manifest(built, bias_columns=1, normalized=True)  # a cosine index cannot hold a bias
    _expect_integrity_error(built, "manifest.json")


def test_add_items_leaves_a_normalised_index_s_vectors_as_they_are(tmp_path, data):
    """The stored unit vectors were normalised again: a third of them changed in their last bits, and
    scores with them."""
    from serving import add_items

    folder = build_index(
        data["item_emb"], data["item_ids"], tmp_path / "idx", user_emb=data["user_emb"],
        user_ids=data["user_ids"], normalize=True,
    )  # fmt: skip
    before = load_index(folder)
    items, users = before.item_vectors(np.arange(before.n_items)), before.user_emb.copy()
    for k in range(5):
        add_items(folder, data["item_emb"][:1] * (k + 2), [f"new-{k}"])
    after = load_index(folder)
    assert np.array_equal(after.item_vectors(np.arange(before.n_items)), items)
    assert np.array_equal(after.user_emb, users)
    new = after.item_vectors(np.arange(before.n_items, after.n_items))
    np.testing.assert_allclose(np.linalg.norm(new, axis=1), 1.0, rtol=1e-6)
    assert after.normalized


def test_a_first_publication_that_loses_the_race_replaces_the_winner(tmp_path, monkeypatch):
    """Two writers of a new folder (one without the lock, e.g. an older version): the second rename met a
    folder that was not there a moment before, and failed with a raw 'Directory not empty'."""
    from serving import _files

    final, mine = tmp_path / "idx", tmp_path / ".idx.building-1-a"
    mine.mkdir()
    (mine / "f").write_text("mine")
    real = os.rename

    def other_writer_first(src, dst):
        if Path(dst) == final and not final.exists():
            final.mkdir()
            (final / "f").write_text("theirs")
        return real(src, dst)

    monkeypatch.setattr(_files.os, "rename", other_writer_first)
    _files.publish_folder(mine, final)
    assert (final / "f").read_text() == "mine" and not mine.exists()


def test_cleanup_leaves_other_folders_and_live_writers_alone(built, data):
    """Leftovers are the folder's own, by exact prefix: `.idx.v2.building-*` (the folder idx.v2's) was
    deleted mid-build by a writer of idx; a live writer's folder stays too."""
    other = built.parent / ".idx.v2.building-99999-0123456789"
    live = built.parent / f".idx.building-{os.getppid()}-0123456789"  # a process that is alive
    for folder in (other, live):
        folder.mkdir()
    build_index(data["item_emb"], data["item_ids"], built)
    assert other.is_dir() and live.is_dir()


def test_a_served_folder_moved_aside_by_a_killed_writer_is_put_back(built, data):
    """Without an atomic swap a writer renames the served folder aside, then its new one in: killed between
    the two, the next writer deleted both leftovers, and the index was gone."""
    from serving import add_items

    before = load_index(built).item_ids
    os.rename(built, built.parent / ".idx.replaced-99999-0123456789")
    (built.parent / ".idx.building-99999-abcdefabcd").mkdir()  # the killed writer's new copy
    add_items(built, data["item_emb"][:1], ["new-A"])
    assert list(load_index(built).item_ids) == [*before, "new-A"]
    assert _beside(built.parent) == ["idx"]


def test_add_items_writes_nothing_before_it_can_work(tmp_path, built, data):
    """A mistyped path, bad inputs or an empty batch: no folder and no lock file created."""
    from serving import add_items

    typo = tmp_path / "indexs" / "prod" / "idx"
    with pytest.raises(FileNotFoundError):
        add_items(typo, data["item_emb"][:1], ["new-A"])
    assert not (tmp_path / "indexs").exists()
    out = tmp_path / "elsewhere" / "idx"
    with pytest.raises(ValueError):
        add_items(built, data["item_emb"][:1], ["a", "b"], out_dir=out)  # 1 row, 2 ids
    assert not out.parent.exists()
    lock = built.parent / ".idx.lock"
    lock.unlink(missing_ok=True)
    assert add_items(built, data["item_emb"][:0], []) == built and not lock.exists()


def test_a_lock_file_that_cannot_be_opened_does_not_stop_a_writer(built, data, monkeypatch):
    """Another user's 0644 lock file (or a read-only folder): the build goes ahead unlocked, as before."""
    from serving import _files

    real = os.open

    def refuse_lock(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, flags, *args, **kwargs)

    def refuse_lock_file(path, *args, **kwargs):  # the same refusal through the built-in open
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(_files.os, "open", refuse_lock)
    monkeypatch.setattr(_files, "open", refuse_lock_file, raising=False)
    build_index(data["item_emb"][:5], data["item_ids"][:5], built)
    monkeypatch.setattr(_files.os, "open", real)
    assert load_index(built).n_items == 5


@pytest.mark.parametrize("dir_fd", [True, False], ids=["directory-handle", "no-directory-handle"])
def test_a_reader_waits_out_the_moment_a_fallback_publication_leaves_the_folder_absent(
    built, data, monkeypatch, dir_fd
):
    """Where the atomic exchange is missing, a writer renames the served folder aside, then the new one in:
    a reader in between got "does not exist" at once, though the folder was back milliseconds later. Without
    directory handles (Windows, where this publication always runs) the reader waited for nothing either."""
    import os
    import threading

    from serving import _files

    if not dir_fd:
        monkeypatch.setattr(_files.os, "supports_dir_fd", set())

    aside = built.parent / f".{built.name}.replaced-{os.getpid()}-test"
    os.rename(built, aside)
    putting_back = threading.Timer(0.05, os.rename, args=(aside, built))
    putting_back.start()
    try:
        assert load_index(built).n_items == len(data["item_ids"])
    finally:
        putting_back.join()
    with pytest.raises(FileNotFoundError, match="does not exist"):  # absent, no writer at work: at once
        load_index(built.parent / "never-built")


def test_add_items_keeps_each_users_seen_items_in_their_columns(tmp_path):
    """New items are appended as new columns: a user's seen items stay where they were (had the new columns
    gone on the left, every seen item would have shifted onto its neighbour and been served again)."""
    from serving import add_items

    seen = sp.csr_matrix(np.array([[1, 0, 0, 0]], np.float32))
    out = build_index(
        np.eye(4, dtype=np.float32), ["0", "1", "2", "3"], tmp_path / "idx",
        user_emb=np.array([[1.0, 0.5, 0.2, 0.1]], np.float32), user_ids=["u"], seen=seen,
    )  # fmt: skip
    add_items(out, np.array([[0.0, 0.0, 0.0, 0.05]], np.float32), ["x"])
    assert Retriever.load(out).index.seen.toarray().tolist() == [[1, 0, 0, 0, 0]]


# F1: sha256_file's size counts every chunk of a file over 1 MiB.
def test_sha256_file_size_of_a_large_file(tmp_path):
    import hashlib

    from serving._files import sha256_file

    data = b"x" * ((1 << 20) + 12345)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == (hashlib.sha256(data).hexdigest(), len(data))


# ---- found by a mutation run: each test below failed on a plausibly wrong line of the code -----------------
def test_normalize_scores_users_by_cosine_too(tmp_path, data):
    """With normalize=True the stored user vectors are unit vectors too, so recommend() scores are the cosine
    similarities the option promises, whatever the length of the model's user vectors (they were inner
    products of raw users with unit items: neither cosine nor the model's score)."""
    items, users = data["item_emb"].copy(), data["user_emb"].copy()
    items[np.linalg.norm(items, axis=1) == 0] = 1.0
    users[np.linalg.norm(users, axis=1) == 0] = 1.0
    out = build_index(
        items, data["item_ids"], tmp_path / "cos", user_emb=users, user_ids=data["user_ids"], normalize=True
    )
    got = Retriever.load(out).recommend(data["user_ids"], k=5, exclude_seen=False)

    def unit(x):
        return x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)

    cosines = unit(users) @ unit(items).T
    for u, row in enumerate(got):
        np.testing.assert_allclose(
            [r.score for r in row], np.sort(cosines[u])[::-1][:5], rtol=1e-5, atol=1e-6
        )


def test_the_manifest_handed_out_is_a_copy(built):
    """ItemIndex is immutable: a caller editing the manifest it was given (to record or display it) must not
    change how the shared index answers, e.g. start normalising queries or expect another dimension."""
    idx = load_index(built)
    retriever = Retriever(idx)
    query = np.arange(1.0, DIM + 1.0, dtype=np.float32)
    before = retriever.recommend_for_vector(query, k=5)
    manifest = idx.manifest
    manifest.update(normalized=True, dim=DIM + 1, index_type="IndexIVFFlat")
    assert (idx.normalized, idx.dim, idx.index_type) == (False, DIM, "IndexFlatIP")
    assert retriever.recommend_for_vector(query, k=5) == before
    assert idx.manifest["dim"] == DIM


def test_a_symlinked_out_dir_is_refused_and_left_as_it_is(tmp_path, built, data):
    """A link such as current -> idx-v3 is refused (the docs say so): publishing through it swapped the link
    itself for a folder, and left the index it pointed to as it was, no longer the one behind the link."""
    link = tmp_path / "current"
    link.symlink_to(built, target_is_directory=True)
    before = _snapshot(built)
    with pytest.raises(FileExistsError, match="symlink"):
        build_index(data["item_emb"][:5], data["item_ids"][:5], link)
    assert link.is_symlink() and link.resolve() == built.resolve()
    assert _snapshot(built) == before


def test_a_leftover_named_with_this_process_s_pid_is_removed(built, data):
    """PIDs are reused (a container's writer often has the same small pid on every start): a temporary folder
    bearing this process's pid cannot be a live writer's while this process holds the write lock, so it is
    a dead earlier process's leftover, removed like any other (it stayed, as if its writer were alive)."""
    leftover = built.parent / f".idx.building-{os.getpid()}-0123456789"
    leftover.mkdir()
    (leftover / "items.faiss").write_bytes(b"x" * 1000)
    build_index(data["item_emb"], data["item_ids"], built)
    assert _beside(built.parent) == ["idx"]


def test_of_two_served_folders_moved_aside_the_newest_is_put_back(tmp_path, built, data):
    """Two dead writers left the index moved aside twice (writers without the lock: an older version): the
    copy put back is the one moved aside last, the most recent index, not an older one."""
    from serving import add_items

    older = tmp_path / ".idx.replaced-99998-0123456789"
    os.rename(built, older)
    newer = tmp_path / ".idx.replaced-99999-0123456789"
    build_index(data["item_emb"][:5], data["item_ids"][:5], tmp_path / "newer")
    os.rename(tmp_path / "newer", newer)
    os.utime(older, ns=(10**18, 10**18))
    os.utime(newer, ns=(2 * 10**18, 2 * 10**18))
    add_items(built, data["item_emb"][:1], ["new-A"])
    assert load_index(built).item_ids == (*data["item_ids"][:5], "new-A")
    assert _beside(tmp_path) == ["idx"]
