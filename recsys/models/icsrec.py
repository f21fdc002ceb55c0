r"""ICSRec: intent contrastive learning with cross subsequences, on the shared SASRec encoder.

Xiuyuan Qin, Huanhuan Yuan, Pengpeng Zhao, Guanfeng Liu, Fuzhen Zhuang, Victor S. Sheng. "Intent Contrastive
Learning with Cross Subsequences for Sequential Recommendation." WSDM 2024. https://arxiv.org/abs/2310.14318
(official code: QinHsiu/ICSRec, built on ICLRec — Chen et al., WWW 2022). Design choices and the reference
code's quirks: ``docs/icsrec.md``.

Samples.  The dynamic-sliding subsequences of SASRec (:func:`features.sequences.dynamic_sliding_samples`):
sample :math:`s` is an input :math:`x_s` (at most L items) and its next item :math:`y_s`.  Its encoding is
:math:`h_s = F(x_s) \in \mathbb{R}^d`, the SASRec encoder's last position.

Cross subsequences.  Each anchor :math:`s` is paired with another training subsequence :math:`s^+` with the
same target, :math:`y_{s^+} = y_s`, whose input differs from :math:`x_s` (:class:`CrossSubsequences`; when no
such subsequence exists, the anchor itself, encoded again under another dropout mask).  Both are encoded in
training mode: :math:`h^1 = F(x_s)`, :math:`h^2 = F(x_{s^+})`.

Losses, on a batch of n anchors (:func:`recsys.contrastive.paired_info_nce`, temperature :math:`\tau = 1`,
dot similarity, the 2n rows of both views as in-batch negatives):

.. math::
    L_{rec} = -\log \mathrm{softmax}(M h_s)_{y_s} \quad \text{(all items, SASRec's loss)},

    L_{coarse} = \mathrm{InfoNCE}(h^1, h^2;\ \text{rows with the anchor's target masked as negatives}),

    L_{fine} = \sum_{v=1,2} \mathrm{InfoNCE}(h^v, \bar c_{k(h^v)};\ \text{rows of the same intent masked}),

    L = L_{rec} + \lambda L_{coarse} + \beta L_{fine}.

Intents.  At the start of every epoch all N training subsequences are encoded (no dropout, no gradient)
and clustered by k-means into K intents :math:`c_1..c_K` (faiss, on the CPU, ``kmeans_redo`` rounds of
``kmeans_iters`` Lloyd iterations warm-started from the previous epoch's centroids).  A view is assigned its
nearest centroid in L2 distance, :math:`k(h) = \arg\min_k \lVert h - c_k \rVert`, and contrasted with that
centroid L2-normalised, :math:`\bar c_k = c_k / \lVert c_k \rVert` (the centroids are constants for the
gradient).

Defaults are the paper's Beauty / Sports settings: :math:`\lambda = 0.3`, :math:`\beta = 0.1`, K = 256.
``coarse_loss`` / ``fine_loss`` switch the two terms for the paper's ablations; with both off the model is
SASRec trained on the same samples, with the same batches and the same loss.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from features.sequences import SubsequenceSamples, UserSequences
from recsys.contrastive import paired_info_nce
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.sequence_sampling import CrossSubsequences, CrossSubsequenceSampler


class ICSRecConfig(SASRecConfig):
    """ICSRec hyper-parameters: SASRec's encoder settings plus the intent contrastive terms."""

    name: Literal["icsrec"] = "icsrec"  # type: ignore[assignment]
    """Registry key."""
    coarse_loss: bool = True
    """Use the coarse-grain intent contrastive term (ablation switch)."""
    fine_loss: bool = True
    """Use the fine-grain intent contrastive term and the per-epoch clustering (ablation switch)."""
    coarse_weight: float = Field(default=0.3, ge=0.0)
    """lambda, the weight of the coarse-grain term."""
    fine_weight: float = Field(default=0.1, ge=0.0)
    """beta, the weight of the fine-grain term."""
    intents: int = Field(default=256, ge=2)
    """K, the number of k-means intents."""
    temperature: float = Field(default=1.0, gt=0.0)
    """InfoNCE temperature (similarity: dot product)."""
    false_negative_mask: bool = True
    """Mask in-batch rows with the anchor's target (coarse) or intent (fine) out of the negatives.  The
    reference enables it with ``--f_neg``, whose help text says the opposite (the "inverted flag")."""
    coarse_positive: Literal["random", "last"] = "random"
    """Which same-target subsequence is an anchor's positive: ``random``, drawn anew every epoch from the
    seeded generator; ``last``, the reference code's fixed choice (the last one in sample order)."""
    rec_pass: Literal["separate", "shared"] = "separate"
    """``separate``: the next-item loss encodes the anchor in its own pass (the reference's three encoder
    passes per batch, three dropout masks); ``shared``: the first contrastive view reuses that encoding
    (two passes; changes the numbers)."""
    kmeans_iters: int = Field(default=20, ge=1)
    """Lloyd iterations per round (``kmeans_redo`` rounds per epoch)."""
    kmeans_redo: int = Field(default=5, ge=1)
    """Faiss ``nredo``, as in the reference (5).  The first, cold clustering keeps the best of that many random
    restarts; a warm-started one continues each "restart" from the previous one's centroids (faiss re-draws
    only centroids beyond the given ones), so it runs ``kmeans_iters x kmeans_redo`` Lloyd iterations (100 with
    the defaults), exactly as the reference's persistent ``faiss.Clustering`` does."""
    encode_batch_size: int = Field(default=4096, ge=1)
    """Subsequences encoded per block for the clustering."""


# ---- intents ----------------------------------------------------------------------------------------------
def nearest_intents(reps: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """``[B, d]`` x ``[K, d]`` -> ``LongTensor[B]``: the centroid nearest in L2 distance (lowest index on
    ties), :math:`\\arg\\max_k (h^\\top c_k - \\lVert c_k \\rVert^2 / 2)`."""
    return (reps @ centroids.T - 0.5 * (centroids * centroids).sum(1)).argmax(1)


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    iters: int,
    seed: int,
    init: np.ndarray | None = None,
    redo: int = 1,
) -> np.ndarray:
    """Faiss k-means on the CPU: ``float32[N, d]`` -> centroids ``float32[K, d]``.

    ``init`` (``[K, d]``) warm-starts Lloyd's iterations from given centroids (``faiss.Kmeans.train``'s
    ``init_centroids``); faiss then continues each of the ``redo`` rounds from the previous round's centroids,
    i.e. ``iters * redo`` iterations in all (tested).  Without ``init`` faiss picks K random points for each of
    the ``redo`` restarts and keeps the best.  Uses as many OpenMP threads as torch uses intra-op threads."""
    import faiss

    n, d = x.shape
    if n <= k:
        raise ValueError(
            f"model.intents={k} must be smaller than the number of training subsequences ({n}) to cluster them"
        )
    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    km = faiss.Kmeans(
        d, k, niter=iters, nredo=redo, seed=seed, gpu=False,
        max_points_per_centroid=4096, min_points_per_centroid=1,
    )  # fmt: skip
    km.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init)
    assert km.centroids is not None  # None only until train() has run
    return km.centroids.astype(np.float32, copy=True)


def encode_by_length(
    samples: SubsequenceSamples, encode: Any, dim: int, device: torch.device, block: int
) -> torch.Tensor:
    """``encode(inputs LongTensor[b, L]) -> [b, d]`` over every sample's input, ``[N, d]`` in sample order.

    Samples are encoded in blocks of similar length (sorted by input length), so each block is trimmed to its
    longest input by the encoder: most Amazon inputs are far shorter than L."""
    order = np.argsort(samples.ends - samples.starts, kind="stable")
    out = torch.empty(len(samples), dim, device=device)
    for i in range(0, order.size, block):
        idx = order[i : i + block]
        out[torch.from_numpy(idx).to(device)] = encode(torch.from_numpy(samples.inputs(idx)).to(device))
    return out


def refit_centroids(
    centroids: torch.Tensor, count: torch.Tensor, reps: np.ndarray, config: Any, seed: int
) -> torch.Tensor:
    """One epoch's clustering, shared by ICSRec and ICLRec: k-means of ``reps`` ``[N, d]`` into the buffer
    ``centroids`` ``[K, d]``, warm-started from it once ``count`` (the clusterings so far, minus one) is >= 0;
    then ``count`` += 1.  ``config``: ``intents``, ``kmeans_iters``, ``kmeans_redo``.  Returns ``centroids``."""
    init = centroids.cpu().numpy() if int(count) >= 0 else None
    fitted = kmeans(
        reps, config.intents, iters=config.kmeans_iters, seed=seed, init=init, redo=config.kmeans_redo
    )
    centroids.copy_(torch.from_numpy(fitted))
    count += 1
    return centroids


def epoch_seed(trainer: Any, epoch: int) -> int:
    """The seed of an epoch's clustering: a pure function of the run's seed and the epoch (exact resume)."""
    seed = int(getattr(getattr(trainer, "cfg", None), "seed", 0))
    return (seed * 1_000_003 + epoch) % (2**31 - 1)


# ---- the model --------------------------------------------------------------------------------------------
class ICSRec(SASRec):
    """ICSRec (Qin et al., WSDM 2024) on the SASRec encoder; the method: this module's docstring and
    docs/icsrec.md.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`ICSRecConfig`.

    Buffers (saved with the weights, so a loaded run keeps its intents):
        intent_centroids: ``[K, d]`` the latest k-means centroids (raw, not normalised).
        intent_epoch: how many clusterings have run (-1 + count; -1: none yet).
    """

    config_cls = ICSRecConfig
    config: ICSRecConfig
    intent_centroids: torch.Tensor
    intent_epoch: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: ICSRecConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.register_buffer("intent_centroids", torch.zeros(config.intents, config.dim))
        self.register_buffer("intent_epoch", torch.tensor(-1, dtype=torch.long))
        self.cross: CrossSubsequences | None = None

    @property
    def uses_views(self) -> bool:
        """Whether the loss needs the two contrastive views (either intent term is on)."""
        return self.config.coarse_loss or self.config.fine_loss

    @property
    def has_intents(self) -> bool:
        return int(self.intent_epoch) >= 0

    # ---- set-up ---------------------------------------------------------------------------------------------
    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        super().set_sequences(train, histories)
        assert self.train_samples is not None  # the base's set_sequences has just built them
        self.cross = CrossSubsequences(self.train_samples) if self.uses_views else None

    def make_sampler(self, train_cfg: Any, generator: torch.Generator):
        """SASRec's sampler, plus each anchor's cross subsequence when an intent term is on."""
        if not self.uses_views:
            return super().make_sampler(train_cfg, generator)
        if self.train_samples is None or self.cross is None:
            raise self._not_prepared("training")
        return CrossSubsequenceSampler(
            self.train_samples, self.cross, self.config.coarse_positive,
            batch_size=train_cfg.batch_size, generator=generator,
        )  # fmt: skip

    # ---- intents --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_samples(self, samples: SubsequenceSamples | None = None) -> torch.Tensor:
        """Representations of all training subsequences ``[N, d]`` (sample order), without dropout, in blocks
        of similar length (:func:`encode_by_length`)."""
        samples = self.train_samples if samples is None else samples
        if samples is None:
            raise self._not_prepared("encoding samples")
        encode = partial(self.encoder.encode, dropout=False)
        return encode_by_length(
            samples, encode, self.config.dim, self._device(), self.config.encode_batch_size
        )

    # the intent view (recsys.explain_sequence): the clustered points are the training subsequences, and a
    # sequence is placed among them by its query representation
    @property
    def intent_samples(self) -> SubsequenceSamples | None:
        """The training points the intents cluster, in the order of :meth:`encode_samples`."""
        return self.train_samples

    def encode_intent_queries(self, seqs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The representation intents are assigned by, without dropout: ``[B, T]`` -> ``[B, d]``."""
        return self.encode_sequences(seqs)

    @torch.no_grad()
    def fit_intents(self, seed: int = 0) -> torch.Tensor:
        """Re-cluster all training subsequences into K intents (warm-started from the current centroids once
        there are any) and store the centroids.  Returns them, ``[K, d]``."""
        reps = self.encode_samples().cpu().numpy()
        return refit_centroids(self.intent_centroids, self.intent_epoch, reps, self.config, seed)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Trainer hook: the epoch's intents, from the model as it stands at the start of the epoch (a pure
        function of the checkpointed state, so exact resume holds)."""
        if self.config.fine_loss:
            self.fit_intents(seed=epoch_seed(trainer, epoch))

    # ---- losses ---------------------------------------------------------------------------------------------
    def coarse_grain_loss(
        self, view1: torch.Tensor, view2: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """InfoNCE between anchors ``[B, d]`` and their cross subsequences ``[B, d]``; rows sharing the
        anchor's target (``LongTensor[B]``) are masked out of the negatives when ``false_negative_mask``."""
        labels = targets if self.config.false_negative_mask else None
        return paired_info_nce(view1, view2, labels, self.config.temperature)

    def fine_grain_loss(self, view: torch.Tensor) -> torch.Tensor:
        """InfoNCE between a view ``[B, d]`` and its nearest intent centroids, L2-normalised ``[B, d]``;
        rows of the same intent are masked out of the negatives when ``false_negative_mask``."""
        if not self.has_intents:
            raise RuntimeError(
                "ICSRec has no intents yet: call fit_intents() first (the trainer does it at every epoch start)"
            )
        centroids = self.intent_centroids
        intent = nearest_intents(view.detach(), centroids)
        positive = F.normalize(centroids, dim=1)[intent]
        labels = intent if self.config.false_negative_mask else None
        return paired_info_nce(view, positive, labels, self.config.temperature)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + lambda * coarse + beta * fine`` on a batch of :class:`CrossSubsequenceSampler`.

        Parts (they sum to the total): ``ce``, ``coarse`` (= lambda * L_coarse), ``fine`` (= beta * L_fine)."""
        c = self.config
        anchor = self.encoder.encode(batch["inputs"])
        ce = F.cross_entropy(anchor @ self.encoder.item_embeddings().T, batch["targets"])
        parts = {"ce": ce}
        if not self.uses_views:
            return ce, parts
        # Separate encoder calls (not one call on the stacked rows: measured 9% slower, the packed attention
        # of a 3x taller batch costs more than the kernel launches it saves).
        view1 = self.encoder.encode(batch["inputs"]) if c.rec_pass == "separate" else anchor
        view2 = self.encoder.encode(batch["positive_inputs"])
        total = ce
        if c.coarse_loss:
            parts["coarse"] = c.coarse_weight * self.coarse_grain_loss(view1, view2, batch["targets"])
            total = total + parts["coarse"]
        if c.fine_loss:
            parts["fine"] = c.fine_weight * (self.fine_grain_loss(view1) + self.fine_grain_loss(view2))
            total = total + parts["fine"]
        return total, parts

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, intents={c.intents}, coarse={c.coarse_loss}(lambda={c.coarse_weight:g}), "
            f"fine={c.fine_loss}(beta={c.fine_weight:g}), positive={c.coarse_positive}"
        )
