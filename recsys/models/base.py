"""The contract every model fulfils.

A model is an ``nn.Module`` with three duties (see docs/architecture.md):

* ``loss(batch)`` -> ``(total, parts)``: the training loss on one batch, with its named parts so that every
  part is logged. ``batch`` is a dict of tensors made by a sampler (for BPR: ``users``, ``pos``, ``neg``,
  each ``LongTensor[B]``).
* ``query_embeddings(users)`` -> ``Tensor[B, d]`` and ``item_embeddings()`` -> ``Tensor[I, d]``: the score
  of a (user, item) pair is their inner product.  Evaluation and serving only use these two (through
  ``scorer()``), so every model is evaluated and served by the same code.

Models whose parameters are not learned by gradient descent (most-popular, RP3beta) set
``trainable = False`` and compute everything in ``prepare``.  Models whose scores are not a dense inner
product (RP3beta: a sparse user row times a sparse item-item matrix) override ``scorer``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal, cast

import scipy.sparse as sp
import torch
from pydantic import ConfigDict
from torch import nn

from features.config import NoBooleanNumbers

# A score function maps a block of dense user indices LongTensor[B] to scores Tensor[B, I] (higher = better).
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


class ModelConfig(NoBooleanNumbers):
    """Base of every model's typed config. Unknown keys are errors; so is a boolean for a number, and so are
    infinite and NaN numbers (``init_std: .inf`` gave NaN scores)."""

    # attribute docstrings become field descriptions: the config reference (recsys config keys) shows them
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)
    name: str


class Recommender(nn.Module):
    """Base class of all models.

    Args:
        n_users: number of users (dense indices ``0..n_users-1``).
        n_items: number of items (dense indices ``0..n_items-1``).
        config: the model's typed config.
    """

    config_cls: ClassVar[type[ModelConfig]] = ModelConfig
    #: False for models fitted in closed form in ``prepare`` (no optimiser, no training loop).
    trainable: ClassVar[bool] = True
    #: False for models whose scores are no inner product of user and item vectors (the item-item models): no
    #: FAISS index holds them, and the commands that build one refuse them before fitting them on load.
    indexable: ClassVar[bool] = True
    #: How many trailing columns of :meth:`item_embeddings` are per-item biases met by a constant 1 in every
    #: query (score ``q . v_i + b_i``): part of every score, but no part of the item's direction, so serving
    #: leaves them out when it compares items with each other and refuses to cosine-normalise them.
    bias_columns: ClassVar[int] = 0

    def __init__(self, n_users: int, n_items: int, config: ModelConfig) -> None:
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.config = config

    # ---- set-up -------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Receive the training interactions (``n_users x n_items`` CSR, ones) once, before training,
        evaluation or export: graph models build their normalised adjacency here, closed-form models fit.
        Must be deterministic, since it is called again after a checkpoint is loaded."""

    # ---- training -----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return ``(total, parts)`` where ``parts`` maps names to scalar tensors that sum to ``total``."""
        raise TypeError(f"{type(self).__name__} is not trained by gradient descent")

    # ---- inference ----------------------------------------------------------------------------------------
    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` of user indices -> ``Tensor[B, d]``."""
        raise NotImplementedError

    def item_embeddings(self) -> torch.Tensor:
        """``Tensor[I, d]`` for all items, in dense index order."""
        raise NotImplementedError

    @torch.no_grad()
    def embeddings(self, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Query embeddings of ``users`` (all users when ``None``), ``[B, d]``, and all item embeddings
        ``[I, d]``, computed together. Evaluation and index export call this once; models whose two sides
        share an expensive computation (graph propagation) override it to do that computation once."""
        if users is None:
            users = torch.arange(self.n_users, device=self._device())
        return self.query_embeddings(users), self.item_embeddings()

    @torch.no_grad()
    def scorer(self) -> ScoreFn:
        """A function from a block of users to their scores over all items, ``Tensor[B, I]``.

        The default is the inner product of :meth:`embeddings` (computed once); evaluation then takes a faster
        route over the same embeddings. Models whose scores are not such inner products override this."""
        queries, items = self.embeddings()

        def score(users: torch.Tensor) -> torch.Tensor:
            return queries[users] @ items.T

        return score

    def _device(self) -> torch.device:
        for parameter in self.parameters():
            return parameter.device
        for buffer in self.buffers():
            return buffer.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"n_users={self.n_users}, n_items={self.n_items}"

    @classmethod
    def from_config(cls, n_users: int, n_items: int, config: dict[str, Any] | ModelConfig) -> Recommender:
        if not isinstance(config, ModelConfig):
            config = cls.config_cls.model_validate(config)
        return cls(n_users, n_items, config)


class PropagatedEmbeddings:
    """Mixin for models whose user and item embeddings come out of one computation over the whole graph
    (LightGCN, DCCF): they define ``final_embeddings() -> (users [U, d], items [I, d])`` without gradients,
    and every inference method is that one computation, done once per call (no cache survives between calls:
    a cache keyed on the parameters' version counters goes stale under torch's fused Adam, which updates in
    place without bumping them)."""

    def final_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        """``LongTensor[B]`` -> final user embeddings ``[B, d]`` (one full computation: call once for many
        users)."""
        return self.final_embeddings()[0][users]

    @torch.no_grad()
    def item_embeddings(self) -> torch.Tensor:
        """Final item embeddings ``[I, d]``."""
        return self.final_embeddings()[1]

    @torch.no_grad()
    def embeddings(self, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One computation for both sides: final embeddings of ``users`` (all when ``None``) ``[B, d]`` and
        of all items ``[I, d]``."""
        users_all, items = self.final_embeddings()
        return (users_all if users is None else users_all[users]), items


# Histories a user's query can be built from: the items before the validation target, before the test target,
# or all known items (serving), and the splits each one reads.
QueryContext = Literal["valid", "test", "all"]
CONTEXT_SPLITS: dict[str, tuple[str, ...]] = {
    "valid": ("train",),
    "test": ("train", "valid"),
    "all": ("train", "valid", "test"),
}


class HistoryQueries:
    """Mixin for models whose user query is built from the user's history (the sequence models, the
    two-tower): ``query_context(split)`` is the context manager the evaluation enters, so that inside it
    queries read the history before ``split``'s target (:data:`CONTEXT_SPLITS`); outside any block they read
    all known items. The model reads the current context from ``self._context``, which is per thread: an
    evaluation in one thread used to switch the histories that every other thread's queries (an index being
    built) read. So a thread started inside a ``query_context`` block reads all known items: enter the block
    in that thread."""

    @property
    def _context(self) -> QueryContext:
        local = self.__dict__.get("_query_local")
        return getattr(local, "context", "all")

    @_context.setter
    def _context(self, value: QueryContext) -> None:
        # setdefault is atomic: two threads setting their first context share one thread-local store
        self.__dict__.setdefault("_query_local", threading.local()).context = value

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # type: ignore[misc]
        state = dict(state)
        state.pop("_query_local", None)  # per-thread state: neither copied nor pickled
        return state

    @contextlib.contextmanager
    def query_context(self, split: str) -> Iterator[None]:
        if split not in CONTEXT_SPLITS:
            raise ValueError(f"query context must be one of {sorted(CONTEXT_SPLITS)}, got {split!r}")
        # the check above made split one of QueryContext's values
        previous, self._context = self._context, cast(QueryContext, split)
        try:
            yield
        finally:
            self._context = previous
