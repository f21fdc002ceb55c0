"""Data-parallel training (``torchrun --nproc-per-node 2 recsys train``) against one process on the same cores.

For ``--config``, ``recsys train`` runs ``--epochs`` epochs three ways, one after the other on a quiet
machine: one process with one torch thread, one process with two threads, and two processes of one thread
under torchrun (DDP over gloo, each step one batch per process, gradients averaged). The epoch times come from
the run's checkpoint (``state.history``, measured by the trainer itself, without the validation); the
monitored metrics of the last epoch (validation; test for a pre-split dataset without one) show what the
fewer, larger steps of the data-parallel run cost or gain after the same number of epochs. MLflow is off;
the data cache is shared (prepared by the first run). With ``--eval-every 1`` the file also holds each
mode's curve: the monitored NDCG against the training seconds so far (validation time excluded), which says
whether the data-parallel run's fewer steps are made up by its faster epochs.

    .venv/bin/python bench/bench_data_parallel.py --config configs/beauty_sasrec.yaml --epochs 3 \\
        --out bench/results/bench_data_parallel_beauty_sasrec.json
    .venv/bin/python bench/bench_data_parallel.py --config configs/beauty_sasrec.yaml --epochs 8 \\
        --eval-every 1 --modes 1x2 2x1 --out bench/results/bench_data_parallel_beauty_sasrec_curve.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._results import provenance, write_json  # noqa: E402

MODES = {
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
    "2 processes x 1 thread (torchrun, DDP)": (2, 1),
}
SHORT = dict(zip(("1x1", "1x2", "2x1"), MODES, strict=True))  # --modes names


def run_mode(config: Path, home: Path, processes: int, threads: int, epochs: int, eval_every: int) -> dict:
    import torch

    recsys = str(Path(sys.executable).with_name("recsys"))
    overrides = [
        f"train.epochs={epochs}",
        f"train.eval_every={eval_every}",
        f"train.num_threads={threads}",
        "train.progress=false",
        "tracking.enabled=false",
    ]
    cmd = [recsys, "train", "-c", str(config), *overrides]
    if processes > 1:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        cmd = [torchrun, "--standalone", f"--nproc-per-node={processes}", *cmd]
    env = {**os.environ, "RECSYS_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    (ckpt_path,) = (home / "runs").glob("*/checkpoint.pt")
    state = torch.load(ckpt_path, weights_only=False)["state"]
    history = state["history"]
    last = history[-1]
    # the trainer's monitored split: validation, or test for a pre-split dataset without one (Gowalla)
    split = "valid" if any(k.startswith("valid/") for k in last) else "test"
    metrics = {k.removeprefix(f"{split}/"): v for k, v in last.items() if k.startswith(f"{split}/")}
    times = [h["epoch_time_s"] for h in history]
    # the monitored metrics against the training seconds so far (validation time excluded)
    elapsed, curve = 0.0, []
    for h in history:
        elapsed += h["epoch_time_s"]
        scores = {k.removeprefix(f"{split}/"): v for k, v in h.items() if k.startswith(f"{split}/ndcg")}
        if scores:
            curve.append({"epoch": int(h["epoch"]), "train_seconds": elapsed, **scores})
    ckpt_path.unlink()  # the next mode trains afresh
    return {
        "processes": processes,
        "threads_per_process": threads,
        "epoch_seconds": times,
        "median_epoch_seconds": statistics.median(times),
        "steps": state["step"],
        "monitored_split": split,
        "metrics_last_epoch": metrics,
        "curve": curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--eval-every", type=int, help="validate every N epochs (default: only after the last)")
    ap.add_argument(
        "--modes",
        nargs="+",
        choices=list(SHORT),
        default=list(SHORT),
        help="processes x threads (default: all)",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in (SHORT[m] for m in args.modes):
            processes, threads = MODES[name]
            every = args.eval_every or args.epochs
            res = run_mode(args.config.resolve(), Path(tmp), processes, threads, args.epochs, every)
            results[name] = res
            shown = {k: round(v, 4) for k, v in res["metrics_last_epoch"].items() if k.startswith("ndcg")}
            print(
                f"{name}: {res['median_epoch_seconds']:.1f} s per epoch (median of {args.epochs}), "
                f"{res['steps']} steps, {res['monitored_split']} {shown}",
                flush=True,
            )
    if "1 process x 1 thread" in results:
        base = results["1 process x 1 thread"]["median_epoch_seconds"]
        for res in results.values():
            res["speedup_vs_1x1"] = base / res["median_epoch_seconds"]
    write_json(
        args.out, {**provenance(), "config": str(args.config), "epochs": args.epochs, "results": results}
    )


if __name__ == "__main__":
    main()
