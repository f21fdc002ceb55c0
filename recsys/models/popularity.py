"""Most-popular baseline: every user gets the items with the most training interactions.

The non-personalised reference point of every top-k evaluation (e.g. Cremonesi, Koren, Turrin, "Performance
of Recommender Algorithms on Top-N Recommendation Tasks", RecSys 2010).

Score :math:`\\hat y_{ui} = c_i`, the number of training users of item i.  Written as an inner product so
that it is evaluated and served like every other model (FAISS included): query ``[1]`` for every user,
item embedding ``[c_i]``.  Ties are left to the evaluator's deterministic tie-break (lower index first).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.base import ModelConfig, Recommender


class MostPopularConfig(ModelConfig):
    """Most-popular has no hyper-parameters."""

    name: Literal["popularity"] = "popularity"
    """Registry key."""


class MostPopular(Recommender):
    """Item score = training popularity (count of distinct training users).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`MostPopularConfig`.
    """

    config_cls = MostPopularConfig
    trainable = False
    bias_columns = 1  # the count is a per-item score, no direction: serving has no item similarity for it
    counts: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: MostPopularConfig) -> None:
        super().__init__(n_users, n_items, config)
        # A buffer, so the fitted counts travel with the state dict and follow .to(device).
        self.register_buffer("counts", torch.zeros(n_items))

    def reset_parameters(self) -> None:
        self.counts.zero_()

    def prepare(self, train: sp.csr_matrix) -> None:
        """Count distinct training users per item (a pair with a non-zero summed value counts; values
        ignored)."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )
        csr = sp.csr_matrix(train, copy=True)
        csr.sum_duplicates()
        csr.eliminate_zeros()
        counts = np.bincount(csr.indices, minlength=self.n_items).astype(np.float32)
        self.counts.copy_(torch.from_numpy(counts))

    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` -> ones ``[B, 1]``."""
        return torch.ones(users.numel(), 1, dtype=self.counts.dtype, device=self.counts.device)

    def item_embeddings(self) -> torch.Tensor:
        """Counts ``[I, 1]`` (a copy: the fitted counts stay as they are whatever the caller does)."""
        return self.counts.unsqueeze(1).clone()
