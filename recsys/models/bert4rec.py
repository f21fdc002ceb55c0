r"""BERT4Rec: a bidirectional transformer trained on the cloze task, on the shared SASRec encoder.

Fei Sun, Jun Liu, Jian Wu, Changhua Pei, Xiao Lin, Wenwu Ou, Peng Jiang. "BERT4Rec: Sequential Recommendation
with Bidirectional Encoder Representations from Transformer." CIKM 2019. https://arxiv.org/abs/1904.06690
Design choices and the differences from RecBole's implementation: ``docs/bert4rec.md``.

Encoder.  SASRec's blocks (:class:`recsys.models.sasrec.SASRecEncoder`) with bidirectional attention
(``causal: false``): every position attends to every non-padding position, later ones included.  An input
cell may hold :data:`recsys.sequence_sampling.MASK`, embedded by a learned vector :math:`m` instead of an
item row.  The output of position t goes through the paper's projection (eq. 7; the LayerNorm is the
authors' code's and RecBole's):

.. math::
    g(h_t) = \mathrm{LN}(\mathrm{GELU}(h_t W^P + b^P)), \qquad r_i = g(h_t)^\top M_i + b^O_i,

with :math:`M` the (shared) input item table and :math:`b^O` a learned bias per item.

Training (:class:`recsys.sequence_sampling.ClozeSampler`).  One example per user: the training sequence (its
last L items), each item replaced by MASK with probability :math:`\rho` = ``mask_ratio`` (at least one per
example), or, with probability ``last_item_ratio``, the last item alone.  The loss is the cross-entropy over
all items at the masked positions :math:`\mathcal M`, averaged over the batch's masked positions:
:math:`L = -\frac{1}{|\mathcal M|} \sum_{t \in \mathcal M} \log \mathrm{softmax}(r_t)_{s_t}`.

Queries.  A history is queried with a MASK appended (the last L cells: the last L-1 items and the MASK), and
its representation is the projection at that last cell.  So that evaluation, indexes and serving keep
scoring by an inner product, the bias is one more column: the query is :math:`[g(h), 1]` and item i's vector
:math:`[M_i, b^O_i]`, both of width d + 1 (``bias_columns = 1``: item-to-item similarity in serving
compares the :math:`M_i` alone).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from features.sequences import PAD, UserSequences
from recsys.models.sasrec import SASRec, SASRecConfig, SASRecEncoder
from recsys.sequence_sampling import MASK, ClozeSampler


class BERT4RecConfig(SASRecConfig):
    """BERT4Rec hyper-parameters (defaults: the paper's Beauty settings, section 4)."""

    name: Literal["bert4rec"] = "bert4rec"  # type: ignore[assignment]
    """Registry key."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout on the embeddings and on the output of every sub-layer (the paper's 0.1)."""
    attn_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout on the attention probabilities (the paper's 0.1)."""
    mask_ratio: float = Field(default=0.6, gt=0.0, le=1.0)
    """rho, the probability that a training item is masked (the paper's 0.6 for Beauty; RecBole's 0.2)."""
    last_item_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    """The probability that a training example masks its last item only (the paper adds such samples without
    giving their share; 0.5 is RecBole's ``ft_ratio``, which it draws per batch rather than per example)."""
    causal: bool = False
    """Causal attention instead of bidirectional (an ablation: a left-to-right model on the cloze task)."""


class BERT4RecEncoder(SASRecEncoder):
    """The bidirectional encoder with the mask embedding and the output projection.

    Attributes (beyond :class:`SASRecEncoder`'s):
        mask_emb: ``[d]``, the input embedding of :data:`MASK`.
        project: the output projection g, ``[..., d]`` -> ``[..., d]``.
        item_bias: ``[I]``, the output bias per item.
    """

    def __init__(self, n_items: int, config: BERT4RecConfig) -> None:
        super().__init__(n_items, config)
        self.mask_emb = nn.Parameter(torch.empty(config.dim))
        self.item_bias = nn.Parameter(torch.empty(n_items))
        self.project = nn.Sequential(
            nn.Linear(config.dim, config.dim), nn.GELU(), nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        )
        self.reset_parameters()  # again, now with the parts above

    def reset_parameters(self) -> None:
        super().reset_parameters()  # also the projection's Linear and LayerNorm (it walks all modules)
        if "mask_emb" in self._parameters:  # not yet when the base's __init__ calls this
            nn.init.normal_(self.mask_emb, mean=0.0, std=self.config.init_std)
            nn.init.zeros_(self.item_bias)

    def embed_items(self, tokens: torch.Tensor) -> torch.Tensor:
        """``LongTensor[N]`` -> ``[N, d]``: items, zeros for padding, ``mask_emb`` for MASK."""
        items = super().embed_items(tokens)
        return torch.where((tokens == MASK)[:, None], self.mask_emb, items)

    def encode(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """The projected last position ``g(h_{L-1})``: ``LongTensor[B, T]`` -> ``[B, d]`` (queries end with
        MASK: :func:`with_mask`)."""
        return self.project(super().encode(seqs, dropout))


def with_mask(seqs: torch.Tensor, max_len: int) -> torch.Tensor:
    """The query input of histories: ``LongTensor[B, T]`` -> ``[B, min(T + 1, L)]``, MASK appended and the
    last L cells kept (a full history loses its oldest item to the MASK)."""
    mask = torch.full((seqs.shape[0], 1), MASK, dtype=seqs.dtype, device=seqs.device)
    return torch.cat([seqs, mask], 1)[:, -max_len:]


class BERT4Rec(SASRec):
    """BERT4Rec (the method: the docstring of ``recsys/models/bert4rec.py``).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`BERT4RecConfig`.
    """

    config_cls = BERT4RecConfig
    bias_columns: ClassVar[int] = 1  # the output bias b^O, the last column of item_embeddings
    config: BERT4RecConfig
    encoder: BERT4RecEncoder

    def __init__(self, n_users: int, n_items: int, config: BERT4RecConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.train_sequences: UserSequences | None = None

    def build_encoder(self) -> BERT4RecEncoder:
        return BERT4RecEncoder(self.n_items, self.config)

    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        super().set_sequences(train, histories)
        self.train_sequences = train

    def make_sampler(self, train_cfg: Any, generator: torch.Generator) -> ClozeSampler:
        """Every training user once per epoch, masked anew, ``train_cfg.batch_size`` users per batch."""
        if self.train_sequences is None:
            raise self._not_prepared("training")
        c = self.config
        return ClozeSampler(
            self.train_sequences, max_len=c.max_len, mask_ratio=c.mask_ratio,
            last_item_ratio=c.last_item_ratio, batch_size=train_cfg.batch_size, generator=generator,
        )  # fmt: skip

    # ---- training ---------------------------------------------------------------------------------------
    def scores(self, projected: torch.Tensor) -> torch.Tensor:
        """Projected states ``[P, d]`` -> scores over all real items ``[P, I]`` (with the item bias)."""
        return projected @ self.encoder.item_embeddings().T + self.encoder.item_bias

    def logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """Histories ``LongTensor[B, T]`` -> scores of their next item ``[B, I]`` (queried with MASK)."""
        return self.scores(self.encoder.encode(with_mask(seqs, self.config.max_len)))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over all items at the masked positions, averaged over them; ``batch``: ``inputs``
        (with MASK) and ``targets`` (PAD where nothing is masked), ``LongTensor[B, L]``.  Parts: ``ce``."""
        hidden = self.encoder(batch["inputs"])  # [B, L, d]
        masked = batch["targets"] != PAD
        ce = F.cross_entropy(self.scores(self.encoder.project(hidden[masked])), batch["targets"][masked])
        return ce, {"ce": ce}

    # ---- inference --------------------------------------------------------------------------------------
    @property
    def query_dim(self) -> int:
        """d + 1: the projection, and a 1 that meets the item bias in :meth:`item_embeddings`."""
        return self.config.dim + 1

    def encode_query_block(self, seqs: torch.Tensor) -> torch.Tensor:
        """Histories ``[b, T]`` -> queries ``[b, d + 1]``: the projection at a MASK appended to each, and a 1.
        :meth:`encode_sequences` (the base's) checks the items (MASK is refused: it is no item) and blocks
        the rows by length."""
        projected = self.encoder.encode(with_mask(seqs, self.config.max_len), dropout=False)
        return torch.cat([projected, projected.new_ones(projected.shape[0], 1)], 1)

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """``[I, d + 1]``: the item table with the output bias as the last column (a copy)."""
        return torch.cat([self.encoder.item_embeddings(), self.encoder.item_bias[:, None]], 1)

    def extra_repr(self) -> str:
        c = self.config
        return f"{super().extra_repr()}, mask_ratio={c.mask_ratio:g}, causal={c.causal}"
