r"""SASRec trained as its paper trains it: a binary loss at every position, one sampled negative each.

Wang-Cheng Kang, Julian McAuley. "Self-Attentive Sequential Recommendation." ICDM 2018, eq. (5)
(https://arxiv.org/abs/1808.09781); the same loss trains SASRec in the ICLRec code base (salesforce/ICLRec,
``trainers.py``), the parent of ICSRec's, and is the likely source of the ICSRec paper's SASRec row
(``docs/icsrec.md``).  The encoder, the queries and serving are SASRec's (:mod:`recsys.models.sasrec`); only
the training data and the loss differ from ``sasrec``, which uses the cross-entropy over all items at the last
position of each dynamic-sliding sample.

Data (:class:`recsys.sequence_sampling.PositionSampler`).  One example per user: the training sequence
without its last item as the input, and at every position t the next item :math:`s_{t+1}` as the target and
one item :math:`j_t` the user never trained on, drawn uniformly anew every epoch, as the negative; the last
L = ``max_len`` positions.  Batches hold ``batch_size`` users.

Loss, with :math:`F_t` the encoder's hidden state at position t (causal attention: it sees
:math:`s_1 \dots s_t` only) and :math:`M` the item table, averaged over the positions with a target:

.. math::
    L = \frac{1}{|T|} \sum_{t \in T} \Big[ -\log \sigma(F_t^\top M_{s_{t+1}})
        - \log \big(1 - \sigma(F_t^\top M_{j_t})\big) \Big].
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch.nn import functional as F

from features.sequences import PAD, UserSequences
from recsys.models.base import ModelConfig
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.sequence_sampling import PositionSampler


class SASRecBCEConfig(SASRecConfig):
    """SASRec's encoder settings; trained with the binary loss at every position."""

    name: Literal["sasrec_bce"] = "sasrec_bce"  # type: ignore[assignment]
    """Registry key."""


class SASRecBCE(SASRec):
    """SASRec with the binary per-position loss of its paper (the method: the docstring of
    ``recsys/models/sasrec_bce.py``).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`SASRecBCEConfig`.
    """

    config_cls: ClassVar[type[ModelConfig]] = SASRecBCEConfig  # declared again: see SASRec.config_cls
    config: SASRecBCEConfig

    def __init__(self, n_users: int, n_items: int, config: SASRecBCEConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.train_sequences: UserSequences | None = None

    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        super().set_sequences(train, histories)
        self.train_sequences = train

    def make_sampler(self, train_cfg: Any, generator: torch.Generator) -> PositionSampler:
        """Every training user once per epoch, ``train_cfg.batch_size`` users per batch."""
        if self.train_sequences is None:
            raise self._not_prepared("training")
        return PositionSampler(
            self.train_sequences, self.n_items, max_len=self.config.max_len,
            batch_size=train_cfg.batch_size, generator=generator,
        )  # fmt: skip

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Binary cross-entropy of every target against its negative; ``batch``: ``inputs``, ``targets``,
        ``negatives`` ``LongTensor[B, L]`` (PAD where there is no target).  Parts: ``bce``."""
        bce = self.binary_loss(self.encoder(batch["inputs"]), batch)
        return bce, {"bce": bce}

    def binary_loss(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mean binary loss over the positions with a target, from the hidden states ``[B, L, d]`` of
        ``batch["inputs"]``."""
        has_target = batch["targets"] != PAD
        h = hidden[has_target]  # [P, d]
        table = self.encoder.item_embeddings()
        pos = (h * table[batch["targets"][has_target]]).sum(-1)
        neg = (h * table[batch["negatives"][has_target]]).sum(-1)
        # -log sigmoid(x) = softplus(-x), -log(1 - sigmoid(x)) = softplus(x): exact and stable
        return (F.softplus(-pos) + F.softplus(neg)).mean()
