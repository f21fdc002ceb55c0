"""Honest tuning of the SSL two-tower model: every trial is chosen on the *validation* split only.

Each ``--trial NAME KEY=VALUE ...`` is one variant of ``bench/two_tower_ablation.py`` (``--variant``) plus its
own config overrides; it is trained once per seed and scored on the validation and test splits with the
head / tail / cold slices.  Trials are ranked by the mean of ``--select`` on validation (default: tail
Recall@50, the metric the issue asks about); the test numbers are recorded beside it but never used to choose.

    .venv/bin/python bench/two_tower_tune.py --config configs/beauty_two_tower.yaml --variant cfm \\
        --trial a0.1 model.ssl_weight=0.1 --trial a1 model.ssl_weight=1.0 \\
        --set train.epochs=8 --set train.early_stopping.patience=2 --out bench/results/tune_cfm.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _results import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def _mean(runs: list[dict], part: str, key: str) -> float:
    return statistics.fmean(r[part][key] for r in runs)


def main(argv: list[str] | None = None) -> str:
    """Run the trials; returns the name of the trial chosen on validation."""
    import two_tower_ablation
    from two_tower_ablation import KEYS, VARIANTS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--variant", required=True, choices=list(VARIANTS))
    ap.add_argument("--trial", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument(
        "--select", default="tail/recall@50", choices=KEYS, help="validation metric to rank trials by"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    trials: dict[str, list[str]] = {}
    for name, *over in args.trial:
        if name in trials:
            ap.error(f"--trial {name!r} given twice")
        bad = [o for o in over if "=" not in o]
        if bad:
            ap.error(f"--trial {name}: expected KEY=VALUE overrides, got {bad}")
        trials[name] = over

    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for name, over in trials.items():
        runs = [
            two_tower_ablation.run_one(args.config, args.variant, seed, [*args.overrides, *over])
            for seed in args.seeds
        ]
        results[name] = {
            "overrides": over,
            "valid": _mean(runs, "valid_metrics", args.select),
            "test": _mean(runs, "metrics", args.select),
            "runs": runs,
        }
        print(
            f"{name:24s} valid {args.select} {results[name]['valid']:.4f}   test {results[name]['test']:.4f}",
            flush=True,
        )
        write_json(
            args.out,
            {
                "command": two_tower_ablation.command_line(),
                "config": str(args.config),
                "variant": args.variant,
                "overrides": args.overrides,
                "select": f"valid {args.select}",
                "machine": {
                    "cpu_count": os.cpu_count(),
                    "torch_threads": 1,
                    "platform": platform.platform(),
                },
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "trials": results,
            },
        )
    best = max(results, key=lambda n: results[n]["valid"])
    print(f"best on validation {args.select}: {best} {trials[best]}")
    print(f"wrote {args.out}")
    return best


if __name__ == "__main__":
    main()
