"""Exact top-k selection over FAISS candidate lists: exclusion, deterministic tie-breaking, exact k.

FAISS returns, per query, the F best items in its own order. :func:`select_topk` removes excluded items,
orders the rest by (score descending, position ascending) and says, per row, whether the answer is final or
FAISS must be asked for more candidates (too few left, or the cut at the k-th place may pass through a group
of equal scores that continues beyond the F returned).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as a positive Python int; anything else (0, negatives, floats, bools, None) is a ValueError
    naming it as ``name``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def as_exclusion(exclude, n_rows: int, n_items: int):
    """A sparse [n_rows, n_items] exclusion matrix as canonical CSR (sorted, distinct columns per row)."""
    import scipy.sparse as sp

    if not sp.issparse(exclude):
        raise TypeError(f"exclude must be a scipy.sparse matrix [B, I], got {type(exclude).__name__}")
    if exclude.shape != (n_rows, n_items):
        raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_rows}, {n_items})")
    exclude = sp.csr_matrix(exclude)
    if not exclude.has_canonical_format:
        exclude = exclude.copy()
        exclude.sum_duplicates()  # sorted, distinct columns per row: counts are exact, keys are sorted
    return exclude


def select_topk(dist, pos, exclude, need, k: int, n_items: int, complete: bool):
    """Filter and order one FAISS answer. dist, pos: [n, F] (FAISS order); exclude: CSR [n, I] or None;
    need: int [n] results owed per row. Returns (done bool [n], scores [n, k], positions [n, k])."""
    n, width = pos.shape
    valid = pos >= 0
    if exclude is not None and exclude.nnz:
        rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(exclude.indptr))
        banned = rows * n_items + exclude.indices.astype(np.int64)  # sorted (canonical CSR)
        keys = np.arange(n, dtype=np.int64)[:, None] * n_items + pos
        at = np.minimum(np.searchsorted(banned, keys), banned.size - 1)
        valid &= banned[at] != keys
    # valid first, then score descending, then position ascending (np.lexsort: last key is primary)
    order = np.lexsort((pos, -dist, ~valid), axis=1)
    dist = np.take_along_axis(dist, order, axis=1)
    pos = np.take_along_axis(pos, order, axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    if complete:  # every item was returned: nothing more to ask for
        done = np.ones(n, dtype=bool)
    else:
        done = valid.sum(axis=1) >= need
        # Items FAISS did not return score <= the lowest returned score. If that equals the score at the
        # last owed place, an unreturned item with a lower position might belong there: ask again.
        lowest = np.where(pos >= 0, dist, np.inf).min(axis=1)
        last = dist[np.arange(n), np.maximum(need - 1, 0)]
        done &= (need == 0) | (lowest < last)
    take = min(width, k)
    keep = np.zeros((n, k), dtype=bool)
    keep[:, :take] = valid[:, :take]
    keep &= np.arange(k)[None, :] < need[:, None]
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    positions = np.full((n, k), -1, dtype=np.int64)
    scores[:, :take] = dist[:, :take]
    positions[:, :take] = pos[:, :take]
    scores[~keep] = -np.inf
    positions[~keep] = -1
    return done, scores, positions
