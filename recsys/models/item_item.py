"""Item-item models: a user's scores are her item set times an ``I x I`` matrix fitted in closed form.

RP3beta (a sparse random-walk matrix) and EASE^R (a dense ridge-regression matrix) share everything but the
fit: :class:`ItemItemRecommender` keeps the binary training matrix and the query histories per context
(:class:`ItemSetQueries`), and scores ``X_u @ M`` in blocks of users; a subclass implements
:meth:`fit_item_item`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from recsys.models.base import CONTEXT_SPLITS, HistoryQueries, ModelConfig, Recommender, ScoreFn


def binary_matrix(matrix: sp.spmatrix) -> sp.csr_matrix:
    """A float32 CSR copy of ``matrix`` with one 1 for every pair whose summed value is non-zero."""
    x = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


class ItemSetQueries(HistoryQueries):
    """Mixin for item-item models (RP3beta, EASE) whose query is the user's set of items: ``scores = X_u W``.
    Like a sequence model's, that set is the history before the evaluated target: the training items when
    validating, the training and validation items when testing (on a leave-one-out split the validation item
    is the user's most recent one), the items of all three splits when serving (pairs rated below
    ``data.rating_threshold`` are left out of the recommendations but are no query input, as in fitting).
    ``W`` itself is fitted on the training split.

    The model calls :meth:`_use_training_histories` in ``prepare``, so that every context reads the training
    items until :meth:`prepare_dataset` (``recsys.pipeline.prepare_model`` calls it) gives each context its
    splits; scoring reads :meth:`_query_rows` when ``scorer()`` is called (inside the evaluation's
    context)."""

    n_users: int
    n_items: int
    #: query context ("valid", "test", "all") -> binary ``U x I`` CSR of the items its queries are made of
    histories: dict[str, sp.csr_matrix]

    def _use_training_histories(self, train: sp.csr_matrix | None) -> None:
        self.histories = {} if train is None else dict.fromkeys(CONTEXT_SPLITS, train)

    def prepare_dataset(self, dataset: Any) -> None:
        """Query histories per context from a prepared dataset's splits (:data:`CONTEXT_SPLITS`)."""
        if (dataset.n_users, dataset.n_items) != (self.n_users, self.n_items):
            raise ValueError(
                f"{dataset.root}: dataset has {dataset.n_users} users x {dataset.n_items} items, "
                f"model expects {self.n_users} x {self.n_items}"
            )
        shape = (self.n_users, self.n_items)
        self.histories = {
            ctx: binary_matrix(
                sum((dataset.matrix(s) for s in splits), sp.csr_matrix(shape, dtype=np.float32))
            )
            for ctx, splits in CONTEXT_SPLITS.items()
        }

    def _query_rows(self) -> sp.csr_matrix:
        """The binary ``U x I`` item sets of the current query context."""
        return self.histories[self._context]


class ItemItemRecommender(ItemSetQueries, Recommender):
    """Base of the closed-form item-item models.

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: the model's config.

    :meth:`prepare` binarises the ``U x I`` training matrix (:attr:`train_matrix`) and fits
    :attr:`item_item`, the ``I x I`` matrix M (scipy sparse or a numpy array), with :meth:`fit_item_item`.
    Scores are ``X_u @ M``, not an inner product of low-dimensional vectors, so :meth:`scorer` is overridden
    and ``query_embeddings``/``item_embeddings`` raise: a FAISS index cannot serve these models.  M is no
    parameter (the state dict is empty): a loaded run fits it again (``prepare`` is deterministic).
    """

    trainable = False
    indexable = False
    #: how the subclass's scores are formed, for the errors of the embedding methods
    score_formula: ClassVar[str] = "X_u @ M (item-item)"
    _anchor: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: ModelConfig) -> None:
        super().__init__(n_users, n_items, config)
        self.train_matrix: sp.csr_matrix | None = None
        self.item_item: sp.csr_matrix | np.ndarray | None = None
        self._use_training_histories(None)
        # Empty, non-persistent: only records the device the module was moved to (scores go there).
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    def reset_parameters(self) -> None:
        self.train_matrix = None
        self.item_item = None
        self._use_training_histories(None)

    # ---- fit ----------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Fit M on the ``U x I`` training matrix (a pair with a non-zero summed value counts once; values
        ignored)."""
        if train.shape != (self.n_users, self.n_items):
            raise ValueError(
                f"train matrix has shape {train.shape}, model expects {(self.n_users, self.n_items)}"
            )
        x = binary_matrix(train)
        self.item_item = None  # a refit must not hold two I x I matrices at once
        self.train_matrix = x
        self._use_training_histories(x)
        self.item_item = self.fit_item_item(x)

    def fit_item_item(self, train: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:  # pragma: no cover
        """The ``I x I`` matrix M from the binary training matrix (float32 ones, no duplicates)."""
        raise NotImplementedError

    # ---- inference --------------------------------------------------------------------------------------
    @torch.no_grad()
    def scorer(self) -> ScoreFn:
        """``LongTensor[B]`` of users -> dense ``[B, I]`` scores ``X[users] @ M`` (on the module's device), X
        the item sets of the query context current when ``scorer()`` is called."""
        if self.item_item is None or self.train_matrix is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(train) must be called before scoring")
        x = self._query_rows()
        device = self._anchor.device

        def score(users: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.score_item_sets(x[users.cpu().numpy()])).to(device)

        return score

    def score_item_sets(self, item_sets: sp.spmatrix) -> np.ndarray:
        """Scores ``X @ M`` of B item sets (a user's history, or an anonymous session's items), [B, I] in M's
        float dtype.

        Args:
            item_sets: a scipy sparse ``[B, I]`` matrix; an item counts once per row, whatever its value
                (the binarised training matrix's rule), and an empty row scores every item 0.
        """
        if self.item_item is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(train) must be called before scoring")
        if item_sets.shape[1:] != (self.n_items,):
            raise ValueError(f"item sets have shape {item_sets.shape}, expected [B, {self.n_items}]")
        scores = binary_matrix(item_sets) @ self.item_item  # sparse @ sparse is sparse, sparse @ dense dense
        dense = scores.toarray() if sp.issparse(scores) else np.asarray(scores)
        return np.ascontiguousarray(dense)

    def similar_items(self, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items each given item weighs most in M: row ``M[i]``, how much having item i adds to
        every item's score (EASE: its regression weights; RP3beta: its three-step walk), the item itself left
        out. What an embedding model's ``similar_items`` answers, from the fitted matrix.

        Args:
            items: int [B] item indices.
            k: neighbours per item (at most I - 1 are returned).

        Returns:
            ``(scores, positions)``: float64 [B, K] weights and int64 [B, K] item indices, ``K = min(k, I -
            1)``, largest first, equal weights by lower index (an RP3beta row is mostly zeros: its tail is
            items the walk never reaches, in index order).

        Raises:
            ValueError: k not a positive integer, or an index outside ``[0, I)``.
        """
        if self.item_item is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(train) must be called before similar_items")
        from serving._topk import check_k

        k = check_k(k)
        items = np.asarray(items, dtype=np.int64)
        if items.ndim != 1 or ((items < 0) | (items >= self.n_items)).any():
            raise ValueError(f"items must be a 1-d array of item indices in [0, {self.n_items})")
        rows = self.item_item[items]
        weights = rows.toarray() if sp.issparse(rows) else np.array(rows)
        weights = weights.astype(np.float64)
        weights[np.arange(items.size), items] = -np.inf  # never the item itself
        count = min(k, self.n_items - 1)
        order = np.argsort(-weights, axis=1, kind="stable")[:, :count]  # stable: ties by lower index
        return np.take_along_axis(weights, order, axis=1), order

    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} scores are {self.score_formula}, not an inner product; use scorer()"
        )

    def item_embeddings(self) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} scores are {self.score_formula}, not an inner product; use scorer()"
        )
