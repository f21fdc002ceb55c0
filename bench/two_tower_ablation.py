"""Ablation of the SSL two-tower model (Yao et al., CIKM 2021, Table 5): variants x seeds, with overall, head,
tail and cold-item Recall/NDCG at 10 and 50, written to ``bench/results/two_tower_<dataset>.json``.

    .venv/bin/python bench/two_tower_ablation.py --config configs/ml100k_two_tower.yaml --seeds 0 1 2
    .venv/bin/python bench/two_tower_ablation.py --config configs/beauty_two_tower.yaml --seeds 0 \
        --variants no_ssl cfm --set train.epochs=10

Every variant is the base config plus the model overrides below; the data, the cold items (the config's
``cold_item_seed``) and the evaluation are the same for all.  The seed changes the initialisation and the
batches.  Tracking is off; one torch and one FAISS thread (the benchmark machine is shared).
Slices: head = top 10% of the warm items by training frequency, tail = the other warm items, cold = the held-out
items (``features.cold_items``); slice metrics restrict the truth, not the ranking (``eval.slices``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from _results import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# model overrides of each variant (the paper's Table 5 rows, plus log-Q off)
VARIANTS: dict[str, dict] = {
    "no_ssl": {"ssl_weight": 0.0},
    "no_ssl_no_logq": {"ssl_weight": 0.0, "logq": "none"},
    "feature_dropout": {"ssl_weight": 0.0, "feature_dropout": 0.3},
    "spread_out": {"ssl_weight": 0.0, "spread_out": 1.0},
    "rfm": {"masking": "random"},
    "rfm_no_complement": {"masking": "random_independent"},
    "cfm_no_dropout": {"masking": "correlated", "value_dropout": 0.0},
    "dropout_only": {"masking": "none"},
    "cfm": {"masking": "correlated"},
    "cfm_no_logq": {"masking": "correlated", "logq": "none"},
}
KEYS = [f"{s}/{m}@{k}" for s in ("all", "head", "tail", "cold") for m in ("recall", "ndcg") for k in (10, 50)]


def run_one(config: Path, variant: str, seed: int, overrides: list[str]) -> dict:
    from eval.slices import evaluate_item_slices
    from features.cold_items import item_slices
    from recsys.config import load_config
    from recsys.pipeline import train_experiment

    model_over = [f"model.{k}={json.dumps(v)}" for k, v in VARIANTS[variant].items()]
    cfg = load_config(
        config,
        [
            *model_over,
            f"seed={seed}",
            "tracking.enabled=false",
            "train.progress=false",
            "train.num_threads=1",
            "device=cpu",
            *overrides,
        ],
    )
    cfg.name = f"{cfg.name}-{variant}-s{seed}"
    t0 = time.perf_counter()
    result = train_experiment(cfg, echo=lambda *_: None)
    model, ds = result.model, result.dataset
    slices = item_slices(model.train_item_counts, model.cold_items, head_fraction=0.1)
    metrics = evaluate_item_slices(model, ds, slices, split="test", ks=(10, 50))
    # validation slices too, so that hyper-parameters can be chosen without looking at the test split
    valid_metrics = evaluate_item_slices(model, ds, slices, split="valid", ks=(10, 50))
    scored = [h for h in result.history if "valid/recall@50" in h]
    best = max(scored, key=lambda h: h["valid/recall@50"])["epoch"] if scored else None
    return {
        "variant": variant,
        "seed": seed,
        "metrics": metrics,
        "valid_metrics": valid_metrics,
        "epochs_run": len(result.history),
        "best_valid_epoch": best,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarise(runs: list[dict]) -> dict:
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rows = [r["metrics"] for r in runs if r["variant"] == variant]
        out[variant] = {"seeds": len(rows)}
        for key in KEYS:
            vals = [m[key] for m in rows if key in m]
            if vals:
                out[variant][key] = {
                    "mean": statistics.fmean(vals),
                    "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                }
        for s in ("all", "head", "tail", "cold"):
            out[variant][f"{s}/users"] = rows[0].get(f"{s}/users")
    return out


def table(summary: dict) -> str:
    cols = ["all/recall@10", "all/recall@50", "head/recall@50", "tail/recall@10", "tail/recall@50",
            "cold/recall@10", "cold/recall@50", "all/ndcg@10"]  # fmt: skip
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for variant, row in summary.items():
        cells = [f"{row[c]['mean']:.4f} ± {row[c]['std']:.4f}" if c in row else "-" for c in cols]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def command_line() -> str:
    return " ".join([Path(sys.executable).name, *sys.argv])


def refuse_to_replace(ap: argparse.ArgumentParser, out: Path, force: bool) -> None:
    """Every run writes --out whole: an existing file (other runs' results) is replaced only with --force."""
    if out.exists() and not force:
        ap.error(f"{out} exists already; pass another --out, or --force to replace it")


def merge(ap: argparse.ArgumentParser, files: list[Path]) -> tuple[list[dict], dict]:
    """The runs of ``files`` and their sources' commands. Runs must share one setting (config and overrides:
    a run's own, else its file's) and no (variant, seed) may come twice: their means are seeds of one setting."""
    runs, sources, settings, seen = [], {}, {}, {}
    for f in files:
        data = json.loads(f.read_text())
        sources[str(f)] = data.get("command")
        file_setting = (
            {"config": data["config"], "overrides": data["overrides"]} if "config" in data else None
        )
        for r in data["runs"]:
            setting = r.get("setting", file_setting)
            if setting is not None:  # one config file however its path was typed
                setting = {**setting, "config": str(Path(setting["config"]).resolve())}
                settings.setdefault(json.dumps(setting, sort_keys=True), str(f))
            key = (r["variant"], r["seed"])
            if key in seen:
                ap.error(f"--merge: variant {key[0]} seed {key[1]} is in both {seen[key]} and {f}")
            seen[key] = str(f)
            runs.append(r if setting is None else {**r, "setting": setting})
    if len(settings) > 1:
        ap.error(
            f"--merge: the files were run with different settings: {list(settings)} (from {list(settings.values())})"
        )
    return runs, sources


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "ml100k_two_tower.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"among {list(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/two_tower_<name>.json")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra config override for every run (repeatable), e.g. --set train.epochs=10",
    )
    ap.add_argument("--force", action="store_true", help="replace --out when it exists already")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="combine the runs of earlier result files into --out (no training)",
    )
    args = ap.parse_args(argv)
    if args.merge:
        out = args.out or REPO / "bench" / "results" / "two_tower_merged.json"
        refuse_to_replace(ap, out, args.force)
        runs, sources = merge(ap, args.merge)
        summary = summarise(runs)
        write_json(out, {"command": command_line(), "merged_from": sources, "summary": summary, "runs": runs})
        print(table(summary))
        print(f"wrote {out}")
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from recsys.config import load_config
    from recsys.tracking import git_commit

    base = load_config(args.config, list(args.overrides))
    out = args.out or REPO / "bench" / "results" / f"two_tower_{base.name}.json"
    refuse_to_replace(ap, out, args.force)
    t0 = time.perf_counter()
    commit = git_commit()  # the code the numbers come from
    runs = []
    for seed in args.seeds:  # seeds outermost: a cut-short run still has every variant for the first seeds
        for variant in args.variants:
            r = run_one(args.config, variant, seed, list(args.overrides))
            r["setting"] = {"config": str(args.config.resolve()), "overrides": list(args.overrides)}
            runs.append(r)
            m = r["metrics"]
            print(
                f"{variant:18s} seed {seed}: R@50 all {m['all/recall@50']:.4f} head {m.get('head/recall@50', 0):.4f} "
                f"tail {m.get('tail/recall@50', 0):.4f} cold {m.get('cold/recall@50', 0):.4f} ({r['seconds']} s)",
                flush=True,
            )
            write_json(
                out,
                {
                    "command": command_line(),
                    "git_commit": commit,
                    "config": str(args.config),
                    "overrides": args.overrides,
                    "machine": {
                        "cpu_count": os.cpu_count(),
                        "torch_threads": 1,
                        "platform": platform.platform(),
                        "load_average_at_end": os.getloadavg(),
                        "torch": torch.__version__,
                    },
                    "wall_seconds": round(time.perf_counter() - t0, 1),
                    "summary": summarise(runs),
                    "runs": runs,
                },
            )
    print(table(summarise(runs)))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
