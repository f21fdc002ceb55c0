"""Embedded retrieval over a serving index: top-k items for known users, for query vectors, and for items.

Typical use::

    retriever = Retriever.load(index_dir)
    recs = retriever.recommend(["u1", "u2"], k=10)      # list (per user) of list of Recommendation
    recs[0][0].item_id, recs[0][0].score, recs[0][0].title

Ranking: score (inner product, as the model scores) descending; equal scores by item position ascending, so
results are deterministic. Exclusion is exact: an excluded item is never returned, and a user still gets
exactly ``k`` items whenever at least ``k`` unexcluded items exist (otherwise all of them).

Thread safety: a :class:`Retriever` is immutable after loading and may be shared by any number of threads.
Each call only reads the index (FAISS search on a flat index is a const operation that releases the GIL),
the id maps and the user/seen arrays (marked read-only); all per-call state is local.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from serving._topk import ExcludedItems, check_k
from serving.errors import UnencodableItemError
from serving.index import ItemIndex

#: What :meth:`Retriever.similar_items` may rank by; the first is the default.
SIMILARITY_METRICS = ("cosine", "inner_product")


class Recommendation(NamedTuple):
    """One recommended item. ``score`` is the float32 inner product (cosine if the index is normalised; from
    :meth:`Retriever.similar_items`, the metric it was asked for)."""

    item_id: str
    score: float
    title: str | None = None


class SequenceEncoder(Protocol):
    """A model's query side for item sequences: B sequences of item *positions* in the index (``int64``
    arrays, oldest item first) -> float ``[B, d]`` query embeddings in the index's space.

    Serving stays model-agnostic: it maps item ids to positions and back, and the model (through such a
    callable, e.g. ``recsys.pipeline.sequence_query_encoder``) turns positions into query vectors.  Indexes
    built by ``recsys index`` store items in the model's item order, so a position is the model's item index.
    An encoder may carry ``n_items``, the positions it can encode (``0..n_items-1``): items added to the index
    after training (:func:`serving.add_items`) lie beyond, and a sequence holding one is refused by name.
    """

    def __call__(self, sequences: list[np.ndarray]) -> np.ndarray: ...


class Retriever:
    """Top-k retrieval over an :class:`ItemIndex` (exact inner-product search with FAISS).

    Args:
        index: a loaded index (see :meth:`load` to read one from a folder).
    """

    def __init__(self, index: ItemIndex) -> None:
        self._index = index

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        num_threads: int | None = None,
        verify: bool = True,
        nprobe: int | None = None,
    ) -> Retriever:
        """Load and verify an index folder (see :meth:`ItemIndex.load`).

        Args:
            path: a folder written by :func:`serving.build_index`.
            num_threads: OpenMP threads FAISS uses per search. This is a process-wide FAISS setting (it
                affects every index in the process); None leaves it unchanged.
            verify: check every file's SHA256 against the manifest (sizes are always checked).
            nprobe: lists searched per query of an inverted-file index (default: the manifest's).
        """
        if num_threads is not None:
            if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
                raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
            import faiss

            faiss.omp_set_num_threads(num_threads)
        return cls(ItemIndex.load(path, verify=verify, nprobe=nprobe))

    @property
    def index(self) -> ItemIndex:
        return self._index

    @property
    def user_ids(self) -> tuple[str, ...]:
        """The users :meth:`recommend` knows (the index's), in index order."""
        return self._index.user_ids

    @property
    def item_ids(self) -> tuple[str, ...]:
        """The catalogue; :meth:`recommend_positions` indexes it."""
        return self._index.item_ids

    def __repr__(self) -> str:
        return f"Retriever({self._index!r})"

    def recommend(
        self, user_ids: Sequence[str] | str, k: int = 10, exclude_seen: bool = True
    ) -> list[list[Recommendation]]:
        """Top-``k`` items for users known to the index (precomputed query embeddings).

        Args:
            user_ids: B user ids, or one id (the result is then still a list holding one list).
            k: items per user.
            exclude_seen: never return an item the user has seen (the index's ``seen`` matrix). When the
                index was built without seen items this is an error rather than a silent no-op; pass
                ``exclude_seen=False`` to rank over all items deliberately.

        Returns:
            B lists (in the order of ``user_ids``) of up to k :class:`Recommendation`, best first. A call of
            2,000 users or more may get scores a last bit apart from one-user calls (FAISS's batched exact
            search, faiss 1.15.1), so near-equal items may swap; ``export_recommendations`` stays below.

        Raises:
            UnknownUserError (a KeyError): ids that are not in the index, all named.
        """
        return self._to_recommendations(*self.recommend_positions(user_ids, k, exclude_seen))

    def recommend_positions(
        self, user_ids: Sequence[str] | str, k: int = 10, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend` as arrays, for batch jobs (no Python object per item).

        Returns:
            ``(scores, positions)``: float32 [B, K] and int64 [B, K], ``K = min(k, n_items)``, best first;
            ``positions`` index :attr:`ItemIndex.item_ids`; a row with fewer than K unseen items is padded with
            ``(-inf, -1)``.
        """
        ids = _as_id_list(user_ids, "user_ids")
        k = check_k(k)
        index = self._index
        user_emb = index.user_emb
        if user_emb is None:
            raise ValueError(
                f"index {str(index.path)!r} was built without user embeddings; use recommend_for_vector"
            )
        if exclude_seen and not index.has_seen:
            raise ValueError(
                f"index {str(index.path)!r} was built without seen items, so they cannot be excluded; "
                "rebuild it with seen=... or call recommend(..., exclude_seen=False)"
            )
        positions = index.user_positions(ids)
        queries = user_emb[positions]
        exclude = index.seen_items(positions) if exclude_seen else None
        return index.search(queries, k, exclude=exclude)

    def recommend_for_vector(
        self, query: np.ndarray, k: int = 10, exclude_items: Sequence[Sequence[str | int]] | None = None
    ) -> list[list[Recommendation]]:
        """Top-``k`` items for query embeddings computed outside the index (new or anonymous users).

        Args:
            query: float [B, d] query embeddings from the model's query side, or one vector [d].
                Normalised here when the index was built with ``normalize=True``.
            k: items per query.
            exclude_items: optional B lists of item ids never to return for the matching query (e.g. the
                session's items). Unknown ids are an error (a silent mismatch would exclude nothing).

        Returns:
            B lists of up to k :class:`Recommendation`, best first.
        """
        q = np.asarray(query)
        if q.ndim == 1:
            q = q[None, :]
        q = self._index.as_queries(q)
        k = check_k(k)
        exclude = None
        if exclude_items is not None:
            exclude = self._exclusion_matrix(exclude_items, q.shape[0])
        return self._to_recommendations(*self._index.search(q, k, exclude=exclude))

    def recommend_for_sequences(
        self,
        sequences: Sequence[Sequence[str]],
        encoder: SequenceEncoder,
        k: int = 10,
        exclude_history: bool = True,
    ) -> list[list[Recommendation]]:
        """Top-``k`` next items for item-id sequences (anonymous sessions, or a known user's latest items).

        Args:
            sequences: B sequences of item ids, oldest first (a sequence may be empty).
            encoder: the model's query side for sequences (:class:`SequenceEncoder`).
            k: items per sequence.
            exclude_history: never return an item of the sequence itself (as ``recommend`` excludes seen items).

        Returns:
            B lists of up to k :class:`Recommendation`, best first. A sequence's scores may differ in their
            last bits with the other sequences of the call (the encoder's and the search's floating-point
            sums depend on the batch's shape), so two near-equal items may swap places between a call alone
            and the same sequence in a batch.

        Raises:
            UnknownItemError (a KeyError): item ids that are not in the index, all named.
            UnencodableItemError (a KeyError): item ids added to the index after training, which the
                encoder cannot encode, all named.
            TypeError: a sequence given as one string instead of a list of ids.
        """
        k = check_k(k)  # before the encoder runs: a bad k is the caller's error, not worth a forward pass
        lists = []
        for seq in sequences if not isinstance(sequences, str) else [sequences]:
            if isinstance(seq, str | bytes):
                raise TypeError(f"each sequence must be a list of item ids, not the string {seq!r}")
            lists.append([_id_text(x, "item") for x in seq])
        if not lists:
            return []
        ids = [x for seq in lists for x in seq]
        flat = self._index.item_positions(ids)
        known = getattr(encoder, "n_items", None)
        if known is not None and (flat >= known).any():
            added = list(dict.fromkeys(x for x, p in zip(ids, flat, strict=True) if p >= known))
            raise UnencodableItemError(added, known)
        bounds = np.cumsum([0] + [len(seq) for seq in lists])
        positions = [flat[bounds[b] : bounds[b + 1]] for b in range(len(lists))]
        query = np.asarray(encoder(positions))
        if query.shape != (len(lists), self._index.dim):
            raise ValueError(
                f"the sequence encoder returned shape {query.shape} for {len(lists)} sequences; expected "
                f"[{len(lists)}, {self._index.dim}]"
            )
        return self.recommend_for_vector(query, k=k, exclude_items=lists if exclude_history else None)

    def similar_items(
        self, item_ids: Sequence[str] | str, k: int = 10, *, metric: str = "cosine"
    ) -> list[list[Recommendation]]:
        """The ``k`` items most similar to each given item, the item itself excluded.

        Args:
            item_ids: B item ids, or one id (the result is then a list holding one list).
            k: neighbours per item.
            metric: ``"cosine"`` (default): the cosine between the items' vectors, an exact search of
                :meth:`ItemIndex.directions`; ``"inner_product"``: their inner product, a search of the index
                itself (approximate if it is). Both leave out an index's per-item bias columns
                (``bias_columns``, e.g. BERT4Rec's output bias). Inner products favour long vectors: on a
                LightGCN of MovieLens-100K a fifth of the inner-product neighbours are among the 1% most
                popular items, and on BERT4Rec's Beauty and Sports 42% and 69% are items no one trained on
                (docs/benchmarks.md, "Similar items"); cosines do neither.

        Returns:
            B lists of up to k :class:`Recommendation` (``score``: the cosine or the inner product), best
            first, equal scores by catalogue position.

        Raises:
            UnknownItemError (a KeyError): ids that are not in the index, all named.
            ValueError: an unknown ``metric``; or an index whose every column is a bias (the most-popular
                baseline): its items have no vectors to compare.
        """
        if metric not in SIMILARITY_METRICS:
            raise ValueError(
                f"metric must be one of {', '.join(map(repr, SIMILARITY_METRICS))}, got {metric!r}"
            )
        ids = _as_id_list(item_ids, "item_ids")
        k = check_k(k)
        index = self._index
        # directions() refuses an index of biases alone, whatever the metric and even for no ids
        space = index.directions() if metric == "cosine" or index.bias_columns == index.dim else index
        if not ids:
            return []
        positions = index.item_positions(ids)
        one_each = np.arange(len(ids) + 1, dtype=np.int64)
        itself = ExcludedItems(one_each, positions, checked=True)  # row b excludes its own item
        queries = space.item_vectors(positions)
        # A zero where the bias columns are (inner product): the searched product is then over the
        # directions alone, and the same FAISS search (exact or inverted-file) serves it.
        queries[:, space.dim - space.bias_columns :] = 0.0
        return self._to_recommendations(*space.search(queries, k, exclude=itself))

    # -- helpers -------------------------------------------------------------------------------------------
    def _exclusion_matrix(self, exclude_items: Sequence[Sequence[str | int]], n_rows: int) -> ExcludedItems:
        if isinstance(exclude_items, str) or len(exclude_items) != n_rows:
            raise ValueError(f"exclude_items must hold one list of item ids per query row ({n_rows} rows)")
        lists = []
        for row in exclude_items:
            if isinstance(row, str | bytes):
                raise TypeError(
                    f"each exclude_items entry must be a list of item ids, not the string {row!r}"
                )
            lists.append([_id_text(x, "item") for x in row])
        flat = [x for row in lists for x in row]
        cols = self._index.item_positions(flat)  # all unknown ids named at once, whatever row they are in
        bounds = np.cumsum([0] + [len(row) for row in lists])
        return ExcludedItems.from_lists([cols[bounds[b] : bounds[b + 1]] for b in range(n_rows)])

    def _to_recommendations(self, scores: np.ndarray, positions: np.ndarray) -> list[list[Recommendation]]:
        ids, titles = self._index.item_ids, self._index.item_titles
        return [
            [Recommendation(ids[p], s, titles[p]) for s, p in zip(srow, prow, strict=True) if p >= 0]
            for srow, prow in zip(scores.tolist(), positions.tolist(), strict=True)
        ]


def _as_id_list(ids: Any, name: str) -> list[str]:
    """One id (a str, or an integer read as its text) or a sequence of them -> a list of str."""
    if isinstance(ids, str) or (isinstance(ids, int | np.integer) and not isinstance(ids, bool | np.bool_)):
        return [_id_text(ids, name.removesuffix("_ids"))]
    if isinstance(ids, bytes) or not isinstance(ids, Iterable):
        raise TypeError(f"{name} must be an id or a sequence of ids, got {type(ids).__name__}")
    return [_id_text(x, name.removesuffix("_ids")) for x in ids]


def _id_text(x: Any, kind: str) -> str:
    """An id as the index stores it: text, or an integer read as its text (7 is "7"). Anything else (None,
    bytes, 1.0) is refused rather than turned into an id that may exist ("None", "b'12'", "1.0")."""
    if isinstance(x, str):
        return str(x)  # numpy.str_ -> str
    if isinstance(x, int | np.integer) and not isinstance(x, bool | np.bool_):
        return str(int(x))
    raise TypeError(f"{kind} ids are text (or integers, read as their text), got {x!r} ({type(x).__name__})")
