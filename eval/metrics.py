"""Top-k ranking metrics, computed once from the top-k lists for the largest k (definitions:
docs/metrics.md).

All metrics use binary relevance.  For a user with relevant set ``R`` (``|R| >= 1``) and ranked list
``L = (l_1, ..., l_K)``, with ``h_j = 1`` if ``l_j`` is in ``R``:

* ``recall@k    = sum_{j<=k} h_j / |R|``                         (LightGCN convention, not ``min(|R|, k)``)
* ``precision@k = sum_{j<=k} h_j / k``
* ``hit@k       = 1 if sum_{j<=k} h_j > 0 else 0``
* ``ndcg@k      = DCG@k / IDCG@k``, ``DCG@k = sum_{j<=k} h_j / log2(j + 1)``,
  ``IDCG@k = sum_{j<=min(|R|, k)} 1 / log2(j + 1)``
* ``mrr@k       = 1 / (first j <= k with h_j = 1)``, else 0
* ``map@k       = sum_{j<=k} h_j * precision@j / |R|``           (trec_eval's ``map_cut_k``)

Each is averaged over the users with at least one relevant item.  ``coverage@k`` is the number of distinct
items in all top-k lists divided by the catalogue size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["METRICS", "hit_matrix", "ranking_metrics", "per_user_metrics"]

METRICS = ("recall", "ndcg", "hit", "precision", "mrr", "map")


def hit_matrix(topk: np.ndarray, truth: sp.csr_matrix) -> np.ndarray:
    """``bool[U, K]``: whether ``topk[u, j]`` is a relevant item of row ``u`` of ``truth``.

    Vectorised: both sides become keys ``row * n_cols + item``; the truth keys are sorted (CSR rows ascending,
    indices sorted within a row), so membership is one ``searchsorted``.  ``-1`` slots are never hits."""
    truth = sp.csr_matrix(truth, copy=True)
    truth.eliminate_zeros()
    truth.sort_indices()
    n_rows, n_cols = truth.shape
    if topk.shape[0] != n_rows:
        raise ValueError(f"topk has {topk.shape[0]} rows but truth has {n_rows}")
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(truth.indptr))
    keys = rows * n_cols + truth.indices.astype(np.int64)
    valid = (topk >= 0) & (topk < n_cols)
    q = np.arange(n_rows, dtype=np.int64)[:, None] * n_cols + np.where(valid, topk, 0)
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, max(keys.size - 1, 0))
    found = keys[pos] == q if keys.size else np.zeros_like(valid)
    return found & valid


def per_user_metrics(
    topk: torch.Tensor | np.ndarray, truth: sp.csr_matrix, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user values, ``float64[U']`` for each ``metric@k``, over the ``U'`` rows of ``truth`` that have at
    least one relevant item (rows without truth are dropped, in order)."""
    topk_np = topk.cpu().numpy() if isinstance(topk, torch.Tensor) else np.asarray(topk)
    topk_np = topk_np.astype(np.int64, copy=False)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if ks[-1] > topk_np.shape[1]:
        raise ValueError(f"largest k {ks[-1]} exceeds the {topk_np.shape[1]} ranked items per user")
    truth = sp.csr_matrix(truth)
    n_rel_all = np.diff(truth.indptr)
    keep = n_rel_all > 0
    hits = hit_matrix(topk_np, truth)[keep].astype(np.float64)
    n_rel = n_rel_all[keep].astype(np.float64)

    K = ks[-1]
    positions = np.arange(1, K + 1, dtype=np.float64)
    discount = 1.0 / np.log2(positions + 1.0)
    ideal_cum = np.cumsum(discount)
    cum_hits = np.cumsum(hits[:, :K], axis=1)
    prec_at_j = cum_hits / positions
    any_hit = hits[:, :K] > 0
    first = np.where(any_hit.any(axis=1), any_hit.argmax(axis=1), K)  # 0-based rank of the first hit

    out: dict[str, np.ndarray] = {}
    for k in ks:
        n_hit = cum_hits[:, k - 1]
        out[f"recall@{k}"] = n_hit / n_rel
        out[f"precision@{k}"] = n_hit / k
        out[f"hit@{k}"] = (n_hit > 0).astype(np.float64)
        dcg = hits[:, :k] @ discount[:k]
        idcg = ideal_cum[np.minimum(n_rel, k).astype(np.int64) - 1]
        out[f"ndcg@{k}"] = dcg / idcg
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
        out[f"map@{k}"] = (hits[:, :k] * prec_at_j[:, :k]).sum(axis=1) / n_rel
    return out


def ranking_metrics(
    topk: torch.Tensor | np.ndarray,
    truth: sp.csr_matrix,
    ks: Sequence[int],
    n_items: int | None = None,
) -> dict[str, float]:
    """Mean of every metric at every k over the users with truth, plus ``coverage@k`` when ``n_items`` is given.

    Args:
        topk: ``[U, K]`` item indices per user, best first; ``-1`` marks an empty slot.
        truth: ``csr_matrix [U, n_items]`` of relevant items, rows aligned with ``topk``.
        ks: cut-offs, each ``<= K``.
        n_items: catalogue size for ``coverage@k``.
    """
    per_user = per_user_metrics(topk, truth, ks)
    n_users = next(iter(per_user.values())).size
    if n_users == 0:
        raise ValueError("no user has a relevant item: metrics are undefined")
    out = {name: float(values.mean()) for name, values in per_user.items()}
    if n_items:
        topk_np = topk.cpu().numpy() if isinstance(topk, torch.Tensor) else np.asarray(topk)
        for k in sorted({int(k) for k in ks}):
            items = topk_np[:, :k]
            out[f"coverage@{k}"] = float(np.unique(items[items >= 0]).size / n_items)
    return out
