"""Top-k ranking metrics, all computed from one top-k index matrix (definitions: ``docs/metrics.md``).

Given each user's ranked list ``topk[u]`` (item indices, best first, ``-1`` = no item) and relevant set
``T_u`` (the stored entries of ``truth[u]``), with ``R = |T_u|``, ``h_i = 1`` when the item at rank ``i``
(1-based) is relevant and ``H_k = sum_{i<=k} h_i``:

==============  ==========================================================================================
``recall@k``    ``H_k / R`` (the LightGCN convention: the denominator is not capped at k)
``precision@k`` ``H_k / k``
``hit@k``       ``1 if H_k > 0 else 0``
``ndcg@k``      ``DCG / IDCG`` with ``DCG = sum_{i<=k} h_i / log2(i + 1)``, ``IDCG = sum_{i<=min(R,k)} 1 / log2(i + 1)``
``mrr@k``       ``1 / i`` for the first relevant rank ``i <= k``, else 0
``map@k``       ``(1/R) sum_{i<=k} h_i H_i / i``: trec_eval's ``map_cut_k`` (divides by R, not ``min(R, k)``)
``coverage@k``  distinct items in the top-k lists of the evaluated users / ``n_items``
==============  ==========================================================================================

Every metric but coverage is the mean over users with ``R >= 1``; users without truth are ignored.  All of it
is vectorised over users (a sorted-key lookup of every ``(user, item)`` pair of ``topk`` in ``truth``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["METRICS", "check_ks", "hit_matrix", "parse_metric", "per_user_metrics", "ranking_metrics"]

#: Metrics with one value per user (``coverage`` is a property of the whole set of lists).
METRICS = ("recall", "ndcg", "hit", "precision", "mrr", "map")


def parse_metric(name: str) -> tuple[str, int] | None:
    """``"ndcg@20"`` -> ``("ndcg", 20)``: a name of :data:`METRICS` or ``coverage``, ``@``, and a cut-off
    written as a positive integer (``ndcg@020`` is not ``ndcg@20``); None for anything else."""
    metric, _, k = name.partition("@")
    if metric not in (*METRICS, "coverage") or not k.isdigit() or str(int(k)) != k or int(k) < 1:
        return None
    return metric, int(k)


def _as_topk_array(topk: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = topk.detach().cpu().numpy() if isinstance(topk, torch.Tensor) else np.asarray(topk)
    if arr.ndim != 2:
        raise ValueError(f"topk must be a [U, K] matrix, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    """Cut-offs as unique positive ints, in the given order: one int or a sequence of them.

    Integral floats (``10.0``) are taken; fractions, booleans (``True`` is not the cut-off 1), text and
    non-finite values are refused with a ``ValueError`` naming the value."""
    if isinstance(ks, int | np.integer) and not isinstance(ks, bool | np.bool_):
        ks = (ks,)
    if isinstance(ks, str | bytes) or not isinstance(ks, Sequence | np.ndarray):
        raise ValueError(f"ks must be a positive integer or a sequence of them, got {ks!r}")
    out = []
    for given in ks:
        integral = isinstance(given, int | np.integer) or (
            isinstance(given, float | np.floating) and float(given).is_integer()
        )
        if isinstance(given, bool | np.bool_) or not integral or given < 1:
            raise ValueError(f"cut-offs must be positive integers, got {given!r}")
        out.append(int(given))
    if not out:
        raise ValueError("ks must name at least one cut-off")
    return tuple(dict.fromkeys(out))  # unique, in the given order


def _check_ks(ks: int | Sequence[int], width: int) -> tuple[int, ...]:
    out = check_ks(ks)
    for k in out:
        if k > width:
            raise ValueError(f"cut-off {k} exceeds the {width} columns of topk")
    return out


def _binary_truth(truth: sp.spmatrix | sp.sparray, n_rows: int) -> sp.csr_matrix:
    """A canonical copy (sorted, no duplicates, no explicit zeros) of ``truth``; the caller's stays intact."""
    if not sp.issparse(truth):
        raise ValueError(f"truth must be a scipy sparse matrix, got {type(truth).__name__}")
    t = sp.csr_matrix(truth, copy=True)
    if t.shape[0] != n_rows:
        raise ValueError(f"truth has {t.shape[0]} rows but topk has {n_rows}: rows must be aligned")
    t.eliminate_zeros()
    t.sum_duplicates()  # also sorts the indices of every row
    return t


def hit_matrix(topk: torch.Tensor | np.ndarray, truth: sp.spmatrix | sp.sparray) -> np.ndarray:
    """``bool[U, K]``: whether ``topk[u, j]`` is a relevant item of user ``u`` (``-1`` is never relevant).

    Raises:
        ValueError: an index outside ``[-1, n_items)``, or an item listed twice in one row.
    """
    top = _as_topk_array(topk)
    t = _binary_truth(truth, top.shape[0])
    return _hits(top, t)


def _hits(top: np.ndarray, t: sp.csr_matrix) -> np.ndarray:
    n_users, n_cols = top.shape[0], t.shape[1]
    if top.size:
        if top.min() < -1 or top.max() >= n_cols:
            raise ValueError(f"topk holds item indices outside [-1, {n_cols}) (the columns of truth)")
        srt = np.sort(top, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        if dup.any():
            u = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(f"topk row {u} lists an item more than once")
    # every relevant pair as one sorted int64 key (rows ascending, sorted indices within a row)
    keys = np.repeat(np.arange(n_users, dtype=np.int64) * n_cols, np.diff(t.indptr)) + t.indices
    if keys.size == 0:
        return np.zeros(top.shape, dtype=bool)
    query = np.arange(n_users, dtype=np.int64)[:, None] * n_cols + np.maximum(top, 0)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return (keys[pos] == query) & (top >= 0)


def per_user_metrics(
    topk: torch.Tensor | np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    ks: Sequence[int] = (20,),
) -> dict[str, np.ndarray]:
    """Per-user metric values, for significance tests and slices.

    Rows stay aligned with ``topk`` (so a slice is a boolean mask over users); users without any relevant item
    hold NaN, so ``np.nanmean`` of a column equals the corresponding :func:`ranking_metrics` value.

    Args:
        topk: ``LongTensor | ndarray [U, K]`` ranked item indices, best first, ``-1`` = no item; no item twice
            in a row.
        truth: ``csr_matrix [U, I]`` aligned with ``topk`` rows; stored non-zero entries are the relevant items.
        ks: cut-offs, each ``<= K``.

    Returns:
        ``{"recall@k": float64[U], ...}`` for every metric in :data:`METRICS` and k in ``ks``, plus
        ``"n_relevant": int64[U]``; users without relevant items hold NaN.
    """
    top = _as_topk_array(topk)
    ks = _check_ks(ks, top.shape[1])
    t = _binary_truth(truth, top.shape[0])
    return _per_user(_hits(top, t), np.diff(t.indptr).astype(np.int64), ks)


def _per_user(hits: np.ndarray, n_rel: np.ndarray, ks: tuple[int, ...]) -> dict[str, np.ndarray]:
    kmax = max(ks)
    h = hits[:, :kmax].astype(np.float64)
    ranks = np.arange(1, kmax + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    cum_hits = np.cumsum(h, axis=1)  # H_i
    cum_dcg = np.cumsum(h * discount, axis=1)
    cum_ap = np.cumsum(h * cum_hits / ranks, axis=1)  # sum_{j<=i} h_j H_j / j
    ideal = np.cumsum(discount)  # IDCG for min(R, k) = 1, 2, ...
    first = np.where(h.any(axis=1), np.argmax(h, axis=1), kmax)  # 0-based rank of the first hit, kmax if none

    has = n_rel > 0
    r = np.where(has, n_rel, 1).astype(np.float64)
    nan = np.where(has, 0.0, np.nan)  # adds NaN to users without truth
    out: dict[str, np.ndarray] = {"n_relevant": n_rel}
    for k in ks:
        hk = cum_hits[:, k - 1]
        out[f"recall@{k}"] = hk / r + nan
        out[f"ndcg@{k}"] = cum_dcg[:, k - 1] / ideal[np.minimum(n_rel, k).clip(min=1) - 1] + nan
        out[f"hit@{k}"] = (hk > 0).astype(np.float64) + nan
        out[f"precision@{k}"] = hk / k + nan
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0) + nan
        out[f"map@{k}"] = cum_ap[:, k - 1] / r + nan
    return out


def _catalogue_size(n_items: object, top: np.ndarray) -> int:
    """``n_items`` checked: an integer (1.9 is no size, True neither) no smaller than the number of distinct
    items the lists hold (a smaller catalogue gave coverage above 1)."""
    if isinstance(n_items, bool) or not isinstance(n_items, numbers.Integral):
        raise ValueError(f"n_items must be an integer, got {n_items!r}")
    listed = int(np.unique(top[top >= 0]).size)
    if n_items < max(listed, 1):
        raise ValueError(
            f"n_items={n_items} is smaller than the {listed} distinct items the lists hold"
            if listed
            else f"n_items must be positive, got {n_items}"
        )
    return int(n_items)


def ranking_metrics(
    topk: torch.Tensor | np.ndarray,
    truth: sp.spmatrix | sp.sparray,
    ks: Sequence[int] = (20,),
    n_items: int | None = None,
) -> dict[str, float]:
    """Mean top-k metrics over the users with at least one relevant item, and catalogue coverage.

    Args:
        topk: ``LongTensor | ndarray [U, K]`` ranked item indices, best first, ``-1`` = no item (e.g. from
            :func:`eval.full_ranking_topk` for ``K = max(ks)``); no item twice in a row.
        truth: ``csr_matrix [U, I]`` whose rows are aligned with ``topk`` rows; stored non-zero entries are the
            relevant items (binary relevance; values are ignored).
        ks: cut-offs, each ``<= K``.
        n_items: catalogue size for ``coverage@k``; default ``I`` (the columns of ``truth``).

    Returns:
        ``{"recall@k", "ndcg@k", "hit@k", "precision@k", "mrr@k", "map@k", "coverage@k"}`` for every k, as
        Python floats; see the module docstring and ``docs/metrics.md`` for the definitions.

    Raises:
        ValueError: misaligned or malformed inputs, or no user with a relevant item.
    """
    top = _as_topk_array(topk)
    ks = _check_ks(ks, top.shape[1])
    t = _binary_truth(truth, top.shape[0])
    n_rel = np.diff(t.indptr).astype(np.int64)
    has = n_rel > 0
    if not has.any():
        raise ValueError("no user has a relevant item in truth: the metrics are undefined")
    per_user = _per_user(_hits(top, t), n_rel, ks)
    n_items = t.shape[1] if n_items is None else _catalogue_size(n_items, top)
    evaluated = top[has]
    result: dict[str, float] = {}
    for k in ks:
        for name in METRICS:
            result[f"{name}@{k}"] = float(per_user[f"{name}@{k}"][has].mean())
        listed = evaluated[:, :k]
        result[f"coverage@{k}"] = float(np.unique(listed[listed >= 0]).size / n_items)
    return result
