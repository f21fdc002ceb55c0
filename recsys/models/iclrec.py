r"""ICLRec: intent contrastive learning for sequential recommendation, on the shared SASRec encoder.

Yongjun Chen, Zhiwei Liu, Jia Li, Julian McAuley, Caiming Xiong. "Intent Contrastive Learning for Sequential
Recommendation." WWW 2022. https://arxiv.org/abs/2202.02519 (official code: salesforce/ICLRec, the parent of
ICSRec's).  Design choices and the differences from the code: ``docs/iclrec.md``.

Data (:class:`recsys.sequence_sampling.AugmentedPositionSampler`).  SASRec's binary per-position training
(:mod:`recsys.models.sasrec_bce`): one example per user, input :math:`x_u` = the training sequence without its
last item, the next item as the target at every position against one sampled negative.  Each epoch, two random
augmentations :math:`\tilde x^1_u, \tilde x^2_u` of every input (crop, mask or reorder, one drawn uniformly per
view: :mod:`recsys.sequence_augmentation`).

Representations, from the encoder's hidden states :math:`H = F(x) \in \mathbb{R}^{L \times d}`:
the intent representation :math:`\bar h(x)`, the mean of H over the real (non-padding) positions; the instance
representation :math:`h(x)`, H's L rows concatenated (``instance_representation: concatenate``, the
reference's default; padding rows are zeros) or :math:`\bar h(x)` (``mean``).

Losses on a batch of n users (:func:`recsys.contrastive.paired_info_nce`: symmetric InfoNCE over the 2n rows
of both views, temperature :math:`\tau = 1`, dot similarity, in-batch negatives):

.. math::
    L_{rec} = \text{SASRec's binary loss at every position of } x_u,

    L_{ins} = \mathrm{InfoNCE}\big(h(\tilde x^1), h(\tilde x^2)\big) \quad \text{(CL4SRec's sequence term)},

    L_{icl} = \tfrac12 \sum_{v=1,2} \mathrm{InfoNCE}\big(\bar h(\tilde x^v), \bar c_{k(u)}\big),

    L = L_{rec} + \lambda L_{ins} + \beta L_{icl}.

Intents.  At the start of every epoch the intent representations of all n training inputs are computed (no
dropout, no gradient) and clustered by k-means into K intents (faiss on the CPU, as ICSRec's:
:func:`recsys.models.icsrec.kmeans`, warm-started from the previous epoch's centroids as the reference's
persistent ``faiss.Clustering`` is).  User u's intent :math:`k(u)` is the centroid nearest (L2) to
:math:`\bar h(x_u)` of the recommendation pass (with dropout, no gradient); both views are contrasted with that
centroid L2-normalised, :math:`\bar c_k = c_k / \lVert c_k \rVert`, a constant for the gradient.

Defaults are the reference's Beauty / Sports scripts: :math:`\lambda = \beta = 0.1`, K = 256, ``random``
augmentation (:math:`\eta = 0.2, \gamma = 0.7, \beta_{reorder} = 0.2`), no false-negative mask; 1 block on Beauty
and 2 on Sports (the configs).  ``intent_loss: false`` is CL4SRec in ICLRec's code (its ``InstanceCL``
contrast type); with both terms off the model is ``sasrec_bce``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch.nn import functional as F

from features.sequences import PAD, SubsequenceSamples, UserSequences
from recsys.contrastive import paired_info_nce
from recsys.models.icsrec import encode_by_length, epoch_seed, nearest_intents, refit_centroids
from recsys.models.sasrec_bce import SASRecBCE, SASRecBCEConfig
from recsys.sequence_augmentation import OPERATORS, Operator, augment_sequences
from recsys.sequence_sampling import AugmentedPositionSampler, PositionSampler


class ICLRecConfig(SASRecBCEConfig):
    """ICLRec hyper-parameters: SASRec's encoder settings, the augmentations and the two contrastive terms."""

    name: Literal["iclrec"] = "iclrec"  # type: ignore[assignment]
    """Registry key."""
    instance_loss: bool = True
    """Use the instance (sequence-level, CL4SRec) contrastive term between the two views."""
    intent_loss: bool = True
    """Use the intent contrastive term and the per-epoch clustering."""
    instance_weight: float = Field(default=0.1, ge=0.0)
    """lambda, the weight of the instance term (the reference's ``cf_weight``)."""
    intent_weight: float = Field(default=0.1, ge=0.0)
    """beta, the weight of the intent term (the reference's ``intent_cf_weight``)."""
    intents: int = Field(default=256, ge=2)
    """K, the number of k-means intents."""
    temperature: float = Field(default=1.0, gt=0.0)
    """InfoNCE temperature of both terms (similarity: dot product)."""
    instance_representation: Literal["concatenate", "mean"] = "concatenate"
    """The instance term's view representation: all L hidden states concatenated (``[L * d]``, the reference's
    ``seq_representation_instancecl_type`` default), or their mean over the real positions."""
    augmentations: list[Operator] = Field(default_factory=lambda: list(OPERATORS), min_length=1)
    """The operators a view is drawn from, uniformly (all three: the reference's ``random``)."""
    crop_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    """eta: a crop keeps max(1, floor(eta * n)) items."""
    mask_ratio: float = Field(default=0.7, ge=0.0, le=1.0)
    """gamma: a mask hides floor(gamma * n) items."""
    reorder_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    """beta of the reorder operator: it shuffles floor(beta * n) contiguous items."""
    false_negative_mask: bool = False
    """The reference's ``--de_noise`` (off in its scripts): in-batch rows with the same last training target
    (instance term; the reference labels them by the validation item) or the same intent (intent term) are not
    negatives."""
    view_passes: Literal["separate", "shared"] = "separate"
    """``separate``: the intent term encodes the views in passes of its own, as the reference does (five
    encodings of each example per step); ``shared``: it reuses the instance term's (three; changes the
    numbers)."""
    kmeans_iters: int = Field(default=20, ge=1)
    """Lloyd iterations per round."""
    kmeans_redo: int = Field(default=5, ge=1)
    """Faiss ``nredo`` (the reference's 5); warm-started rounds continue from the previous round."""
    encode_batch_size: int = Field(default=4096, ge=1)
    """Inputs encoded per block for the clustering."""


def user_inputs(train: UserSequences, max_len: int) -> SubsequenceSamples:
    """One sample per user with >= 2 training items: the training sequence without its last item (its last
    ``max_len`` items) as the input, the last item as the target."""
    lengths = train.lengths
    users = np.flatnonzero(lengths >= 2)
    ends = train.offsets[users + 1] - 1  # the last item's flat position
    starts = np.maximum(train.offsets[users], ends - max_len)
    return SubsequenceSamples(train, users, starts, ends, train.items[ends], max_len)


def mean_over_items(hidden: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
    """The mean hidden state over each row's real positions: ``[B, L, d]`` and ``LongTensor[B, L]`` (the
    encoder's input, fitted to L) -> ``[B, d]``."""
    real = (seqs != PAD).to(hidden.dtype)  # [B, L]
    return (hidden * real[:, :, None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1.0)


class ICLRec(SASRecBCE):
    """ICLRec (Chen et al., WWW 2022) on the SASRec encoder; the method: this module's docstring and
    docs/iclrec.md.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`ICLRecConfig`.

    Buffers (saved with the weights, so that a resumed run continues from the same clustering):
        intent_prototypes: ``[K, d]`` the latest k-means centroids (raw, not normalised).
        prototype_epoch: how many clusterings have run, minus one (-1: none yet).
    """

    config_cls = ICLRecConfig
    config: ICLRecConfig
    intent_prototypes: torch.Tensor
    prototype_epoch: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: ICLRecConfig) -> None:
        super().__init__(n_users, n_items, config)
        # the intent view reads these through the intent_centroids / has_intents properties
        self.register_buffer("intent_prototypes", torch.zeros(config.intents, config.dim))
        self.register_buffer("prototype_epoch", torch.tensor(-1, dtype=torch.long))

    @property
    def uses_views(self) -> bool:
        """Whether the loss needs the two augmented views (either contrastive term is on)."""
        return self.config.instance_loss or self.config.intent_loss

    @property
    def has_prototypes(self) -> bool:
        return int(self.prototype_epoch) >= 0

    def make_sampler(self, train_cfg: Any, generator: torch.Generator) -> PositionSampler:
        """``sasrec_bce``'s sampler, plus two augmented views of every input when a contrastive term is on."""
        if not self.uses_views:
            return super().make_sampler(train_cfg, generator)
        if self.train_sequences is None:
            raise self._not_prepared("training")
        c = self.config
        augment = partial(
            augment_sequences, operators=c.augmentations, crop_ratio=c.crop_ratio, mask_ratio=c.mask_ratio,
            reorder_ratio=c.reorder_ratio,
        )  # fmt: skip
        return AugmentedPositionSampler(
            self.train_sequences, self.n_items, max_len=c.max_len, batch_size=train_cfg.batch_size,
            generator=generator, augment=augment,
        )  # fmt: skip

    # ---- representations and intents ------------------------------------------------------------------------
    def intent_representation(self, hidden: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """:math:`\\bar h`: the encoder's output ``[B, L, d]`` for ``seqs`` ``LongTensor[B, T]`` -> ``[B, d]``,
        the mean hidden state over the real positions."""
        return mean_over_items(hidden, self.encoder.fit_length(seqs))

    def instance_representation(self, hidden: torch.Tensor, seqs: torch.Tensor) -> torch.Tensor:
        """:math:`h`: the encoder's output ``[B, L, d]`` for ``seqs`` -> ``[B, L * d]`` (concatenate) or
        ``[B, d]`` (mean)."""
        if self.config.instance_representation == "mean":
            return self.intent_representation(hidden, seqs)
        return hidden.flatten(1)

    # ---- the training points the intents cluster (also the intent view: recsys.explain_sequence) ------------
    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        super().set_sequences(train, histories)
        self._intent_samples = user_inputs(train, self.config.max_len)

    @property
    def intent_samples(self) -> SubsequenceSamples | None:
        """Every training input (one per user with >= 2 training items, in user order) as a sample whose
        target is the user's last training item: the points the intents cluster."""
        return getattr(self, "_intent_samples", None)

    @property
    def intent_centroids(self) -> torch.Tensor:
        """The intents' centroids ``[K, d]`` (``intent_prototypes``), under the name the intent view reads."""
        return self.intent_prototypes

    @property
    def has_intents(self) -> bool:
        return self.has_prototypes

    @torch.no_grad()
    def encode_samples(self) -> torch.Tensor:
        """Intent representations of every training input (:attr:`intent_samples`), without dropout:
        ``[n, d]``."""
        samples = self.intent_samples
        if samples is None:
            raise self._not_prepared("encoding the training inputs")

        def encode(seqs: torch.Tensor) -> torch.Tensor:
            return self.intent_representation(self.encoder(seqs, dropout=False), seqs)

        return encode_by_length(
            samples, encode, self.config.dim, self._device(), self.config.encode_batch_size
        )

    @torch.no_grad()
    def encode_intent_queries(self, seqs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The representation intents are assigned by (the mean over real positions), without dropout:
        ``[B, T]`` -> ``[B, d]``."""
        seqs = self.check_sequences(seqs).to(self._device())
        return self.intent_representation(self.encoder(seqs, dropout=False), seqs)

    @torch.no_grad()
    def fit_intents(self, seed: int = 0) -> torch.Tensor:
        """Re-cluster the training inputs' intent representations into K intents (warm-started from the
        current prototypes once there are any) and store the centroids.  Returns them, ``[K, d]``."""
        reps = self.encode_samples().cpu().numpy()
        if reps.shape[0] <= self.config.intents:
            raise ValueError(
                f"model.intents={self.config.intents} must be smaller than the number of users with at least "
                f"2 training items ({reps.shape[0]}) to cluster them"
            )
        return refit_centroids(self.intent_prototypes, self.prototype_epoch, reps, self.config, seed)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Trainer hook: the epoch's intents, from the model as it stands at the start of the epoch (a pure
        function of the checkpointed state, so exact resume holds)."""
        if self.config.intent_loss:
            self.fit_intents(seed=epoch_seed(trainer, epoch))

    # ---- losses ---------------------------------------------------------------------------------------------
    def instance_contrastive_loss(
        self, hidden: tuple[torch.Tensor, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """CL4SRec's term: InfoNCE between the instance representations of the two views, from their hidden
        states ``[B, L, d]`` each."""
        labels = batch["targets"][:, -1] if self.config.false_negative_mask else None
        a = self.instance_representation(hidden[0], batch["view1"])
        b = self.instance_representation(hidden[1], batch["view2"])
        return paired_info_nce(a, b, labels, self.config.temperature)

    def intent_contrastive_loss(
        self, views: tuple[torch.Tensor, torch.Tensor], anchor: torch.Tensor
    ) -> torch.Tensor:
        """The mean over the two views ``[B, d]`` of InfoNCE against the normalised prototype nearest to the
        user's own (un-augmented) intent representation ``anchor`` ``[B, d]``."""
        if not self.has_prototypes:
            raise RuntimeError(
                "ICLRec has no intents yet: call fit_intents() first (the trainer does it at every epoch start)"
            )
        intent = nearest_intents(anchor.detach(), self.intent_prototypes)
        positive = F.normalize(self.intent_prototypes, dim=1)[intent]
        labels = intent if self.config.false_negative_mask else None
        t = self.config.temperature
        return 0.5 * (
            paired_info_nce(views[0], positive, labels, t) + paired_info_nce(views[1], positive, labels, t)
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``rec + lambda * instance + beta * intent`` on a batch of :class:`AugmentedPositionSampler`.

        Parts (they sum to the total): ``bce``, ``instance`` (= lambda * L_ins), ``intent`` (= beta * L_icl)."""
        c = self.config
        hidden = self.encoder(batch["inputs"])  # [B, L, d]
        bce = self.binary_loss(hidden, batch)
        parts = {"bce": bce}
        total = bce
        views: tuple[torch.Tensor, torch.Tensor] | None = None  # the views' hidden states
        if c.instance_loss:
            views = (self.encoder(batch["view1"]), self.encoder(batch["view2"]))
            parts["instance"] = c.instance_weight * self.instance_contrastive_loss(views, batch)
            total = total + parts["instance"]
        if c.intent_loss:
            if views is None or c.view_passes == "separate":
                views = (self.encoder(batch["view1"]), self.encoder(batch["view2"]))
            reps = (
                self.intent_representation(views[0], batch["view1"]),
                self.intent_representation(views[1], batch["view2"]),
            )
            anchor = self.intent_representation(hidden.detach(), batch["inputs"])
            parts["intent"] = c.intent_weight * self.intent_contrastive_loss(reps, anchor)
            total = total + parts["intent"]
        return total, parts

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"{super().extra_repr()}, intents={c.intents}, "
            f"instance={c.instance_loss}(lambda={c.instance_weight:g}, {c.instance_representation}), "
            f"intent={c.intent_loss}(beta={c.intent_weight:g}), augmentations={'/'.join(c.augmentations)}"
        )
