"""The LightGBM re-ranking stage against the retrieval order it reorders, over several seeds.

For a trained run (``recsys train``; its dataset needs a validation split), ``recsys.rerank.fit_reranker``
fits a re-ranker on the validation users' candidate lists and tests both stages on the test split, with the
evaluation's own ranking (the retrieval top-k is exactly what ``recsys evaluate --run`` scores). Each seed
draws another split of the validation users into fitting and held-out parts and seeds LightGBM; the first
stage is the same for all. Prints mean ± sample standard deviation over seeds of each stage's test metrics,
of the held-out NDCG and of the cross-check's (``recsys.rerank._cross_check``: validation users each ranked by
the procedure fitted without them), the seconds per fit, and writes every seed's record:

    RECSYS_HOME=... .venv/bin/python bench/rerank.py --run RUN_ID --seeds 0 1 2 \\
        --out bench/results/rerank_ml100k_lightgcn.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import provenance, write_json  # noqa: E402

SHOWN = ("recall", "ndcg", "hit")


def spread(values: list[float]) -> str:
    if len(set(values)) == 1:  # one seed, or a number the seed does not move (the first stage)
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def serving_latency(run, reranker, k: int, calls: int) -> dict[str, float]:
    """Median microseconds of ``Retriever.recommend(user, k)`` and ``RerankingRetriever.recommend(user, k)``
    on the run's index (built in a temporary folder), one random known user per call, the two cases
    alternating call by call after a warm-up; the same users for both."""
    import tempfile

    import numpy as np

    from recsys.pipeline import build_run_index
    from serving import Retriever
    from serving.rerank import RerankingRetriever

    with tempfile.TemporaryDirectory() as tmp:
        retriever = Retriever.load(build_run_index(run, Path(tmp) / "index"), num_threads=1)
    reranking = RerankingRetriever(retriever, reranker)
    users = np.random.default_rng(0).choice(retriever.index.user_ids, size=calls + 20)
    times: dict[str, list[float]] = {"retriever": [], "reranking": []}
    for i, user in enumerate(users):
        for name, call in (("retriever", retriever.recommend), ("reranking", reranking.recommend)):
            start = time.perf_counter()
            call([str(user)], k=k)
            if i >= 20:  # the first calls warm caches up
                times[name].append((time.perf_counter() - start) * 1e6)
    medians = {f"{name}_us": statistics.median(values) for name, values in times.items()}
    return {**medians, "ratio": medians["reranking_us"] / medians["retriever_us"], "calls": calls}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="MLflow run id of a trained run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default: the run's eval.ks")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    parser.add_argument("--folds", type=int, default=5, help="cross-check folds (0: none)")
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument(
        "--calls", type=int, default=300, help="serving calls timed per case, with the last seed's re-ranker"
    )
    args = parser.parse_args(argv)

    import torch

    from recsys.pipeline import load_run
    from recsys.rerank import fit_reranker

    torch.set_num_threads(args.threads)
    run = load_run(args.run)
    ks = tuple(args.ks or run.config.eval.ks)
    records = []
    for seed in args.seeds:
        start = time.perf_counter()
        result = fit_reranker(
            run, n_candidates=args.candidates, ks=ks, seed=seed, num_threads=args.threads, folds=args.folds
        )
        seconds = time.perf_counter() - start
        info = result.reranker.info
        records.append(
            {
                "seed": seed,
                "seconds": round(seconds, 2),
                "test": result.test,
                "holdout": result.holdout,
                "cross_check": result.cross_check,
                "candidate_recall": result.candidate_recall,
                "fit_users": result.fit_users,
                "holdout_users": result.holdout_users,
                "best_iteration": info["best_iteration"],
                "trials": info["trials"],
            }
        )
        print(f"seed {seed}: {seconds:.1f} s, trials {info['trials']}", flush=True)

    print(f"\nrun {args.run} ({run.config.name}), {args.candidates} candidates, seeds {args.seeds}")
    print(f"candidates hold {records[0]['candidate_recall']:.1%} of the test items")
    keys = [f"{m}@{k}" for k in ks for m in SHOWN]
    print("| stage | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for stage in ("retrieval", "reranked"):
        cells = [spread([r["test"][stage][key] for r in records]) for key in keys]
        print(f"| {stage} | " + " | ".join(cells) + " |")
    k = max(ks)
    for stage in ("retrieval", "reranked"):
        print(f"held-out ndcg@{k} {stage}: {spread([r['holdout'][stage] for r in records])}")
    checked = [r["cross_check"] for r in records if r["cross_check"]]
    if checked:
        for key in (f"retrieval_ndcg@{k}", f"reranked_ndcg@{k}", "difference", "difference_per_split_user"):
            print(f"cross-check {key}: {spread([c[key] for c in checked])}")
        print(
            f"cross-check standard errors of the difference: {[round(c['difference_se'], 4) for c in checked]}"
        )
    latency = serving_latency(run, result.reranker, max(ks), args.calls) if args.calls else None
    if latency:
        print(
            f"serving, one user per call, k = {max(ks)}: retriever {latency['retriever_us']:.0f} µs, with the "
            f"re-ranker {latency['reranking_us']:.0f} µs (x{latency['ratio']:.2f}; medians of {args.calls})"
        )
    if args.out:
        write_json(
            args.out,
            {
                **provenance(),
                "run_id": args.run,
                "config": run.config.name,
                "n_candidates": args.candidates,
                "records": records,
                "serving_latency": latency,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
