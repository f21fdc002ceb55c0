"""What every next-item sequence model shares, whatever its encoder (SASRec's transformer, GRU4Rec's GRU).

A next-item model encodes a user's item sequence (oldest first, the last ``max_len`` items, left-padded with
``PAD``) into one vector :math:`F \\in \\mathbb{R}^d` and scores every real item i by :math:`F^\\top M_i`, with
:math:`M` the encoder's own item table.  It is trained with the cross-entropy over all items on the
dynamic-sliding samples (``features.sequences.dynamic_sliding_samples``: each training prefix predicts the item
after it), and queried with the user's history before the evaluated target (:class:`HistoryQueries`).

The encoder is a module with

* ``encode(seqs: LongTensor[B, T], dropout: bool | None) -> Tensor[B, d]``: the representations (``dropout``
  ``None`` follows the module's mode, ``False`` is inference without touching it, so threads may share it);
* ``item_embeddings() -> Tensor[I, d]``: the item table (the trained parameters themselves);
* ``reset_parameters()``.

Subclasses build it in :meth:`NextItemRecommender.build_encoder`; their config has ``dim`` (d) and
``max_len`` (L).
"""

from __future__ import annotations

import abc
from typing import Any, Protocol, cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F

from features.sequences import PAD, SubsequenceSamples, UserSequences, dynamic_sliding_samples, user_sequences
from recsys.models.base import CONTEXT_SPLITS, HistoryQueries, ModelConfig, Recommender


class SequenceEncoder(nn.Module, abc.ABC):
    """The interface of a sequence encoder (see the module docstring); the encoders subclass it so that the
    models' calls through ``self.encoder`` are type-checked, and an encoder missing a method fails when it is
    built, not at its first use."""

    @abc.abstractmethod
    def encode(self, seqs: torch.Tensor, dropout: bool | None = None) -> torch.Tensor: ...

    @abc.abstractmethod
    def item_embeddings(self) -> torch.Tensor: ...

    @abc.abstractmethod
    def reset_parameters(self) -> None: ...


class SequenceConfig(Protocol):
    """The fields this base reads from a sequence model's config (each subclass's config class has them;
    they are in no common config base, since a config's fields and their order make its fingerprint)."""

    dim: int
    max_len: int


class NextItemRecommender(HistoryQueries, Recommender):
    """Base of the next-item sequence models: histories, samples, loss and inference around an encoder.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: the model's config, with ``dim`` and ``max_len``.

    Sequence-model contract (beyond :class:`Recommender`), used through duck typing by the pipeline, the
    trainer and the evaluation:

    * :meth:`prepare_dataset` receives the prepared dataset after ``prepare`` and builds the ordered
      histories and the training samples (``recsys.pipeline.prepare_model`` calls it);
    * :meth:`make_sampler` gives the trainer the epoch's sampler (a :class:`SequenceSampler`);
    * :meth:`query_context` selects the history queries are built from (``eval.evaluate_model`` enters
      it with the evaluated split);
    * :meth:`encode_sequences` encodes item-id sequences (``recommend --sequence``, serving).
    """

    encoder: SequenceEncoder

    def __init__(self, n_users: int, n_items: int, config: ModelConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.encoder = self.build_encoder()
        self.histories: dict[str, UserSequences] = {}
        self.train_samples: SubsequenceSamples | None = None

    def build_encoder(self) -> SequenceEncoder:  # pragma: no cover - overridden
        """The sequence encoder (see the module docstring for its interface)."""
        raise NotImplementedError

    @property
    def sequence_config(self) -> SequenceConfig:
        """The model's config, typed as what this base reads of it."""
        # every subclass's config has dim and max_len; ModelConfig, the declared type, does not
        return cast(SequenceConfig, self.config)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()

    def _not_prepared(self, then: str) -> RuntimeError:
        name = type(self).__name__
        return RuntimeError(
            f"{name}.prepare_dataset(dataset) (or set_sequences) must be called before {then}"
        )

    # ---- set-up ---------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Check the training matrix's shape (the order of the items comes from :meth:`prepare_dataset`)."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )

    def prepare_dataset(self, dataset: Any) -> None:
        """Build every user's ordered histories and the dynamic-sliding training samples from a prepared
        dataset with a time-ordered split (leave-one-out or temporal)."""
        if (dataset.n_users, dataset.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"{dataset.root}: dataset has {dataset.n_users} users x {dataset.n_items} items, model expects "
                f"{self.n_users} x {self.n_items}"
            )
        present = [s for s in ("valid", "test") if dataset.manifest["counts"].get(s, 0) > 0]
        histories = {
            ctx: user_sequences(dataset, [s for s in splits if s == "train" or s in present])
            for ctx, splits in CONTEXT_SPLITS.items()
        }
        self.set_sequences(histories["valid"], histories)

    def set_sequences(self, train: UserSequences, histories: dict[str, UserSequences] | None = None) -> None:
        """Use ``train`` (per-user training sequences) for the samples and ``histories`` (context name ->
        sequences; missing contexts default to ``train``) for queries."""
        for name, seqs in {"train": train, **(histories or {})}.items():
            if seqs.n_users != self.n_users:
                raise ValueError(
                    f"sequences {name!r} cover {seqs.n_users} users, model expects {self.n_users}"
                )
            if seqs.items.size and (seqs.items.min() < 0 or seqs.items.max() >= self.n_items):
                raise ValueError(f"sequences {name!r} hold item indices outside [0, {self.n_items})")
        self.histories = {ctx: (histories or {}).get(ctx, train) for ctx in CONTEXT_SPLITS}
        self.train_samples = dynamic_sliding_samples(train, max_len=self.sequence_config.max_len)

    def make_sampler(self, train_cfg: Any, generator: torch.Generator):
        """The trainer's sampler for one epoch: all training samples, shuffled, ``train_cfg.batch_size`` each."""
        from recsys.sequence_sampling import SequenceSampler

        if self.train_samples is None:
            raise self._not_prepared("training")
        return SequenceSampler(self.train_samples, batch_size=train_cfg.batch_size, generator=generator)

    # ---- training -------------------------------------------------------------------------------------------
    def logits(self, seqs: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B, T]`` inputs -> scores over all real items ``[B, I]``."""
        return self.encoder.encode(seqs) @ self.encoder.item_embeddings().T

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over all items; ``batch``: ``inputs`` LongTensor[B, L], ``targets`` LongTensor[B].
        Parts: ``ce``."""
        ce = F.cross_entropy(self.logits(batch["inputs"]), batch["targets"])
        return ce, {"ce": ce}

    # ---- inference ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_sequences(self, seqs: torch.Tensor | np.ndarray, batch_size: int = 2048) -> torch.Tensor:
        """Representations of item-id sequences ``[B, T]`` (left-padded with PAD) -> ``[B, d]``, in blocks.

        Inference: without dropout and without gradients, whatever mode the model is in. The mode is not
        touched, so threads may share the model, even one in training mode. Rows are encoded in order of
        length, so that each block is trimmed to its longest row (most histories are short), and returned in
        the input order. Item indices must be in ``0..I-1`` (or PAD): a ValueError names any other."""
        seqs = self.check_sequences(seqs)
        device = self._device()
        order = torch.argsort((seqs != PAD).sum(1), stable=True)
        out = torch.empty(seqs.shape[0], self.query_dim, device=device)
        for i in range(0, seqs.shape[0], batch_size):
            rows = order[i : i + batch_size]
            out[rows.to(device)] = self.encode_query_block(seqs[rows].to(device))
        return out

    @property
    def query_dim(self) -> int:
        """The width of a query (and of an item vector): d, unless the model scores with more columns."""
        return self.sequence_config.dim

    def encode_query_block(self, seqs: torch.Tensor) -> torch.Tensor:
        """One block of checked histories on the model's device -> queries ``[b, query_dim]``, no dropout."""
        return self.encoder.encode(seqs, dropout=False)

    def check_sequences(self, seqs: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Item-id sequences ``[B, T]`` as a ``LongTensor``; a ValueError for anything but integer item indices
        in ``0..I-1`` or PAD in two dimensions."""
        seqs = torch.as_tensor(seqs)
        if seqs.dtype.is_floating_point or seqs.dtype.is_complex or seqs.dtype == torch.bool:
            raise ValueError(f"item indices must be integers, got a {seqs.dtype} array")  # 1.7 read as 1
        if seqs.dim() != 2:  # before indexing: a 1-D input failed with a raw IndexError
            raise ValueError(f"expected item-id sequences of shape [B, T], got {tuple(seqs.shape)}")
        seqs = seqs.long()
        bad = seqs[(seqs != PAD) & ((seqs < 0) | (seqs >= self.n_items))]
        if bad.numel():
            # -7 used to be read as item 0 (the embedding lookup clamps), I or more failed deep in torch
            raise ValueError(
                f"item indices must be in 0..{self.n_items - 1} (or {PAD} for padding), got {bad[0].item()}"
            )
        return seqs

    @torch.no_grad()
    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` users -> ``[B, d]``: encodings of their histories in the current query context."""
        if not self.histories:
            raise self._not_prepared("scoring")
        history = self.histories[self._context]
        padded = history.padded(users.detach().cpu().numpy(), max_len=self.sequence_config.max_len)
        return self.encode_sequences(padded)

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """``[I, d]``: real items only, so padding is never ranked; a copy without gradient (the encoder's
        ``item_embeddings()`` is the trained table itself)."""
        return self.encoder.item_embeddings().clone()
