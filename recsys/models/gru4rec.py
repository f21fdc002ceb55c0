r"""GRU4Rec: a recurrent next-item model, the classic baseline of sequential recommendation.

Balázs Hidasi, Alexandros Karatzoglou, Linas Baltrunas, Domonkos Tikk. "Session-based Recommendations with
Recurrent Neural Networks." ICLR 2016. https://arxiv.org/abs/1511.06939 — trained with the cross-entropy over
all items, as the re-implementations used as baselines on the Amazon leave-one-out benchmarks do (Hidasi &
Karatzoglou, "Recurrent Neural Networks with Top-k Gains for Session-based Recommendations", CIKM 2018, made
that loss stable and found it a viable alternative to their ranking losses).  The layout follows the common
re-implementation of that setting (RecBole's GRU4Rec): item embeddings with dropout, a GRU, and a linear map
from its last hidden state back to the embedding space.  Two differences: the GRU here has its biases (torch's
default and the original GRU4Rec's; RecBole's has none), and every layer's weights get RecBole's Glorot
initialisation (RecBole's: the first layer's only).

Encoder.  For a user's last L = ``max_len`` items :math:`s_1 \dots s_n` (n <= L) with item embeddings
:math:`M_i \in \mathbb{R}^d`:

.. math::
    h_t = \mathrm{GRU}(\mathrm{Dropout}(M_{s_t}),\ h_{t-1}),\quad h_0 = 0, \qquad
    F = W h_n + b \in \mathbb{R}^d,

with ``layers`` stacked GRU layers of width ``hidden`` (no dropout between them) and :math:`h_n` the top
layer's state after the last item.  An empty history gives :math:`F = b` (the GRU never ran).

Scores, loss and queries are those of every next-item model (:mod:`recsys.models.sequential`):
:math:`r_i = F^\top M_i` over all real items, cross-entropy on the dynamic-sliding samples, and the user's
history before the evaluated target as the query.

Computation.  Inputs arrive left-padded (the layout SASRec's positions need); the encoder moves each row's
real items to the front (any ``PAD`` in a row is skipped, wherever it sits) and runs the GRU on a packed batch,
so padding costs nothing and never enters the recurrence.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from features.sequences import PAD
from recsys.embedding import IdEmbedding
from recsys.models.base import ModelConfig
from recsys.models.sequential import NextItemRecommender, SequenceEncoder


class GRU4RecConfig(ModelConfig):
    """GRU4Rec hyper-parameters (defaults: RecBole's GRU4Rec, whose GRU has no biases; this one has)."""

    name: Literal["gru4rec"] = "gru4rec"
    """Registry key."""
    dim: int = Field(default=64, ge=1)
    """Item embedding size d, which is also the size of the sequence representation."""
    hidden: int = Field(default=128, ge=1)
    """Width of the GRU's hidden state."""
    layers: int = Field(default=1, ge=1)
    """Number of stacked GRU layers."""
    max_len: int = Field(default=50, ge=1)
    """Input length L: a history is truncated to its last L items."""
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    """Dropout on the input item embeddings."""


class GRUEncoder(SequenceEncoder):
    """Item-id sequences -> the linear map of the GRU's last state (see the module docstring).

    Args:
        n_items: number of real items I (dense indices ``0..I-1``; ``PAD`` = -1 marks padding).
        config: :class:`GRU4RecConfig`.

    Attributes:
        item_emb: ``IdEmbedding[I, d]``, the input table and the output item table of the scores.
        gru: ``nn.GRU(d, hidden, layers)``.
        dense: ``Linear(hidden, d)``.
    """

    def __init__(self, n_items: int, config: GRU4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = IdEmbedding(n_items, config.dim, init="xavier_normal", ids="items")
        self.gru = nn.GRU(config.dim, config.hidden, num_layers=config.layers, batch_first=True)
        self.dense = nn.Linear(config.hidden, config.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-normal item table and Glorot-uniform GRU weight matrices of every layer; the
        GRU's biases and the linear map keep torch's defaults."""
        self.item_emb.reset_parameters()
        self.gru.reset_parameters()
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight_"):
                nn.init.xavier_uniform_(weight)
        self.dense.reset_parameters()

    def encode(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """Sequence representations ``LongTensor[B, T]`` (PAD-padded, oldest item first) -> ``[B, d]``.

        ``dropout``: apply dropout; ``None`` follows the module's mode, ``False`` is inference without
        touching the mode (threads may share the module)."""
        if seqs.dim() != 2:
            raise ValueError(f"expected item-id sequences of shape [B, T], got {tuple(seqs.shape)}")
        seqs = seqs[:, -self.config.max_len :]
        real = seqs != PAD
        lengths = real.sum(1)
        state = self.dense.weight.new_zeros(seqs.shape[0], self.config.hidden)  # h_0, kept by empty rows
        rows = (lengths > 0).nonzero().squeeze(1)
        if rows.numel():
            # real items first, in their order (a stable sort of "is padding"), cut to the longest row
            front = torch.argsort((~real[rows]).int(), dim=1, stable=True)
            tokens = seqs[rows].gather(1, front)[:, : int(lengths.max())]
            x = self.item_emb(tokens.clamp(min=0)) * (tokens != PAD)[..., None]
            active = self.training if dropout is None else dropout
            x = F.dropout(x, self.config.dropout, active)
            packed = pack_padded_sequence(x, lengths[rows].cpu(), batch_first=True, enforce_sorted=False)
            _, last = self.gru(packed)  # [layers, rows, hidden], in the input row order
            state = state.index_copy(0, rows, last[-1])
        return self.dense(state)

    def item_embeddings(self) -> torch.Tensor:
        """``[I, d]``: the item table."""
        return self.item_emb.all()


class GRU4Rec(NextItemRecommender):
    """GRU4Rec (Hidasi et al., ICLR 2016) trained with cross-entropy over all items.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`GRU4RecConfig`.

    Histories, samples, loss and inference are :class:`recsys.models.sequential.NextItemRecommender`'s; this
    class gives it the recurrent encoder (:class:`GRUEncoder`, ``self.encoder``).
    """

    config_cls = GRU4RecConfig
    config: GRU4RecConfig
    encoder: GRUEncoder

    def build_encoder(self) -> GRUEncoder:
        return GRUEncoder(self.n_items, self.config)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, dim={c.dim}, hidden={c.hidden}, layers={c.layers}, max_len={c.max_len}, "
            f"dropout={c.dropout:g}"
        )
