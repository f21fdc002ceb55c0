"""What ``similar_items`` answers for a trained run, by each way of comparing items.

For a sample of items, each one's top-k neighbours by the cosine of the items' vectors (the default), by their
inner product, and, for a model with a per-item bias column (BERT4Rec), by the inner product of the whole stored
vectors, bias included (what ``similar_items`` searched before 2026-12-05):

    RECSYS_HOME=... .venv/bin/python bench/similar_items.py --run RUN_ID [--items 1000] [--k 10]

Per way: the share of neighbours among the 1% most popular items (by training interactions), the share of
neighbours with no training interaction at all, the neighbours' median training count, and how many distinct
items the sampled lists hold; with a bias column, how many of the top-k the bias changes; the median
vector norm of items with and without training interactions.
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="MLflow run id of an indexable model")
    parser.add_argument("--items", type=int, default=1000, help="items sampled (seed 0)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    from recsys.pipeline import build_run_index, load_run
    from serving import Retriever
    from serving._topk import ExcludedItems

    run = load_run(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        retriever = Retriever.load(build_run_index(run, f"{tmp}/index"))
    index = retriever.index
    counts = np.bincount(run.dataset.matrix("train").indices, minlength=index.n_items)
    popular = np.argsort(-counts, kind="stable")[: max(1, index.n_items // 100)]
    items = np.random.default_rng(0).choice(index.n_items, min(args.items, index.n_items), replace=False)
    position = {item_id: p for p, item_id in enumerate(index.item_ids)}
    ids = [index.item_ids[i] for i in items]
    found = {}
    for metric in ("cosine", "inner_product"):
        answers = retriever.similar_items(ids, k=args.k, metric=metric)
        found[metric] = np.array([[position[r.item_id] for r in row] for row in answers])
    if index.bias_columns:
        itself = ExcludedItems(
            np.arange(len(items) + 1, dtype=np.int64), items.astype(np.int64), checked=True
        )
        found["inner_product, bias included"] = index.search(
            index.item_vectors(items), args.k, exclude=itself
        )[1]
    model = run.config.model["name"]
    data = run.config.data.name or run.config.data.path
    print(f"run {args.run} ({model}, {data}): {len(items)} items, top-{args.k} neighbours")
    print(
        f"catalogue: {index.n_items} items, median training count {np.median(counts):.0f}, "
        f"{np.mean(counts == 0):.3f} with none"
    )
    print(
        "| neighbours by | among the 1% most popular | with no training interaction | median training count "
        "| distinct items |"
    )
    print("|---|---|---|---|---|")
    for name, neighbours in found.items():
        print(
            f"| {name} | {np.isin(neighbours, popular).mean():.3f} | {np.mean(counts[neighbours] == 0):.3f} "
            f"| {np.median(counts[neighbours]):.0f} | {len(np.unique(neighbours))} |"
        )
    norms = np.linalg.norm(index.item_vectors(np.arange(index.n_items), bias=False), axis=1)
    cold = counts == 0
    print(
        f"median vector norm (bias left out): {np.median(norms[cold]) if cold.any() else float('nan'):.2f} "
        f"for items with no training interaction, {np.median(norms[~cold]):.2f} for the others"
    )
    if index.bias_columns:
        pairs = zip(found["inner_product"], found["inner_product, bias included"], strict=True)
        overlap = np.mean([len(set(a) & set(b)) / args.k for a, b in pairs])
        print(f"mean top-{args.k} overlap of the inner product with and without the bias: {overlap:.3f}")


if __name__ == "__main__":
    main()
