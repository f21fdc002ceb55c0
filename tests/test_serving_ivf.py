"""The approximate serving index (``build_index(..., nlist=N)``, FAISS ``IndexIVFFlat``): probing every list is
the exact index, fewer lists still keep the exclusions and the "k items whenever k unseen exist" guarantee, and
the folder is checked, reloaded with another ``nprobe`` and grown by ``add_items`` like the exact one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from serving import IndexIntegrityError, ItemIndex, Retriever, add_items, build_index
from tests.test_serving_retriever import ALL_SEEN, HEAVY, ITEM_IDS, N_ITEMS, USER_IDS, make_world

NLIST = 8


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same float world as an exact index and as an inverted file of 8 lists (nprobe 2 by default)."""
    items, users, seen = make_world(integer=False)
    root = tmp_path_factory.mktemp("ivf")
    exact = build_index(items, ITEM_IDS, root / "exact", user_emb=users, user_ids=USER_IDS, seen=seen)
    ivf = build_index(
        items, ITEM_IDS, root / "ivf", user_emb=users, user_ids=USER_IDS, seen=seen, nlist=NLIST, nprobe=2
    )
    return exact, ivf, seen


def item_lists(recs) -> list[list[str]]:
    return [[r.item_id for r in row] for row in recs]


def test_probing_every_list_is_the_exact_index(folders):
    exact, ivf, _ = folders
    every = Retriever.load(ivf, nprobe=NLIST)
    assert every.index.index_type == "IndexIVFFlat" and (every.index.nlist, every.index.nprobe) == (
        NLIST,
        NLIST,
    )
    for k in (1, 10, 50):
        assert every.recommend(USER_IDS, k=k) == Retriever.load(exact).recommend(USER_IDS, k=k)
    queries = np.random.default_rng(1).normal(size=(5, 8))
    assert every.recommend_for_vector(queries, k=7) == Retriever.load(exact).recommend_for_vector(
        queries, k=7
    )


def test_fewer_lists_approximate_but_keep_exclusions_and_counts(folders):
    exact, ivf, seen = folders
    approx = Retriever.load(ivf)  # the manifest's nprobe: 2 of 8 lists
    assert approx.index.nprobe == 2
    got = item_lists(approx.recommend(USER_IDS, k=10))
    want = item_lists(Retriever.load(exact).recommend(USER_IDS, k=10))
    assert got != want  # 2 of 8 lists do miss items here: the setting is in force
    for u, row in enumerate(got):
        unseen = N_ITEMS - seen[u].nnz
        assert len(row) == min(10, unseen)  # the heavy user's 3 unseen items come from lists not probed
        assert not {ITEM_IDS.index(i) for i in row} & set(seen[u].indices)
    assert sorted(got[HEAVY]) == sorted(want[HEAVY]) and got[ALL_SEEN] == []
    overlap = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True) if w])
    assert 0.2 < overlap < 1.0


def test_the_folder_says_what_it_is_and_is_checked(folders, tmp_path):
    exact, ivf, _ = folders
    manifest = json.loads((ivf / "manifest.json").read_text())
    assert (manifest["index_type"], manifest["nlist"], manifest["nprobe"]) == ("IndexIVFFlat", NLIST, 2)
    assert "nlist" not in json.loads((exact / "manifest.json").read_text())
    index = ItemIndex.load(ivf)
    vectors = make_world(integer=False)[0]
    assert np.array_equal(index.item_vectors(np.arange(N_ITEMS)), vectors)  # rows reconstructed by id
    assert "nlist=8, nprobe=2" in repr(index)
    with pytest.raises(ValueError, match="nprobe must be an int from 1 to nlist = 8, got 9"):
        ItemIndex.load(ivf, nprobe=9)
    with pytest.raises(ValueError, match="nprobe is for an inverted-file index; .* is an exact index"):
        ItemIndex.load(exact, nprobe=2)
    # the same items give the same lists: a rebuild writes the same FAISS file
    again = build_index(vectors, ITEM_IDS, tmp_path / "again", nlist=NLIST, nprobe=2)
    assert (again / "items.faiss").read_bytes() == build_index(
        vectors, ITEM_IDS, tmp_path / "twice", nlist=NLIST, nprobe=2
    ).joinpath("items.faiss").read_bytes()
    # a manifest that lies about the kind or the lists is refused by name
    for change, message in (
        ({"index_type": "IndexFlatIP", "nlist": None}, "an IndexFlatIP"),
        ({"nlist": 4, "nprobe": 2}, "4 lists"),
        ({"nprobe": 0}, "'nprobe': an int from 1 to 'nlist'"),
        ({"index_type": "IndexHNSWFlat"}, "'index_type': 'IndexFlatIP' or 'IndexIVFFlat'"),
    ):
        bad = tmp_path / f"bad{len(message)}"
        bad.mkdir()
        for f in ivf.iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        m = {**manifest, **change}
        (bad / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
        with pytest.raises(IndexIntegrityError, match=message):
            ItemIndex.load(bad)
    for kwargs, message in (
        ({"nlist": 0}, "nlist must be an int from 1 to the 120 items, got 0"),
        ({"nlist": 121}, "got 121"),
        ({"nlist": 4, "nprobe": 5}, "nprobe must be an int from 1 to nlist = 4, got 5"),
        ({"nprobe": 3}, "give nlist too"),
    ):
        with pytest.raises(ValueError, match=message):
            build_index(vectors, ITEM_IDS, tmp_path / "refused", **kwargs)
    assert not (tmp_path / "refused").exists()


def test_added_items_join_the_trained_lists(folders, tmp_path):
    _, ivf, _ = folders
    before = ItemIndex.load(ivf)
    new = np.random.default_rng(2).normal(size=(3, 8)).astype(np.float32)
    grown = add_items(ivf, new, ["n0", "n1", "n2"], out_dir=tmp_path / "grown")
    index = ItemIndex.load(grown)
    assert (index.nlist, index.nprobe, index.n_items) == (NLIST, 2, N_ITEMS + 3)
    assert np.array_equal(index.item_vectors(np.arange(N_ITEMS)), before.item_vectors(np.arange(N_ITEMS)))
    assert np.array_equal(index.item_vectors(np.arange(N_ITEMS, N_ITEMS + 3)), new)
    # the lists were not retrained: the old items' list assignments are unchanged
    old_lists, new_lists = (before.faiss_index.invlists, index.faiss_index.invlists)
    for lst in range(NLIST):
        ids = {int(x) for x in _list_ids(new_lists, lst)}
        assert {int(x) for x in _list_ids(old_lists, lst)} == {i for i in ids if i < N_ITEMS}
    # a new item is found by its own vector when every list is probed
    every = Retriever.load(grown, nprobe=NLIST)
    assert every.recommend_for_vector(new[:1] * 10, k=1)[0][0].item_id == "n0"


def _list_ids(invlists, lst: int) -> np.ndarray:
    import faiss

    n = invlists.list_size(lst)
    return faiss.rev_swig_ptr(invlists.get_ids(lst), n).copy() if n else np.zeros(0, dtype=np.int64)


def test_index_and_serve_commands_build_and_probe_an_inverted_file(tmp_path, capsys, monkeypatch):
    import uvicorn
    import yaml
    from fastapi.testclient import TestClient

    from recsys.cli import main
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    raw["tracking"] = {"experiment": "ivf"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(tmp_path / "cfg.yaml")]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    out = tmp_path / "idx"
    assert main(["index", "--run", run_id, "--out", str(out), "--nlist", "4", "--nprobe", "1"]) == 0
    assert "(inverted file: 4 lists)" in capsys.readouterr().out
    assert (ItemIndex.load(out).nlist, ItemIndex.load(out).nprobe) == (4, 1)
    assert main(["index", "--run", run_id, "--out", str(tmp_path / "x"), "--nprobe", "2"]) == 2
    assert "--nprobe is for an inverted-file index: give --nlist too" in capsys.readouterr().err
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append(app))
    assert main(["serve", "--index", str(out), "--nprobe", "3", "--port", "0"]) == 0
    health = TestClient(apps[0]).get("/health").json()
    assert (health["index_type"], health["nprobe"]) == ("IndexIVFFlat", 3)
    assert main(["serve", "--index", str(out), "--nprobe", "5", "--port", "0"]) == 2
    assert "nprobe must be an int from 1 to nlist = 4, got 5" in capsys.readouterr().err


def test_a_rows_answer_does_not_depend_on_its_batch(tmp_path):
    """Each row probes its own lists: a row whose probed lists run out before it is filled gets more lists,
    the others of the batch keep theirs. Small integer vectors make many equal scores (rows asked again for
    ties at the cut) and long histories make rows run out, in the same batch."""
    rng = np.random.default_rng(1)
    n_items, n_users = 400, 150
    items = rng.integers(-1, 2, size=(n_items, 4)).astype(np.float32)
    users = rng.integers(-1, 2, size=(n_users, 4)).astype(np.float32)
    history = rng.choice([0, 3, 6], size=n_users)
    rows = np.repeat(np.arange(n_users), history)
    cols = np.concatenate([rng.choice(n_items, size=h, replace=False) for h in history])
    seen = sp.csr_array((np.ones(rows.size), (rows, cols)), shape=(n_users, n_items))
    ids = [f"i{j}" for j in range(n_items)]
    user_ids = [f"u{u}" for u in range(n_users)]
    folder = build_index(
        items, ids, tmp_path / "ivf", user_emb=users, user_ids=user_ids, seen=seen, nlist=8, nprobe=1
    )
    index = ItemIndex.load(folder)
    positions = np.arange(n_users)
    batched = index.search(users, 10, exclude=index.seen_items(positions))
    alone = [
        index.search(users[u : u + 1], 10, exclude=index.seen_items(positions[u : u + 1])) for u in positions
    ]
    assert np.array_equal(batched[1], np.concatenate([p for _, p in alone]))
    assert np.array_equal(batched[0], np.concatenate([s for s, _ in alone]))
    assert (batched[1] >= 0).all()  # every row filled (each has at least 10 unseen items)


def test_the_default_nprobe_is_16_lists_at_most(tmp_path):
    """Without nprobe an inverted file searches min(16, nlist) lists per query (the docs, `recsys index
    --help`): probing every list by default made it an exact search with the k-means paid for nothing."""
    rng = np.random.default_rng(0)
    items = rng.normal(size=(400, 4)).astype(np.float32)
    ids = [str(i) for i in range(400)]
    for nlist, nprobe in ((4, 4), (20, 16)):
        index = ItemIndex.load(build_index(items, ids, tmp_path / f"ivf{nlist}", nlist=nlist))
        assert (index.nlist, index.nprobe) == (nlist, nprobe)
