r"""DuoRec: contrastive regularisation of a SASRec encoder with dropout and same-target positives.

Ruihong Qiu, Zi Huang, Hongzhi Yin, Zijian Wang. "Contrastive Learning for Representation Degeneration Problem
in Sequential Recommendation." WSDM 2022. https://arxiv.org/abs/2110.05730 (official code: RuihongQiu/DuoRec,
on RecBole).  ICSRec's coarse-grain term (``recsys.models.icsrec``) grew out of DuoRec's supervised term.
Choices and differences from the reference code: ``docs/duorec.md``.

Samples and encoder are SASRec's (:mod:`recsys.models.sasrec`): sample :math:`s` is an input :math:`x_s` (at
most L items) and its next item :math:`y_s`; :math:`F(x)` is the encoder's last position, computed in training
mode (so each call draws new dropout masks).

Views, for a batch of n anchors.

* :math:`h = F(x_s)`, the encoding the next-item loss is computed from;
* the *unsupervised* view :math:`h' = F(x_s)`, the same input encoded again (another dropout mask);
* the *supervised* view :math:`h^+ = F(x_{s^+})`, where :math:`s^+` is another training sample with the same
  target, :math:`y_{s^+} = y_s`, drawn uniformly anew every epoch (identical inputs of other users count;
  when :math:`y_s` is no other sample's target, :math:`s^+ = s`, as in the reference).

Loss (:func:`recsys.contrastive.paired_info_nce`: NT-Xent over the 2n rows of both views, the other 2n - 2 rows
as negatives, similarity :math:`u^\top v / \tau` or the cosine over :math:`\tau`):

.. math::
    L = L_{rec}(h) + \begin{cases}
        \lambda_{sup}\, \mathrm{NCE}(h', h^+) & \texttt{contrast=duorec} \text{ (the paper's DuoRec)} \\
        \lambda_{unsup}\, \mathrm{NCE}(h, h') & \texttt{contrast=unsupervised} \\
        \lambda_{sup}\, \mathrm{NCE}(h, h^+) & \texttt{contrast=supervised} \\
        \lambda_{unsup}\, \mathrm{NCE}(h, h') + \lambda_{sup}\, \mathrm{NCE}(h, h^+) & \texttt{contrast=both}
    \end{cases}

with :math:`L_{rec}` the cross-entropy over all items (SASRec's loss).  The four cases are the reference's
``--contrast`` values ``us_x``, ``un``, ``su`` and ``us``; its published command runs ``us_x`` with
:math:`\lambda_{sup} = 0.1`, :math:`\tau = 1`, dot similarity, the defaults here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from features.sequences import UserSequences
from recsys.contrastive import paired_info_nce
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.sequence_sampling import CrossSubsequences, CrossSubsequenceSampler


class DuoRecConfig(SASRecConfig):
    """DuoRec hyper-parameters: SASRec's encoder settings plus the contrastive regulariser (defaults: the
    reference's ``duorec.sh`` and ``DuoRec.yaml``)."""

    name: Literal["duorec"] = "duorec"  # type: ignore[assignment]
    """Registry key."""
    contrast: Literal["duorec", "unsupervised", "supervised", "both"] = "duorec"
    """Which views are contrasted (the reference's ``--contrast`` ``us_x`` / ``un`` / ``su`` / ``us``):
    ``duorec``, a second dropout view of the anchor against a same-target sample; ``unsupervised``, the anchor's
    encoding against a second dropout view; ``supervised``, the anchor's encoding against a same-target sample;
    ``both``, the last two terms."""
    supervised_weight: float = Field(default=0.1, ge=0.0)
    """lambda_sup (the reference's ``lmd_sem``), the weight of the term with the same-target sample."""
    unsupervised_weight: float = Field(default=0.1, ge=0.0)
    """lambda_unsup (the reference's ``lmd``), the weight of the dropout-only term."""
    temperature: float = Field(default=1.0, gt=0.0)
    """tau, the InfoNCE temperature."""
    similarity: Literal["dot", "cosine"] = "dot"
    """Similarity of two views: dot product, or cosine (both views L2-normalised first)."""
    false_negative_mask: bool = False
    """Mask in-batch rows with the anchor's target out of the negatives (the reference does not: off; ICSRec's
    coarse term does)."""


class DuoRec(SASRec):
    """DuoRec (Qiu et al., WSDM 2022) on the SASRec encoder; the method: the docstring of
    ``recsys/models/duorec.py`` and docs/duorec.md.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`DuoRecConfig`.

    Inference, serving and the saved weights are SASRec's: the regulariser only changes training.
    """

    config_cls = DuoRecConfig
    config: DuoRecConfig

    def __init__(self, n_users: int, n_items: int, config: DuoRecConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.cross: CrossSubsequences | None = None

    @property
    def uses_positives(self) -> bool:
        """Whether the loss needs a same-target sample per anchor."""
        return self.config.contrast != "unsupervised"

    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        super().set_sequences(train, histories)
        assert self.train_samples is not None  # the base's set_sequences has just built them
        self.cross = CrossSubsequences(self.train_samples) if self.uses_positives else None

    def make_sampler(self, train_cfg: Any, generator: torch.Generator):
        """SASRec's sampler, plus each anchor's same-target sample when the loss uses one."""
        if not self.uses_positives:
            return super().make_sampler(train_cfg, generator)
        if self.train_samples is None or self.cross is None:
            raise self._not_prepared("training")
        return CrossSubsequenceSampler(
            self.train_samples,
            self.cross,
            "same_target",
            batch_size=train_cfg.batch_size,
            generator=generator,
        )

    def contrastive_loss(self, a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NT-Xent between two aligned views ``[B, d]``; rows sharing the anchor's target (``LongTensor[B]``)
        are masked out of the negatives when ``false_negative_mask``."""
        c = self.config
        if c.similarity == "cosine":
            a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        return paired_info_nce(a, b, targets if c.false_negative_mask else None, c.temperature)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Next-item cross-entropy plus the weighted contrastive term(s), on a batch of
        :class:`CrossSubsequenceSampler` (``contrast=unsupervised``: of :class:`SequenceSampler`).

        Parts (they sum to the total): ``ce``, ``unsupervised`` (= lambda_unsup * its NCE), ``supervised``
        (= lambda_sup * its NCE)."""
        c = self.config
        targets = batch["targets"]
        anchor = self.encoder.encode(batch["inputs"])
        ce = F.cross_entropy(anchor @ self.encoder.item_embeddings().T, targets)
        parts = {"ce": ce}
        if c.contrast == "duorec":
            dropout_view = self.encoder.encode(batch["inputs"])
            positive = self.encoder.encode(batch["positive_inputs"])
            parts["supervised"] = c.supervised_weight * self.contrastive_loss(dropout_view, positive, targets)
        if c.contrast in ("unsupervised", "both"):
            dropout_view = self.encoder.encode(batch["inputs"])
            parts["unsupervised"] = c.unsupervised_weight * self.contrastive_loss(
                anchor, dropout_view, targets
            )
        if c.contrast in ("supervised", "both"):
            positive = self.encoder.encode(batch["positive_inputs"])
            parts["supervised"] = c.supervised_weight * self.contrastive_loss(anchor, positive, targets)
        return sum(parts.values()), parts  # type: ignore[return-value]

    def extra_repr(self) -> str:
        c = self.config
        weights = []
        if c.contrast in ("unsupervised", "both"):
            weights.append(f"unsup={c.unsupervised_weight:g}")
        if self.uses_positives:
            weights.append(f"sup={c.supervised_weight:g}")
        return (
            f"{super().extra_repr()}, contrast={c.contrast}({', '.join(weights)}), tau={c.temperature:g}, "
            f"sim={c.similarity}"
        )
