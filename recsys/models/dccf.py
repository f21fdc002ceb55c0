r"""DCCF: disentangled contrastive collaborative filtering.

Xubin Ren, Lianghao Xia, Jiashu Zhao, Dawei Yin, Chao Huang. "Disentangled Contrastive Collaborative
Filtering." SIGIR 2023. https://arxiv.org/abs/2305.02759 (official code: github.com/HKUDS/DCCF).

Method (Section 3 of the paper, as the official code computes it).  Users and items start from free
embeddings :math:`E^{(0)}` (``d = 32``).  Each of the ``L = 2`` layers computes four messages from
:math:`E^{(l)}`:

* graph message :math:`Z^{(l)} = \hat A E^{(l)}`, :math:`\hat A = D^{-1/2} A D^{-1/2}` the symmetric
  normalised bipartite graph without self loops (:mod:`recsys.graph`);
* intent message :math:`R^{(l)} = \mathrm{softmax}(E^{(l)} C)\, C^\top`, per node, softmax over the ``K = 128``
  intents, with prototypes :math:`C \in \mathbb{R}^{d \times K}` (one matrix for users, one for items,
  shared by all layers);
* two adaptively masked propagations :math:`M_V E^{(l)}` for :math:`V \in \{Z^{(l)}, R^{(l)}\}`, where the
  edge ``(h, t)`` of the graph gets the weight :math:`\alpha_{ht} = (\cos(v_h, v_t) + 1) / 2` and
  :math:`M_V = D_\alpha^{-1} \alpha` divides it by the row sum of its head node (so the weights of a node's
  edges sum to one).  The masks are differentiable functions of the views (the official code does not
  detach them).

:math:`E^{(l+1)} = Z^{(l)} + R^{(l)} + M_Z E^{(l)} + M_R E^{(l)} + E^{(l)}`; the final embedding is the
*sum* :math:`E^{(0)} + ... + E^{(L)}` and the score the inner product.

Loss on a batch of ``B`` triples ``(u, i, j)`` (all parts as the official code computes them):

.. math::
    L = \frac{1}{B}\sum \mathrm{softplus}(\hat y_{uj} - \hat y_{ui})
      + \lambda_1 \sum_{\text{batch rows}} (\|e^{(0)}_u\|^2 + \|e^{(0)}_i\|^2 + \|e^{(0)}_j\|^2)
      + \lambda_2 (\|C_U\|_F^2 + \|C_I\|_F^2)
      + \lambda_3 \sum_{l} \sum_{V \in \{R, M_Z E, M_R E\}} \big[\mathrm{InfoNCE}(Z^{(l)}_{\mathcal U}, V^{(l)}_{\mathcal U})
      + \mathrm{InfoNCE}(Z^{(l)}_{\mathcal I}, V^{(l)}_{\mathcal I})\big]

with :math:`\lambda_1 = 2.5\cdot10^{-5}`, :math:`\lambda_2 = 5\cdot10^{-3}`, :math:`\lambda_3 = 0.1`,
:math:`\mathcal U` the distinct users and :math:`\mathcal I` the distinct positive items of the batch, and
InfoNCE over L2-normalised views, temperature 1, in-batch negatives (:func:`recsys.contrastive.info_nce`).

Ablation switches (the paper's Table 3 variants; each only removes computation):

* ``disentangle = False`` ("w/o Disen"): no intent prototypes, hence no intent message :math:`R`, no
  intent-conditioned mask :math:`M_R` and no InfoNCE terms involving them;
* ``mask_local = False`` / ``mask_global = False`` / both ("w/o LocalR", "w/o GlobalR", "w/o AllAda"): drop the
  graph-conditioned mask :math:`M_Z` / the intent-conditioned mask :math:`M_R` / both, with their message and
  their InfoNCE term;
* ``contrastive = False`` ("w/o CL"): ``ssl_reg`` is ignored and no InfoNCE is computed.

Computation (CPU-friendly, exact).  Every product with the graph is a torch CSR kernel: the symmetric
propagation uses the stored transposes of :class:`recsys.graph.NormalizedBipartite`; the masks live on the
``E`` training pairs only (the cosine is symmetric, so one weight per pair serves both directions), their
weights come from a sampled dense-dense product and their propagation from a CSR product with learned values
(:class:`recsys.graph.CSRPattern`).  No dense ``N x N`` or ``E x E`` tensor, and no ``E x d`` tensor, is ever
built.  InfoNCE is computed in row blocks with its gradient formed in the forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import scipy.sparse as sp
import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from recsys.contrastive import info_nce
from recsys.embedding import IdEmbedding
from recsys.graph import CSRPattern, NormalizedBipartite, check_graph_dtype, sparse_matmul
from recsys.models.base import ModelConfig, PropagatedEmbeddings, Recommender


class DCCFConfig(ModelConfig):
    """DCCF hyper-parameters; defaults are the official code's Gowalla setting."""

    name: Literal["dccf"] = "dccf"
    """Registry key."""
    dim: int = Field(default=32, ge=1)
    """Embedding size d."""
    layers: int = Field(default=2, ge=1)
    """Number of layers L."""
    intents: int = Field(default=128, ge=1)
    """Number of latent intents K (columns of each prototype matrix)."""
    emb_reg: float = Field(default=2.5e-5, ge=0)
    """Weight of the squared L2 norm of the batch's layer-0 embeddings (summed over the batch rows)."""
    intent_reg: float = Field(default=5e-3, ge=0)
    """Weight of the squared Frobenius norms of both prototype matrices."""
    ssl_reg: float = Field(default=0.1, ge=0)
    """Weight of the summed InfoNCE terms."""
    temperature: float = Field(default=1.0, gt=0)
    """InfoNCE temperature."""
    disentangle: bool = True
    """Use intent prototypes (the intent message, its mask and its contrastive views). False: "w/o Disen"."""
    mask_local: bool = True
    """Use the adaptive mask computed from the graph message Z. False: "w/o LocalR"."""
    mask_global: bool = True
    """Use the adaptive mask computed from the intent message R. False: "w/o GlobalR"."""
    contrastive: bool = True
    """Add the InfoNCE terms. False: "w/o CL"."""
    init: Literal["xavier_normal", "normal"] = "xavier_normal"
    """Initialisation of the id embeddings (the official code: Xavier normal; prototypes always Xavier normal)."""
    init_std: float = Field(default=0.1, gt=0)
    """Standard deviation of the ``normal`` initialisation."""


@dataclass
class DCCFViews:
    """Per-layer views of one forward pass; every tensor is ``[U + I, d]`` (users first), or ``None`` when the
    configuration switches it off.  ``layers[l]`` is :math:`E^{(l)}` (``L + 1`` entries)."""

    layers: list[torch.Tensor]
    graph: list[torch.Tensor]
    intent: list[torch.Tensor | None]
    mask_local: list[torch.Tensor | None]
    mask_global: list[torch.Tensor | None]

    @property
    def final(self) -> torch.Tensor:
        """The layer sum :math:`E^{(0)} + ... + E^{(L)}`, ``[U + I, d]``."""
        return torch.stack(self.layers).sum(0)


class DCCF(PropagatedEmbeddings, Recommender):
    """DCCF (Ren et al., SIGIR 2023).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`DCCFConfig`.

    Call :meth:`prepare` with the training matrix before :meth:`loss` or scoring.
    """

    config_cls = DCCFConfig
    config: DCCFConfig
    # registered as None parameters when disentangle is off
    user_intent: nn.Parameter | None
    item_intent: nn.Parameter | None

    def __init__(self, n_users: int, n_items: int, config: DCCFConfig) -> None:
        super().__init__(n_users, n_items, config)
        init, std = config.init, config.init_std
        self.user_emb = IdEmbedding(n_users, config.dim, init=init, init_std=std, ids="users")
        self.item_emb = IdEmbedding(n_items, config.dim, init=init, init_std=std, ids="items")
        if config.disentangle:
            self.user_intent = nn.Parameter(torch.empty(config.dim, config.intents))
            self.item_intent = nn.Parameter(torch.empty(config.dim, config.intents))
        else:
            self.register_parameter("user_intent", None)
            self.register_parameter("item_intent", None)
        self._graph: NormalizedBipartite | None = None
        self._pattern: CSRPattern | None = None
        self._pair_users: torch.Tensor | None = None  # user of every training pair, in the pattern's order
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.user_emb.reset_parameters()
        self.item_emb.reset_parameters()
        if self.user_intent is not None and self.item_intent is not None:
            nn.init.xavier_normal_(self.user_intent)
            nn.init.xavier_normal_(self.item_intent)

    # ---- graph ----------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Build the normalised graph and the pattern of the training pairs (``U x I``) on the parameters'
        device."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )
        w = self.user_emb.weight
        self._graph = NormalizedBipartite.from_train(train, device=w.device, dtype=w.dtype)
        self._pattern = CSRPattern.from_csr(self._graph.r)
        self._pair_users = self._pattern.rows()

    def _structures(self) -> tuple[NormalizedBipartite, CSRPattern]:
        if self._graph is None or self._pattern is None or self._pair_users is None:
            raise RuntimeError("DCCF.prepare(train) must be called before training or scoring")
        check_graph_dtype(self._graph, self.user_emb.weight, "DCCF")
        device = self.user_emb.weight.device
        if self._graph.device != device:
            self._graph, self._pattern = self._graph.to(device), self._pattern.to(device)
            self._pair_users = self._pair_users.to(device)
        return self._graph, self._pattern

    # ---- the four messages ----------------------------------------------------------------------------------
    def intent_message(self, e: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """``softmax(e C) C^T``: ``e`` ``[N, d]``, ``C`` ``[d, K]`` -> ``[N, d]``."""
        return torch.softmax(e @ prototypes, dim=1) @ prototypes.T

    def intent_weights(self, e: torch.Tensor, side: Literal["user", "item"]) -> torch.Tensor:
        """``softmax(e C)``: the weight each node of ``e`` ``[N, d]`` puts on each intent, ``[N, K]``."""
        user_intent, item_intent = self.intent_prototypes()
        return torch.softmax(e @ (user_intent if side == "user" else item_intent), dim=1)

    def intent_prototypes(self) -> tuple[nn.Parameter, nn.Parameter]:
        """The intent prototypes ``C`` of users and of items, ``[d, K]`` each."""
        if self.user_intent is None or self.item_intent is None:
            raise RuntimeError("this DCCF has no intents (disentangle=False)")
        return self.user_intent, self.item_intent

    def masked_message(
        self, view_u: torch.Tensor, view_i: torch.Tensor, e_u: torch.Tensor, e_i: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adaptive mask from a view, applied to ``E``.

        Edge weight of every training pair ``(u, i)``: ``alpha = (cos(view_u[u], view_i[i]) + 1) / 2``
        (the same for both directions); a user's row is divided by the sum of its edges' weights, and so is
        an item's.  Returns ``(M E)_U`` ``[U, d]`` and ``(M E)_I`` ``[I, d]``.
        """
        _, pattern = self._structures()
        alpha = (pattern.sddmm(F.normalize(view_u, dim=1), F.normalize(view_i, dim=1)) + 1.0) / 2.0
        user_sum, item_sum = pattern.row_sum(alpha), pattern.col_sum(alpha)
        user_inv = torch.where(user_sum > 0, 1.0 / user_sum, torch.zeros_like(user_sum))
        item_inv = torch.where(item_sum > 0, 1.0 / item_sum, torch.zeros_like(item_sum))
        # both directions are indexed by the same pairs: entry e is user rows[e] and item col[e]
        to_users = pattern.matmul(alpha * user_inv[self._pair_users], e_i)
        to_items = pattern.transpose_matmul(alpha * item_inv[pattern.col], e_u)
        return to_users, to_items

    def forward_views(self) -> DCCFViews:
        """All layers over all nodes, with the per-layer views the contrastive loss reads; differentiable."""
        graph, _ = self._structures()
        c = self.config
        e_u, e_i = self.user_emb.all(), self.item_emb.all()
        views = DCCFViews([torch.cat([e_u, e_i])], [], [], [], [])
        use_intent = c.disentangle
        for _ in range(c.layers):
            z_u, z_i = sparse_matmul(graph.r, graph.rt, e_i), sparse_matmul(graph.rt, graph.r, e_u)
            nxt_u, nxt_i = z_u + e_u, z_i + e_i
            views.graph.append(torch.cat([z_u, z_i]))
            r = None
            if use_intent:
                user_intent, item_intent = self.intent_prototypes()
                r_u = self.intent_message(e_u, user_intent)
                r_i = self.intent_message(e_i, item_intent)
                nxt_u, nxt_i = nxt_u + r_u, nxt_i + r_i
                r = torch.cat([r_u, r_i])
            views.intent.append(r)
            local = None
            if c.mask_local:
                m_u, m_i = self.masked_message(z_u, z_i, e_u, e_i)
                nxt_u, nxt_i = nxt_u + m_u, nxt_i + m_i
                local = torch.cat([m_u, m_i])
            views.mask_local.append(local)
            glob = None
            if c.mask_global and use_intent:
                m_u, m_i = self.masked_message(r_u, r_i, e_u, e_i)
                nxt_u, nxt_i = nxt_u + m_u, nxt_i + m_i
                glob = torch.cat([m_u, m_i])
            views.mask_global.append(glob)
            e_u, e_i = nxt_u, nxt_i
            views.layers.append(torch.cat([e_u, e_i]))
        return views

    # ---- training -------------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """BPR + L2 on layer-0 rows + prototype norms + InfoNCE; ``batch``: ``users``, ``pos``, ``neg``
        LongTensor[B].  Parts: ``bpr``, ``emb_reg``, ``intent_reg``, ``ssl``."""
        c = self.config
        users, pos, neg = batch["users"], batch["pos"], batch["neg"]
        views = self.forward_views()
        final = views.final
        n_u = self.n_users
        e_u, e_i, e_j = final[users], final[n_u + pos], final[n_u + neg]
        bpr = F.softplus((e_u * e_j).sum(-1) - (e_u * e_i).sum(-1)).mean()
        e0 = views.layers[0]
        emb_reg = c.emb_reg * (
            e0[users].pow(2).sum() + e0[n_u + pos].pow(2).sum() + e0[n_u + neg].pow(2).sum()
        )
        parts = {"bpr": bpr, "emb_reg": emb_reg}
        total = bpr + emb_reg
        if c.disentangle:
            user_intent, item_intent = self.intent_prototypes()
            intent_reg = c.intent_reg * (user_intent.pow(2).sum() + item_intent.pow(2).sum())
            parts["intent_reg"] = intent_reg
            total = total + intent_reg
        if c.contrastive and c.ssl_reg > 0:
            ssl = c.ssl_reg * self.contrastive_loss(views, torch.unique(users), torch.unique(pos))
            parts["ssl"] = ssl
            total = total + ssl
        return total, parts

    def contrastive_loss(self, views: DCCFViews, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Sum over layers and sides of InfoNCE(Z, V) for every other view V present, at the distinct batch
        ``users`` ``[Bu]`` and items ``[Bi]`` (L2-normalised rows, temperature ``config.temperature``)."""
        rows = torch.cat([users, self.n_users + items])
        n_u = users.numel()
        total = views.layers[0].new_zeros(())
        for layer, z in enumerate(views.graph):
            anchor = F.normalize(z[rows], dim=1)
            for other in (views.intent[layer], views.mask_local[layer], views.mask_global[layer]):
                if other is None:
                    continue
                v = F.normalize(other[rows], dim=1)
                total = total + info_nce(anchor[:n_u], v[:n_u], self.config.temperature)
                total = total + info_nce(anchor[n_u:], v[n_u:], self.config.temperature)
        return total

    # ---- inference --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user ``[U, d]`` and item ``[I, d]`` embeddings (layer sum), without gradients."""
        final = self.forward_views().final
        return final[: self.n_users], final[self.n_users :]

    def extra_repr(self) -> str:
        c = self.config
        flags = [k for k in ("disentangle", "mask_local", "mask_global", "contrastive") if not getattr(c, k)]
        off = f", off={flags}" if flags else ""
        return f"{super().extra_repr()}, dim={c.dim}, layers={c.layers}, intents={c.intents}{off}"
