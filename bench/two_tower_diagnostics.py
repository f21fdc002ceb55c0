"""Diagnostics of the two-tower model on a dataset, without training: the counts quoted in docs/two_tower.md.

* ``untrained``: warm items that are never a training target (so embedded with the id masked, like cold
  items) and how many of them, and of their test interactions, fall in the tail slice; with
  ``model.train_fraction=0.1`` this is the 10%-data runs' case.
* ``identical-views``: for each CFM seed feature, the share of warm items whose view (the features left after
  masking) is identical to another item's, and the expected number of other rows with an identical view in
  an SSL batch (no value dropout). The SSL loss keeps those rows as negatives.
* ``streaming``: Yi et al.'s streaming frequency estimator (``logq: streaming``) fed ``--epochs`` epochs of
  training-target batches drawn like the sampler's, against each item's true probability of being in a
  batch; medians of the log ratio over the head and tail slices.

    .venv/bin/python bench/two_tower_diagnostics.py untrained --config configs/beauty_two_tower.yaml \
        --set model.train_fraction=0.1
    .venv/bin/python bench/two_tower_diagnostics.py identical-views --config configs/ml100k_two_tower.yaml
    .venv/bin/python bench/two_tower_diagnostics.py streaming --config configs/ml100k_two_tower.yaml --epochs 12
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prepared_model(config: str, overrides: list[str]):
    """The config's dataset and its two-tower model, prepared (features, samples, MI), untrained."""
    from features import prepare
    from recsys.config import load_config
    from recsys.models import build_model
    from recsys.pipeline import prepare_model

    cfg = load_config(config, overrides)
    if cfg.model["name"] != "two_tower":
        raise SystemExit(f"{config}: model {cfg.model['name']!r} is not two_tower")
    dataset = prepare(cfg.data)
    model = build_model(cfg.model, dataset.n_users, dataset.n_items)
    prepare_model(model, dataset)
    return cfg, dataset, model


def slices(model) -> dict[str, np.ndarray]:
    from features.cold_items import item_slices

    return item_slices(model.train_item_counts, model.cold_items, 0.1)


def untrained(cfg, dataset, model) -> None:
    never_target = model.untrained.numpy()
    tail = slices(model)["tail"]
    in_tail = np.flatnonzero(never_target & tail)
    test = dataset.matrix("test").tocsc()
    print(f"items {dataset.n_items}, cold {len(model.cold_items)}, tail {int(tail.sum())}")
    print(f"tail items never a training target (embedded with the id masked): {in_tail.size}")
    print(f"test interactions on them: {int(test[:, in_tail].nnz)} of {int(test.nnz)}")


def identical_views(cfg, dataset, model) -> None:
    from recsys.feature_masking import correlated_group

    names = [f.name for f in model.item_tower.fields]
    values = {name: model.item_arrays.values[name] for name in names}
    warm = model.ssl_catalogue.numpy()
    batch = model.config.ssl_batch_size

    def view(item: int, kept: list[str]) -> tuple:
        return tuple(tuple(np.atleast_1d(values[name][item]).tolist()) for name in kept)

    mi = getattr(model, "mutual_information", None)
    seeds = range(len(names)) if mi is not None else []
    if mi is None:
        print("no mutual information (masking is not 'correlated' or ssl_weight is 0)")
    for seed in seeds:
        group = correlated_group(mi, seed)
        for label, masked in (
            ("view 1", group),
            ("view 2", [j for j in range(len(names)) if j not in group]),
        ):
            kept = [names[j] for j in range(len(names)) if j not in masked]
            if "item_idx" in kept:  # the id tells every item apart
                continue
            counts = Counter(view(i, kept) for i in warm)
            others = np.array([counts[view(i, kept)] for i in warm]) - 1
            expected = (batch - 1) * others.mean() / (warm.size - 1)
            print(
                f"seed {names[seed]}, {label} keeps {kept}: {np.mean(others > 0):.1%} of warm items share it; "
                f"{expected:.2f} identical other rows per SSL row of {batch}"
            )


def streaming(cfg, dataset, model, epochs: int, seed: int) -> None:
    from recsys.models.two_tower import StreamingFrequency

    targets = model.train_samples.targets
    batch = int(cfg.train.batch_size)
    counts = np.bincount(targets, minlength=dataset.n_items)
    estimator = StreamingFrequency(dataset.n_items, model.config.streaming_alpha)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(targets.size)
        for start in range(0, targets.size, batch):
            estimator.update(torch.from_numpy(targets[order[start : start + batch]]))
    estimated = estimator.log_probability(torch.arange(dataset.n_items)).double().numpy()
    with np.errstate(divide="ignore"):  # items never drawn: log 0, left out below
        in_batch = np.log1p(-((1 - counts / counts.sum()) ** batch))  # log P(item in a batch)
    print(f"{int(estimator.step)} steps of {batch} targets ({epochs} epochs)")
    for name, mask in slices(model).items():
        mask = mask & (counts > 0)
        if mask.any():
            ratio = estimated[mask] - in_batch[mask]
            print(
                f"{name}: median log(estimate / true) {np.median(ratio):+.2f} ({np.exp(np.median(ratio)):.3g}x)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("check", choices=["untrained", "identical-views", "streaming"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--epochs", type=int, default=12, help="streaming: epochs of batches")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, dataset, model = prepared_model(args.config, args.set)
    if args.check == "untrained":
        untrained(cfg, dataset, model)
    elif args.check == "identical-views":
        identical_views(cfg, dataset, model)
    else:
        streaming(cfg, dataset, model, args.epochs, args.seed)


if __name__ == "__main__":
    main()
