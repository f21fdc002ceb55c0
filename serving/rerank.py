"""Second stage: re-rank retrieved candidates with a LightGBM LambdaRank model.

The FAISS index retrieves each user's top-N items by the model's inner product; a gradient-boosted ranker
(LightGBM, Ke et al. 2017, with the lambdarank objective of Burges 2010) reorders those N by features the
inner product alone does not weigh: where the candidate stands in the list, how popular it is, how long the
user's history is and how close the candidate lies to that history. Only the order within the N candidates
changes, so the re-ranked top-k can never reach an item the first stage did not retrieve.

Features of one (user, candidate) pair, the columns of :func:`candidate_features` (names in ``FEATURES``):

* ``score``: the retrieval score (inner product, a cosine in a normalised index);
* ``rank``: the candidate's place in the retrieved list, 0 first;
* ``gap_to_top``: the top candidate's score minus this one's;
* ``item_norm``: the L2 norm of the item vector (inner-product models put popularity there); for this and
  ``history_cosine`` an index's per-item bias columns (``ItemIndex.bias_columns``) are left out;
* ``item_log_popularity``: ``log((count + 1) / (mean count + 1))``, the item's known interactions relative
  to the catalogue's mean, so that the feature does not drift as more interactions become known (the ranker
  is fitted on the interactions known before the validation split and serves on all of them);
* ``user_log_history``: ``log((n + 1) / (mean n + 1))`` of the user's n known items, relative to the mean
  over users for the same reason;
* ``history_cosine``: the mean cosine between the candidate's vector and the vectors of the user's known
  items (0 for an empty history); the mean of dot products is the dot product with the mean unit vector.

"Known" interactions are every pair a serving index excludes as seen: positives and, for datasets with a
rating threshold, the pairs rated below it (``PreparedDataset.known_matrix``); fitting uses the same kinds.

Fitting lives in ``recsys.rerank`` (it needs a trained run and its validation split); this module holds what
serving needs: the features, the fitted :class:`Reranker` with its folder format, and
:class:`RerankingRetriever`, a :class:`~serving.retriever.Retriever` whose ``recommend`` re-ranks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from serving._topk import ExcludedItems, check_k
from serving.index import unit_rows

FEATURES = (
    "score",
    "rank",
    "gap_to_top",
    "item_norm",
    "item_log_popularity",
    "user_log_history",
    "history_cosine",
)
# /2: user_log_history relative to the mean, and pairs rated below a threshold counted as known when
# fitting; a /1 folder (6ef63a4, never in a release) computed features that /2 serving would mismatch.
FORMAT = "recsys-reranker/2"
_BLOCK_ROWS = 4096
_MODEL_FILE = "reranker.txt"
_MANIFEST_FILE = "reranker.json"

# LightGBM settings (https://lightgbm.readthedocs.io/en/stable/Parameters.html): lambdarank over each user's
# candidate list, optimising NDCG at the list lengths served; deterministic, so that a seed fixes the model.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "learning_rate": 0.05,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}


@dataclass(frozen=True)
class ItemStatistics:
    """What the features need of the catalogue and its users, computed once per index (or per split when
    fitting).

    Attributes:
        unit: float32 [I, d] item vectors scaled to unit length (zero vectors stay zero).
        norm: float32 [I] the vectors' L2 norms.
        log_popularity: float32 [I] ``log((count + 1) / (mean count + 1))`` of known interactions.
        mean_history: the mean number of known items per user (the scale of ``user_log_history``).
    """

    unit: np.ndarray
    norm: np.ndarray
    log_popularity: np.ndarray
    mean_history: float

    @classmethod
    def from_arrays(cls, item_vectors: np.ndarray, known: ExcludedItems) -> ItemStatistics:
        """From float [I, d] item vectors and every user's known items (rows of positions in ``[0, I)``)."""
        vectors = np.asarray(item_vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"item_vectors must be [I, d], got shape {vectors.shape}")
        n_items = vectors.shape[0]
        unit, norm = unit_rows(vectors)
        counts = np.bincount(np.asarray(known.indices, dtype=np.int64), minlength=n_items)[:n_items]
        log_pop = np.log((counts + 1.0) / (counts.mean() + 1.0)).astype(np.float32)
        mean_history = float(known.counts().mean()) if known.n_rows else 0.0
        return cls(unit, norm, log_pop, mean_history)


def candidate_features(
    scores: np.ndarray, positions: np.ndarray, history: ExcludedItems, items: ItemStatistics
) -> np.ndarray:
    """Feature rows of B users' candidate lists.

    Args:
        scores: float [B, N] retrieval scores, best first (``ItemIndex.search``'s first output).
        positions: int [B, N] candidate item positions; ``-1`` pads a list that ran out of items.
        history: the B users' known items (rows ``0..B-1``).
        items: the catalogue's :class:`ItemStatistics`.

    Returns:
        float32 [B, N, len(FEATURES)]; the rows of padding slots hold NaN.
    """
    scores = np.asarray(scores, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int64)
    if scores.shape != positions.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and positions {positions.shape} must be the same [B, N]")
    n_rows, n_cand = positions.shape
    if history.n_rows != n_rows:
        raise ValueError(f"history has {history.n_rows} rows, the candidates {n_rows}")
    valid = positions >= 0
    pos = np.where(valid, positions, 0)
    counts = history.counts()
    # mean unit vector of each user's history: one sparse product for all rows
    import scipy.sparse as sp

    weights = np.repeat(1.0 / np.maximum(counts, 1), counts).astype(np.float32)
    rows = sp.csr_matrix(
        (weights, np.asarray(history.indices, dtype=np.int64), np.asarray(history.indptr, dtype=np.int64)),
        shape=(n_rows, items.unit.shape[0]),
    )
    history_mean = np.asarray(rows @ items.unit, dtype=np.float32)  # [B, d]
    out = np.empty((n_rows, n_cand, len(FEATURES)), dtype=np.float32)
    top = np.where(valid[:, :1], scores[:, :1], 0.0)
    out[..., 0] = scores
    out[..., 1] = np.arange(n_cand, dtype=np.float32)[None, :]
    out[..., 2] = top - scores
    out[..., 3] = items.norm[pos]
    out[..., 4] = items.log_popularity[pos]
    out[..., 5] = np.log((counts + 1.0) / (items.mean_history + 1.0)).astype(np.float32)[:, None]
    for start in range(0, n_rows, _BLOCK_ROWS):  # [rows, N, d] gathers in blocks: 0.2 GB, not U x N x d
        block = slice(start, start + _BLOCK_ROWS)
        out[block, :, 6] = np.einsum("bnd,bd->bn", items.unit[pos[block]], history_mean[block])
    out[~valid] = np.nan
    return out


@dataclass
class Reranker:
    """A fitted LambdaRank model over :data:`FEATURES`, with what it was fitted for.

    Attributes:
        booster: the ``lightgbm.Booster``.
        n_candidates: N, the candidates per user it was fitted on (and re-ranks when serving).
        info: JSON-able facts recorded with it: ``run_id`` (the run whose embeddings it was fitted on),
            ``normalized`` (whether those scores were cosines), ``params``, ``best_iteration``, metrics.

    Prediction goes through a lock: LightGBM's predictor shares state between threads calling the same
    booster (lightgbm-org/LightGBM#6142), and a :class:`RerankingRetriever` may serve many threads.
    """

    booster: Any
    n_candidates: int
    info: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        valid: tuple[np.ndarray, np.ndarray] | None = None,
        params: dict[str, Any] | None = None,
        rounds: int = 500,
        early_stopping: int = 30,
        seed: int = 0,
        num_threads: int = 1,
        info: dict[str, Any] | None = None,
    ) -> Reranker:
        """Fit on candidate lists: ``features`` float [G, N, F] (:func:`candidate_features`) and ``labels``
        [G, N] (1 where the candidate is relevant); ``valid`` the same for early stopping on NDCG. Padding
        slots (NaN rows) are left out of their list."""
        import lightgbm as lgb

        train = _as_lists(features, labels, "features")
        settings = {
            **DEFAULT_PARAMS,
            # every pair of the list counts (LightGBM's default, 30, ignores the tail of longer lists)
            "lambdarank_truncation_level": int(features.shape[1]),
            "eval_at": [min(20, features.shape[1])],
            **(params or {}),
            "seed": int(seed),
            "num_threads": int(num_threads),
        }
        data = lgb.Dataset(train[0], train[1], group=train[2], feature_name=list(FEATURES))
        sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        if valid is not None:
            held = _as_lists(*valid, "valid features")
            sets = [lgb.Dataset(held[0], held[1], group=held[2], reference=data)]
            callbacks = [lgb.early_stopping(early_stopping, verbose=False)]
        booster = lgb.train(settings, data, num_boost_round=int(rounds), valid_sets=sets, callbacks=callbacks)
        best = int(booster.best_iteration) if valid is not None and booster.best_iteration > 0 else rounds
        record = {
            **(info or {}),
            "params": {k: v for k, v in settings.items() if k != "num_threads"},
            "best_iteration": best,
        }
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))  # only the kept trees
        return cls(booster, int(features.shape[1]), record)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """float [B, N] ranking scores of feature rows [B, N, F]; padding slots (NaN rows) score -inf."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 3 or x.shape[2] != len(FEATURES):
            raise ValueError(f"features must be [B, N, {len(FEATURES)}], got shape {x.shape}")
        flat = x.reshape(-1, x.shape[2])
        pad = np.isnan(flat).all(axis=1)
        out = np.full(flat.shape[0], -np.inf, dtype=np.float64)
        if (~pad).any():
            with self._lock:
                out[~pad] = self.booster.predict(flat[~pad], num_threads=1)
        return out.reshape(x.shape[:2])

    def rerank(self, scores: np.ndarray, positions: np.ndarray, features: np.ndarray, k: int):
        """Reorder candidate lists by the ranker: ``(scores [B, K], positions [B, K])``, ``K = min(k, N)``,
        best first, equal ranker scores in retrieval order; padding keeps ``(-inf, -1)`` at the end."""
        positions = np.asarray(positions)
        if (
            positions.ndim != 2
            or np.shape(scores) != positions.shape
            or np.shape(features)[:2] != positions.shape
        ):
            raise ValueError(
                f"scores {np.shape(scores)}, positions {positions.shape} and features {np.shape(features)} must "
                "describe the same [B, N] candidate lists"
            )
        k = min(check_k(k), positions.shape[1])
        ranked = self.predict(features)
        # stable sort on the negated score: ties keep the retrieval order, so the result is deterministic
        order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        out_pos = np.take_along_axis(positions, order, axis=1)
        out_scores = np.take_along_axis(ranked, order, axis=1).astype(np.float32)
        out_scores[out_pos < 0] = -np.inf
        return out_scores, out_pos

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the folder ``path`` (``reranker.txt``, LightGBM's text model, and ``reranker.json`` with its
        SHA-256 and what it was fitted for), built beside it and swapped in atomically."""
        import shutil

        from serving._files import fsync_path, new_sibling, publish_folder, sha256_bytes, write_lock

        final = Path(path).absolute()
        _check_replaceable(final)
        model = self.booster.model_to_string().encode()
        manifest = {
            "format": FORMAT,
            "features": list(FEATURES),
            "n_candidates": self.n_candidates,
            "model_sha256": sha256_bytes(model),
            "model_bytes": len(model),
            "info": self.info,
        }
        with write_lock(final):
            _check_replaceable(final)  # again under the lock: another writer may have put a folder there
            tmp = new_sibling(final, "building")
            tmp.mkdir()
            try:
                (tmp / _MODEL_FILE).write_bytes(model)
                (tmp / _MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                for name in (_MODEL_FILE, _MANIFEST_FILE, "."):
                    fsync_path(tmp / name)
                publish_folder(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final

    @classmethod
    def load(cls, path: str | Path) -> Reranker:
        """Read a folder written by :meth:`save`; a missing, altered or foreign folder is a ValueError that
        names the file (and the key) and what was expected. Both files are read from one folder even while
        a writer swaps a new one in."""
        import lightgbm as lgb

        from serving._files import read_snapshot, sha256_bytes

        folder = Path(path)
        raw, model = read_snapshot(
            folder,
            lambda snapshot: (snapshot.read(_MANIFEST_FILE), snapshot.read(_MODEL_FILE)),
            absent=lambda: ValueError(f"{folder}: not a re-ranker folder (no such folder)"),
        )
        manifest_path = folder / _MANIFEST_FILE
        if raw is None:
            raise ValueError(f"{folder}: not a re-ranker folder (no {_MANIFEST_FILE})")
        try:
            manifest = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{manifest_path}: unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            again = "; fit it again (`recsys rerank --run RUN`)" if _is_reranker_format(found) else ""
            raise ValueError(f"{manifest_path}: format {found!r}, expected {FORMAT!r}{again}")
        if manifest.get("features") != list(FEATURES):
            raise ValueError(
                f"{manifest_path}: features {manifest.get('features')} differ from this version's "
                f"{list(FEATURES)}; fit the re-ranker again (`recsys rerank --run RUN`)"
            )
        n_candidates, info = manifest.get("n_candidates"), manifest.get("info", {})
        if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(
                f"{manifest_path}: n_candidates must be a positive integer, got {n_candidates!r}"
            )
        if not isinstance(info, dict):
            raise ValueError(f"{manifest_path}: info must be an object, got {type(info).__name__}")
        if model is None or sha256_bytes(model) != manifest.get("model_sha256"):
            what = "missing" if model is None else f"{len(model)} bytes with another SHA-256"
            raise ValueError(
                f"{folder / _MODEL_FILE}: {what}; expected {manifest.get('model_bytes')} bytes with "
                f"SHA-256 {manifest.get('model_sha256')}"
            )
        return cls(lgb.Booster(model_str=model.decode()), n_candidates, info)


def _is_reranker_format(value: object) -> bool:
    return isinstance(value, str) and value.startswith(FORMAT.rsplit("/", 1)[0] + "/")


def check_save_folder(path: str | Path) -> Path:
    """The absolute folder :meth:`Reranker.save` would write at ``path``, or the error it would raise for a
    folder it may not replace (a file, a symlink, a non-empty folder that is not a re-ranker): for a caller to
    refuse it before the fit, not after. ``save`` checks again (the folder may change meanwhile)."""
    final = Path(path).absolute()
    _check_replaceable(final)
    return final


def _check_replaceable(folder: Path) -> None:
    """Refuse to replace anything but a re-ranker folder, of any format (or nothing, or an empty folder)."""
    from serving._files import check_replaceable

    def ours(path: Path) -> bool:
        try:
            return _is_reranker_format(json.loads((path / _MANIFEST_FILE).read_text()).get("format"))
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return False

    check_replaceable(folder, ours, "re-ranker", f"a {_MANIFEST_FILE} of format {FORMAT!r}")


def _as_lists(features: np.ndarray, labels: np.ndarray, name: str):
    """Flatten [G, N, F] / [G, N] lists into LightGBM's rows and group sizes, dropping padding slots."""
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 3 or x.shape[2] != len(FEATURES) or y.shape != x.shape[:2]:
        raise ValueError(
            f"{name} must be [G, N, {len(FEATURES)}] with labels [G, N], got {x.shape}, {y.shape}"
        )
    keep = cast(np.ndarray, ~np.isnan(x).all(axis=2))  # x is 3-D (checked above): an array, not a scalar
    if not keep.any():
        raise ValueError(f"{name}: no candidate to learn from")
    return x[keep], y[keep].astype(np.float32), keep.sum(axis=1)[keep.any(axis=1)]


class RerankingRetriever:
    """A :class:`~serving.retriever.Retriever` for known users whose lists a :class:`Reranker` reorders.

    ``recommend(user_ids, k)`` retrieves ``max(N, k)`` unseen candidates per user from the index (N: the
    re-ranker's ``n_candidates``), computes their features against the index's seen items and item vectors,
    and returns the top ``k`` by the re-ranker; a :class:`~serving.retriever.Recommendation`'s ``score`` is
    then the re-ranker's score, not the inner product. Safe to share between threads, like the retriever.

    Args:
        retriever: a loaded retriever whose index has user embeddings and seen items.
        reranker: fitted on the same run's embeddings (checked where both record the run).
    """

    def __init__(self, retriever: Any, reranker: Reranker) -> None:
        index = retriever.index
        if not (index.has_users and index.has_seen):
            raise ValueError(f"index {str(index.path)!r} needs user embeddings and seen items to re-rank")
        info, where = reranker.info, f"the index {str(index.path)!r}"
        fitted_on = info.get("run_id")
        if fitted_on is not None and index.run_id is not None and fitted_on != index.run_id:
            raise ValueError(f"the re-ranker was fitted on run {fitted_on}, {where} is run {index.run_id}")
        data_hash = index.manifest.get("metadata", {}).get("dataset_manifest_hash")
        if info.get("dataset_manifest_hash") not in (None, data_hash) and data_hash is not None:
            raise ValueError(
                f"the re-ranker was fitted on dataset {info['dataset_manifest_hash'][:12]}, {where} serves "
                f"dataset {data_hash[:12]}"
            )
        # items added after training (serving.add_items) may lengthen the catalogue, never shorten it
        if info.get("dim") not in (None, index.dim) or info.get("n_items", 0) > index.n_items:
            raise ValueError(
                f"the re-ranker was fitted on {info.get('n_items')} items of dimension {info.get('dim')}, "
                f"{where} has {index.n_items} of dimension {index.dim}"
            )
        if "normalized" in reranker.info and bool(reranker.info["normalized"]) != index.normalized:
            raise ValueError(
                f"the re-ranker was fitted on {'cosine' if reranker.info['normalized'] else 'inner-product'} "
                f"scores, the index {str(index.path)!r} serves the other kind"
            )
        fitted_bias = int(info.get("bias_columns", 0))  # absent before 2026-12-05: none left out
        if fitted_bias != index.bias_columns:
            # the side that records fewer bias columns than the model has was written before they were recorded
            fix = (
                "rebuild the index (`recsys index --run RUN`): it was written before bias columns were recorded"
                if fitted_bias > index.bias_columns
                else "fit the re-ranker again on this index's run (`recsys rerank --run RUN`)"
            )
            raise ValueError(
                f"the re-ranker's item features left out {fitted_bias} bias column(s) of the item vectors, "
                f"{where} has {index.bias_columns}: {fix}"
            )
        self._retriever = retriever
        self._reranker = reranker
        seen = index.seen
        known = ExcludedItems(seen.indptr, seen.indices, checked=True)
        vectors = index.item_vectors(np.arange(index.n_items), bias=False)
        self._items = ItemStatistics.from_arrays(vectors, known)

    @property
    def retriever(self) -> Any:
        return self._retriever

    @property
    def reranker(self) -> Reranker:
        return self._reranker

    @property
    def user_ids(self) -> tuple[str, ...]:
        return self._retriever.user_ids

    @property
    def item_ids(self) -> tuple[str, ...]:
        return self._retriever.item_ids

    def recommend(self, user_ids: Sequence[str] | str, k: int = 10) -> list[list[Any]]:
        """Top-``k`` unseen items for known users, re-ranked (see the class docstring).

        Raises:
            UnknownUserError (a KeyError): ids that are not in the index, all named.
        """
        return self._retriever._to_recommendations(*self.recommend_positions(user_ids, k))

    def recommend_positions(
        self, user_ids: Sequence[str] | str, k: int = 10
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend` as arrays (see :meth:`serving.Retriever.recommend_positions`); the scores are the
        re-ranker's."""
        from serving.retriever import _as_id_list

        ids = _as_id_list(user_ids, "user_ids")
        k = check_k(k)
        index = self._retriever.index
        if not ids:  # LightGBM refuses to predict on no rows
            width = min(k, index.n_items)
            return np.zeros((0, width), dtype=np.float32), np.zeros((0, width), dtype=np.int64)
        positions = index.user_positions(ids)
        seen = index.seen_items(positions)
        scores, cand = index.search(
            index.user_emb[positions], max(self._reranker.n_candidates, k), exclude=seen
        )
        features = candidate_features(scores, cand, seen, self._items)
        return self._reranker.rerank(scores, cand, features, k)
