"""Split protocols: random ratio per user, leave-one-out, global temporal cut, and pre-split benchmarks.

Every function takes interaction frames (``user_id``, ``item_id``, optional ``timestamp``; the column names
are parameters, so mapped ``user_idx``/``item_idx`` frames work too) and returns a :class:`Split` with the
three parts in input row order and the counts of rows it dropped.

Guarantees shared by all protocols (the leakage tests check them):

* no (user, item) pair is in both train and test (or train and valid, or valid and test): a repeated pair
  that would straddle the boundary is removed from the later split and counted (``*_seen_in_train``);
  with ``dedup: true`` (the default) this never happens;
* the random protocols are seeded and reproducible.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl

from features._text import LINE
from features.errors import DataValidationError

__all__ = [
    "Split",
    "random_ratio_split",
    "leave_one_out_split",
    "temporal_split",
    "temporal_cut_value",
    "temporal_part",
    "presplit",
    "TIME_ORDERED_PROTOCOLS",
    "half_up_share",
    "float_rounding_differs",
]

#: The protocols that put train, valid and test in time order (a user's later interactions in later parts);
#: ``random_ratio`` and ``presplit`` have no such order.
TIME_ORDERED_PROTOCOLS = ("leave_one_out", "temporal")


@dataclass
class Split:
    """Three interaction frames and what the split dropped (``{reason: number of rows}``)."""

    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)


def random_ratio_split(
    df: pl.DataFrame,
    test_ratio: float,
    valid_ratio: float = 0.0,
    seed: int = 0,
    *,
    user: str = "user_id",
    item: str = "item_id",
) -> Split:
    """Per user, a seeded random ``test_ratio`` of the interactions to test and ``valid_ratio`` to valid.

    A user with ``n`` interactions gets ``round(n * test_ratio)`` test and ``round(n * valid_ratio)`` valid
    interactions (half rounds up, exactly: :func:`half_up_share`), capped so that a user with ``n >= 2``
    keeps at least one in train; a user with a single interaction stays in train.  The permutation comes from
    ``numpy.random.default_rng(seed)`` over the rows, so the split depends only on the seed and the input rows
    (and their order).
    """
    tmp = df.with_columns(pl.Series("__key", np.random.default_rng(seed).random(df.height)))
    n = pl.len().over(user).cast(pl.Int64)
    sizes = df.group_by(user).len()["len"].unique().to_list()  # a few distinct sizes: each rounded in Python

    def share(ratio: float) -> pl.Expr:
        return n.replace_strict({m: half_up_share(m, ratio) for m in sizes}, return_dtype=pl.Int64)

    n_test = pl.min_horizontal(share(test_ratio), n - 1)
    n_valid = pl.min_horizontal(share(valid_ratio), n - 1 - n_test)
    pos = (pl.col("__key").rank("ordinal").over(user) - 1).cast(pl.Int64)
    tmp = tmp.with_columns(
        pl.when(pos < n_test)
        .then(pl.lit(2))
        .when(pos < n_test + n_valid)
        .then(pl.lit(1))
        .otherwise(pl.lit(0))
        .alias("__part")
    ).drop("__key")
    return _finish(tmp, user, item)


def half_up_share(n: int, ratio: float) -> int:
    """``round(n * ratio)``, half up, of the ratio as written (``0.35``), in exact integer arithmetic.

    Floating point misses some halves: the float nearest 0.35 is just below it, so ``90 * 0.35`` is
    31.499999999999996 and ``floor(90 * 0.35 + 0.5)`` gave 31, not 32 (:func:`float_rounding_differs`)."""
    p, q = _as_written(ratio)
    return (2 * n * p + q) // (2 * q)


def _as_written(ratio: float) -> tuple[int, int]:
    """``ratio`` as the fraction ``p / q`` of its shortest decimal that reads back as the same float (what
    was written: 0.35 is 7 / 20, not the binary float just below it)."""
    exact = Fraction(repr(float(ratio)))
    return exact.numerator, exact.denominator


@functools.lru_cache(maxsize=64)
def float_rounding_differs(ratio: float, up_to: int = 100_000) -> bool:
    """Whether ``floor(n * ratio + 0.5)``, the random split's rounding before 2026-12-05, differs from
    :func:`half_up_share` for some user with ``n <= up_to`` interactions: such a ratio's splits changed then
    (0.35, 0.7, 0.94 do; 0.05, 0.1, 0.15, 0.2, 0.25, 0.3 do not). The prepared data's cache key marks them."""
    if ratio == 0:
        return False
    n = np.arange(1, up_to + 1, dtype=np.int64)
    p, q = _as_written(ratio)
    if 2 * up_to * p + q < 2**62:  # int64 holds the exact rule
        want = (2 * n * p + q) // (2 * q)
    else:  # a ratio with many digits: Python's integers
        want = np.array([(2 * int(m) * p + q) // (2 * q) for m in n], dtype=np.int64)
    return bool(np.any(np.floor(n * float(ratio) + 0.5).astype(np.int64) != want))


def leave_one_out_split(df: pl.DataFrame, *, user: str = "user_id", item: str = "item_id") -> Split:
    """Per user, the last interaction to test and the second last to valid; the rest to train.

    "Last" is by ``timestamp`` (when present) and then by input row order, so sequences without timestamps
    (Amazon files, where the position is the time) keep their order.  Users with fewer than 3 interactions
    stay entirely in train (one left for training, one to validate and one to test is the minimum).
    """
    keys = (["timestamp"] if "timestamp" in df.columns else []) + ["__row"]
    tmp = df.with_row_index("__row").sort(keys)
    n = pl.len().over(user)
    from_end = n - 1 - pl.int_range(pl.len(), dtype=pl.Int64).over(user)  # 0 = the user's last interaction
    tmp = (
        tmp.with_columns(
            pl.when(n < 3)
            .then(pl.lit(0))
            .when(from_end == 0)
            .then(pl.lit(2))
            .when(from_end == 1)
            .then(pl.lit(1))
            .otherwise(pl.lit(0))
            .alias("__part")
        )
        .sort("__row")
        .drop("__row")
    )
    return _finish(tmp, user, item)


def temporal_cut_value(df: pl.DataFrame, quantile: float) -> int:
    """The timestamp at the given quantile of all interactions (an actual timestamp, the lower neighbour)."""
    if df.height == 0:
        raise ValueError("cannot compute a temporal cut of an empty frame")
    value = df["timestamp"].quantile(quantile, interpolation="lower")
    assert value is not None
    return int(value)


def temporal_part(cut: int, valid_cut: int | None = None) -> pl.Expr:
    """The part of a row by its ``timestamp`` under :func:`temporal_split`'s cuts: 0 train, 1 valid, 2 test."""
    ts = pl.col("timestamp")
    start = cut if valid_cut is None else valid_cut
    return pl.when(ts >= cut).then(pl.lit(2)).when(ts >= start).then(pl.lit(1)).otherwise(pl.lit(0))


def temporal_split(
    df: pl.DataFrame, cut: int, valid_cut: int | None = None, *, user: str = "user_id", item: str = "item_id"
) -> Split:
    """One global time cut: train ``< cut <=`` test; with ``valid_cut``: train ``< valid_cut <=`` valid ``< cut``.

    Valid and test interactions whose user or item never occurs in train are dropped (a model cannot score
    them) and counted as ``valid_unseen`` / ``test_unseen``.
    """
    if valid_cut is not None and valid_cut >= cut:
        raise ValueError(f"valid_cut ({valid_cut}) must be before cut ({cut})")
    tmp = df.with_columns(temporal_part(cut, valid_cut).alias("__part"))
    train = tmp.filter(pl.col("__part") == 0)
    seen = pl.col(user).is_in(train[user].unique().implode()) & pl.col(item).is_in(
        train[item].unique().implode()
    )
    dropped = {
        "valid_unseen": tmp.filter((pl.col("__part") == 1) & ~seen).height,
        "test_unseen": tmp.filter((pl.col("__part") == 2) & ~seen).height,
    }
    tmp = tmp.filter((pl.col("__part") == 0) | seen)
    out = _finish(tmp, user, item)
    out.dropped = {**dropped, **out.dropped}
    return out


def presplit(
    train: pl.DataFrame,
    test: pl.DataFrame,
    *,
    valid_from_train_ratio: float = 0.0,
    seed: int = 0,
    unseen: str = "error",
    test_file: Path | str = "test file",
    user: str = "user_id",
    item: str = "item_id",
) -> Split:
    """A benchmark's own train/test files, used as they are.

    Args:
        valid_from_train_ratio: share of each user's train interactions moved to valid (seeded, per user,
            as :func:`random_ratio_split`; 0 = no validation). The benchmark's test set stays whole: ``unseen``
            judges it against the whole train file, and test rows whose item the carve-out left without a
            training interaction are kept and counted in a warning.
        unseen: test items absent from train: ``"error"`` raises a :class:`DataValidationError` naming the
            line of ``test_file`` (``test`` must carry ``_line``), ``"drop"`` drops and counts them.
    """
    seen = pl.col(item).is_in(train[item].unique().implode())
    bad = test.filter(~seen)
    dropped: dict[str, int] = {}
    if bad.height:
        if unseen == "error":
            r = bad.row(0, named=True)
            raise DataValidationError(
                test_file,
                "test items that also occur in the train file",
                line=r.get(LINE),
                column="item",
                got=f"<item {r.get('item_id', r[item])} (user {r.get('user_id', r[user])}), unseen "
                f"in train; {bad.height} such rows>",
                hint="set split.presplit_unseen: drop to drop them",
            )
        test = test.filter(seen)
    dropped["test_unseen"] = bad.height
    if valid_from_train_ratio > 0:
        carved = random_ratio_split(train, valid_from_train_ratio, 0.0, seed, user=user, item=item)
        train, valid = carved.train, carved.test
        # counted among the test rows that _finish keeps (it drops pairs already in train or valid)
        keys = [user, item]
        kept = test.join(pl.concat([train.select(keys), valid.select(keys)]), on=keys, how="anti")
        cold = kept.filter(~pl.col(item).is_in(train[item].unique().implode()))
        if cold.height:
            warnings.warn(
                f"{test_file}: {cold.height:,} of {kept.height:,} test rows ({cold[item].n_unique():,} items) "
                f"have no training interaction left once valid_from_train_ratio={valid_from_train_ratio} "
                "moved their item's to validation; they stay in test (the benchmark's test set is kept whole)",
                stacklevel=2,
            )
    else:
        valid = train.clear()
    parts = [
        train.with_columns(pl.lit(0).alias("__part")),
        valid.with_columns(pl.lit(1).alias("__part")),
        test.with_columns(pl.lit(2).alias("__part")),
    ]
    out = _finish(pl.concat(parts, how="diagonal_relaxed"), user, item)
    out.dropped = {**dropped, **out.dropped}
    return out


def _finish(tmp: pl.DataFrame, user: str, item: str) -> Split:
    """``__part`` (0 train, 1 valid, 2 test) -> Split, removing pairs already in an earlier part."""
    train = tmp.filter(pl.col("__part") == 0).drop("__part")
    valid = tmp.filter(pl.col("__part") == 1).drop("__part")
    test = tmp.filter(pl.col("__part") == 2).drop("__part")
    dropped: dict[str, int] = {}
    keys = [user, item]
    before = valid.height
    valid = valid.join(train.select(keys), on=keys, how="anti", maintain_order="left")
    dropped["valid_seen_in_train"] = before - valid.height
    before = test.height
    earlier = pl.concat([train.select(keys), valid.select(keys)])
    test = test.join(earlier, on=keys, how="anti", maintain_order="left")
    dropped["test_seen_in_train"] = before - test.height
    return Split(train, valid, test, dropped)
