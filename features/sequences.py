r"""Per-user item sequences in time order, and the training samples sequential models learn from.

A :class:`UserSequences` is a ragged array in CSR layout: user ``u``'s items, oldest first, are
``items[offsets[u]:offsets[u + 1]]``.  It is built from a prepared dataset (:func:`user_sequences`, dense
``item_idx`` values) or straight from an Amazon sequence file (:func:`read_amazon_sequences`, the file's own
integer item ids).

Training samples ("dynamic sliding", the dynamic segmentation of ICSRec — Qin et al., "Intent Contrastive
Learning with Cross Subsequences for Sequential Recommendation", WSDM 2024 — which yields the samples the
SASRec-style trainers of ICLRec and S3-Rec use): for a training sequence :math:`s_1 \dots s_m` every position
:math:`k = 2 \dots m` is a target once, predicted from the (at most ``max_len``) items before it:

.. math::  (s_{\max(1, k - L)} \dots s_{k-1}) \;\rightarrow\; s_k .

On a leave-one-out split the training sequence of a user with n items has m = n - 2 items (the validation
and test items are held out), so the user yields n - 3 samples and the held-out items are never targets.
:func:`dynamic_sliding_samples` builds all samples as index arrays (no Python loop over users or samples);
:meth:`SubsequenceSamples.inputs` materialises left-padded input rows for any subset of them.

Padding is :data:`PAD` (-1): "no item".  Padded rows are left-padded, so the last column always holds the
most recent item of a non-empty input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.errors import DataValidationError

PAD = -1
"""The padding value of padded sequence arrays: no item (every real item index is >= 0)."""

# Split protocols under which the valid/test items of a user come after all of the user's training items,
# so that appending them to the training sequence keeps it in time order.
TIME_ORDERED_PROTOCOLS = ("leave_one_out", "temporal")


@dataclass(frozen=True)
class UserSequences:
    """Ragged per-user item sequences, oldest item first (CSR layout).

    Attributes:
        offsets: ``int64[U + 1]``, non-decreasing, ``offsets[0] == 0``.
        items: ``int64[N]``: all sequences concatenated, N = ``offsets[-1]``.
    """

    offsets: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        off, items = self.offsets, self.items
        if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != items.size or np.any(np.diff(off) < 0):
            raise ValueError(
                f"UserSequences: offsets must be a non-decreasing int array from 0 to len(items)={items.size}"
            )

    @property
    def n_users(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def lengths(self) -> np.ndarray:
        """``int64[U]``: sequence length of every user."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return self.n_users

    def __getitem__(self, user: int) -> np.ndarray:
        """User ``user``'s items, oldest first, ``int64[n_u]``."""
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def padded(self, users: np.ndarray | Sequence[int] | None = None, max_len: int = 50) -> np.ndarray:
        """The last ``max_len`` items of each user's sequence, left-padded with :data:`PAD`.

        Args:
            users: ``int[B]`` user indices (default: all users in order).
            max_len: row width L.

        Returns:
            ``int64[B, L]``; row b ends with the most recent item of ``users[b]``.
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        users = np.arange(self.n_users) if users is None else np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise IndexError(f"user indices must lie in [0, {self.n_users})")
        return _window(self.items, self.offsets[users], self.offsets[users + 1], max_len)

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> UserSequences:
        """From a list of per-user item lists (tests, serving of new sequences)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        items = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(offsets[-1]))
        return cls(offsets, items)

    @classmethod
    def from_frame(
        cls,
        df: pl.DataFrame,
        n_users: int,
        *,
        user: str = "user_idx",
        item: str = "item_idx",
        order: Sequence[str] = (),
    ) -> UserSequences:
        """Sequences from an interaction frame with dense user indices ``0..n_users-1``.

        Rows are ordered by ``user``, then by the ``order`` columns, then by their position in ``df`` (a
        stable sort), so a frame already in time order needs no ``order`` columns.
        """
        missing = [c for c in (user, item, *order) if c not in df.columns]
        if missing:
            raise DataValidationError("<interaction frame>", f"columns {missing}", got=df.columns)
        df = df.sort([user, *order], maintain_order=True)
        users = df[user].to_numpy().astype(np.int64, copy=False)
        if users.size and (users[0] < 0 or users[-1] >= n_users):
            raise DataValidationError(
                "<interaction frame>",
                f"user indices in [0, {n_users})",
                column=user,
                got=int(users[0] if users[0] < 0 else users[-1]),
            )
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=offsets[1:])
        return cls(offsets, df[item].to_numpy().astype(np.int64, copy=True))


def _window(items: np.ndarray, begin: np.ndarray, end: np.ndarray, max_len: int) -> np.ndarray:
    """Rows ``items[max(begin, end - L):end]`` left-padded to width L with PAD: ``int64[B, L]``.

    ``begin``/``end`` are ``int64[B]`` flat positions; one fancy-indexing gather, no loop."""
    cols = end[:, None] - max_len + np.arange(max_len)  # flat position of every cell, [B, L]
    real = cols >= begin[:, None]
    out = np.full(cols.shape, PAD, dtype=np.int64)
    out[real] = items[cols[real]]
    return out


# ---- sources ----------------------------------------------------------------------------------------------
def user_sequences(dataset: Any, splits: Sequence[str] = ("train",)) -> UserSequences:
    """Each user's items from the given splits of a prepared dataset, in time order.

    Within a split, items are ordered by ``timestamp`` when the split has one, else by their stored order
    (the source file's order per user); the splits are concatenated in the order given (``train`` then
    ``valid`` then ``test``).  Including ``valid`` or ``test`` needs a time-ordered split protocol
    (leave-one-out or temporal), where those items come after the training items; otherwise the
    concatenation would not be a time order and this raises.

    Args:
        dataset: a :class:`features.PreparedDataset`.
        splits: names among ``train``, ``valid``, ``test``.

    Returns:
        :class:`UserSequences` over all ``dataset.n_users`` users, items as dense ``item_idx``.
    """
    allowed = ("train", "valid", "test")
    bad = [s for s in splits if s not in allowed]
    if bad or not splits or len(set(splits)) != len(splits):
        raise ValueError(f"splits must be distinct names among {allowed}, got {list(splits)}")
    protocol = dataset.manifest.get("split_protocol", dataset.manifest.get("split", {}).get("protocol"))
    if list(splits) != ["train"] and protocol not in TIME_ORDERED_PROTOCOLS:
        raise DataValidationError(
            dataset.root,
            f"a time-ordered split protocol {TIME_ORDERED_PROTOCOLS} to build sequences from splits {list(splits)}",
            got=f"<split protocol {protocol!r}, which does not order valid/test after train>",
        )
    frames = []
    for rank, name in enumerate(splits):
        df = getattr(dataset, name)
        ts = pl.col("timestamp") if "timestamp" in df.columns else pl.lit(0, dtype=pl.Int64)
        frames.append(
            df.select("user_idx", "item_idx", ts.alias("__ts"), pl.lit(rank, dtype=pl.Int64).alias("__rank"))
        )
    both = pl.concat(frames, how="vertical")
    return UserSequences.from_frame(both, int(dataset.n_users), order=("__rank", "__ts"))


def read_amazon_sequences(path: str | Path) -> tuple[list[str], UserSequences]:
    """An Amazon ``uid i1 i2 ... in`` file (S3-Rec / ICLRec / ICSRec format) as sequences of its own ids.

    Returns:
        ``(user_ids, sequences)``: the original user ids in file order, and their sequences of the file's
        integer item ids (user ``u`` of ``sequences`` is ``user_ids[u]``).

    Raises:
        DataValidationError: an item id is not an integer (naming the file).
    """
    from features.readers import read_amazon_seq

    path = Path(path)
    df = read_amazon_seq(path)
    users = df.select(pl.col("user_id").unique(maintain_order=True)).with_row_index("__u")
    df = df.join(users.with_columns(pl.col("__u").cast(pl.Int64)), on="user_id", how="left").with_columns(
        pl.col("item_id").cast(pl.Int64, strict=False).alias("__i")
    )
    bad = df.filter(pl.col("__i").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise DataValidationError(path, "integer item ids", line=row.get("_line"), got=row["item_id"])
    seqs = UserSequences.from_frame(df, users.height, user="__u", item="__i", order=("timestamp",))
    return users["user_id"].to_list(), seqs


# ---- training samples -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SubsequenceSamples:
    """Next-item training samples over a :class:`UserSequences`, as index arrays (N samples).

    Sample j predicts ``targets[j] == sequences.items[ends[j]]`` from the input
    ``sequences.items[starts[j]:ends[j]]`` (at most ``max_len`` items, oldest first) of user ``users[j]``.

    Attributes:
        sequences: the sequences the positions refer to.
        users: ``int64[N]`` user of each sample.
        starts: ``int64[N]`` flat position of the first input item.
        ends: ``int64[N]`` flat position of the target (one past the last input item).
        targets: ``int64[N]`` target item.
        max_len: the longest input L.
    """

    sequences: UserSequences
    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    targets: np.ndarray
    max_len: int

    def __len__(self) -> int:
        return int(self.users.size)

    def inputs(self, idx: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Left-padded inputs of samples ``idx`` (default: all): ``int64[B, max_len]``, PAD = -1."""
        sel = slice(None) if idx is None else np.asarray(idx, dtype=np.int64)
        return _window(self.sequences.items, self.starts[sel], self.ends[sel], self.max_len)

    def input_lists(self, idx: np.ndarray | Sequence[int] | None = None) -> list[list[int]]:
        """Unpadded inputs as Python lists (tests, inspection; slow for many samples)."""
        sel = np.arange(len(self)) if idx is None else np.asarray(idx, dtype=np.int64)
        items = self.sequences.items
        return [items[s:e].tolist() for s, e in zip(self.starts[sel], self.ends[sel], strict=True)]


def dynamic_sliding_samples(
    sequences: UserSequences, max_len: int = 50, holdout: int = 0
) -> SubsequenceSamples:
    """All next-item samples of every user, ICSRec's dynamic segmentation.

    For a user with sequence ``s[0..n-1]`` the targets are ``s[k]`` for ``k = 1 .. n-1-holdout`` (each
    predicted from ``s[max(0, k-max_len):k]``), i.e. ``max(n - 1 - holdout, 0)`` samples, ordered by user
    then position.  Use ``holdout=0`` on the training split of a prepared dataset (its held-out items are
    already elsewhere) and ``holdout=2`` on full leave-one-out sequences (the last two items are the
    validation and test targets and must never be training targets).

    Args:
        sequences: per-user sequences, oldest first.
        max_len: the longest input L (ICSRec: 50).
        holdout: trailing items of each sequence that are never targets.

    Returns:
        :class:`SubsequenceSamples` with N = sum over users of ``max(n_u - 1 - holdout, 0)``.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if holdout < 0:
        raise ValueError(f"holdout must be >= 0, got {holdout}")
    counts = np.maximum(sequences.lengths - 1 - holdout, 0)  # samples per user, [U]
    users = np.repeat(np.arange(sequences.n_users, dtype=np.int64), counts)
    first_sample = np.repeat(np.cumsum(counts) - counts, counts)  # index of the user's first sample, [N]
    k = np.arange(users.size, dtype=np.int64) - first_sample + 1  # target position within the sequence
    begin = sequences.offsets[users]
    ends = begin + k
    starts = np.maximum(begin, ends - max_len)
    return SubsequenceSamples(sequences, users, starts, ends, sequences.items[ends], max_len)


def pad_sequences(sequences: Sequence[Sequence[int]], max_len: int = 50) -> np.ndarray:
    """Item lists -> their last ``max_len`` items, left-padded with PAD: ``int64[B, max_len]``."""
    return UserSequences.from_lists(sequences).padded(max_len=max_len)
