r"""Matrix factorisation trained with Bayesian Personalized Ranking (MF-BPR).

Steffen Rendle, Christoph Freudenthaler, Zeno Gantner, Lars Schmidt-Thieme. "BPR: Bayesian Personalized
Ranking from Implicit Feedback." UAI 2009. https://arxiv.org/abs/1205.2618

Score :math:`\hat y_{ui} = p_u^\top q_i` with free embeddings :math:`p_u, q_i \in \mathbb{R}^d`.  On a batch
of B triples (u, i, j), j not in u's training items, the loss is the BPR criterion (the negative log
likelihood of "u prefers i over j") with the L2 term of the LightGCN code base, so that MF-BPR is LightGCN
with K = 0 layers (the paper's MF baseline):

.. math::
    L = \frac{1}{B} \sum \mathrm{softplus}(\hat y_{uj} - \hat y_{ui})
      + \lambda \cdot \frac{1}{2B} \sum \left(\|p_u\|^2 + \|q_i\|^2 + \|q_j\|^2\right).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from recsys.embedding import IdEmbedding
from recsys.models.base import ModelConfig, Recommender


class MFBPRConfig(ModelConfig):
    """MF-BPR hyper-parameters."""

    name: Literal["mf_bpr"] = "mf_bpr"
    """Registry key."""
    dim: int = Field(default=64, ge=1)
    """Embedding size d."""
    reg: float = Field(default=1e-4, ge=0)
    """L2 weight λ on the batch's embeddings (``reg * 0.5 * sum of squared norms / B``)."""
    init_std: float = Field(default=0.1, gt=0)
    """Standard deviation of the N(0, std²) initialisation: LightGCN's 0.1 (MF-BPR is LightGCN without
    layers). The official LightGCN PyTorch code's own MF baseline (``PureMF``) keeps torch's N(0, 1)."""


class MFBPR(Recommender):
    """Matrix factorisation with the BPR loss (Rendle et al., UAI 2009).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`MFBPRConfig`.
    """

    config_cls = MFBPRConfig
    config: MFBPRConfig

    def __init__(self, n_users: int, n_items: int, config: MFBPRConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.user_emb = IdEmbedding(n_users, config.dim, init="normal", init_std=config.init_std, ids="users")
        self.item_emb = IdEmbedding(n_items, config.dim, init="normal", init_std=config.init_std, ids="items")

    def reset_parameters(self) -> None:
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``batch``: ``users``, ``pos``, ``neg`` LongTensor[B]. Parts: ``bpr``, ``reg``."""
        users, pos, neg = batch["users"], batch["pos"], batch["neg"]
        p_u, q_i, q_j = self.user_emb(users), self.item_emb(pos), self.item_emb(neg)
        bpr = F.softplus((p_u * q_j).sum(-1) - (p_u * q_i).sum(-1)).mean()
        sq = p_u.pow(2).sum() + q_i.pow(2).sum() + q_j.pow(2).sum()
        reg = self.config.reg * 0.5 * sq / users.numel()
        return bpr + reg, {"bpr": bpr, "reg": reg}

    @torch.no_grad()
    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` -> ``[B, d]`` (a new tensor without gradient)."""
        return self.user_emb(users)

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """``[I, d]``: a copy without gradient, so a caller that normalises it in place leaves the model be."""
        return self.item_emb.all().clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dim={self.config.dim}, reg={self.config.reg:g}"
