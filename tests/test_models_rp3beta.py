"""RP3beta: W checked against a direct numpy computation on a tiny matrix, and the scorer."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsys.models import RP3beta, build_model
from recsys.models.rp3beta import rp3beta_similarity

R = np.array(
    [
        [1, 1, 0, 0, 1],
        [1, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],  # a user without training items
    ],
    dtype=np.float32,
)


def numpy_rp3beta(r: np.ndarray, alpha: float, beta: float, topk: int, normalize: bool) -> np.ndarray:
    """The definition, written out densely: W = (P_iu^a @ P_ui^a) / pop^b, zero diagonal, top-k rows, l1."""
    du, di = r.sum(1), r.sum(0)
    p_ui = np.divide(r, du[:, None], out=np.zeros_like(r, dtype=np.float64), where=du[:, None] > 0) ** alpha
    p_iu = (
        np.divide(r.T, di[:, None], out=np.zeros_like(r.T, dtype=np.float64), where=di[:, None] > 0) ** alpha
    )
    w = p_iu @ p_ui
    w = w / np.where(di > 0, di, 1)[None, :] ** beta
    np.fill_diagonal(w, 0)
    for row in w:
        if topk < len(row):
            row[np.argsort(-row, kind="stable")[topk:]] = 0
    if normalize:
        s = w.sum(1, keepdims=True)
        w = np.divide(w, s, out=np.zeros_like(w), where=s > 0)
    return w


def test_w_by_hand_for_one_entry():
    """W[0, 1] with alpha=1, beta=0.5: users of item 0 are {0, 1, 3}; of them 0 and 3 also have item 1.
    P_iu(0->u) = 1/3; P_ui(u->1) = 1/3 (user 0 has 3 items), 1/3 (user 3 has 3 items); pop(1) = 3."""
    w = rp3beta_similarity(sp.csr_matrix(R), alpha=1.0, beta=0.5, topk=5, normalize=False).toarray()
    expected = (1 / 3) * (1 / 3 + 1 / 3) / np.sqrt(3)
    assert w[0, 1] == pytest.approx(expected, rel=1e-6)
    assert np.all(np.diag(w) == 0)


@pytest.mark.parametrize(
    "alpha,beta,topk,normalize",
    [
        (1.0, 0.0, 5, False),
        (0.5, 0.3, 5, False),
        (0.8, 0.6, 2, False),
        (0.8, 0.6, 2, True),
        (1.2, 1.0, 1, True),
    ],
)
def test_w_matches_numpy_definition(alpha, beta, topk, normalize):
    w = rp3beta_similarity(
        sp.csr_matrix(R), alpha=alpha, beta=beta, topk=topk, normalize=normalize, block_size=2
    )
    ref = numpy_rp3beta(R, alpha, beta, topk, normalize)
    np.testing.assert_allclose(w.toarray(), ref, rtol=1e-5, atol=1e-7)
    assert np.all(np.diff(w.indptr) <= topk)
    assert w.dtype == np.float32 and w.has_sorted_indices


@pytest.mark.parametrize(
    "r",
    [
        [[1, 1, 0, 0], [0, 1, 1, 1], [0, 1, 0, 0]],
        [[0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [1, 0, 0, 1, 0, 0]],
    ],
)
def test_rows_with_fewer_than_k_positive_entries_keep_only_their_own(r):
    """beta=100 underflows popular items' float32 weights to 0, so a long row has fewer than k entries left;
    top-k then picked padding cells, which pointed into the next row (an entry leaked there) or past the end
    (an IndexError)."""
    r = np.array(r, dtype=np.float32)
    w = rp3beta_similarity(sp.csr_matrix(r), alpha=1.0, beta=100.0, topk=2, normalize=False)
    assert np.all(np.diff(w.indptr) <= 2)
    ref = numpy_rp3beta(r, 1.0, 100.0, 2, False)
    rows, cols = w.nonzero()
    np.testing.assert_allclose(w.toarray()[rows, cols], ref[rows, cols], rtol=1e-5)
    kept = ref.astype(np.float32) > 0  # what survives W's float32: exactly those entries are there
    assert set(zip(rows.tolist(), cols.tolist(), strict=True)) == set(zip(*np.nonzero(kept), strict=True))


def test_scorer_is_user_rows_times_w():
    model = build_model({"name": "rp3beta", "alpha": 0.8, "beta": 0.4, "topk": 3}, 5, 5)
    assert isinstance(model, RP3beta) and not model.trainable
    model.prepare(sp.csr_matrix(R))
    users = torch.tensor([2, 0, 4])
    scores = model.scorer()(users)
    ref = R[[2, 0, 4]] @ numpy_rp3beta(R, 0.8, 0.4, 3, True)
    assert scores.shape == (3, 5)
    np.testing.assert_allclose(scores.numpy(), ref, rtol=1e-5, atol=1e-7)
    assert float(scores[2].abs().sum()) == 0.0  # no training items, no scores
    with pytest.raises(NotImplementedError):
        model.item_embeddings()
    assert "topk=3" in repr(model) and "nnz(W)" in repr(model)


def test_scorer_before_prepare_raises():
    model = build_model("rp3beta", 5, 5)
    with pytest.raises(RuntimeError, match="prepare"):
        model.scorer()


@pytest.mark.parametrize("topk", [1, 3, 8])
def test_w_keeps_the_top_k_on_a_random_binary_matrix(topk):
    """Rows longer and shorter than topk both occur.  Binary data makes many walk probabilities equal in
    exact arithmetic but not always in floating point (summation order), so this compares each row's kept
    values with the reference's top-k values, and checks that nothing larger was dropped."""
    rng = np.random.default_rng(topk)
    r = (rng.random((40, 30)) < 0.2).astype(np.float32)
    for alpha, beta, block in ((1.0, 0.0, 7), (0.6, 0.3, 64)):
        w = rp3beta_similarity(
            sp.csr_matrix(r), alpha=alpha, beta=beta, topk=topk, normalize=False, block_size=block
        )
        full = numpy_rp3beta(r, alpha, beta, 30, False)  # unpruned
        w = w.toarray()
        for i in range(30):
            ref_top = np.sort(full[i][full[i] > 0])[::-1][:topk]
            kept = np.sort(w[i][w[i] > 0])[::-1]
            np.testing.assert_allclose(kept, ref_top, rtol=1e-5)
            dropped = full[i][(w[i] == 0) & (full[i] > 0)]
            if kept.size and dropped.size:
                assert dropped.max() <= kept.min() * (1 + 1e-6)  # W is float32
            assert np.all(full[i][w[i] > 0] > 0)  # kept entries are real neighbours (diagonal excluded)


def _read_lightgcn_split(path) -> tuple[np.ndarray, np.ndarray]:
    users, items = [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) > 1:
            its = np.asarray(parts[1:], dtype=np.int64)
            users.append(np.full(its.size, int(parts[0])))
            items.append(its)
    return np.concatenate(users), np.concatenate(items)


@pytest.mark.slow
def test_gowalla_reaches_published_strength(shared_data):
    """The default config on LightGCN's Gowalla split, LightGCN's protocol (full ranking, train items
    excluded, Recall = hits / #test items, binary NDCG with the ideal over min(#test, 20)).  A tiny local
    evaluation: eval/ owns the real one."""
    folder = shared_data / "gowalla-lightgcn"
    u, i = _read_lightgcn_split(folder / "train.txt")
    tu, ti = _read_lightgcn_split(folder / "test.txt")
    shape = (int(max(u.max(), tu.max())) + 1, int(max(i.max(), ti.max())) + 1)
    assert shape == (29858, 40981)
    train = sp.csr_matrix((np.ones(u.size, dtype=np.float32), (u, i)), shape=shape)
    test = sp.csr_matrix((np.ones(tu.size, dtype=np.float32), (tu, ti)), shape=shape)
    model = build_model("rp3beta", *shape)
    model.prepare(train)
    score = model.scorer()
    k = 20
    discount = 1 / np.log2(np.arange(2, k + 2))
    users = np.flatnonzero(np.diff(test.indptr))
    recalls, ndcgs = [], []
    for start in range(0, users.size, 4096):
        block = users[start : start + 4096]
        scores = score(torch.from_numpy(block))
        seen = train[block].tocoo()
        scores[torch.from_numpy(seen.row), torch.from_numpy(seen.col)] = -torch.inf
        top = torch.topk(scores, k, dim=1).indices.numpy()
        truth = test[block]
        hits = np.asarray(truth[np.repeat(np.arange(block.size), k), top.ravel()]).reshape(-1, k) > 0
        n_truth = np.diff(truth.indptr)
        recalls.append(hits.sum(1) / n_truth)
        ideal = np.cumsum(discount)[np.minimum(n_truth, k) - 1]
        ndcgs.append((hits * discount).sum(1) / ideal)
    recall, ndcg = np.concatenate(recalls).mean(), np.concatenate(ndcgs).mean()
    assert recall == pytest.approx(0.1880, abs=0.002)
    assert ndcg == pytest.approx(0.1566, abs=0.002)


def test_rating_values_do_not_weight_the_walk():
    """RP3beta walks the binary graph: the same pattern with rating values gives the same similarity."""
    binary = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], np.float32)
    valued = binary * np.array([[5, 1, 0], [0, 3, 1], [2, 0, 4]], np.float32)
    a, b = build_model("rp3beta", 3, 3), build_model("rp3beta", 3, 3)
    a.prepare(sp.csr_matrix(binary))
    b.prepare(sp.csr_matrix(valued))
    np.testing.assert_allclose(b.similarity.toarray(), a.similarity.toarray())
