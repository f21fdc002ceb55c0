"""Fit the LightGBM re-ranking stage (``serving.rerank``) on a trained run, and measure what it changes.

Protocol, chosen so that no test interaction reaches the ranker and both stages are scored alike:

1. The run's model (trained on the training split) retrieves each validation user's top-N unseen items,
   training items excluded, exactly as the evaluation ranks them (``eval.ranking.model_topk``: same
   exclusions, same query context for sequence models). A candidate's label is 1 when it is one of the
   user's validation items. Features use the training interactions and the pairs rated below the dataset's
   threshold (:func:`known_before`: what a serving index counts as seen, minus the held-back splits).
2. The validation users are split at random (``holdout``): LambdaRank learns on one part and stops early on
   the NDCG of the other, which also chooses the tree shape. Users with no relevant candidate teach a ranker
   nothing and are left out of both. The held-out users flatter the ranker they chose, so a cross-check
   (:func:`_cross_check`) runs the same procedure again on a few folds of these users and ranks each fold's
   users by what was fitted without them: its gain over the retrieval order is the one to trust.
3. On the test split the same model retrieves N candidates per test user, training and validation items
   excluded (again exactly as ``recsys evaluate`` ranks), with the validation interactions added to the
   history. The retrieval top-k is the first k candidates; the re-ranked top-k is the ranker's best k of the
   same N. Both go through the same metric code over the same users and truth.

Only models whose scores are inner products of query and item embeddings (the ones ``recsys index`` serves)
can be re-ranked: the features need the item vectors the index holds.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import torch

from serving._topk import ExcludedItems
from serving.rerank import ItemStatistics, Reranker, candidate_features

if TYPE_CHECKING:
    from recsys.models.base import Recommender

# The tree shapes fit_reranker tries (LightGBM's num_leaves, min_data_in_leaf), from stumps-like trees that
# need much evidence per leaf to LightGBM's default size.
TREE_SHAPES = (
    {"num_leaves": 3, "min_data_in_leaf": 500},
    {"num_leaves": 7, "min_data_in_leaf": 200},
    {"num_leaves": 31, "min_data_in_leaf": 50},
)


@dataclass(frozen=True)
class SplitCandidates:
    """The first stage's candidate lists for the users with truth in one split.

    Attributes:
        users: int64 [U] user indices.
        scores: float32 [U, N] retrieval scores, best first; positions: int64 [U, N] item indices (-1: none).
        features: float32 [U, N, F] (``serving.rerank.candidate_features``); labels: float32 [U, N].
        truth: csr [U, I] the users' relevant items in the split.
        item_dim: d, the embeddings' dimension.
    """

    users: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    truth: Any
    item_dim: int


def default_reranker_dir(run_id: str) -> Path:
    """``$RECSYS_HOME/rerankers/<run id>``, where ``recsys rerank`` writes a run's re-ranker."""
    from recsys.paths import recsys_home

    return recsys_home() / "rerankers" / run_id


def split_candidates(model: Recommender, dataset: Any, split: str, n_candidates: int) -> SplitCandidates:
    """Retrieve ``n_candidates`` per user with truth in ``split`` (``"valid"`` or ``"test"``) and compute
    their features from the interactions known before that split (:func:`known_before`)."""
    import scipy.sparse as sp

    from eval.ranking import model_topk

    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if n_candidates > dataset.n_items:  # more would only be padding, and the gathers below grow with it
        raise ValueError(
            f"n_candidates must be at most the catalogue's {dataset.n_items:,} items, got {n_candidates:,}"
        )
    ranked, users, truth = model_topk(model, dataset, split, n_candidates)
    positions = ranked.cpu().numpy().astype(np.int64)
    history = known_before(dataset, split)
    # model_topk ranks but returns no scores: the embeddings are computed once more for them (one query
    # pass per split, small next to the full ranking; changing model_topk's result is not worth it)
    query, items = _embeddings(model, split, users)
    safe = np.where(positions >= 0, positions, 0)
    scores = np.empty(positions.shape, dtype=np.float32)
    rows = max(1, (1 << 24) // max(1, positions.shape[1] * items.shape[1]))  # [rows, N, d]: 64 MB of float32
    for start in range(0, len(users), rows):  # gathers in blocks, not U x N x d at once
        block = slice(start, start + rows)
        scores[block] = np.einsum("bd,bnd->bn", query[block], items[safe[block]])
    scores[positions < 0] = -np.inf
    known = ExcludedItems(history.indptr, history.indices, checked=True)
    # item-to-item features compare directions: a model's per-item bias columns (BERT4Rec) are left out
    bias = int(getattr(model, "bias_columns", 0))
    stats = ItemStatistics.from_arrays(items[:, : items.shape[1] - bias], known)
    features = candidate_features(scores, positions, known.take(users), stats)
    truth = sp.csr_matrix(truth)
    labels = np.zeros(positions.shape, dtype=np.float32)
    for row in range(positions.shape[0]):  # U rows of N: small next to the retrieval itself
        relevant = truth.indices[truth.indptr[row] : truth.indptr[row + 1]]
        labels[row] = np.isin(positions[row], relevant)
    return SplitCandidates(users, scores, positions, features, labels, truth, int(items.shape[1]))


def known_before(dataset: Any, split: str):
    """Binary csr [n_users, n_items] of the interactions a feature may use when ranking for ``split``: the
    training pairs (and the validation pairs for ``"test"``) plus the pairs rated below the dataset's
    ``rating_threshold`` in the same periods (their ``split`` column; a folder from before 2026-12-05 has
    none, and all its pairs count as training ones). The latter are no positives, but a serving index counts
    them as seen (``PreparedDataset.known_matrix``), so the history and popularity the ranker is fitted on
    are of the same kind as the ones it serves with, and none comes from the period being ranked or later."""
    import polars as pl
    import scipy.sparse as sp

    from features.dataset import SPLITS

    if split not in ("valid", "test"):
        raise ValueError(f"known_before: split must be 'valid' or 'test', got {split!r}")
    known = sp.csr_matrix(dataset.matrix("train"), dtype=np.float32)
    if split == "test":
        known = known + sp.csr_matrix(dataset.matrix("valid"), dtype=np.float32)
    below = getattr(dataset, "below_threshold", None)
    if below is not None and "split" in below.columns:
        below = below.filter(pl.col("split").is_in(SPLITS[: SPLITS.index(split)]))
    elif below is not None and below.height and _ordered_split(dataset):
        warnings.warn(
            f"{getattr(dataset, 'root', 'the prepared data')} predates recording when each pair rated below "
            "data.rating_threshold was rated: the fit counts them all as known, later periods' too; remove "
            "that folder to have it prepared again with them",
            stacklevel=3,
        )
    if below is not None and below.height:
        rows, cols = below["user_idx"].to_numpy(), below["item_idx"].to_numpy()
        known = known + sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=known.shape)
    known = sp.csr_matrix(known)
    known.sum_duplicates()
    known.sort_indices()
    known.data[:] = 1.0
    return known


def _ordered_split(dataset: Any) -> bool:
    """Whether the dataset's split puts its parts in time order (leave-one-out, temporal)."""
    from features.splits import TIME_ORDERED_PROTOCOLS

    manifest = getattr(dataset, "manifest", None)
    return isinstance(manifest, dict) and manifest.get("split_protocol") in TIME_ORDERED_PROTOCOLS


def require_embeddings(model: torch.nn.Module) -> Recommender:
    """A ValueError unless ``model`` scores by inner products of query and item embeddings (what an index
    serves and what the features are computed from). Returns the model, the Recommender it then is."""
    from recsys.models.base import Recommender

    if not isinstance(model, Recommender) or type(model).scorer is not Recommender.scorer:
        raise ValueError(
            f"{type(model).__name__} does not score by inner products of embeddings, so it has no index to "
            "re-rank (the re-ranker's features need the item vectors)"
        )
    return model


def _embeddings(model: torch.nn.Module, split: str, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 query [U, d] and item [I, d] embeddings as the evaluation of ``split`` and the served index see
    them (the model's query context for the split; unit vectors for models scored by cosine)."""
    model = require_embeddings(model)
    tensors = itertools.chain(model.parameters(), model.buffers())
    device = next((t.device for t in tensors), torch.device("cpu"))
    was_training = model.training
    model.eval()
    query_context = getattr(model, "query_context", None)  # the models with histories (HistoryQueries)
    context = query_context(split) if query_context is not None else contextlib.nullcontext()
    try:
        with torch.no_grad(), context:
            query_t, items_t = model.embeddings(torch.from_numpy(users).to(device))
    finally:
        model.train(was_training)
    query = query_t.float().cpu().numpy()
    items = items_t.float().cpu().numpy()
    if getattr(model, "cosine_scores", False):  # the index stores unit vectors for these models
        query = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
        items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(query), np.ascontiguousarray(items)


@dataclass(frozen=True)
class RerankResult:
    """A fitted re-ranker and its measurements.

    Attributes:
        reranker: the fitted :class:`serving.rerank.Reranker` (its ``info`` holds the numbers below too).
        test: ``{"retrieval": metrics, "reranked": metrics}`` on the test split, ``eval.ranking_metrics``.
        holdout: ``{"retrieval": ndcg, "reranked": ndcg}`` at max(ks) on the held-out validation users (what
            the ranker stopped and its tree shape was chosen on, so it flatters the ranker).
        candidate_recall: the share of test items that are among the N candidates (the ceiling of recall@N).
        fit_users / holdout_users: validation users the ranker learned on / stopped early on.
        cross_check: the procedure's gain on validation users it never saw (:func:`_cross_check`), or None
            when skipped or too few users; a re-ranker that does not beat the retrieval order there is not
            worth serving.
    """

    reranker: Reranker
    test: dict[str, dict[str, float]]
    holdout: dict[str, float]
    candidate_recall: float
    fit_users: int
    holdout_users: int
    cross_check: dict[str, Any] | None = None


def fit_reranker(
    run: Any,
    *,
    n_candidates: int = 100,
    ks: tuple[int, ...] = (10, 20),
    holdout: float = 0.2,
    seed: int = 0,
    num_threads: int = 1,
    params: dict[str, Any] | None = None,
    folds: int = 5,
) -> RerankResult:
    """Fit a LambdaRank re-ranker on ``run``'s validation split and test both stages (module docstring).

    Args:
        run: a ``recsys.pipeline.LoadedRun`` (model and prepared dataset).
        n_candidates: N, candidates per user from the first stage (>= max(ks)).
        ks: cut-offs of the reported metrics.
        holdout: share of the validation users kept for early stopping.
        seed: the users' split and LightGBM's seed.
        num_threads: LightGBM threads.
        params: LightGBM parameters over ``serving.rerank.DEFAULT_PARAMS``; without them each of
            ``TREE_SHAPES`` is fitted and the one with the best held-out NDCG@max(ks) is kept.
        folds: parts of the cross-check (:func:`_cross_check`: the whole procedure run ``folds`` more times,
            each time scoring users it never saw); 0 skips it.
    """
    from eval.metrics import check_ks, ranking_metrics

    ks = tuple(check_ks(ks))
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < max(ks):
        raise ValueError(f"n_candidates must be an integer >= max(ks) = {max(ks)}, got {n_candidates!r}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must lie strictly between 0 and 1, got {holdout!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds == 1 or folds < 0:
        raise ValueError(f"folds must be 0 (no cross-check) or an integer >= 2, got {folds!r}")
    require_embeddings(run.model)  # before any retrieval: RP3beta's ranking alone takes seconds
    ds = run.dataset
    if ds.valid.height == 0:
        raise ValueError(
            f"run {run.run_id}: its dataset has no validation split, which the re-ranker is fitted on "
            "(the test split is only for measuring it)"
        )
    valid = split_candidates(run.model, ds, "valid", n_candidates)
    useful = np.flatnonzero(valid.labels.any(axis=1))
    rng = np.random.default_rng(seed)
    held = rng.random(useful.size) < holdout
    fit_rows, held_rows = useful[~held], useful[held]
    if fit_rows.size == 0 or held_rows.size == 0:
        raise ValueError(
            f"run {run.run_id}: {useful.size} validation users have a relevant item among {n_candidates} "
            "candidates; too few to fit and stop a re-ranker"
        )
    info = {
        "run_id": run.run_id,
        "dataset_manifest_hash": ds.manifest_hash,
        "n_items": int(ds.n_items),
        "dim": int(valid.item_dim),
        "normalized": bool(getattr(run.model, "cosine_scores", False)),
        "bias_columns": int(getattr(run.model, "bias_columns", 0)),
        "fit_users": int(fit_rows.size),
        "holdout_users": int(held_rows.size),
        "seed": int(seed),
    }
    k = max(ks)
    n_items = int(ds.n_items)
    choose = _RankerChoice(k=k, n_items=n_items, params=params, seed=seed, num_threads=num_threads)
    reranker, held_out, trials = _choose_ranker(valid, fit_rows, held_rows, info=info, **choose)
    reranker.info["holdout"] = {f"{name}_ndcg@{k}": value for name, value in held_out.items()}
    reranker.info["trials"] = trials
    cross = _cross_check(valid, useful, folds, holdout_share=holdout, **choose) if folds else None
    if cross is not None:
        reranker.info["cross_check"] = cross
    test = split_candidates(run.model, ds, "test", n_candidates)
    _, reranked = reranker.rerank(test.scores, test.positions, test.features, k)
    metrics = {
        "retrieval": ranking_metrics(test.positions[:, :k], test.truth, ks, n_items=n_items),
        "reranked": ranking_metrics(reranked, test.truth, ks, n_items=n_items),
    }
    candidate_recall = float(test.labels.sum() / test.truth.nnz)
    reranker.info.update({"test": metrics, "candidate_recall": candidate_recall, "ks": list(ks)})
    return RerankResult(
        reranker, metrics, held_out, candidate_recall, int(fit_rows.size), int(held_rows.size), cross
    )


class _RankerChoice(TypedDict):
    """The settings :func:`_choose_ranker` and :func:`_cross_check` share."""

    k: int
    n_items: int
    params: dict[str, Any] | None
    seed: int
    num_threads: int


def _choose_ranker(
    valid: SplitCandidates,
    fit_rows: np.ndarray,
    held_rows: np.ndarray,
    *,
    k: int,
    n_items: int,
    params: dict[str, Any] | None,
    seed: int,
    num_threads: int,
    info: dict[str, Any] | None = None,
) -> tuple[Reranker, dict[str, float], list[dict[str, Any]]]:
    """Fit each of ``TREE_SHAPES`` (or ``params`` alone) on the ``fit_rows`` lists of ``valid``, stop early on
    the ``held_rows`` lists and keep the shape with the best held-out NDCG@k.

    Returns the kept ranker, ``{"retrieval": ndcg, "reranked": ndcg}`` at k on ``held_rows`` and one record per
    trial. The NDCG is the test report's (ideal DCG over all the user's relevant items).
    """
    from eval.metrics import ranking_metrics

    held_truth = valid.truth[held_rows]

    def holdout_ndcg(positions: np.ndarray) -> float:
        return ranking_metrics(positions[:, :k], held_truth, (k,), n_items=n_items)[f"ndcg@{k}"]

    # Tree sizes are chosen on held-out validation users, never on test: a few hundred users' lists overfit
    # large trees, while a large dataset can use them.
    trials: list[tuple[float, int, Reranker]] = []
    for shape in [{}] if params is not None else TREE_SHAPES:
        trial = Reranker.fit(
            valid.features[fit_rows],
            valid.labels[fit_rows],
            valid=(valid.features[held_rows], valid.labels[held_rows]),
            params={"eval_at": [k], **shape, **(params or {})},
            seed=seed,
            num_threads=num_threads,
            info=info,
        )
        rows = (valid.scores[held_rows], valid.positions[held_rows], valid.features[held_rows])
        trials.append((holdout_ndcg(trial.rerank(*rows, k)[1]), -len(trials), trial))
    best_ndcg, _, reranker = max(trials, key=lambda t: t[:2])
    records = [
        {f"holdout_ndcg@{k}": score, "best_iteration": t.info["best_iteration"],
         **{key: t.info["params"].get(key) for key in ("num_leaves", "min_data_in_leaf")}}
        for score, _, t in trials
    ]  # fmt: skip
    return reranker, {"retrieval": holdout_ndcg(valid.positions[held_rows]), "reranked": best_ndcg}, records


def _cross_check(
    valid: SplitCandidates,
    useful: np.ndarray,
    folds: int,
    *,
    holdout_share: float,
    k: int,
    n_items: int,
    params: dict[str, Any] | None,
    seed: int,
    num_threads: int,
) -> dict[str, Any] | None:
    """Estimate what the whole fitting procedure gains over the retrieval order on users it never saw.

    The held-out users that stop and choose the ranker also flatter it (on MovieLens-100K they said +0.008
    NDCG@20 where the test said -0.009). Here the ``useful`` validation users are dealt into ``folds`` parts;
    for each part the procedure of :func:`fit_reranker` (split, fit, stop, choose) runs on the other parts
    alone, and the part's users are ranked by its result. Every user is thus scored once, by a ranker that
    neither learned nor chose on them (cross-validation around the whole procedure, as in Varma & Simon 2006,
    "Bias in error estimation when using cross-validation for model selection"). The returned ranker is not
    one of these: the numbers estimate the procedure, fitted on all users.

    Returns ``None`` when a part would leave too few users to fit and stop on, else ``{"folds", "users",
    "split_users", "retrieval_ndcg@k", "reranked_ndcg@k", "difference", "difference_se",
    "difference_per_split_user"}``: NDCG means over the ``users`` (those with a relevant candidate), the mean
    of their per-user differences (re-ranked minus retrieval) with its standard error, and that difference
    spread over all ``split_users`` (every validation user with truth), the scale of a test report, whose
    users without a relevant candidate score 0 in both orders. The standard error is the users' spread for
    one dealing of the folds and one set of fits; another seed deals and fits differently, which moves the
    difference more (Beauty: 0.0027-0.0067 over 5 seeds, standard errors 0.0010-0.0014).
    """
    from eval.metrics import per_user_metrics

    part = np.random.default_rng([seed, 1]).permutation(useful.size) % folds
    reranked = np.empty((useful.size, k), dtype=np.int64)
    for f in range(folds):
        rest, scored = useful[part != f], useful[part == f]
        held = np.random.default_rng(seed).random(rest.size) < holdout_share
        if scored.size == 0 or held.all() or not held.any():
            return None
        ranker, _, _ = _choose_ranker(
            valid, rest[~held], rest[held], k=k, n_items=n_items, params=params, seed=seed,
            num_threads=num_threads,
        )  # fmt: skip
        rows = (valid.scores[scored], valid.positions[scored], valid.features[scored])
        reranked[part == f] = ranker.rerank(*rows, k)[1]
    truth = valid.truth[useful]
    before = per_user_metrics(valid.positions[useful, :k], truth, (k,))[f"ndcg@{k}"]
    after = per_user_metrics(reranked, truth, (k,))[f"ndcg@{k}"]
    diff = after - before
    return {
        "folds": folds,
        "users": int(useful.size),
        "split_users": int(valid.users.size),
        f"retrieval_ndcg@{k}": float(before.mean()),
        f"reranked_ndcg@{k}": float(after.mean()),
        "difference": float(diff.mean()),
        "difference_se": float(diff.std(ddof=1) / np.sqrt(diff.size)),  # >= folds >= 2 users here
        "difference_per_split_user": float(diff.sum() / valid.users.size),
    }


def track_reranker(result: RerankResult, run_id: str, folder: Path, uri: str | None = None) -> str:
    """Log a fitted re-ranker as an MLflow run of its own, in the experiment of the run it re-ranks and
    marked as that run's child (``mlflow.parentRunId``): its settings as params, both stages' test metrics
    (``test_final/retrieval/...``, ``test_final/reranked/...``), the held-out and cross-check NDCG
    (``holdout/...``, ``cross_check/...``), and ``folder`` (the saved
    re-ranker) as the artifact ``reranker``. Returns the new run's id."""
    import mlflow

    from recsys.paths import default_tracking_uri
    from recsys.tracking import RunTracker

    client = mlflow.MlflowClient(uri or default_tracking_uri())
    experiment = client.get_experiment(client.get_run(run_id).info.experiment_id)
    info = result.reranker.info
    with RunTracker.start(experiment=experiment.name, uri=uri, run_name=f"rerank-{run_id[:8]}") as tracker:
        tracker.set_tags({"mlflow.parentRunId": run_id, "recsys.stage": "rerank"})
        tracker.log_params(
            {
                "reranks_run": run_id,
                "n_candidates": result.reranker.n_candidates,
                "seed": info.get("seed"),
                "ks": info.get("ks"),
                "cross_check_folds": (result.cross_check or {}).get("folds", 0),
                "best_iteration": info.get("best_iteration"),
                "lightgbm": {k: v for k, v in info.get("params", {}).items() if k not in ("seed", "eval_at")},
            }
        )
        for stage, metrics in result.test.items():
            tracker.log_metrics(metrics, prefix=f"test_final/{stage}/")
        tracker.log_metrics(
            {
                "candidate_recall": result.candidate_recall,
                **{f"holdout/{k}": v for k, v in result.holdout.items()},
                **{f"cross_check/{k}": v for k, v in (result.cross_check or {}).items() if k != "folds"},
            }
        )
        tracker.log_artifacts(folder, "reranker")
        return str(tracker.run_id)
