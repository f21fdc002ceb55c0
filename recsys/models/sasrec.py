r"""SASRec: self-attentive sequential recommendation, as ICSRec's (and ICLRec's) code defines it.

Wang-Cheng Kang, Julian McAuley. "Self-Attentive Sequential Recommendation." ICDM 2018.
https://arxiv.org/abs/1808.09781 — in the variant of the ICLRec / ICSRec code bases (Chen et al., "Intent
Contrastive Learning for Sequential Recommendation", WWW 2022; Qin et al., "Intent Contrastive Learning with
Cross Subsequences for Sequential Recommendation", WSDM 2024), which this module follows.

Encoder.  An input sequence is its last L = ``max_len`` items, left-padded to length L.  With item
embeddings :math:`M_i` and learned position embeddings :math:`P_t` (t = 0 .. L-1 over the padded window):

.. math::
    H^{(0)}_t = \mathrm{Dropout}(\mathrm{LN}(M_{s_t} + P_t)), \qquad
    A = \mathrm{LN}(H + \mathrm{Dropout}(\mathrm{MHA}(H, H, H; \text{mask}) W_O)), \qquad
    H' = \mathrm{LN}(A + \mathrm{Dropout}(\mathrm{GELU}(A W_1 + b_1) W_2 + b_2)),

two such post-LayerNorm blocks, 2 heads, FFN width 256, dropout 0.5 on the hidden states and on the
attention probabilities.  Position t attends to position t' only when t' <= t (causal) and t' holds an
item (padding mask).  The sequence representation is :math:`F = H^{(2)}_{L-1}`, the last position.

Scores and loss.  :math:`r_i = F^\top M_i` for every real item i (the padding symbol has no row in the
item table, so it is never ranked — unlike the reference code, whose padding row 0 is scored with the
items).  Training minimises the cross-entropy over all items at the last position, on the dynamic-sliding
samples (``features.sequences.dynamic_sliding_samples``): :math:`L = -\log \mathrm{softmax}(r)_{target}`.

Evaluation.  The query of user u is the encoding of u's items before the evaluated target: the training
items when validating, the training and validation items when testing, all known items when serving.
The trainer and ``eval.evaluate_model`` pick the history through :meth:`SASRec.query_context`
(histories, samples and queries: :mod:`recsys.models.sequential`, shared with GRU4Rec).

Computation.  Padded positions are masked keys and nothing reads their outputs, so the encoder computes
only the real positions (packed, :class:`PackedLayout`) plus each row's last one, and the last block only at
the last position, whose output is the representation; on Beauty, where the median input has 4 items out of
50, this skips most of the work.  Attention is computed in dense grids of rows of similar length
(:func:`attention_buckets`), not one ``[B, T, T]`` grid: a random batch nearly always holds some 50-item
input, and the dense attention with its dropout was about half the encoder's time (with the grids, encoder
forward and backward are 1.8x faster, an ICSRec batch 1.6x, a SASRec batch 1.5x, on one CPU thread).  It
computes the same function of the parameters as the reference's dense encoder (a test checks it against a
dense re-implementation with the reference's additive -10000 mask, with random vectors at the padded inputs).
Padding is embedded as zeros (the reference: row 0 of its item table, never updated by input lookups
(``padding_idx``) but scored, and so trained, as a negative of the next-item loss; either only reaches padded
outputs), and the last cell of an empty sequence attends to itself, so an empty history still has a finite
representation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from features.sequences import PAD
from recsys.embedding import IdEmbedding
from recsys.models.base import ModelConfig
from recsys.models.sequential import NextItemRecommender, SequenceEncoder


class SASRecConfig(ModelConfig):
    """SASRec hyper-parameters (defaults: ICSRec's settings for the Amazon datasets)."""

    name: Literal["sasrec"] = "sasrec"
    """Registry key."""
    dim: int = Field(default=64, ge=1)
    """Hidden size d (item and position embeddings, every block)."""
    max_len: int = Field(default=50, ge=1)
    """Input length L: sequences are truncated to their last L items and left-padded to L."""
    layers: int = Field(default=2, ge=1)
    """Number of transformer blocks."""
    heads: int = Field(default=2, ge=1)
    """Attention heads (must divide ``dim``)."""
    ffn_dim: int = Field(default=256, ge=1)
    """Width of the feed-forward layer of each block (4 d in the reference code)."""
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Dropout on the embeddings and on the output of every attention and feed-forward sub-layer."""
    attn_dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Dropout on the attention probabilities."""
    init_std: float = Field(default=0.02, gt=0)
    """Std of the N(0, std²) initialisation of embeddings and linear weights (biases start at 0)."""
    layer_norm_eps: float = Field(default=1e-12, gt=0)
    """LayerNorm epsilon (the reference code's TF-style 1e-12)."""

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> SASRecConfig:
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        return self


# ---- the encoder ------------------------------------------------------------------------------------------
def attention_mask(seqs: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """``BoolTensor[B, 1, T, T]``: True where query t may attend to key t' (t' <= t and t' not padding).

    ``causal=False`` (BERT4Rec's bidirectional encoder) drops the t' <= t condition: every query sees every
    non-padding key, later ones included.  Every query may also attend to itself, so that a padded query
    (all earlier keys are padding too) has a non-empty row; real queries are unaffected, and padded outputs
    never reach real ones (padded keys are masked in every layer)."""
    length = seqs.shape[1]
    keys = (seqs != PAD)[:, None, :]  # [B, 1, T]
    if causal:
        mask = torch.ones(length, length, dtype=torch.bool, device=seqs.device).tril() & keys  # [B, T, T]
    else:
        mask = keys.expand(-1, length, -1).clone()  # [B, T, T]; a copy, as the eye is or-ed in below
    mask |= torch.eye(length, dtype=torch.bool, device=seqs.device)
    return mask[:, None]


@dataclass
class AttentionBucket:
    """Rows of a batch attended together in a dense ``[rows, width]`` grid: the last ``width`` columns, which
    hold every computed cell of these rows (all earlier columns of a row are padding, i.e. masked keys).

    Attributes:
        tokens: ``LongTensor[n]``: packed indices of the bucket's computed tokens.
        cells: ``LongTensor[n]``: where each sits in the grid, ``local_row * width + column - (T - width)``.
        rows, width: the grid's shape.
        mask: ``BoolTensor[rows, 1, width, width]``: :func:`attention_mask` of the rows' last ``width`` columns.
    """

    tokens: torch.Tensor
    cells: torch.Tensor
    rows: int
    width: int
    mask: torch.Tensor

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Packed ``[N, d]`` -> the bucket's ``[rows, width, d]``, zeros at the cells not computed."""
        out = x.new_zeros(self.rows * self.width, x.shape[-1])
        return out.index_copy(0, self.cells, x[self.tokens]).view(self.rows, self.width, -1)


def attention_buckets(
    seqs: torch.Tensor, computed: torch.Tensor, flat: torch.Tensor, causal: bool = True
) -> tuple[list, torch.Tensor]:
    """Group the rows of a left-padded ``[B, T]`` batch by how many trailing columns they need, in classes of
    powers of two, so that attention costs about the sum of the rows' own squared lengths rather than
    ``B * T^2``.  The function computed is unchanged: a row's dropped leading columns are padding, masked
    keys whose attention probability is exactly 0 (and whose outputs nobody reads).  ``causal``: as
    :func:`attention_mask` (the dropped columns are padding whichever mask is used).

    With random batches of Amazon subsequences (median input 4 items, a few near 50) nearly every batch needs
    T = 50, and the dense ``[B, heads, T, T]`` attention with its dropout was about half the encoder's time.

    Returns:
        the buckets, and ``LongTensor[N]``: for each packed token, its index in the concatenation of the
        buckets' tokens (to put the buckets' outputs back in packed order).
    """
    b, t = seqs.shape
    first = computed.int().argmax(1)  # first computed column of each row
    need = t - first  # [B], >= 1: the last cell is always computed
    width_class = torch.clamp(2 ** torch.ceil(torch.log2(need.double())).long(), max=t)
    rows_of_token = flat // t
    cols_of_token = flat % t
    buckets, order = [], []
    for cls in torch.unique(width_class).tolist():
        in_bucket = width_class == cls
        rows = in_bucket.nonzero().squeeze(1)
        width = int(need[rows].max())
        local = torch.cumsum(in_bucket.long(), 0) - 1  # row -> its index within the bucket
        tokens = in_bucket[rows_of_token].nonzero().squeeze(1)
        cells = local[rows_of_token[tokens]] * width + cols_of_token[tokens] - (t - width)
        buckets.append(
            AttentionBucket(tokens, cells, len(rows), width, attention_mask(seqs[rows, t - width :], causal))
        )
        order.append(tokens)
    inverse = torch.empty_like(flat)
    inverse[torch.cat(order)] = torch.arange(flat.numel(), device=flat.device)
    return buckets, inverse


@dataclass
class PackedLayout:
    """Where the computed tokens of a left-padded ``[B, T]`` batch sit.

    Only real items and each row's last cell are computed (the last cell of an empty row stands for the
    empty sequence); their hidden states are kept packed, ``[N, d]`` in row-major order, and put into dense
    grids only for attention: one ``[B, T]`` grid for the last block's last position, and
    :class:`AttentionBucket` grids of rows of similar length for the full blocks.  Padded cells are masked
    keys, and their outputs are read by nobody, so skipping them changes no real output — and on Amazon data,
    where most inputs are far shorter than 50, it skips most of the work.

    Attributes:
        batch, length: B and T.
        flat: ``LongTensor[N]``: ``row * T + column`` of every computed token.
        last: ``LongTensor[B]``: packed index of each row's last cell.
        last_mask: ``BoolTensor[B, 1, 1, T]``: the last row of :func:`attention_mask` (the keys the last
            position attends to: the real items, and itself).
        buckets, unbucket: :func:`attention_buckets`.
    """

    batch: int
    length: int
    flat: torch.Tensor
    last: torch.Tensor
    last_mask: torch.Tensor
    buckets: list[AttentionBucket]
    unbucket: torch.Tensor

    def scatter(self, x: torch.Tensor) -> torch.Tensor:
        """Packed ``[N, d]`` -> ``[B, T, d]``, zeros at the cells not computed."""
        out = x.new_zeros(self.batch * self.length, x.shape[-1])
        return out.index_copy(0, self.flat, x).view(self.batch, self.length, -1)


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention with residual and post-LayerNorm: ``LN(x + Dropout(MHA(x) W_O))``."""

    def __init__(self, dim: int, heads: int, dropout: float, attn_dropout: float, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, d]`` -> ``[B, heads, T, d / heads]``."""
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(
        self, h: torch.Tensor, layout: PackedLayout, last_only: bool = False, dropout: bool | None = None
    ) -> torch.Tensor:
        """Packed hidden states ``[N, d]`` -> ``[N, d]``, or ``[B, d]`` for each row's last cell only
        (``last_only``: the last block of :meth:`SASRecEncoder.encode`, whose other outputs are unused).
        ``dropout``: apply dropout; ``None`` follows the module's mode."""
        active = self.training if dropout is None else dropout
        p = self.attn_dropout if active else 0.0
        keys, values = self.key(h), self.value(h)
        if last_only:
            h = h[layout.last]  # [B, d]
            q = self.query(h).view(layout.batch, self.heads, 1, -1)
            ctx = F.scaled_dot_product_attention(
                q,
                self._heads(layout.scatter(keys)),
                self._heads(layout.scatter(values)),
                attn_mask=layout.last_mask,
                dropout_p=p,
            )
            ctx = ctx.reshape(layout.batch, -1)
        else:
            queries, parts = self.query(h), []
            for bucket in layout.buckets:
                q, k, v = (self._heads(bucket.grid(x)) for x in (queries, keys, values))
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bucket.mask, dropout_p=p)
                parts.append(out.transpose(1, 2).reshape(bucket.rows * bucket.width, -1)[bucket.cells])
            ctx = torch.cat(parts)[layout.unbucket]
        return self.norm(h + F.dropout(self.out(ctx), self.dropout.p, active))


class FeedForwardLayer(nn.Module):
    """Position-wise ``LN(x + Dropout(GELU(x W_1 + b_1) W_2 + b_2))`` (exact, erf-based GELU)."""

    def __init__(self, dim: int, hidden: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.inner = nn.Linear(dim, hidden)
        self.outer = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """``[..., d]`` -> ``[..., d]``; ``dropout``: apply dropout (``None``: as the module's mode)."""
        active = self.training if dropout is None else dropout
        return self.norm(x + F.dropout(self.outer(F.gelu(self.inner(x))), self.dropout.p, active))


class TransformerBlock(nn.Module):
    """One SASRec block: self-attention, then feed-forward, each with residual and post-LayerNorm."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        c = config
        self.attention = SelfAttentionLayer(c.dim, c.heads, c.dropout, c.attn_dropout, c.layer_norm_eps)
        self.feed_forward = FeedForwardLayer(c.dim, c.ffn_dim, c.dropout, c.layer_norm_eps)

    def forward(
        self, h: torch.Tensor, layout: PackedLayout, last_only: bool = False, dropout: bool | None = None
    ) -> torch.Tensor:
        """Packed ``[N, d]`` -> ``[N, d]`` (or ``[B, d]`` with ``last_only``)."""
        return self.feed_forward(self.attention(h, layout, last_only, dropout), dropout)


class SASRecEncoder(SequenceEncoder):
    """Item-id sequences -> hidden states; the reusable half of SASRec (ICSRec encodes its views with it).

    Args:
        n_items: number of real items I (dense indices ``0..I-1``; ``PAD`` = -1 marks padding).
        config: :class:`SASRecConfig`.

    Attributes:
        item_emb: ``IdEmbedding[I, d]``, also the output item table of the scores.
        pos_emb: ``IdEmbedding[L, d]``, learned position embeddings over the padded window.
    """

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.n_items = n_items
        self.item_emb = IdEmbedding(n_items, config.dim, init="normal", init_std=config.init_std)
        self.pos_emb = IdEmbedding(config.max_len, config.dim, init="normal", init_std=config.init_std)
        self.emb_norm = nn.LayerNorm(config.dim, eps=config.layer_norm_eps)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.layers))
        # SASRec's configs have no such field (their fingerprints must not change): causal unless told
        self.causal: bool = getattr(config, "causal", True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference initialisation: N(0, init_std²) weights, zero biases, identity LayerNorms."""
        self.item_emb.reset_parameters()
        self.pos_emb.reset_parameters()
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=self.config.init_std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def fit_length(self, seqs: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, T]`` left-padded rows -> ``[B, L]``: the last L columns, or PAD-filled on the left,
        so that positions always index the same padded window."""
        length = self.config.max_len
        if seqs.dim() != 2:
            raise ValueError(f"expected item-id sequences of shape [B, T], got {tuple(seqs.shape)}")
        if seqs.shape[1] >= length:
            return seqs[:, -length:]
        return F.pad(seqs, (length - seqs.shape[1], 0), value=PAD)

    def embed_items(self, tokens: torch.Tensor) -> torch.Tensor:
        """Input item embeddings of computed cells: ``LongTensor[N]`` -> ``[N, d]``.

        Padding (only ever an empty row's last cell here) is embedded as zeros: no padding row in the table.
        Subclasses with special input symbols (BERT4Rec's mask) override this."""
        return self.item_emb(tokens.clamp(min=0)) * (tokens != PAD)[:, None]

    def _embed(self, seqs: torch.Tensor, dropout: bool | None) -> tuple[torch.Tensor, PackedLayout, int]:
        """Packed input states ``[N, d]``, their layout, and the first column kept of the padded window.

        Leading columns that are padding in every row are dropped first (position ids stay absolute), which
        is exact for the same reason as packing and shrinks the attention of short batches."""
        seqs = self.fit_length(seqs)
        real = seqs != PAD
        any_real = real.any(0)
        start = int(any_real.int().argmax()) if bool(any_real.any()) else seqs.shape[1] - 1
        start = min(start, seqs.shape[1] - 1)
        seqs, real = seqs[:, start:], real[:, start:]
        b, t = seqs.shape
        computed = real.clone()
        computed[:, -1] = True
        flat = computed.flatten().nonzero().squeeze(1)  # [N], row-major
        last = computed.sum(1).cumsum(0) - 1  # [B]
        cols = flat % t
        tokens = seqs.flatten()[flat]
        items = self.embed_items(tokens)
        active = self.training if dropout is None else dropout
        h = F.dropout(self.emb_norm(items + self.pos_emb(cols + start)), self.emb_dropout.p, active)
        buckets, unbucket = attention_buckets(seqs, computed, flat, self.causal)
        return h, PackedLayout(b, t, flat, last, computed[:, None, None, :], buckets, unbucket), start

    def forward(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """Hidden states of every position: ``LongTensor[B, T]`` (left-padded with PAD) -> ``[B, L, d]``;
        padded positions (except an empty row's last one) are not computed and hold zeros.

        ``dropout``: apply dropout; ``None`` (the default) follows the module's mode, ``False`` is
        inference without touching the mode, so other threads using the module are not affected."""
        h, layout, start = self._embed(seqs, dropout)
        for block in self.blocks:
            h = block(h, layout, dropout=dropout)
        out = layout.scatter(h)
        return F.pad(out, (0, 0, start, 0)) if start else out

    def encode(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor:
        """Sequence representations, the hidden state of the last position: ``LongTensor[B, T]`` -> ``[B, d]``.

        Equal to ``forward(seqs, dropout)[:, -1]``; the last block is computed at the last position only."""
        h, layout, _ = self._embed(seqs, dropout)
        for i, block in enumerate(self.blocks):
            h = block(h, layout, last_only=i == len(self.blocks) - 1, dropout=dropout)
        return h

    def item_embeddings(self) -> torch.Tensor:
        """``[I, d]``: the item table (real items only)."""
        return self.item_emb.all()


# ---- the model --------------------------------------------------------------------------------------------
class SASRec(NextItemRecommender):
    """SASRec (Kang & McAuley, ICDM 2018) trained with cross-entropy over all items.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`SASRecConfig`.

    Histories, samples, loss and inference are :class:`recsys.models.sequential.NextItemRecommender`'s; this
    class gives it the transformer encoder (:class:`SASRecEncoder`, ``self.encoder``).
    """

    # declared again: inferred, it would be type[SASRecConfig], which the subclasses' config classes do not
    # match (each narrows the Literal of ``name``)
    config_cls: ClassVar[type[ModelConfig]] = SASRecConfig
    config: SASRecConfig
    encoder: SASRecEncoder

    def build_encoder(self) -> SASRecEncoder:
        return SASRecEncoder(self.n_items, self.config)

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, dim={c.dim}, max_len={c.max_len}, layers={c.layers}, heads={c.heads}, "
            f"dropout={c.dropout:g}"
        )
