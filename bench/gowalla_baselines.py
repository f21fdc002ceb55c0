"""Baselines on LightGCN's Gowalla split under the LightGCN protocol (full ranking, train items excluded).

Runs each config through the same pipeline as ``recsys train`` (tracked in MLflow), and writes the test
metrics, wall time and learning curve (test Recall@20 against cumulative training wall time) to JSON.

    .venv/bin/python bench/gowalla_baselines.py --configs configs/gowalla_popularity.yaml \
        configs/gowalla_rp3beta.yaml --out bench/results/gowalla_fast.json
    .venv/bin/python bench/gowalla_baselines.py --configs configs/gowalla_lightgcn.yaml \
        --set train.epochs=50 train.eval_every=10 train.num_threads=1 --out bench/results/gowalla_lightgcn.json
    .venv/bin/python bench/gowalla_baselines.py --configs configs/gowalla_dccf.yaml --resume \
        --out bench/results/gowalla_dccf.json

``train_seconds`` sums the trainer's per-epoch training times (evaluation excluded; over all sessions of a
resumed run); ``wall_seconds`` is the wall time of that config's ``train_experiment`` call (data from the cache,
training, testing, logging); ``git_commit`` is the code a run starts from.

Run from the repository root (the configs point at ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from _results import write_json


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", required=True)
    ap.add_argument(
        "--set", nargs="+", action="extend", default=[], help="overrides applied to every config (repeatable)"
    )
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--resume",
        action="store_true",
        help="continue each config from its last checkpoint (long runs spread over sessions)",
    )
    ap.add_argument(
        "--name-suffix",
        default="",
        help="appended to each config's name (e.g. an ablation tag), so runs do not overwrite",
    )
    args = ap.parse_args()

    from recsys.config import load_config
    from recsys.pipeline import train_experiment
    from recsys.tracking import git_commit

    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for path in args.configs:
        cfg = load_config(path, args.set)
        if args.name_suffix:
            cfg = cfg.model_copy(update={"name": cfg.name + args.name_suffix})
        commit = git_commit()  # the code that trains (the tree may change while a long run goes on)
        t0 = time.perf_counter()
        res = train_experiment(cfg, resume=args.resume)
        wall = time.perf_counter() - t0
        curve, elapsed = [], 0.0
        for h in res.history:
            elapsed += h.get("epoch_time_s", 0.0)
            if "test/recall@20" in h:
                curve.append(
                    {
                        "epoch": h["epoch"],
                        "train_seconds": round(elapsed, 2),
                        "recall@20": h["test/recall@20"],
                        "ndcg@20": h["test/ndcg@20"],
                    }
                )
        results[cfg.name] = {
            "config": path,
            "overrides": args.set,
            "model": cfg.model,
            "train": cfg.train.model_dump(),
            "test": res.test_metrics,
            "wall_seconds": round(wall, 1),
            "train_seconds": round(elapsed, 1),
            "epochs": len(res.history),
            "mlflow_run_id": res.run_id,
            "curve": curve,
            "machine": machine(),
            "git_commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        print(
            f"{cfg.name}: R@20 {res.test_metrics['recall@20']:.4f} N@20 {res.test_metrics['ndcg@20']:.4f} "
            f"in {wall:.1f} s",
            flush=True,
        )
        write_json(out, results, indent=2)


if __name__ == "__main__":
    main()
