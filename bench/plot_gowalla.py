"""Plot test Recall@20 against training wall time for the Gowalla baselines (from bench/results/*.json).

.venv/bin/python bench/plot_gowalla.py bench/results/gowalla_*.json --out docs/gowalla_recall_vs_time.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for path in args.results:
        for name, r in json.loads(Path(path).read_text()).items():
            if r["curve"]:
                xs = [p["train_seconds"] / 60 for p in r["curve"]]
                ys = [p["recall@20"] for p in r["curve"]]
                sampler = r["train"].get("sampler", "interactions")
                label = f"{name}, {sampler} sampler (per {r['train']['eval_every']} epochs)"
                ax.plot(xs, ys, marker="o", ms=3, label=label)
            else:
                ax.scatter(
                    [r["wall_seconds"] / 60],
                    [r["test"]["recall@20"]],
                    marker="*",
                    s=120,
                    label=f"{name} (closed form, incl. evaluation)",
                    zorder=3,
                )
    ax.axhline(0.1830, color="grey", ls="--", lw=1, label="LightGCN paper, 1000 GPU epochs")
    ax.set_xlabel("training wall time on 2 CPU cores (minutes)")
    ax.set_ylabel("test Recall@20")
    ax.set_title("Gowalla (LightGCN split), full ranking")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
