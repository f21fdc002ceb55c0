"""serving.Retriever: exact top-k against a brute-force reference, seen-item exclusion, exact-k, ties,
vector queries, similar items, errors, and concurrent readers.

Most tests use small integer-valued embeddings: every inner product is then exact in float32 (FAISS, BLAS and
numpy agree to the bit) and many scores tie, which exercises the "equal scores by lower position" rule."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import serving.index
from serving import Recommendation, Retriever, build_index
from serving._topk import ExcludedItems
from serving.errors import UnknownItemError, UnknownUserError

N_ITEMS, N_USERS, DIM = 120, 40, 8
HEAVY, ALL_SEEN, NO_SEEN = 0, 1, 2  # user rows with special histories


def make_world(seed: int = 0, integer: bool = True):
    rng = np.random.default_rng(seed)
    if integer:
        items = rng.integers(-2, 3, size=(N_ITEMS, DIM)).astype(np.float32)
        users = rng.integers(-2, 3, size=(N_USERS, DIM)).astype(np.float32)
    else:
        items = rng.standard_normal((N_ITEMS, DIM)).astype(np.float32)
        users = rng.standard_normal((N_USERS, DIM)).astype(np.float32)
    seen = (rng.random((N_USERS, N_ITEMS)) < 0.15).astype(np.float32)
    seen[HEAVY] = 1.0
    seen[HEAVY, [5, 60, 119]] = 0.0  # has seen all but three items
    seen[ALL_SEEN] = 1.0
    seen[NO_SEEN] = 0.0
    return items, users, sp.csr_matrix(seen)


ITEM_IDS = [f"i{j}" for j in range(N_ITEMS)]
USER_IDS = [f"u{u}" for u in range(N_USERS)]
TITLES = [f"Movie {j}" if j % 2 else None for j in range(N_ITEMS)]


def brute_force(queries: np.ndarray, items: np.ndarray, k: int, excluded: list[set[int]]) -> list[list]:
    """Independent reference: score every item in float64, drop excluded ones, sort by (-score, position)."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    out = []
    for b in range(len(queries)):
        cand = sorted(
            (j for j in range(len(items)) if j not in excluded[b]), key=lambda j: (-scores[b, j], j)
        )
        out.append([(ITEM_IDS[j], scores[b, j]) for j in cand[:k]])
    return out


def as_pairs(recs: list[list[Recommendation]]) -> list[list]:
    return [[(r.item_id, r.score) for r in row] for row in recs]


def seen_sets(seen) -> list[set[int]]:
    return [set(seen[u].indices.tolist()) for u in range(seen.shape[0])]


@pytest.fixture(scope="module")
def world():
    return make_world()


@pytest.fixture(scope="module")
def retriever(world, tmp_path_factory) -> Retriever:
    items, users, seen = world
    out = tmp_path_factory.mktemp("serving") / "idx"
    build_index(items, ITEM_IDS, out, user_emb=users, user_ids=USER_IDS, seen=seen, item_titles=TITLES)
    return Retriever.load(out)


# ---- exactness ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 10, 50, N_ITEMS, N_ITEMS + 7])
def test_recommend_equals_brute_force_excluding_seen(retriever, world, k):
    items, users, seen = world
    got = retriever.recommend(USER_IDS, k=k)
    assert as_pairs(got) == brute_force(users, items, k, seen_sets(seen))


def test_integer_ids_are_their_text():
    from serving.retriever import _as_id_list

    # recommend([7]) said "unknown user id: 7" for a user "7"; sequences already took integers
    assert _as_id_list([7, np.int64(8), "9"], "user_ids") == ["7", "8", "9"]
    # one integer is one id, as one str is (recommend(7) was "'int' object is not iterable")
    assert _as_id_list(7, "user_ids") == ["7"] and _as_id_list(np.int32(7), "user_ids") == ["7"]
    for bad in (None, 7.0, b"7", True):
        with pytest.raises(TypeError, match="user ids are text|an id or a sequence of ids"):
            _as_id_list(bad, "user_ids")


def test_a_huge_k_is_the_whole_catalogue(retriever, world):
    # the result arrays were [B, k]: 10**12 slots per user before anything cut them
    items, users, seen = world
    got = retriever.recommend(USER_IDS, k=10**12)
    assert as_pairs(got) == brute_force(users, items, N_ITEMS, seen_sets(seen))
    scores, positions = retriever.index.search(users[:2].astype(np.float32), 10**12)
    assert scores.shape == positions.shape == (2, N_ITEMS)


@pytest.mark.parametrize("k", [1, 4, 10, 33])
def test_partial_candidate_lists_break_ties_at_the_cut_exactly(retriever, world, k):
    """Without the heavy users in the batch FAISS is asked for fewer candidates than items, so the k-th place
    often falls inside a group of equal scores; the result must still be the reference's."""
    items, users, seen = world
    ordinary = slice(NO_SEEN + 1, None)
    got = retriever.recommend(USER_IDS[ordinary], k=k)
    assert as_pairs(got) == brute_force(users[ordinary], items, k, seen_sets(seen)[ordinary])


@pytest.mark.parametrize("k", [1, 10, N_ITEMS])
def test_recommend_without_exclusion_equals_brute_force(retriever, world, k):
    items, users, _ = world
    got = retriever.recommend(USER_IDS, k=k, exclude_seen=False)
    assert as_pairs(got) == brute_force(users, items, k, [set()] * N_USERS)


def test_float_embeddings_match_brute_force_up_to_rounding(tmp_path):
    items, users, seen = make_world(seed=3, integer=False)
    out = build_index(items, ITEM_IDS, tmp_path / "idx", user_emb=users, user_ids=USER_IDS, seen=seen)
    got = Retriever.load(out).recommend(USER_IDS, k=10)
    ref = brute_force(users, items, 10, seen_sets(seen))
    exact = users.astype(np.float64) @ items.astype(np.float64).T
    pos = {x: j for j, x in enumerate(ITEM_IDS)}
    for u, (row, ref_row) in enumerate(zip(got, ref, strict=True)):
        assert len(row) == len(ref_row)
        if not row:  # the user who has seen everything
            continue
        true = np.array([exact[u, pos[r.item_id]] for r in row])
        np.testing.assert_allclose([r.score for r in row], true, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(true) <= 1e-5)  # best first
        # the same items as the reference, except possibly where two scores are within rounding of each other
        assert true.min() >= ref_row[-1][1] - 1e-5
        assert not {r.item_id for r in row} & {ITEM_IDS[j] for j in seen[u].indices}


def test_titles_and_types(retriever):
    row = retriever.recommend("u5", k=20)[0]
    assert all(isinstance(r, Recommendation) and isinstance(r.score, float) for r in row)
    for r in row:
        j = int(r.item_id[1:])
        assert r.title == TITLES[j]
    item_id, score, title = row[0]  # a NamedTuple unpacks
    assert (item_id, score, title) == (row[0].item_id, row[0].score, row[0].title)


def test_single_user_id_returns_one_list(retriever):
    one = retriever.recommend("u7", k=5)
    assert len(one) == 1 and one == retriever.recommend(["u7"], k=5)
    assert retriever.recommend([], k=5) == []


def test_batch_results_do_not_depend_on_batch_composition(retriever):
    """Batches of >= 20 take FAISS's BLAS path, single queries another; results must agree."""
    batch = retriever.recommend(USER_IDS, k=12)
    singles = [retriever.recommend(u, k=12)[0] for u in USER_IDS]
    assert batch == singles
    reordered = retriever.recommend(USER_IDS[::-1] + USER_IDS[:3], k=12)
    assert reordered == batch[::-1] + batch[:3]


# ---- exclusion and exact k -------------------------------------------------------------------------------------
def test_seen_items_are_never_returned(retriever, world):
    _, _, seen = world
    for u, row in enumerate(retriever.recommend(USER_IDS, k=N_ITEMS)):
        returned = {int(r.item_id[1:]) for r in row}
        assert not returned & set(seen[u].indices.tolist())
        assert len(row) == len(returned) == N_ITEMS - seen[u].nnz  # every unseen item, each once


def test_exactly_k_whenever_the_catalogue_allows(retriever, world):
    _, _, seen = world
    for k in (1, 5, 17, 64):
        for u, row in enumerate(retriever.recommend(USER_IDS, k=k)):
            assert len(row) == min(k, N_ITEMS - seen[u].nnz)


def test_user_who_has_seen_almost_everything(retriever):
    heavy, everything, nothing = retriever.recommend([f"u{HEAVY}", f"u{ALL_SEEN}", f"u{NO_SEEN}"], k=10)
    assert sorted(r.item_id for r in heavy) == ["i119", "i5", "i60"]
    assert everything == []
    assert len(nothing) == 10


def test_all_scores_tied_breaks_by_position(tmp_path):
    items = np.ones((30, 4), dtype=np.float32)
    seen = sp.csr_matrix(([1, 1, 1], ([0, 0, 1], [0, 2, 29])), shape=(2, 30))
    ids = [f"i{j}" for j in range(30)]
    out = build_index(
        items, ids, tmp_path / "tied", user_emb=np.ones((2, 4), np.float32), user_ids=["a", "b"], seen=seen
    )
    a, b = Retriever.load(out).recommend(["a", "b"], k=5)
    assert [r.item_id for r in a] == ["i1", "i3", "i4", "i5", "i6"]
    assert [r.item_id for r in b] == ["i0", "i1", "i2", "i3", "i4"]


def test_search_in_row_blocks_gives_the_same_results(retriever, monkeypatch):
    expected = retriever.recommend(USER_IDS, k=9)
    monkeypatch.setattr(serving.index, "_MAX_CANDIDATES", 25)  # forces blocks of one or two rows
    assert retriever.recommend(USER_IDS, k=9) == expected


def test_excluded_items_rows_match_scipy(retriever, world):
    _, users, seen = world
    canonical = ExcludedItems.from_sparse(seen, N_USERS, N_ITEMS)
    rows = np.array([7, 1, 7, 0, 2, 39])  # any order, repeats, the all-seen and the no-seen user
    taken = canonical.take(rows)
    expected = seen[rows]
    assert taken.indptr.tolist() == expected.indptr.tolist()
    assert taken.indices.tolist() == expected.indices.tolist()
    assert canonical.take(np.array([], dtype=np.int64)).indptr.tolist() == [0]
    # unsorted lists with repeats: sorted, each item once (what exclude_items=[["i3", "i3"]] gives)
    lists = ExcludedItems.from_lists([np.array([9, 3, 9, 0]), np.array([], dtype=np.int64), np.array([4])])
    assert lists.indptr.tolist() == [0, 3, 3, 4] and lists.indices.tolist() == [0, 3, 9, 4]
    # the index's own seen rows give what the scipy rows give
    index, q = retriever.index, users[rows]
    scores, positions = index.search(q, 9, exclude=index.seen_items(rows))
    want_scores, want_positions = index.search(q, 9, exclude=expected)
    assert np.array_equal(scores, want_scores) and np.array_equal(positions, want_positions)
    with pytest.raises(ValueError, match="exclude has 2 rows, expected 6"):
        index.search(q, 9, exclude=canonical.take(rows[:2]))
    # arrays built by the caller are checked: a row in descending order excluded nothing, silently
    top = index.search(q[:1], 3)[1][0]
    for bad, message in (
        ((np.array([0, 3]), top[::-1].copy()), "sorted and distinct within each row"),
        # unsigned arrays: 3 - 5 wrapped around to a large positive difference, so the row passed as sorted
        ((np.array([0, 3], dtype=np.uint64), top[::-1].astype(np.uint32)), "sorted and distinct within each"),
        ((np.array([0, 1], dtype=np.uint64), np.array([2**63], dtype=np.uint64)), "beyond"),
        ((np.array([0, 2]), np.array([4, 4])), "sorted and distinct within each row"),
        ((np.array([3, 5]), np.arange(10)), "rise from 0 to len"),  # a row slice of another's arrays
        ((np.array([0, 1]), np.array([N_ITEMS])), rf"outside \[0, {N_ITEMS}\)"),
        ((np.array([0, 1, 1]), np.array([2])), "must hold 1 rows"),
        ((np.array([0, 1]), np.array([2.0])), "must be integers"),
    ):
        with pytest.raises(ValueError, match=message):
            index.search(q[:1], 3, exclude=ExcludedItems(*bad))
    unchecked = ExcludedItems(np.array([0, 3]), np.sort(top))
    assert not set(index.search(q[:1], 3, exclude=unchecked)[1][0].tolist()) & set(top.tolist())


def test_an_index_given_a_non_canonical_seen_matrix_still_excludes_every_seen_item(tmp_path, world):
    items, users, _ = world
    folder = build_index(items, ITEM_IDS, tmp_path / "idx", user_emb=users, user_ids=USER_IDS)
    loaded = Retriever.load(folder).index
    top = loaded.search(users[:1], 3)[1][0]  # user 0's three best items, seen in descending order below
    seen = sp.csr_matrix(
        (np.ones(4), np.r_[top[::-1], top[0]], np.r_[0, np.full(N_USERS, 4)]), shape=(N_USERS, N_ITEMS)
    )
    assert not seen.has_canonical_format
    index = serving.index.ItemIndex(
        loaded.path, loaded.manifest, loaded.faiss_index, ITEM_IDS, TITLES, USER_IDS, users, seen
    )
    got = [r.item_id for r in Retriever(index).recommend("u0", k=3)[0]]
    assert not {ITEM_IDS[i] for i in top} & set(got) and len(got) == 3


def test_one_heavy_user_does_not_set_the_candidates_of_the_batch(retriever, world, monkeypatch):
    """Every row of a batch asked FAISS for k + (the heaviest row's exclusions) + 1 candidates: with one user
    who had seen 30k of 50k items, recommending for 10k users took 20.7 s instead of 1.6 s."""
    expected = retriever.recommend(USER_IDS, k=5)
    index = retriever.index
    real, asked = index._faiss, []

    class Recording:
        def search(self, q, fetch):
            asked.append((q.shape[0], fetch))
            return real.search(q, fetch)

    monkeypatch.setattr(index, "_faiss", Recording())
    assert retriever.recommend(USER_IDS, k=5) == expected
    heaviest = 5 + int(np.diff(index.seen.indptr).max()) + 1
    assert sum(n * fetch for n, fetch in asked) < 0.5 * N_USERS * min(heaviest, N_ITEMS)
    assert len({fetch for _, fetch in asked}) > 1  # rows grouped by what they need


def test_exclude_seen_without_seen_items_is_an_error(tmp_path, world):
    items, users, _ = world
    out = build_index(items, ITEM_IDS, tmp_path / "noseen", user_emb=users, user_ids=USER_IDS)
    r = Retriever.load(out)
    with pytest.raises(ValueError, match="without seen items"):
        r.recommend(["u1"])
    assert len(r.recommend(["u1"], k=4, exclude_seen=False)[0]) == 4


# ---- errors ------------------------------------------------------------------------------------------------------
def test_unknown_user_names_the_ids(retriever):
    with pytest.raises(UnknownUserError) as info:
        retriever.recommend(["u1", "ghost", "u2", "nobody"])
    err = info.value
    assert isinstance(err, KeyError)
    assert "'ghost'" in str(err) and "'nobody'" in str(err) and "recommend_for_vector" in str(err)
    assert err.ids == ("ghost", "nobody")
    assert err.args[0] == str(err)


@pytest.mark.parametrize("k", [0, -1, 2.5, True, None])
def test_bad_k(retriever, k):
    with pytest.raises(ValueError, match="k must be a positive int"):
        retriever.recommend(["u1"], k=k)


def test_items_only_index_cannot_recommend_for_users(tmp_path, world):
    out = build_index(world[0], ITEM_IDS, tmp_path / "items")
    with pytest.raises(ValueError, match="without user embeddings"):
        Retriever.load(out).recommend(["u1"])


# ---- vector queries and similar items ----------------------------------------------------------------------------
def test_recommend_for_vector_matches_recommend(retriever, world):
    items, users, seen = world
    excl = [[ITEM_IDS[j] for j in seen[u].indices] for u in range(N_USERS)]
    by_vector = retriever.recommend_for_vector(users, k=10, exclude_items=excl)
    assert by_vector == retriever.recommend(USER_IDS, k=10)
    one = retriever.recommend_for_vector(users[3].astype(np.float64), k=4)  # one vector [d], any float dtype
    assert as_pairs(one) == brute_force(users[3:4], items, 4, [set()])


def test_recommend_for_vector_exclusions_and_errors(retriever, world):
    items, users, _ = world
    q = users[:2]
    got = retriever.recommend_for_vector(q, k=6, exclude_items=[["i3", "i3", "i7"], []])
    assert as_pairs(got) == brute_force(q, items, 6, [{3, 7}, set()])
    with pytest.raises(UnknownItemError, match="'i999'"):
        retriever.recommend_for_vector(q, k=3, exclude_items=[["i999"], []])
    with pytest.raises(ValueError, match="one list of item ids per query row"):
        retriever.recommend_for_vector(q, k=3, exclude_items=[["i1"]])
    with pytest.raises(TypeError, match="not the string"):
        retriever.recommend_for_vector(q, k=3, exclude_items=["i1", "i2"])
    with pytest.raises(ValueError, match=r"shape \[B, 8\]"):
        retriever.recommend_for_vector(np.zeros((2, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        retriever.recommend_for_vector(np.full((1, DIM), np.nan, np.float32))


def test_similar_items_equals_brute_force_without_the_item_itself(retriever, world):
    items, _, _ = world
    query = ["i0", "i17", "i119", "i17"]
    pos = [int(x[1:]) for x in query]
    got = retriever.similar_items(query, k=8, metric="inner_product")
    assert as_pairs(got) == brute_force(items[pos], items, 8, [{p} for p in pos])
    for metric in ("cosine", "inner_product"):
        assert retriever.similar_items("i4", k=N_ITEMS, metric=metric)[0][-1].item_id != "i4"
        assert len(retriever.similar_items("i4", k=N_ITEMS, metric=metric)[0]) == N_ITEMS - 1
    with pytest.raises(UnknownItemError, match="'nope'"):
        retriever.similar_items(["i1", "nope"])
    with pytest.raises(ValueError, match="metric must be one of 'cosine', 'inner_product', got 'dot'"):
        retriever.similar_items(["i1"], metric="dot")


def brute_force_cosine(items: np.ndarray, pos: list[int], k: int) -> list[list]:
    """Independent reference: cosines in float64, the item itself dropped, sorted by (-cosine, position)."""
    unit = items.astype(np.float64) / np.linalg.norm(items.astype(np.float64), axis=1, keepdims=True)
    cos = unit[pos] @ unit.T
    return [
        [
            (ITEM_IDS[j], cos[b, j])
            for j in sorted((j for j in range(len(items)) if j != p), key=lambda j: (-cos[b, j], j))[:k]
        ]
        for b, p in enumerate(pos)
    ]


@pytest.mark.parametrize("nlist", [None, 4])
def test_similar_items_by_cosine_is_the_default_and_exact(tmp_path, nlist):
    """The default metric is the cosine of the item vectors, searched exactly even when the index itself is an
    inverted file probing one list of four; an item with a long vector no longer tops every list."""
    items, users, _ = make_world(integer=False)
    items[9] *= 30.0  # a long vector: the inner product's neighbour of most items, not the cosine's
    build_index(items, ITEM_IDS, tmp_path / "idx", nlist=nlist, nprobe=1 if nlist else None)
    r = Retriever.load(tmp_path / "idx")
    query = ["i0", "i17", "i9", "i119"]
    pos = [int(x[1:]) for x in query]
    got = r.similar_items(query, k=6)
    expected = brute_force_cosine(items, pos, 6)
    assert [[i for i, _ in row] for row in as_pairs(got)] == [[i for i, _ in row] for row in expected]
    np.testing.assert_allclose(
        [s for row in as_pairs(got) for _, s in row], [s for row in expected for _, s in row], rtol=1e-5
    )
    others = [i for i in ITEM_IDS if i != "i9"]
    tops = {
        m: [row[0].item_id for row in r.similar_items(others, k=1, metric=m)]
        for m in ("cosine", "inner_product")
    }
    # (the inverted file probing one list finds i9 for fewer items than the exact search does)
    assert tops["inner_product"].count("i9") > 0.15 * len(others)
    assert tops["cosine"].count("i9") <= 2
    assert r.index.directions() is r.index.directions()  # built once, then kept
    assert r.similar_items([], k=3) == []


def test_cosine_neighbours_of_a_normalised_inverted_file_are_exact(tmp_path):
    """A normalised inverted-file index probing one list is approximate; its cosine neighbours are not (they
    come from the exact copy of the directions, as for any index)."""
    items = np.random.default_rng(4).standard_normal((400, 8)).astype(np.float32)
    ids = [f"i{j}" for j in range(400)]
    build_index(items, ids, tmp_path / "ivf", normalize=True, nlist=16, nprobe=1)
    r = Retriever.load(tmp_path / "ivf")
    assert r.index.directions() is not r.index
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    cos = unit[:50] @ unit.T
    cos[np.arange(50), np.arange(50)] = -np.inf
    expected = [[ids[j] for j in np.argsort(-row, kind="stable")[:10]] for row in cos]
    assert [[x.item_id for x in row] for row in r.similar_items(ids[:50], k=10)] == expected
    approximate = r.similar_items(ids[:50], k=10, metric="inner_product")
    assert [[x.item_id for x in row] for row in approximate] != expected  # one probed list misses some


def test_cosine_neighbours_of_a_normalised_index_and_of_a_zero_vector(tmp_path):
    items, _, _ = make_world(integer=False)
    build_index(items, ITEM_IDS, tmp_path / "unit", normalize=True)
    unit = Retriever.load(tmp_path / "unit")
    assert unit.index.directions() is unit.index  # unit vectors already: the index is its own directions
    assert as_pairs(unit.similar_items(["i3"], k=5)) == as_pairs(
        unit.similar_items(["i3"], k=5, metric="inner_product")
    )
    items[3] = 0.0  # e.g. an item whose embedding was never trained away from zero
    build_index(items, ITEM_IDS, tmp_path / "zero")
    zero = Retriever.load(tmp_path / "zero")
    row = zero.similar_items(["i3"], k=4)[0]
    assert [(r.item_id, r.score) for r in row] == [("i0", 0.0), ("i1", 0.0), ("i2", 0.0), ("i4", 0.0)]
    assert {r.item_id: r.score for r in zero.similar_items(["i5"], k=N_ITEMS)[0]}["i3"] == 0.0


@pytest.mark.parametrize("nlist", [None, 4])
def test_similar_items_leave_out_the_bias_columns(world, tmp_path, nlist):
    """An index whose last column is a per-item bias (BERT4Rec's): users are ranked by q . v + b, items
    compared by their directions alone; with the bias counted, a popular item (large b) would be every item's
    nearest neighbour. Exact and inverted-file (nprobe = nlist, so exact too) alike."""
    items, users, seen = world
    bias = np.random.default_rng(1).integers(1, 4, size=(N_ITEMS, 1)).astype(np.float32)
    bias[7] = 50.0  # an item with a huge bias: it tops every user's list...
    stacked = np.hstack([items, bias])
    queries = np.hstack([users, np.ones((N_USERS, 1), np.float32)])
    build_index(
        stacked, ITEM_IDS, tmp_path / "idx", user_emb=queries, user_ids=USER_IDS, bias_columns=1, nlist=nlist,
        nprobe=nlist,
    )  # fmt: skip
    r = Retriever.load(tmp_path / "idx")
    assert r.index.bias_columns == 1
    assert as_pairs(r.recommend(["u5"], k=5, exclude_seen=False)) == brute_force(
        queries[[5]], stacked, 5, [set()]
    )
    assert r.recommend(["u5"], k=1, exclude_seen=False)[0][0].item_id == "i7"
    query = ["i0", "i17", "i7"]
    pos = [int(x[1:]) for x in query]
    # ...but is no item's neighbour for its bias: the reference compares the directions alone
    got = r.similar_items(query, k=8, metric="inner_product")
    assert as_pairs(got) == brute_force(items[pos], items, 8, [{p} for p in pos])
    cosines = r.similar_items(query, k=8)
    expected = brute_force_cosine(items, pos, 8)
    np.testing.assert_allclose(
        [s for row in as_pairs(cosines) for _, s in row], [s for row in expected for _, s in row], rtol=1e-5
    )
    np.testing.assert_array_equal(r.index.item_vectors(np.array(pos), bias=False), items[pos])
    np.testing.assert_array_equal(r.index.item_vectors(np.array(pos)), stacked[pos])


def test_an_index_of_biases_alone_has_no_similar_items_and_bias_is_checked(world, tmp_path):
    items, _, _ = world
    counts = np.arange(N_ITEMS, dtype=np.float32)[:, None]  # the most-popular model's one column
    build_index(counts, ITEM_IDS, tmp_path / "pop", bias_columns=1, metadata={"model": "popularity"})
    r = Retriever.load(tmp_path / "pop")
    assert r.recommend_for_vector(np.ones((1, 1), np.float32), k=2)[0][0].item_id == f"i{N_ITEMS - 1}"
    for metric in ("cosine", "inner_product"):
        with pytest.raises(ValueError, match=r"model 'popularity'\) have no vectors to compare"):
            r.similar_items(["i3"], metric=metric)
        with pytest.raises(ValueError, match="have no vectors to compare"):
            r.similar_items([], metric=metric)
    with pytest.raises(ValueError, match="fold the per-item bias"):
        build_index(items, ITEM_IDS, tmp_path / "cos", bias_columns=1, normalize=True)
    with pytest.raises(ValueError, match="from 0 to the 8 columns"):
        build_index(items, ITEM_IDS, tmp_path / "wide", bias_columns=DIM + 1)
    with pytest.raises(TypeError, match="bias_columns must be an int"):
        build_index(items, ITEM_IDS, tmp_path / "bool", bias_columns=True)
    assert not (tmp_path / "cos").exists() and not (tmp_path / "wide").exists()


# ---- concurrency -------------------------------------------------------------------------------------------------
def test_concurrent_readers_get_single_threaded_results(retriever):
    rnd = random.Random(0)
    requests = [
        (tuple(rnd.sample(USER_IDS, rnd.randint(1, 30))), rnd.choice([1, 5, 10, 40]), rnd.random() < 0.8)
        for _ in range(160)
    ]

    def answer(req):
        users, k, exclude = req
        return retriever.recommend(list(users), k=k, exclude_seen=exclude)

    expected = [answer(req) for req in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(answer, requests))
    assert got == expected


def test_load_with_num_threads(retriever):
    import faiss

    before = faiss.omp_get_max_threads()
    try:
        r = Retriever.load(retriever.index.path, num_threads=1)
        assert faiss.omp_get_max_threads() == 1
        assert r.recommend(USER_IDS, k=5) == retriever.recommend(USER_IDS, k=5)
    finally:
        faiss.omp_set_num_threads(before)
    with pytest.raises(ValueError, match="num_threads"):
        Retriever.load(retriever.index.path, num_threads=0)


def test_index_path_is_kept(retriever):
    assert isinstance(retriever.index.path, Path) and retriever.index.n_items == N_ITEMS


# ---- found by a mutation run: each test below failed on a plausibly wrong line of the code -----------------
def test_an_explicitly_stored_zero_in_seen_still_marks_the_item_seen(tmp_path):
    """build_index counts every stored entry of ``seen`` as seen, an explicit zero too (a rating of 0 is still
    an item the user has met): excluding too much is safe, serving a seen item back is not."""
    seen = sp.csr_matrix(
        (np.array([0.0, 1.0], np.float32), np.array([0, 1]), np.array([0, 2])), shape=(1, 4)
    )  # the user's row stores item "a" with the value 0 and item "b" with 1
    assert seen.nnz == 2
    out = build_index(
        np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], tmp_path / "idx",
        user_emb=np.array([[4.0, 3.0, 2.0, 1.0]], np.float32), user_ids=["u"], seen=seen,
    )  # fmt: skip
    assert [r.item_id for r in Retriever.load(out).recommend("u", k=4)[0]] == ["c", "d"]


def test_sequences_reach_the_encoder_oldest_first(retriever, world):
    """A sequence model reads the order (the next item follows the latest one), so the encoder gets each
    sequence's positions in the order given: with "the vector of the last item" as the model, the answer for
    [a, b] is the one for b's vector."""
    items, _, _ = world

    def last_item(sequences):
        return np.stack([items[s[-1]] for s in sequences])

    sequences = [["i3", "i7"], ["i7", "i3", "i50"]]
    got = retriever.recommend_for_sequences(sequences, last_item, k=5)
    assert got == retriever.recommend_for_vector(items[[7, 50]], k=5, exclude_items=sequences)


def test_a_bool_is_no_id(tmp_path):
    """True is an int in Python and str(int(True)) is "1": a stray flag in a list of ids was served as the
    user or item "1" instead of being refused."""
    ids = ["0", "1", "2"]
    eye = np.eye(3, dtype=np.float32)
    r = Retriever.load(build_index(eye, ids, tmp_path / "idx", user_emb=eye, user_ids=ids))
    with pytest.raises(TypeError, match="ids are text"):
        r.recommend([True], exclude_seen=False)
    with pytest.raises(TypeError, match="ids are text"):
        r.similar_items([True])
    with pytest.raises(TypeError, match="ids are text"):
        r.recommend_for_vector(eye[:1], exclude_items=[[True]])


def test_a_sequence_given_as_one_string_is_refused(tmp_path):
    """Item ids are often digits (MovieLens): the sequence "12" given instead of ["12"] was read as the items
    "1" and "2", and answered for them without a word."""
    eye = np.eye(3, dtype=np.float32)
    r = Retriever.load(build_index(eye, ["1", "2", "12"], tmp_path / "idx"))

    def total(sequences):
        return np.stack([eye[s].sum(axis=0) for s in sequences])

    with pytest.raises(TypeError, match="not the string '12'"):
        r.recommend_for_sequences(["12"], total, k=2)
    assert [x.item_id for x in r.recommend_for_sequences([["12"]], total, k=1)[0]] == ["1"]
