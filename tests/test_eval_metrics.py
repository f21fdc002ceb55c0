"""Metric definitions: hand-computed cases for every metric, and a cross-check against trec_eval
(``pytrec_eval``) on random rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from eval import per_user_metrics, ranking_metrics
from eval.metrics import METRICS, hit_matrix


def _truth(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_matrix((np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(rows), n_items))


def d(rank: int) -> float:
    """The discount of a 1-based rank."""
    return 1.0 / math.log2(rank + 1)


# user 0: hits at ranks 2 and 4, R = 3; user 1: hit at rank 1, R = 1, then no items; user 2: no truth
TOPK = np.array([[3, 1, 4, 2], [0, -1, -1, -1], [5, 6, 7, 8]])
TRUTH = _truth([[1, 2, 5], [0], []], n_items=10)

EXPECTED_USER0 = {
    1: {"recall": 0.0, "precision": 0.0, "hit": 0.0, "ndcg": 0.0, "mrr": 0.0, "map": 0.0},
    2: {
        "recall": 1 / 3,
        "precision": 1 / 2,
        "hit": 1.0,
        "ndcg": d(2) / (d(1) + d(2)),
        "mrr": 1 / 2,
        "map": (1 / 2) / 3,
    },
    4: {
        "recall": 2 / 3,
        "precision": 2 / 4,
        "hit": 1.0,
        "ndcg": (d(2) + d(4)) / (d(1) + d(2) + d(3)),  # ideal over min(R, k) = 3 ranks
        "mrr": 1 / 2,
        "map": (1 / 2 + 2 / 4) / 3,  # divided by R = 3 (trec_eval map_cut), not min(R, k)
    },
}


def expected_user1(k: int) -> dict[str, float]:
    return {"recall": 1.0, "precision": 1 / k, "hit": 1.0, "ndcg": 1.0, "mrr": 1.0, "map": 1.0}


@pytest.mark.parametrize("as_tensor", [False, True])
def test_hand_computed_means(as_tensor):
    topk = torch.from_numpy(TOPK) if as_tensor else TOPK
    m = ranking_metrics(topk, TRUTH, ks=(1, 2, 4))
    for k in (1, 2, 4):
        for name in METRICS:
            want = (EXPECTED_USER0[k][name] + expected_user1(k)[name]) / 2  # user 2 has no truth: ignored
            assert m[f"{name}@{k}"] == pytest.approx(want, abs=1e-12), f"{name}@{k}"
    # coverage over the lists of the evaluated users only (user 2's items 5-8 do not count), / n_items
    assert m["coverage@1"] == pytest.approx(2 / 10)
    assert m["coverage@2"] == pytest.approx(3 / 10)
    assert m["coverage@4"] == pytest.approx(5 / 10)
    assert ranking_metrics(TOPK, TRUTH, ks=(2,), n_items=100)["coverage@2"] == pytest.approx(3 / 100)
    assert all(isinstance(v, float) for v in m.values())


def test_per_user_rows_are_aligned_and_nan_without_truth():
    pu = per_user_metrics(TOPK, TRUTH, ks=(2, 4))
    assert pu["recall@4"].shape == (3,)
    assert pu["recall@4"][0] == pytest.approx(2 / 3) and pu["recall@4"][1] == 1.0
    assert all(np.isnan(pu[f"{n}@4"][2]) for n in METRICS)
    assert list(pu["n_relevant"]) == [3, 1, 0]
    means = ranking_metrics(TOPK, TRUTH, ks=(2, 4))
    for key, values in pu.items():
        if key != "n_relevant":
            assert np.nanmean(values) == pytest.approx(means[key])


def test_truth_values_duplicates_and_explicit_zeros():
    """Relevance is binary: stored non-zero entries count once, explicit zeros do not count."""
    # raw CSR arrays keep the duplicate (1 twice) and the explicit zero (3), unsorted
    truth = sp.csr_matrix(
        (np.array([5.0, 1.0, 0.0, 2.0]), np.array([1, 2, 3, 1]), np.array([0, 4])), shape=(1, 6)
    )
    m = ranking_metrics(np.array([[3, 1, 2]]), truth, ks=(3,))
    assert m["recall@3"] == pytest.approx(2 / 2)  # items {1, 2}; 3 is an explicit zero
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert truth.nnz == 4  # the caller's matrix is not modified


def test_hit_matrix_lookup():
    h = hit_matrix(TOPK, TRUTH)
    assert h.tolist() == [[False, True, False, True], [True, False, False, False], [False] * 4]


def test_input_errors():
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(TOPK[:2], TRUTH, ks=(1,))
    with pytest.raises(ValueError, match="exceeds"):
        ranking_metrics(TOPK, TRUTH, ks=(5,))
    with pytest.raises(ValueError, match="positive"):
        ranking_metrics(TOPK, TRUTH, ks=(0,))
    for bad in ((True,), (1.5,), ("1",), (float("nan"),), "1", (None,)):
        with pytest.raises(ValueError, match="positive integer"):
            ranking_metrics(TOPK, TRUTH, ks=bad)
    with pytest.raises(ValueError, match="more than once"):
        ranking_metrics(np.array([[1, 1]]), _truth([[1]], 3), ks=(2,))
    with pytest.raises(ValueError, match="outside"):
        ranking_metrics(np.array([[1, 7]]), _truth([[1]], 3), ks=(2,))
    with pytest.raises(ValueError, match="no user"):
        ranking_metrics(np.array([[1, 2]]), _truth([[]], 3), ks=(2,))
    for bad in (0, -2):
        with pytest.raises(ValueError, match="n_items must be positive"):
            ranking_metrics(np.array([[-1, -1]]), _truth([[1]], 3), ks=(2,), n_items=bad)
    with pytest.raises(ValueError, match="n_items=1 is smaller than the 2 distinct items"):
        ranking_metrics(np.array([[1, 2]]), _truth([[1]], 3), ks=(2,), n_items=1)


# ---------------------------------------------------------------------------------------------------------
# cross-check against trec_eval
# ---------------------------------------------------------------------------------------------------------
KS = (1, 5, 10, 20)


def _trec_eval(topk: np.ndarray, truth_rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Per-user values from pytrec_eval, NaN for users without truth, 0 for users without a ranked item."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels = {f"u{u}": {f"i{i}": 1 for i in items} for u, items in enumerate(truth_rows) if items}
    n_users, width = topk.shape

    def run_of(cut: int) -> dict[str, dict[str, float]]:
        # distinct scores falling with the rank, so trec_eval's own tie rule (docno) never applies
        return {
            f"u{u}": {f"i{i}": float(width - r) for r, i in enumerate(topk[u, :cut]) if i >= 0}
            for u in range(n_users)
            if (topk[u, :cut] >= 0).any()
        }

    measures = {f"{m}.{','.join(map(str, KS))}" for m in ("recall", "ndcg_cut", "P", "map_cut")}
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run_of(width))
    names = {"recall": "recall_{}", "ndcg": "ndcg_cut_{}", "precision": "P_{}", "map": "map_cut_{}"}
    out: dict[str, np.ndarray] = {}
    has = np.array([bool(items) for items in truth_rows])
    for k in KS:
        for ours, theirs in names.items():
            vals = np.array([full.get(f"u{u}", {}).get(theirs.format(k), 0.0) for u in range(n_users)])
            out[f"{ours}@{k}"] = np.where(has, vals, np.nan)
        # trec_eval's recip_rank is not cut: evaluate a run holding only the top-k
        rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_of(k))
        vals = np.array([rr.get(f"u{u}", {}).get("recip_rank", 0.0) for u in range(n_users)])
        out[f"mrr@{k}"] = np.where(has, vals, np.nan)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_matches_pytrec_eval(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items, width = 60, 120, 20
    truth_rows = []
    for _ in range(n_users):
        size = int(rng.choice([0, 1, 2, 3, 5, 8, 15, 30]))
        truth_rows.append(sorted(rng.choice(n_items, size, replace=False).tolist()))
    # rankings biased towards relevant items, so that every rank sees hits
    topk = np.full((n_users, width), -1, dtype=np.int64)
    for u in range(n_users):
        length = width if rng.random() < 0.8 else int(rng.integers(0, width))
        pool = rng.permutation(n_items)
        boost = np.isin(pool, truth_rows[u]) & (rng.random(n_items) < 0.5)
        ranked = np.concatenate([pool[boost], pool[~boost]])
        topk[u, :length] = ranked[:length]
    truth = _truth(truth_rows, n_items)

    ours = per_user_metrics(topk, truth, ks=KS)
    theirs = _trec_eval(topk, truth_rows)
    means = ranking_metrics(topk, truth, ks=KS)
    for key, want in theirs.items():
        np.testing.assert_allclose(ours[key], want, atol=1e-6, rtol=0, err_msg=key)
        assert means[key] == pytest.approx(np.nanmean(want), abs=1e-6), key
    assert sum(ours["hit@20"][~np.isnan(ours["hit@20"])]) > 10  # the check was not vacuous
