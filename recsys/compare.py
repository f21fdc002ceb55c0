"""Trained runs compared user by user: each against the first, on one split of their shared prepared data
(``recsys compare``; the statistics are :func:`eval.significance.paired_difference`)."""

from __future__ import annotations

from dataclasses import dataclass

from eval.significance import PairedDifference

COMPARED_BY_DEFAULT = ("recall", "ndcg")
"""The metrics compared at every cut-off when none are named."""


@dataclass(frozen=True)
class RunComparison:
    """Run ``run_id`` (B) against the baseline run (A), one :class:`PairedDifference` per metric."""

    run_id: str
    differences: list[PairedDifference]


def compare_runs(
    run_ids: list[str],
    *,
    split: str = "test",
    ks: list[int] | None = None,
    metrics: list[str] | None = None,
    uri: str | None = None,
) -> list[RunComparison]:
    """Rank every user of ``split`` with each run and compare each run with ``run_ids[0]``, user by user.

    Args:
        run_ids: two or more distinct MLflow run ids of ``recsys train``; the first is the baseline A.
        split: ``"valid"`` or ``"test"``.
        ks: cut-offs (default: the first run's ``eval.ks``).
        metrics: ``NAME@K`` names (default: :data:`COMPARED_BY_DEFAULT` at every cut-off).
        uri: the tracking store holding the runs (as :func:`recsys.pipeline.load_run`).

    Raises:
        ValueError: fewer than two distinct runs, a split other than valid or test, a metric that is no
            per-user metric or whose cut-off is not in ``ks``, or runs trained on different prepared data
            (other users or held-out items).
    """
    import numpy as np

    from eval.metrics import METRICS, check_ks, parse_metric, per_user_metrics
    from eval.ranking import check_split, model_topk
    from eval.significance import paired_difference
    from recsys.pipeline import load_run
    from recsys.tracking import run_tag

    if len(run_ids) < 2 or len(set(run_ids)) < len(run_ids):
        raise ValueError("give two or more different runs (each is compared with the first)")
    check_split(split)  # before any run is looked up
    if metrics is not None:
        if not metrics:
            raise ValueError("metrics: give at least one NAME@K (None compares the default ones)")
        metrics = list(dict.fromkeys(metrics))  # a metric named twice is compared once
    if ks is not None:
        ks = list(check_ks(ks))  # [] used to fall back to the first run's eval.ks without a word
    for name in metrics or ():
        parsed = parse_metric(name)
        if parsed is None or parsed[0] not in METRICS:  # coverage has no value per user
            raise ValueError(f"metric {name!r}: expected NAME@K with NAME one of {', '.join(METRICS)}")
    # the data each run was trained on, from its tags: refused before any run is loaded and ranked
    tags = {r: run_tag(r, "dataset_manifest_hash", uri) for r in run_ids}
    base_tag = tags[run_ids[0]]
    for r in run_ids[1:]:
        tag = tags[r]
        if base_tag is not None and tag is not None and tag != base_tag:
            raise _other_data(r, run_ids[0], tag, base_tag)
    # (run id, evaluated users, per-user values): each run's model is freed after its ranking
    evaluated: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    cutoffs: list[int] = []
    names: list[str] = []
    for run_id in run_ids:
        run = load_run(run_id, uri=uri)
        if not evaluated:
            cutoffs = list(ks if ks is not None else run.config.eval.ks)
            data = run.dataset.manifest_hash
            names = list(metrics or [f"{m}@{k}" for k in cutoffs for m in COMPARED_BY_DEFAULT])
            outside = [n for n in names if int(n.rpartition("@")[2]) not in cutoffs]  # names checked above
            if outside:
                shown = ",".join(map(str, cutoffs))
                source = "given" if ks else f"run {run_id}'s eval.ks"
                raise ValueError(
                    f"metric {outside[0]} needs its cut-off among the cut-offs {shown} ({source}; the command "
                    "line's --k sets them)"
                )
        elif run.dataset.manifest_hash != data:  # runs without tags (tracked elsewhere): found on loading
            raise _other_data(run_id, run_ids[0], run.dataset.manifest_hash, data)
        top, users, truth = model_topk(
            run.model, run.dataset, split, max(cutoffs), run.config.eval.block_size
        )
        evaluated.append((run_id, users, per_user_metrics(top, truth, cutoffs)))
        del run
    _, base_users, base = evaluated[0]
    out = []
    for run_id, users, values in evaluated[1:]:
        assert np.array_equal(users, base_users)  # the same data and split: the same evaluated users
        out.append(RunComparison(run_id, [paired_difference(base[n], values[n], n) for n in names]))
    return out


def _other_data(run_id: str, base_id: str, data: str, base_data: str) -> ValueError:
    return ValueError(
        f"run {run_id} was trained on other data than run {base_id} (prepared datasets {data[:12]} and "
        f"{base_data[:12]}): a paired comparison needs the same users and held-out items"
    )
