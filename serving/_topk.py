"""Exact top-k selection over FAISS candidate lists: exclusion, deterministic tie-breaking, exact k.

FAISS returns, per query, the F best items in its own order. :func:`select_topk` removes excluded items,
orders the rest by (score descending, position ascending) and says, per row, whether the answer is final or
FAISS must be asked for more candidates (too few left, or the cut at the k-th place may pass through a group
of equal scores that continues beyond the F returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def check_k(k: Any, name: str = "k") -> int:
    """``k`` as a positive Python int; anything else (0, negatives, floats, bools, None) is a ValueError
    naming it as ``name``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


class ExcludedItems(NamedTuple):
    """Item positions excluded per query row, in CSR layout without values: row b excludes
    ``indices[indptr[b]:indptr[b + 1]]``, sorted and distinct within the row.

    A plain pair of arrays rather than a scipy matrix: building or slicing one scipy matrix per call cost more
    than the FAISS search itself on catalogues of a few thousand items (see docs/benchmarks.md, "Serving").

    Attributes:
        indptr: int [n_rows + 1], non-decreasing from 0.
        indices: int [nnz] item positions (int32 or int64: a loaded index's seen matrix is used as it is).
        checked: whether the layout is known to hold (the constructors below and :meth:`take` set it);
            :meth:`ItemIndex.search <serving.index.ItemIndex.search>` checks the others (:meth:`check`).
    """

    indptr: np.ndarray
    indices: np.ndarray
    checked: bool = False

    @property
    def n_rows(self) -> int:
        return self.indptr.size - 1

    def counts(self) -> np.ndarray:
        """int [n_rows]: excluded items per row."""
        return np.diff(self.indptr)

    def check(self, n_rows: int, n_items: int) -> ExcludedItems:
        """These exclusions as int64 arrays, checked; a ValueError unless they are ``n_rows`` rows of
        positions in ``[0, n_items)``, sorted and distinct within each row (what the selection relies on: an
        unsorted row silently excluded nothing). O(nnz)."""
        indptr, indices = np.asarray(self.indptr), np.asarray(self.indices)
        if indptr.ndim != 1 or indptr.size != n_rows + 1 or indices.ndim != 1:
            raise ValueError(
                f"exclude must hold {n_rows} rows (indptr of {n_rows + 1}), got indptr {indptr.shape}"
            )
        if not (np.issubdtype(indptr.dtype, np.integer) and np.issubdtype(indices.dtype, np.integer)):
            raise ValueError(f"exclude's arrays must be integers, got {indptr.dtype} and {indices.dtype}")
        # Unsigned differences wrap around (3 - 5 is a large positive number, so a descending row passed as
        # "rising"): compare in int64, refusing values it cannot hold.
        limit = np.iinfo(np.int64).max
        if any(a.size and a.dtype.kind == "u" and a.max() > limit for a in (indptr, indices)):
            raise ValueError(f"exclude holds values beyond {limit}")
        indptr, indices = indptr.astype(np.int64, copy=False), indices.astype(np.int64, copy=False)
        if indptr[0] != 0 or indptr[-1] != indices.size or (np.diff(indptr) < 0).any():
            raise ValueError("exclude.indptr must rise from 0 to len(exclude.indices)")
        if indices.size and (indices.min() < 0 or indices.max() >= n_items):
            raise ValueError(f"exclude holds item positions outside [0, {n_items})")
        rising = np.diff(indices) > 0
        starts = indptr[1:-1]
        rising[starts[(starts > 0) & (starts < indices.size)] - 1] = True  # a new row may start lower
        if not rising.all():
            raise ValueError("exclude's positions must be sorted and distinct within each row")
        return ExcludedItems(indptr, indices, checked=True)

    def take(self, rows: np.ndarray) -> ExcludedItems:
        """The exclusions of ``rows`` (int [m], any order, repeats allowed), as rows ``0..m-1``."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        indptr = np.zeros(rows.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        # element j of new row r sits at starts[r] + j: one gather for all rows
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1], dtype=np.int64)
        return ExcludedItems(indptr, self.indices[gather], checked=self.checked)

    @classmethod
    def from_sparse(cls, exclude: Any, n_rows: int, n_items: int) -> ExcludedItems:
        """Every stored entry (b, j) of a scipy sparse [n_rows, n_items] matrix excludes position j from row b
        (explicit zeros too)."""
        import scipy.sparse as sp

        if not sp.issparse(exclude):
            raise TypeError(f"exclude must be a scipy.sparse matrix [B, I], got {type(exclude).__name__}")
        if exclude.shape != (n_rows, n_items):
            raise ValueError(f"exclude has shape {exclude.shape}, expected ({n_rows}, {n_items})")
        exclude = sp.csr_matrix(exclude)
        if not exclude.has_canonical_format:
            exclude = exclude.copy()
            exclude.sum_duplicates()  # sorted, distinct columns per row: counts are exact, keys are sorted
        return cls(exclude.indptr.astype(np.int64), exclude.indices.astype(np.int64), checked=True)

    @classmethod
    def from_lists(cls, rows: Sequence[np.ndarray]) -> ExcludedItems:
        """One int array of positions per row (unsorted, repeats allowed: an item listed twice is excluded
        once)."""
        lists = [np.unique(np.asarray(r, dtype=np.int64)) for r in rows]  # sorted, distinct
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([r.size for r in lists], out=indptr[1:])
        indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices, checked=True)  # positions come from the index's own id map


def select_topk(dist, pos, exclude, need, k: int, n_items: int, complete: bool):
    """Filter and order one FAISS answer. dist, pos: [n, F] (FAISS order); exclude: :class:`ExcludedItems`
    of the n rows, or None; need: int [n] results owed per row. Returns (done bool [n], scores [n, k],
    positions [n, k])."""
    n, width = pos.shape
    valid = pos >= 0
    if exclude is not None and exclude.indices.size:
        rows = np.repeat(np.arange(n, dtype=np.int64), exclude.counts())
        banned = rows * n_items + exclude.indices  # sorted: rows in order, positions sorted within a row
        keys = np.arange(n, dtype=np.int64)[:, None] * n_items + pos
        at = np.minimum(np.searchsorted(banned, keys), banned.size - 1)
        valid &= banned[at] != keys
    # valid first, then score descending, then position ascending (np.lexsort: last key is primary)
    order = np.lexsort((pos, -dist, ~valid), axis=1)
    by_row = np.arange(n)[:, None]
    dist, pos, valid = dist[by_row, order], pos[by_row, order], valid[by_row, order]
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
    keep = valid[:, :take] & (np.arange(take)[None, :] < need[:, None])
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    positions = np.full((n, k), -1, dtype=np.int64)
    scores[:, :take] = np.where(keep, dist[:, :take], -np.inf)
    positions[:, :take] = np.where(keep, pos[:, :take], -1)
    return done, scores, positions


def dense_top_k(scores: np.ndarray, k: int, exclude: ExcludedItems | None = None):
    """Top-``k`` of dense scores, for models that score the whole catalogue themselves (item-item models)
    rather than through a FAISS index, with the index's rules: excluded items and NaN scores never listed,
    score descending, equal scores by position ascending.

    Args:
        scores: float [B, I]; modified in place (excluded entries set to -inf).
        k: items per row (checked with :func:`check_k`).
        exclude: the items left out of each of the B rows, or None.

    Returns:
        ``(top, positions)``: float [B, K] and int64 [B, K], ``K = min(k, I)``, best first; a row with fewer
        than K listable items is padded with ``(-inf, -1)``.
    """
    k = check_k(k)
    n, n_items = scores.shape
    width = min(k, n_items)
    if exclude is not None and exclude.indices.size:
        scores[np.repeat(np.arange(n), exclude.counts()), exclude.indices] = -np.inf
    scores[np.isnan(scores)] = -np.inf  # NaN is no score
    if width < n_items:
        # Only the items at or above each row's width-th largest score can be listed: partition, then sort
        # those (ties at the cut included). A full sort of the catalogue per user cost 4x the time.
        kth = -np.partition(-scores, width - 1, axis=1)[:, width - 1]
        positions = np.empty((n, width), dtype=np.int64)
        for b in range(n):
            cand = np.flatnonzero(scores[b] >= kth[b])
            positions[b] = cand[np.lexsort((cand, -scores[b, cand]))][:width]  # score desc., then position
    else:
        positions = np.argsort(-scores, axis=1, kind="stable")  # equal scores stay in position order
    top = np.take_along_axis(scores, positions, axis=1)
    missing = ~np.isfinite(top)
    top[missing], positions[missing] = -np.inf, -1
    return top, positions
