r"""LightGCN: linear propagation of id embeddings over the normalised user-item graph.

Xiangnan He, Kuan Deng, Xiang Wang, Yan Li, Yongdong Zhang, Meng Wang. "LightGCN: Simplifying and Powering
Graph Convolution Network for Recommendation." SIGIR 2020. https://arxiv.org/abs/2002.02126

Method (Section 3 of the paper).  Users and items start from free embeddings :math:`e^{(0)}` (the only
parameters).  Light graph convolution, no feature transform, no non-linearity, no self loop (eq. 3):

.. math::
    e_u^{(k+1)} = \sum_{i \in N_u} \frac{1}{\sqrt{|N_u|}\sqrt{|N_i|}} e_i^{(k)}, \qquad
    e_i^{(k+1)} = \sum_{u \in N_i} \frac{1}{\sqrt{|N_i|}\sqrt{|N_u|}} e_u^{(k)},

i.e. :math:`E^{(k+1)} = \hat A E^{(k)}` with :math:`\hat A = D^{-1/2} A D^{-1/2}` (eq. 7, see
:mod:`recsys.graph`).  Layer combination (eq. 4) with :math:`\alpha_k = 1/(K+1)`:

.. math::
    e_u = \frac{1}{K+1} \sum_{k=0}^{K} e_u^{(k)}, \qquad e_i = \frac{1}{K+1} \sum_{k=0}^{K} e_i^{(k)},
    \qquad \hat y_{ui} = e_u^\top e_i .

Loss (eq. 15), on a batch of B triples (u, i, j), written as the official code computes it (mean BPR, and
the L2 term on the layer-0 embeddings of the batch divided by B):

.. math::
    L = \frac{1}{B} \sum \mathrm{softplus}(\hat y_{uj} - \hat y_{ui})
      + \lambda \cdot \frac{1}{2B} \sum \left(\|e_u^{(0)}\|^2 + \|e_i^{(0)}\|^2 + \|e_j^{(0)}\|^2\right).

Paper settings: embedding size 64, Xavier init in the paper (normal std 0.1 in the official PyTorch code,
used here by default), Adam with lr 1e-3, batch 2048, :math:`\lambda = 10^{-4}`, K = 3 on Gowalla.

Computation.  A training step needs the final embeddings only of the batch's users and items.  Layers
``1..K-1`` are propagated over all nodes (every node is within reach), the last layer only at the rows of
the batch's distinct users and items (row slices of :math:`\tilde R` and :math:`\tilde R^T`), and the layer
mean is taken at those rows.  This is the same function of the parameters as the full propagation (a test
checks values and gradients against a dense reference and against torch-geometric), it is just not
computed where nobody reads it.  The backward uses the stored transposes (:func:`recsys.graph.sparse_matmul`).
"""

from __future__ import annotations

from typing import Literal

import scipy.sparse as sp
import torch
from pydantic import Field
from torch.nn import functional as F

from recsys.embedding import IdEmbedding
from recsys.graph import NormalizedBipartite, check_graph_dtype, layer_mean_at_rows
from recsys.models.base import ModelConfig, PropagatedEmbeddings, Recommender


class LightGCNConfig(ModelConfig):
    """LightGCN hyper-parameters (defaults: the paper's Gowalla setting)."""

    name: Literal["lightgcn"] = "lightgcn"
    """Registry key."""
    dim: int = Field(default=64, ge=1)
    """Embedding size d of users and items."""
    layers: int = Field(default=3, ge=0)
    """Number of propagation layers K (0 gives matrix factorisation with the same loss)."""
    reg: float = Field(default=1e-4, ge=0)
    """L2 weight λ on the batch's layer-0 embeddings (``reg * 0.5 * sum of squared norms / B``)."""
    init: Literal["normal", "xavier_uniform"] = "normal"
    """Initialisation of the embeddings: the official code's N(0, init_std²), or Xavier uniform (paper)."""
    init_std: float = Field(default=0.1, gt=0)
    """Standard deviation of the ``normal`` initialisation."""


class LightGCN(PropagatedEmbeddings, Recommender):
    """LightGCN (He et al., SIGIR 2020).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`LightGCNConfig`.

    Call :meth:`prepare` with the training matrix before :meth:`loss` or scoring (it builds the normalised
    graph; the graph is not part of the state dict).
    """

    config_cls = LightGCNConfig
    config: LightGCNConfig

    def __init__(self, n_users: int, n_items: int, config: LightGCNConfig) -> None:
        super().__init__(n_users, n_items, config)
        init, std = config.init, config.init_std
        self.user_emb = IdEmbedding(n_users, config.dim, init=init, init_std=std, ids="users")
        self.item_emb = IdEmbedding(n_items, config.dim, init=init, init_std=std, ids="items")
        self._graph: NormalizedBipartite | None = None

    def reset_parameters(self) -> None:
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()

    # ---- graph ----------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Build ``R̃`` and ``R̃^T`` (``U x I`` training matrix) on the embeddings' device."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )
        w = self.user_emb.weight
        self._graph = NormalizedBipartite.from_train(train, device=w.device, dtype=w.dtype)

    def graph(self) -> NormalizedBipartite:
        """The normalised graph, on the parameters' device (moved lazily after ``model.to(device)``)."""
        if self._graph is None:
            raise RuntimeError("LightGCN.prepare(train) must be called before training or scoring")
        check_graph_dtype(self._graph, self.user_emb.weight, "LightGCN")
        device = self.user_emb.weight.device
        if self._graph.device != device:
            self._graph = self._graph.to(device)
        return self._graph

    # ---- propagation ------------------------------------------------------------------------------------------
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of all users ``[U, d]`` and all items ``[I, d]`` (all K layers, layer mean);
        differentiable."""
        g = self.graph()
        u, i = self.user_emb.all(), self.item_emb.all()
        sum_u, sum_i = u, i
        for _ in range(self.config.layers):
            u, i = g.propagate(u, i)
            sum_u, sum_i = sum_u + u, sum_i + i
        scale = 1.0 / (self.config.layers + 1)
        return sum_u * scale, sum_i * scale

    def batch_embeddings(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Final and layer-0 embeddings of distinct ``users`` ``[Bu]`` and distinct ``items`` ``[Bi]``:
        ``(final_u [Bu, d], final_i [Bi, d], e0_u [Bu, d], e0_i [Bi, d])``, equal to ``propagate()`` and the
        tables at those rows, computed with the last layer only at those rows and a hand-written backward
        (:func:`recsys.graph.layer_mean_at_rows`)."""
        return layer_mean_at_rows(
            self.graph(), self.user_emb.all(), self.item_emb.all(), users, items, self.config.layers
        )

    # ---- training -------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """BPR + L2 on layer-0 embeddings; ``batch``: ``users``, ``pos``, ``neg`` LongTensor[B].
        Parts: ``bpr``, ``reg``."""
        users, pos, neg = batch["users"], batch["pos"], batch["neg"]
        b = users.numel()
        uniq_u, inv_u, cnt_u = torch.unique(users, return_inverse=True, return_counts=True)
        uniq_i, inv_i, cnt_i = torch.unique(torch.cat([pos, neg]), return_inverse=True, return_counts=True)
        fin_u, fin_i, e0_u, e0_i = self.batch_embeddings(uniq_u, uniq_i)
        e_u, e_i, e_j = fin_u[inv_u], fin_i[inv_i[:b]], fin_i[inv_i[b:]]
        bpr = F.softplus((e_u * e_j).sum(-1) - (e_u * e_i).sum(-1)).mean()
        # sum over the batch's triples of ||e^0||^2, each distinct row weighted by its multiplicity
        sq = (cnt_u * e0_u.pow(2).sum(-1)).sum() + (cnt_i * e0_i.pow(2).sum(-1)).sum()
        reg = self.config.reg * 0.5 * sq / b
        return bpr + reg, {"bpr": bpr, "reg": reg}

    # ---- inference (query_embeddings, item_embeddings, embeddings: PropagatedEmbeddings) --------------------
    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``propagate()`` without gradients: final user ``[U, d]`` and item ``[I, d]`` embeddings."""
        return self.propagate()

    def extra_repr(self) -> str:
        c = self.config
        return f"{super().extra_repr()}, dim={c.dim}, layers={c.layers}, reg={c.reg:g}"
