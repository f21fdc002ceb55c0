"""Cold items and item slices for long-tail evaluation.

Cold-start protocol (the issue's "retrieve them from their features alone"): a seeded random
``fraction`` of the catalogue is held out of training altogether — their interactions are removed from
everything the model learns from (training targets, users' histories, frequencies, the SSL catalogue) —
while the evaluation keeps them: a user's test items that are cold must be retrieved from the item's side
features only.  The model is told which items are cold; the data files are not changed, so evaluation
excludes seen items exactly as for any other model.

Slices (Yao et al. 2021 report head/tail; the issue defines them): *head* = the top ``head_fraction`` of the
warm (non-cold) items by training frequency (ties by lower index), *tail* = the other warm items,
*cold* = the held-out items.  Slice metrics restrict each user's truth to the slice's items (users without
truth in the slice are not counted) while ranking over the whole catalogue; see :mod:`eval.slices`.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import polars as pl

__all__ = ["choose_cold_items", "drop_items", "item_slices", "item_counts"]


def choose_cold_items(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``round(fraction * n_items)`` item indices, sorted: ``int64[C]``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"cold item fraction must be in [0, 1), got {fraction}")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    n_cold = int(round(fraction * n_items))
    if n_cold >= n_items:
        raise ValueError(
            f"a cold item fraction of {fraction} makes all {n_items} items cold (at least one must stay warm)"
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=n_cold, replace=False)).astype(np.int64)


def drop_items(frame: pl.DataFrame, items: np.ndarray, column: str = "item_idx") -> pl.DataFrame:
    """``frame`` without the rows whose ``column`` is one of ``items``."""
    if column not in frame.columns:
        raise KeyError(f"column {column!r} is not in the frame; columns: {frame.columns}")
    if len(items) == 0:
        return frame
    return frame.filter(~pl.col(column).is_in(pl.Series(np.asarray(items, dtype=np.int64)).implode()))


def item_counts(frame: pl.DataFrame, n_items: int, column: str = "item_idx") -> np.ndarray:
    """Interactions per item: ``int64[n_items]``."""
    idx = frame[column].to_numpy().astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_items):
        raise ValueError(f"{column} must be in [0, {n_items}), got values in [{idx.min()}, {idx.max()}]")
    return np.bincount(idx, minlength=n_items).astype(np.int64)


def item_slices(counts: np.ndarray, cold: np.ndarray, head_fraction: float = 0.1) -> dict[str, np.ndarray]:
    """Boolean item masks ``{"head", "tail", "cold"}`` (each ``bool[I]``, disjoint, covering the catalogue).

    Args:
        counts: ``int[I]`` training frequency of every item (cold items should have 0).
        cold: indices of the held-out items.
        head_fraction: share of the warm items that are head (``ceil``, at least one), in ``[0, 1]``.

    Raises:
        ValueError: ``head_fraction`` outside ``[0, 1]``, or a cold index outside the catalogue.
    """
    if isinstance(head_fraction, bool) or not (
        isinstance(head_fraction, int | float | np.integer | np.floating) and 0.0 <= head_fraction <= 1.0
    ):  # 1.5 made every warm item head (no tail), -0.5 one item, NaN failed inside the rounding
        raise ValueError(f"head_fraction must be a share of the warm items in [0, 1], got {head_fraction!r}")
    n = counts.shape[0]
    if np.asarray(cold).dtype == np.bool_:  # a mask read as indices 0 and 1: items 0 and 1 were the cold ones
        raise ValueError("cold must hold item indices, got a boolean mask (np.flatnonzero(mask) gives them)")
    cold = np.asarray(cold, dtype=np.int64)
    if cold.size and (cold.min() < 0 or cold.max() >= n):  # a negative index would wrap around silently
        raise ValueError(f"cold item indices must be in [0, {n}), got values in [{cold.min()}, {cold.max()}]")
    is_cold = np.zeros(n, dtype=bool)
    is_cold[cold] = True
    warm = np.flatnonzero(~is_cold)
    # the share as written (0.07, not the binary float 0.07000000000000000666): 0.07 * 100 is
    # 7.000000000000001 in floating point, whose ceiling made 8 items head
    n_head = max(1, math.ceil(Fraction(str(head_fraction)) * int(warm.size))) if warm.size else 0
    # by count descending, then index: ascending by (count, -index), reversed; negating the counts instead
    # wrapped unsigned ones around (the least frequent items became head)
    order = warm[np.lexsort((-warm, counts[warm]))][::-1]
    head = np.zeros(n, dtype=bool)
    head[order[:n_head]] = True
    return {"head": head, "tail": ~head & ~is_cold, "cold": is_cold}
