"""Metrics on item slices (head / tail / cold items), from one full ranking.

For a slice S (a boolean mask over items) a user's truth is restricted to the items of S, and only users with
at least one truth item in S are counted; the ranking is the full ranking over the whole catalogue (seen
items excluded), computed once for all slices.  So ``recall@k`` on the tail slice is the share of a user's
held-out tail items found in the top k of the normal ranking — the "tail recall" of Yao et al. (CIKM 2021),
not a ranking restricted to tail items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from eval.metrics import check_ks

if TYPE_CHECKING:
    from eval.ranking import EvaluatedModel

__all__ = ["slice_metrics", "evaluate_item_slices"]


def slice_metrics(
    topk: torch.Tensor | np.ndarray,
    truth: sp.csr_matrix,
    slices: Mapping[str, np.ndarray],
    ks: Sequence[int],
    metrics: Sequence[str] = ("recall", "ndcg"),
) -> dict[str, float]:
    """``{"<slice>/<metric>@k": mean, "<slice>/users": count}`` for every slice with at least one user.

    Args:
        topk: ``[U, K]`` ranked items (``-1`` = none) aligned with the rows of ``truth`` ``csr[U, I]``.
        slices: name -> ``bool[I]`` item mask.
    """
    from eval.metrics import per_user_metrics

    truth = sp.csr_matrix(truth)
    out: dict[str, float] = {}
    for name, mask in slices.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (truth.shape[1],):
            raise ValueError(f"slice {name!r} has shape {mask.shape}, expected ({truth.shape[1]},) items")
        restricted = truth @ sp.diags(mask.astype(np.float32))
        restricted.eliminate_zeros()
        has = np.diff(restricted.indptr) > 0
        out[f"{name}/users"] = float(has.sum())
        if not has.any():
            continue
        per_user = per_user_metrics(topk, restricted, ks)
        for metric in metrics:
            for k in ks:
                out[f"{name}/{metric}@{k}"] = float(np.nanmean(per_user[f"{metric}@{k}"]))
    return out


def evaluate_item_slices(
    model: EvaluatedModel,
    dataset: Any,
    slices: Mapping[str, np.ndarray],
    split: str = "test",
    ks: Sequence[int] = (10, 50),
    block_size: int = 4096,
) -> dict[str, float]:
    """Overall (``all``) and per-slice metrics of ``model`` on ``split`` from one ranking (see
    :func:`slice_metrics`); the overall values equal :func:`eval.evaluate_model`'s. A slice named ``all`` is
    refused (ValueError)."""
    from eval.ranking import model_topk

    if "all" in slices:  # it would replace the overall numbers, which the results then misreport
        raise ValueError("a slice may not be named 'all': that name holds the metrics over every item")
    ks = tuple(sorted(check_ks(ks)))
    topk, _, truth = model_topk(model, dataset, split, max(ks), block_size=block_size)
    everything = {"all": np.ones(truth.shape[1], dtype=bool), **slices}
    return slice_metrics(topk, truth, everything, ks)
