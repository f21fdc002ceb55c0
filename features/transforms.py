"""Interaction transforms: binarise, deduplicate, k-core, dense id mapping.

All functions take and return Polars DataFrames with the canonical columns ``user_id``, ``item_id``
(``Utf8``), optional ``rating: Float64`` and ``timestamp: Int64``; other columns ride along untouched.
Row order is preserved (filters only), because leave-one-out breaks timestamp ties by file order.
"""

from __future__ import annotations

import polars as pl

__all__ = ["binarize", "deduplicate", "k_core", "map_ids", "id_vocab"]


def binarize(df: pl.DataFrame, threshold: float) -> pl.DataFrame:
    """Keep interactions with ``rating >= threshold`` (they become implicit positives).

    The ``rating`` column is kept for reference (features, display); downstream interaction matrices are
    built from ones, so it does not weight anything.
    """
    if "rating" not in df.columns:
        raise ValueError("binarize needs a 'rating' column")
    return df.filter(pl.col("rating") >= threshold)


def deduplicate(df: pl.DataFrame, user: str = "user_id", item: str = "item_id") -> pl.DataFrame:
    """Keep the earliest interaction of each (user, item) pair; ties (or no timestamp) -> first in file order.

    Returns the surviving rows in their original order.
    """
    first = pl.struct(user, item).is_first_distinct()
    if "timestamp" not in df.columns:
        return df.filter(first)
    # Bring each pair's earliest row first (ties by file order), keep it, then restore the file order.
    order = "__dedup_row"
    return (
        df.with_row_index(order)
        .sort("timestamp", order, nulls_last=True)
        .filter(first)
        .sort(order)
        .drop(order)
    )


def k_core(
    df: pl.DataFrame, min_user: int, min_item: int, user: str = "user_id", item: str = "item_id"
) -> pl.DataFrame:
    """Iterative k-core: drop users with < ``min_user`` and items with < ``min_item`` interactions, repeatedly,
    until every remaining user and item meets its threshold (dropping items can push a user under its
    threshold and vice versa).  0 disables a side.

    Each round is two vectorised window counts; the number of rounds is small (data-dependent, typically
    < 10), so the Python loop runs over rounds, never over interactions.
    """
    if min_user <= 0 and min_item <= 0:
        return df
    while True:
        keep = pl.lit(True)
        if min_user > 0:
            keep = keep & (pl.len().over(user) >= min_user)
        if min_item > 0:
            keep = keep & (pl.len().over(item) >= min_item)
        kept = df.filter(keep)
        if kept.height == df.height:
            return kept
        df = kept


def id_vocab(ids: pl.Series, name: str) -> pl.DataFrame:
    """Dense vocabulary for a set of text ids: ``[<name>_idx: Int64, <name>_id: Utf8]``.

    Ids that are all non-negative integers are ordered numerically, so files whose ids are already dense
    ``0..n-1`` (LightGCN's Gowalla) keep ``idx == id``; ids from 1 (Amazon) map to ``id - 1``.  Other ids are
    ordered as text.  Sorting (rather than first appearance) makes the mapping independent of row order.
    """
    uniq = ids.drop_nulls().unique()
    numeric = uniq.str.contains(r"^\d+$").all() if uniq.len() else True
    if numeric:
        # Numeric order of digit strings of any length: by significant length, then text (then the raw
        # text, so "7" and "007" keep a deterministic order).
        digits = uniq.str.strip_chars_start("0")
        uniq = pl.DataFrame({"id": uniq, "d": digits}).sort(pl.col("d").str.len_chars(), "d", "id")["id"]
    else:
        uniq = uniq.sort()
    return pl.DataFrame(
        {f"{name}_idx": pl.int_range(0, uniq.len(), dtype=pl.Int64, eager=True), f"{name}_id": uniq}
    )


def map_ids(
    df: pl.DataFrame,
    extra_users: pl.Series | None = None,
    extra_items: pl.Series | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Map text ids to dense ``Int64`` indices.

    Args:
        df: frame with ``user_id``, ``item_id``.
        extra_users / extra_items: ids to include in the vocabularies even without interactions in ``df``
            (users listed with no items; ids from other splits).
    Returns:
        ``(df + [user_idx: Int64, item_idx: Int64], user_vocab [user_idx, user_id], item_vocab [item_idx,
        item_id])``; row order of ``df`` is kept.
    """
    users = df["user_id"] if extra_users is None else pl.concat([df["user_id"], extra_users.cast(pl.String)])
    items = df["item_id"] if extra_items is None else pl.concat([df["item_id"], extra_items.cast(pl.String)])
    user_vocab = id_vocab(users, "user")
    item_vocab = id_vocab(items, "item")
    mapped = df.join(user_vocab, on="user_id", how="left", maintain_order="left").join(
        item_vocab, on="item_id", how="left", maintain_order="left"
    )
    return mapped, user_vocab, item_vocab
