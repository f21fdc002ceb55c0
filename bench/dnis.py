"""DNIS against uniform embedding sizes at the same number of embedding entries, variants x seeds, written to
``bench/results/dnis_<name>.json``.

    .venv/bin/python bench/dnis.py --config configs/ml100k_dnis.yaml --seeds 0 1 2 3 4
    .venv/bin/python bench/dnis.py --merge A.json B.json --out C.json   # one table from several files

Variants (each is the config plus the model overrides below; data, split and evaluation are the same):

* ``mf_d64`` / ``mf_d32`` / ``mf_d16``: the wrapped model alone with d = 64 / 32 / 16 (the same entries as
  keep 1, 0.5, 0.25), early stopping from the first epoch;
* ``dnis_keep100`` / ``dnis_keep50`` / ``dnis_keep25``: DNIS, keeping all / half / a quarter of the entries;
* ``prune_keep50`` / ``prune_keep25``: the same three phases with alpha held at 1 (``lr_alpha`` 1e-12, no
  L1): magnitude pruning of the plain model, which tells what the search itself adds.

Reported: test Recall/NDCG at the config's ks, the validation NDCG the weights were chosen on, the kept share
of entries, the mean kept dimensions per feature block (DNIS), epochs and seconds.  Tracking is off; one torch
thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _results import provenance, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS: dict[str, dict] = {
    "mf_d64": {"plain": 64},
    "mf_d32": {"plain": 32},
    "mf_d16": {"plain": 16},
    "dnis_keep100": {"keep": 1.0},
    "dnis_keep50": {"keep": 0.5},
    "dnis_keep25": {"keep": 0.25},
    "prune_keep50": {"keep": 0.5, "lr_alpha": 1e-12, "l1": 0.0},
    "prune_keep25": {"keep": 0.25, "lr_alpha": 1e-12, "l1": 0.0},
}


def variant_config(config: Path, variant: str, seed: int, overrides: list[str]):
    from recsys.config import load_config

    cfg = load_config(
        config,
        [*overrides, f"seed={seed}", "tracking.enabled=false", "train.progress=false", "train.num_threads=1"],
    )
    if cfg.model.get("name") != "dnis":
        raise SystemExit(f"{config}: model.name must be dnis")
    over = dict(VARIANTS[variant])
    if "plain" in over:  # the wrapped model alone
        cfg.model = {**cfg.model["base"], "dim": over.pop("plain")}
    else:
        cfg.model = {**cfg.model, **over}
    cfg.name = f"{cfg.name}-{variant}-s{seed}"
    from recsys.config import validate_config

    return validate_config(cfg.model_dump(mode="json"))


def load_config_dim(config: Path, overrides: list[str]) -> int:
    from recsys.config import load_config

    return int(load_config(config, overrides).model["base"]["dim"])


def run_one(config: Path, variant: str, seed: int, overrides: list[str]) -> dict:
    from recsys.pipeline import train_experiment

    cfg = variant_config(config, variant, seed, overrides)
    t0 = time.perf_counter()
    result = train_experiment(cfg, echo=lambda *_: None)
    model = result.model
    row = {
        "variant": variant,
        "seed": seed,
        "test": result.test_metrics,
        "valid_at_best": result.best_valid,
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if hasattr(model, "kept_fraction"):
        row["kept_fraction"] = model.kept_fraction()
        row["kept_dims_per_feature_block"] = [round(x, 2) for x in model.dimensions_per_block()]
        row["alpha_mean_per_feature_block"] = [round(x, 4) for x in model.alpha.mean(1).tolist()]
    else:  # a uniform table of d dimensions holds d / d_wrapped of the wrapped model's entries
        row["kept_fraction"] = cfg.model["dim"] / load_config_dim(config, overrides)
    return row


def summarise(runs: list[dict], keys: list[str]) -> dict:
    out: dict[str, dict] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rows = [r for r in runs if r["variant"] == variant]
        out[variant] = {
            "seeds": len(rows),
            "kept_fraction": statistics.fmean(r["kept_fraction"] for r in rows),
        }
        for key in keys:
            vals = [r["test"][key] for r in rows]
            out[variant][key] = {"mean": statistics.fmean(vals),
                                 "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}  # fmt: skip
        out[variant]["epochs_run"] = statistics.fmean(r["epochs_run"] for r in rows)
        out[variant]["seconds"] = statistics.fmean(r["seconds"] for r in rows)
        dims = [r["kept_dims_per_feature_block"] for r in rows if "kept_dims_per_feature_block" in r]
        if dims:
            out[variant]["kept_dims_per_feature_block"] = [
                round(statistics.fmean(c), 1) for c in zip(*dims, strict=True)
            ]
    return out


def table(summary: dict, keys: list[str]) -> str:
    lines = ["| variant | kept | " + " | ".join(keys) + " | epochs | s |", "|---" * (len(keys) + 4) + "|"]
    for variant, row in summary.items():
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in keys]
        lines.append(
            f"| {variant} | {row['kept_fraction']:.2f} | " + " | ".join(cells)
            + f" | {row['epochs_run']:.1f} | {row['seconds']:.1f} |"
        )  # fmt: skip
    return "\n".join(lines)


def merge(ap: argparse.ArgumentParser, files: list[Path], out: Path | None) -> None:
    """One summary over the runs of ``files``, which must come from one config and overrides, with no
    (variant, seed) twice."""
    if out is None:
        ap.error("--merge needs --out")
    runs, sources, settings, seen = [], {}, set(), {}
    for f in files:
        data = json.loads(f.read_text())
        sources[str(f)] = {k: data[k] for k in ("command", "date", "machine", "commit")}
        settings.add(json.dumps([str(Path(data["config"]).resolve()), data["overrides"]]))
        for r in data["runs"]:
            key = (r["variant"], r["seed"])
            if key in seen:
                ap.error(f"--merge: {key[0]} seed {key[1]} is in both {seen[key]} and {f}")
            seen[key] = str(f)
            runs.append(r)
    if len(settings) > 1:
        ap.error(f"--merge: the files come from different configs or overrides: {sorted(settings)}")
    keys = [k for k in runs[0]["test"] if k.startswith(("recall@", "ndcg@"))]
    summary = summarise(runs, keys)
    write_json(out, {**provenance(), "merged_from": sources, "summary": summary, "runs": runs})
    print(table(summary, keys))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "ml100k_dnis.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"among {list(VARIANTS)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra config override for every run (repeatable)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/dnis_<name>.json")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                    help="combine the runs of earlier result files of one config into --out (no training)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.merge:
        merge(ap, args.merge, args.out)
        return
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    import torch

    torch.set_num_threads(1)
    from recsys.config import load_config
    from recsys.tracking import git_commit

    base = load_config(args.config, list(args.overrides))
    out = args.out or REPO / "bench" / "results" / f"dnis_{base.name}.json"
    keys = [f"{m}@{k}" for k in base.eval.ks for m in ("recall", "ndcg")]
    head = {**provenance(), "commit": git_commit(), "config": str(args.config), "overrides": args.overrides}
    runs: list[dict] = []
    for seed in args.seeds:
        for variant in args.variants:
            runs.append(run_one(args.config, variant, seed, list(args.overrides)))
            r = runs[-1]
            print(f"{variant} s{seed}: " + " ".join(f"{k} {r['test'][k]:.4f}" for k in keys)
                  + f" kept {r['kept_fraction']:.2f} best epoch {r['best_epoch']} ({r['seconds']} s)", flush=True)  # fmt: skip
            summary = summarise(runs, keys)
            write_json(out, {**head, "summary": summary, "runs": runs})  # after every run: a partial file
    print(table(summarise(runs, keys), keys))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
