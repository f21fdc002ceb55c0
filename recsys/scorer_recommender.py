"""Serving a run that has no index: its model scores the whole catalogue (the item-item models, EASE and
RP3beta, whose scores ``X_u @ M`` are no inner products of user and item vectors, so FAISS cannot rank them).

:class:`ScorerRecommender` answers what :class:`serving.Retriever` answers for an index, with the same
:class:`serving.Recommendation` lists and the same rules (known items left out, score descending, equal
scores by item position): a known user's top-k (:meth:`~ScorerRecommender.recommend`), the next items after
an anonymous session's items (:meth:`~ScorerRecommender.recommend_for_sequences`, for models that score item
sets) and an item's neighbours by the model's own item-item weights
(:meth:`~ScorerRecommender.similar_items`).
``recsys recommend`` and ``recsys serve --run RUN`` use it for such runs; in Python::

    from recsys.pipeline import load_run
    from recsys.scorer_recommender import ScorerRecommender

    recommender = ScorerRecommender(load_run(run_id))   # fits M again (EASE: an I x I inverse)
    recommender.recommend(["196"], k=10)[0]              # [Recommendation(item_id, score, title), ...]
    recommender.recommend_for_sequences([["50", "172"]], k=10)[0]

Cost: every query row scores the whole catalogue (B x I floats; rows are scored in blocks of about 2^24
scores), and loading the run fits M again (``docs/serving.md``).

Thread safety: after construction nothing is written; the model's query context is per thread (outside an
evaluation block it reads every known item), so one instance may serve many threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recsys.pipeline import LoadedRun
    from serving.retriever import Recommendation

#: Query rows scored at once: each is a dense row of the whole catalogue (float64 in the scorer's ranking).
_SCORES_PER_BLOCK = 1 << 24


class ScorerRecommender:
    """A run without an index (:class:`recsys.pipeline.NotIndexableError`) as a recommender: its known users
    and items by their ids, scored by the model. Also a :class:`serving.export.BatchRecommender`.

    Args:
        run: a loaded run (:func:`recsys.pipeline.load_run`), its model fitted.
    """

    def __init__(self, run: LoadedRun) -> None:
        self._run = run
        ds = run.dataset
        items = ds.item_vocab.sort("item_idx")
        self._user_ids = tuple(str(u) for u in ds.user_vocab.sort("user_idx")["user_id"].to_list())
        self._item_ids = tuple(str(i) for i in items["item_id"].to_list())
        titles = items["title"].to_list() if "title" in items.columns else [None] * len(self._item_ids)
        self._item_titles: tuple[str | None, ...] = tuple(titles)
        self._user_position = {u: i for i, u in enumerate(self._user_ids)}
        self._item_position = {x: i for i, x in enumerate(self._item_ids)}
        # what the model can answer besides its users (the item-item models: both)
        self._score_item_sets: Callable[[Any], np.ndarray] | None = getattr(
            run.model, "score_item_sets", None
        )
        self._similar: Callable[..., tuple[np.ndarray, np.ndarray]] | None = getattr(
            run.model, "similar_items", None
        )

    # ---- what it serves --------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self._run.run_id

    @property
    def model_name(self) -> str:
        return str(self._run.config.model["name"])

    @property
    def user_ids(self) -> tuple[str, ...]:
        """The users :meth:`recommend` knows (the run's), in user index order."""
        return self._user_ids

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The catalogue, in item index order; :meth:`recommend_positions` indexes it."""
        return self._item_ids

    @property
    def item_titles(self) -> tuple[str | None, ...]:
        return self._item_titles

    @property
    def scores_item_sets(self) -> bool:
        """Whether the model scores a set of item ids (a session): :meth:`recommend_for_sequences`."""
        return callable(self._score_item_sets)

    @property
    def has_similar_items(self) -> bool:
        """Whether the model ranks an item's neighbours by its item-item weights: :meth:`similar_items`."""
        return callable(self._similar)

    def __repr__(self) -> str:
        return (
            f"ScorerRecommender(run={self.run_id!r}, model={self.model_name!r}, users={len(self._user_ids)}, "
            f"items={len(self._item_ids)})"
        )

    # ---- queries ---------------------------------------------------------------------------------------
    def recommend_positions(
        self, user_ids: Sequence[str] | str, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """float32 scores and int64 item positions [B, K] of known users (``K = min(k, I)``, rows padded with
        ``(-inf, -1)`` when the catalogue runs out), every known item of a user left out unless
        ``exclude_seen`` is false.

        Raises:
            UnknownUserError (a KeyError): ids the run does not know, all named.
        """
        from recsys.pipeline import scorer_top_k_many
        from serving._topk import check_k
        from serving.errors import UnknownUserError
        from serving.retriever import _as_id_list

        k = check_k(k)
        ids = _as_id_list(user_ids, "user_ids")
        missing = list(dict.fromkeys(u for u in ids if u not in self._user_position))
        if missing:
            raise UnknownUserError(missing, len(self._user_ids), "this model recommends only for its users")
        rows = [self._user_position[u] for u in ids]
        step = max(1, _SCORES_PER_BLOCK // max(1, len(self._item_ids)))
        parts = [
            scorer_top_k_many(self._run, rows[at : at + step], k, exclude_known=exclude_seen)
            for at in range(0, len(rows), step)
        ] or [scorer_top_k_many(self._run, [], k)]
        scores = np.concatenate([p[0] for p in parts]).astype(np.float32)
        return scores, np.concatenate([p[1] for p in parts])

    def recommend(
        self, user_ids: Sequence[str] | str, k: int = 10, exclude_seen: bool = True
    ) -> list[list[Recommendation]]:
        """Top-``k`` items for users the run knows, as :meth:`serving.Retriever.recommend` answers.

        Args:
            user_ids: B user ids, or one id (the result is then still a list holding one list).
            k: items per user.
            exclude_seen: never return an item the user is known to have (every split, and pairs rated below
                ``data.rating_threshold``: what an index's seen items hold).

        Returns:
            B lists of up to k :class:`serving.Recommendation`, best first (``score``: the model's).

        Raises:
            UnknownUserError (a KeyError): ids the run does not know, all named.
        """
        return self._to_recommendations(*self.recommend_positions(user_ids, k, exclude_seen=exclude_seen))

    def recommend_for_sequences(
        self, sequences: Sequence[Sequence[str]], k: int = 10, exclude_history: bool = True
    ) -> list[list[Recommendation]]:
        """Top-``k`` items after sessions of item ids (anonymous users, or a known user's latest items), for
        models that score item sets: the model reads a session as the set of its items (order and repeats do
        not matter), as it reads a user's history, so a known user's history gives that user's scores. Only
        the session's own items are left out: the items a user rated below ``data.rating_threshold``, which
        :meth:`recommend` leaves out too, can be listed here.

        Args:
            sequences: B lists of item ids (a list may be empty: every item then scores 0).
            k: items per list.
            exclude_history: never return an item of the session itself.

        Raises:
            UnknownItemError (a KeyError): ids that are not items of the run, all named.
            TypeError: a session given as one string; a model that does not score item sets.
        """
        import scipy.sparse as sp

        from serving._topk import ExcludedItems, check_k, dense_top_k
        from serving.retriever import _id_text

        if self._score_item_sets is None:
            raise TypeError(f"model {self.model_name!r} does not score item sets; recommend for its users")
        k = check_k(k)
        texts = []
        for seq in [sequences] if isinstance(sequences, str) else sequences:
            if isinstance(seq, str | bytes):
                raise TypeError(f"each sequence must be a list of item ids, not the string {seq!r}")
            texts.append([_id_text(x, "item") for x in seq])
        flat = self._item_positions([x for seq in texts for x in seq])  # every unknown id named at once
        bounds = np.cumsum([0] + [len(seq) for seq in texts])
        lists = [flat[bounds[b] : bounds[b + 1]] for b in range(len(texts))]
        n_items = len(self._item_ids)
        out: list[list[Recommendation]] = []
        step = max(1, _SCORES_PER_BLOCK // max(1, n_items))
        for at in range(0, len(lists), step):
            sets = ExcludedItems.from_lists(lists[at : at + step])  # a set per row: sorted, distinct
            item_sets = sp.csr_matrix(
                (np.ones(sets.indices.size, dtype=np.float32), sets.indices, sets.indptr),
                shape=(sets.n_rows, n_items),
            )
            scores = np.asarray(self._score_item_sets(item_sets), dtype=np.float64)
            out += self._to_recommendations(*dense_top_k(scores, k, sets if exclude_history else None))
        return out

    def similar_items(self, item_ids: Sequence[str] | str, k: int = 10) -> list[list[Recommendation]]:
        """The ``k`` items each given item weighs most in the model's item-item matrix (EASE: its regression
        weights; RP3beta: its random walk), the item itself left out: what
        :meth:`serving.Retriever.similar_items` answers for an embedding model, from the fitted weights (there
        is no metric to choose).

        Raises:
            UnknownItemError (a KeyError): ids that are not items of the run, all named.
            TypeError: a model without item-item weights.
        """
        from serving._topk import check_k
        from serving.retriever import _as_id_list

        if self._similar is None:
            raise TypeError(f"model {self.model_name!r} has no item-item weights to rank neighbours by")
        k = check_k(k)
        positions = self._item_positions(_as_id_list(item_ids, "item_ids"))
        if not positions.size:
            return []
        scores, found = self._similar(positions, k)
        return self._to_recommendations(scores, found)

    # ---- helpers ---------------------------------------------------------------------------------------
    def _item_positions(self, ids: list[str]) -> np.ndarray:
        from serving.errors import UnknownItemError

        missing = list(dict.fromkeys(x for x in ids if x not in self._item_position))
        if missing:
            raise UnknownItemError(missing, len(self._item_ids))
        return np.asarray([self._item_position[x] for x in ids], dtype=np.int64)

    def _to_recommendations(self, scores: np.ndarray, positions: np.ndarray) -> list[list[Recommendation]]:
        from serving.retriever import Recommendation

        ids, titles = self._item_ids, self._item_titles
        return [
            [Recommendation(ids[p], float(s), titles[p]) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores, positions, strict=True)
        ]
