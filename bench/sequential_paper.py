"""SASRec and ICSRec on Beauty and Sports under the ICSRec paper's protocol (Qin et al., WSDM 2024, Table 2).

Each run goes through the same pipeline as ``recsys train`` (tracked in MLflow, checkpointed every epoch), so
a run cut short by the end of a session continues where it stopped: run the same command again.  Runs that
are already in ``--out`` are skipped.  Several drivers may run at once (one per core) with the same ``--out``:
each run folder is claimed by one driver at a time, and results are merged into ``--out`` under a lock.

    .venv/bin/python bench/sequential_paper.py --runs beauty:sasrec beauty:icsrec --seeds 1 \\
        --out bench/results/sequential_paper.json
    .venv/bin/python bench/sequential_paper.py --table --out bench/results/sequential_paper.json
    .venv/bin/python bench/sequential_paper.py --curves 10 20 50 --runs beauty:icsrec beauty:fine_only

Variants (``DATASET:VARIANT``, DATASET ``beauty`` or ``sports``):

* ``sasrec``: ``configs/<dataset>_sasrec.yaml``, cross-entropy over all items on the dynamic-sliding samples —
  also the paper's "neither loss" ablation (ICSRec with both losses off is bit-identical to it);
* ``icsrec``: ``configs/<dataset>_icsrec.yaml`` (our choices where the reference code is wrong);
* ``gru4rec``: ``configs/<dataset>_gru4rec.yaml``, the recurrent baseline trained as our SASRec is;
* ``duorec``: ``configs/<dataset>_duorec.yaml``, the contrastive baseline (DuoRec, WSDM 2022);
* ``sasrec_bce``: ``configs/<dataset>_sasrec_bce.yaml``, SASRec with its paper's binary per-position loss;
* ``iclrec``: ``configs/<dataset>_iclrec.yaml``, ICLRec (WWW 2022), the intent contrastive parent of ICSRec;
* ``bert4rec``: ``configs/<dataset>_bert4rec.yaml``, BERT4Rec (CIKM 2019), bidirectional on the cloze task;
* ``cl4srec``: ICLRec without its intent term (``model.intent_loss=false``): CL4SRec as ICLRec's code runs it;
* ``icsrec_ref``: ICSRec with the reference code's choices that change numbers (``coarse_positive: last``);
* ``coarse_only`` / ``fine_only``: ICSRec with the fine / coarse loss switched off;
* ``icsrec_readme``: ICSRec with the training command of the reference's first README (commit a42258f,
  2023-01-17, the commit that released the trained models whose test numbers are the paper's Table 2 rows):
  ``--rec_weight 0.1 --lambda_0 0.1 --beta_0 0.1 --f_neg --intent_num 512`` instead of the later scripts'
  1 / 0.3 / 0.1 / 256.  Run here as weights 1 / 1 / 1: Adam's step is unchanged when the whole loss is scaled (the
  factor 10 only moves its epsilon from 1e-8 to 1e-7 relative to the gradients).

Every finished run is tested twice on the same best-on-validation weights: with our protocol (the user's
history removed from the ranking) and with the reference code's (history scored 0, plus two never-relevant
entries of score 0 standing in for its ranked padding and mask rows; ``eval.evaluate_model(excluded_score=0.0,
zero_score_items=2)``).  Recorded per run: both sets of
test metrics, the best validation epoch, epochs run, seconds per epoch and to the best epoch (summed over
all sessions), and the MLflow run id.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
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

DATASETS = {"beauty": "beauty", "sports": "sports"}
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "sasrec": ("sasrec", []),
    "icsrec": ("icsrec", []),
    "gru4rec": ("gru4rec", []),
    "duorec": ("duorec", []),
    "sasrec_bce": ("sasrec_bce", []),
    "iclrec": ("iclrec", []),
    "bert4rec": ("bert4rec", []),
    "cl4srec": ("iclrec", ["model.intent_loss=false"]),
    "icsrec_ref": ("icsrec", ["model.coarse_positive=last"]),
    "coarse_only": ("icsrec", ["model.fine_loss=false"]),
    "fine_only": ("icsrec", ["model.coarse_loss=false"]),
    "icsrec_readme": ("icsrec", ["model.coarse_weight=1.0", "model.fine_weight=1.0", "model.intents=512"]),
}
# The paper's Table 2 (HR@5, NDCG@5, HR@20, NDCG@20)
PAPER = {
    ("beauty", "sasrec"): (0.0377, 0.0241, 0.0894, 0.0386),
    ("beauty", "icsrec"): (0.0698, 0.0494, 0.1298, 0.0663),
    ("sports", "sasrec"): (0.0214, 0.0144, 0.0500, 0.0224),
    ("sports", "icsrec"): (0.0403, 0.0283, 0.0794, 0.0393),
    # GRU4Rec: the paper's baseline row (QinHsiu/ICSRec performances.md), carried over from earlier papers
    ("beauty", "gru4rec"): (0.0180, 0.0116, 0.0427, 0.0186),
    ("sports", "gru4rec"): (0.0162, 0.0103, 0.0421, 0.0186),
    # DuoRec: the strongest baseline row of the same table (QinHsiu/ICSRec performances.md)
    ("beauty", "duorec"): (0.0561, 0.0348, 0.1228, 0.0536),
    ("sports", "duorec"): (0.0312, 0.0195, 0.0696, 0.0302),
    # SASRec with its paper's binary per-position loss, against the paper's SASRec row
    ("beauty", "sasrec_bce"): (0.0377, 0.0241, 0.0894, 0.0386),
    ("sports", "sasrec_bce"): (0.0214, 0.0144, 0.0500, 0.0224),
    # ICLRec and CL4SRec (QinHsiu/ICSRec performances.md; the ICLRec rows are ICLRec's paper's Table 2)
    ("beauty", "iclrec"): (0.0500, 0.0326, 0.1058, 0.0483),
    ("sports", "iclrec"): (0.0290, 0.0191, 0.0646, 0.0291),
    ("beauty", "cl4srec"): (0.0401, 0.0268, 0.0974, 0.0428),
    ("sports", "cl4srec"): (0.0231, 0.0146, 0.0557, 0.0238),
    # BERT4Rec: the baseline row of the same table (QinHsiu/ICSRec performances.md)
    ("beauty", "bert4rec"): (0.0360, 0.0216, 0.0984, 0.0391),
    ("sports", "bert4rec"): (0.0217, 0.0143, 0.0604, 0.0251),
}
KEYS = ("hit@5", "ndcg@5", "hit@20", "ndcg@20")
SPEED_KEYS = ("train.num_threads=", "train.progress=")  # how fast a run goes, not what it computes
# what to do about a damaged checkpoint or best-weights file of a run
RETRAIN = "remove the run folder to train it again"


def parse_run(spec: str) -> tuple[str, str]:
    dataset, _, variant = spec.partition(":")
    if dataset not in DATASETS or variant not in VARIANTS:
        raise SystemExit(
            f"--runs: expected DATASET:VARIANT with DATASET in {list(DATASETS)} and VARIANT in "
            f"{list(VARIANTS)}, got {spec!r}"
        )
    return dataset, variant


def build_config(dataset: str, variant: str, seed: int, extra: list[str]):
    """The run's resolved config.  Its name (part of the run folder's fingerprint) only changes where the config
    does, so that a run started with ``recsys train -c configs/<dataset>_<model>.yaml --resume`` is picked up."""
    from recsys.config import load_config

    model, overrides = VARIANTS[variant]
    cfg = load_config(REPO / "configs" / f"{DATASETS[dataset]}_{model}.yaml", [*overrides, *extra])
    default_seed = cfg.seed
    cfg = cfg.model_copy(update={"seed": seed})
    plain = ("sasrec", "icsrec", "gru4rec", "duorec", "sasrec_bce", "iclrec", "bert4rec")
    suffix = ("" if variant in plain else f"-{variant}") + ("" if seed == default_seed else f"-s{seed}")
    return cfg.model_copy(update={"name": cfg.name + suffix})


def run_key(dataset: str, variant: str, seed: int, cfg) -> str:
    """The results key: the config's fingerprint too, so that a run with other ``--set`` overrides is another run."""
    return f"{dataset}:{variant}:s{seed}:{cfg.fingerprint()}"


def train_one(dataset: str, variant: str, seed: int, extra: list[str]) -> dict:
    """Train (or resume) one run and test it under both protocols."""
    from recsys.pipeline import train_experiment

    cfg = build_config(dataset, variant, seed, extra)
    t0 = time.perf_counter()
    res = train_experiment(cfg, resume=True)
    record = summarize(
        dataset, variant, seed, extra, cfg, res.history, res.model, res.dataset, res.test_metrics
    )
    record["this_session_seconds"] = round(time.perf_counter() - t0, 1)
    record["mlflow_run_id"] = res.run_id
    return record


def monitor_key(cfg) -> str:
    """The history key of the run's early-stopping metric (validation NDCG@20 without early stopping)."""
    return f"valid/{cfg.train.early_stopping.metric}" if cfg.train.early_stopping else "valid/ndcg@20"


def summarize(dataset, variant, seed, extra, cfg, history, model, data, test_metrics=None) -> dict:
    """The record of one run: ``model`` holds its best-on-validation weights, ``history`` its epochs."""
    from eval_protocols import PROTOCOLS

    from eval import evaluate_model

    reference_protocol = PROTOCOLS["history scored 0 + 2 zero-score non-items"]
    if test_metrics is None:
        test_metrics = evaluate_model(
            model, data, split="test", ks=cfg.eval.ks, block_size=cfg.eval.block_size
        )
    # training (with the epoch's clustering) plus the validation pass, per epoch
    epoch_times = [h.get("epoch_time_s", 0.0) + h.get("eval_time_s", 0.0) for h in history]
    monitor = monitor_key(cfg)
    best = None
    for h in history:  # first epoch reaching the maximum: the trainer keeps the first strict improvement
        if monitor in h and (best is None or h[monitor] > best[monitor]):
            best = h
    best_epoch = int(best["epoch"]) if best else None
    reference = evaluate_model(model, data, split="test", ks=cfg.eval.ks, **reference_protocol)
    return {
        "dataset": dataset,
        "variant": variant,
        "seed": seed,
        "name": cfg.name,
        "overrides": [*VARIANTS[variant][1], *extra],
        "fingerprint": cfg.fingerprint(),
        "test": test_metrics,
        "test_reference_protocol": reference,
        "best_valid": {k: v for k, v in (best or {}).items() if k.startswith("valid/")},
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "seconds_per_epoch": round(statistics.fmean(epoch_times), 3) if epoch_times else None,
        "seconds_to_best_epoch": (
            round(sum(t for h, t in zip(history, epoch_times, strict=True) if h["epoch"] <= best_epoch), 3)
            if best_epoch
            else None
        ),
        "train_seconds_all_sessions": round(sum(epoch_times), 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cfg.train.num_threads} torch thread(s)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


class NotNow(Exception):
    """A run whose interim record cannot be made at this moment (the message says why)."""


def interim_one(dataset: str, variant: str, seed: int, extra: list[str]) -> dict | None:
    """Test the best-on-validation weights of a run that is still training (or was cut short), without
    touching its folder; None when it has no best weights yet.

    Not a final result: early stopping has not fired, so a later epoch may still become the best one.  The
    record says how far the run got (``epochs_run``, ``status``)."""
    from eval_protocols import model_for

    from recsys.pipeline import run_dir_for
    from recsys.trainer import BEST, CHECKPOINT, load_torch_file

    cfg = build_config(dataset, variant, seed, extra)
    folder = run_dir_for(cfg)
    ckpt_path, best_path = folder / CHECKPOINT, folder / BEST
    for _ in range(30):  # a training process may be between saving the best weights and the checkpoint
        if not (ckpt_path.exists() and best_path.exists()):
            return None
        before = ckpt_path.stat().st_mtime_ns
        weights = load_torch_file(
            best_path, "best weights on validation", RETRAIN, map_location="cpu", weights_only=True
        )
        state = load_torch_file(
            ckpt_path, "training checkpoint", RETRAIN, map_location="cpu", weights_only=False
        )["state"]
        if ckpt_path.stat().st_mtime_ns == before and best_path.stat().st_mtime_ns <= before:
            break
        time.sleep(2)
    else:
        # Not fatal, so that the other runs still get their records. Best weights that stay newer than a
        # checkpoint that no longer moves come from a run cut between writing the two: its resume redoes
        # that epoch, and the next interim test finds the pair consistent.
        raise NotNow(
            "its best weights are newer than its checkpoint (a run cut between writing the two, or one "
            "writing them right now); skipped, test it again later"
        )
    if state["best_epoch"] < 1:
        return None
    data, model = model_for(cfg)
    model.load_state_dict(weights)
    model.eval()
    record = summarize(dataset, variant, seed, extra, cfg, state["history"], model, data)
    assert record["best_epoch"] == state["best_epoch"], (record["best_epoch"], state["best_epoch"])
    done = "early stopping fired" if state["stopped_early"] else "still training or cut short"
    record["status"] = f"interim: {done} after epoch {state['epoch']}; best-so-far weights tested"
    return record


def curves(runs, seeds, extra, epochs: list[int]) -> str:
    """A markdown table of each run's validation NDCG@20 (the early-stopping metric) at the given epochs,
    read from its checkpoint, finished or still training; a run without a checkpoint is left out.

    Runs at different stages compare fairly only at equal epochs: the best-so-far test numbers of a run that
    is still rising (``--interim``) are not those of a converged one."""
    from recsys.pipeline import run_dir_for
    from recsys.trainer import CHECKPOINT, load_torch_file

    columns = []  # (label, {epoch: value}, best epoch, last epoch): the trainer's own record of the latter two
    for seed in seeds:
        for dataset, variant in runs:
            cfg = build_config(dataset, variant, seed, extra)
            path = run_dir_for(cfg) / CHECKPOINT
            if not path.exists():
                continue
            state = load_torch_file(
                path, "training checkpoint", RETRAIN, map_location="cpu", weights_only=False
            )["state"]
            monitor = monitor_key(cfg)
            curve = {int(h["epoch"]): h[monitor] for h in state["history"] if monitor in h}
            columns.append((f"{dataset}:{variant}:s{seed}", curve, state["best_epoch"], state["epoch"]))
    head = "| epoch | " + " | ".join(label for label, *_ in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for epoch in epochs:
        cells = (f"{curve[epoch]:.4f}" if epoch in curve else "" for _, curve, *_ in columns)
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    best = (f"{curve[b]:.4f} ({b})" if b in curve else "" for _, curve, b, _ in columns)
    lines.append("| best (epoch) | " + " | ".join(best) + " |")
    lines.append("| epochs run | " + " | ".join(str(last) for *_, last in columns) + " |")
    return "\n".join(lines)


def table(results: dict) -> str:
    """Mean ± sample std over seeds per (dataset, variant) (the bare value for one seed), beside the paper's
    numbers.  A group holding unfinished runs (``--interim`` records) says so, with the epochs each has run:
    its seeds may stand at different epochs, so its mean is not that of converged runs."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results.values():
        # Runs with other --set overrides are another setting, not more seeds of this one.
        own = VARIANTS.get(r["variant"], (None, []))[1]
        given = r.get("overrides", [])[len(own) :]  # after the variant's own
        setting = [o for o in given if not o.startswith(SPEED_KEYS)]
        label = r["variant"] + (f" [{', '.join(setting)}]" if setting else "")
        group = groups.setdefault((r["dataset"], label), [])
        if any(g["seed"] == r["seed"] for g in group):
            # the same seed and overrides under another config (a YAML edited since): its own row
            group = groups.setdefault((r["dataset"], f"{label} [config {r.get('fingerprint')}]"), [])
        group.append(r)
    head = "| dataset | variant | seeds | protocol | " + " | ".join(KEYS) + " | epochs to best | s / epoch |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for (dataset, variant), runs in sorted(groups.items()):
        # The seeds label and the timings describe the group, not one protocol's test numbers.
        seeds = str(len(runs))
        if any(r.get("status", "").startswith("interim") for r in runs):
            seeds += " (interim at epochs " + ", ".join(str(r["epochs_run"]) for r in runs) + ")"
        epochs = statistics.fmean(r["best_epoch"] or 0 for r in runs)
        speed = statistics.fmean(r["seconds_per_epoch"] or 0 for r in runs)
        for label, part in (("ours", "test"), ("reference", "test_reference_protocol")):
            cells = []
            for key in KEYS:
                vals = [r[part][key] for r in runs]
                mean = f"{statistics.fmean(vals):.4f}"  # one seed has no spread to show
                cells.append(f"{mean} ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else mean)
            lines.append(
                f"| {dataset} | {variant} | {seeds} | {label} | "
                + " | ".join(cells)
                + f" | {epochs:.0f} | {speed:.0f} |"
            )
        if (dataset, variant) in PAPER:
            lines.append(
                f"| {dataset} | {variant} | | paper | "
                + " | ".join(f"{v:.4f}" for v in PAPER[(dataset, variant)])
                + " | | |"
            )
    return "\n".join(lines)


@contextlib.contextmanager
def claim_run(cfg):
    """Yield whether this driver holds the run's folder: two drivers must never train one run folder at once.
    The lock is released when the process ends, so a killed driver leaves no stale claim."""
    from recsys.pipeline import run_dir_for

    folder = run_dir_for(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "driver.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def load_results(out: Path) -> dict:
    """The runs saved in ``out`` so far (none when it does not exist yet)."""
    return json.loads(out.read_text()) if out.exists() else {}


def save_result(out: Path, key: str, record: dict) -> dict:
    """Add one finished run to ``out`` and return the merged results.

    Several drivers may share ``out`` (one per core): the file is re-read under an exclusive lock, so a run
    another driver saved meanwhile is kept, and it is replaced atomically, so a crash never leaves it
    half-written."""
    with results_lock(out):
        results = load_results(out)
        results[key] = record
        write_json(out, results)
        # The run's interim record (its best-so-far weights) has served its purpose.
        interim = load_results(interim_path(out))
        if key in interim:
            del interim[key]
            write_json(interim_path(out), interim)
    return results


@contextlib.contextmanager
def results_lock(out: Path):
    """An exclusive lock on ``out`` and its interim file, shared by every driver writing them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def interim_path(out: Path) -> Path:
    return out.with_name(out.stem + "_interim.json")


def report_interim(runs, seeds, extra, out: Path, results: dict, threads: int = 1) -> dict:
    """Interim records of the unfinished runs, written (atomically) to ``OUT_interim.json``.

    The records already in that file for other runs are kept, so that testing one run does not drop
    another's; a record is dropped once its run has a final record in ``results``.  A run that was lost (its
    folder gone with a machine) and started over does not replace a record of the lost run that got further
    (more epochs run) until it passes it: its early best weights say less about where the seed converges.  The
    two are different trajectories when the machine differs (another CPU need not give the same floats)."""
    import torch

    torch.set_num_threads(threads)  # 1 by default: beside the training processes
    path = interim_path(out)
    kept = {key: rec for key, rec in load_results(path).items() if key not in results}
    interim = {}
    for seed in seeds:
        for dataset, variant in runs:
            key = run_key(dataset, variant, seed, build_config(dataset, variant, seed, extra))
            if key in results:
                continue
            try:
                record = interim_one(dataset, variant, seed, extra)
            except NotNow as why:
                print(f"{key}: {why}", flush=True)
                continue
            if record is None:
                print(f"{key}: no best weights yet", flush=True)
                continue
            earlier = kept.get(key)
            if earlier is not None and earlier["epochs_run"] > record["epochs_run"]:
                print(
                    f"{key}: kept the record after epoch {earlier['epochs_run']} (a run that got further); "
                    f"this run, started over, stands at epoch {record['epochs_run']}",
                    flush=True,
                )
                continue
            interim[key] = record
            print(f"{key}: {record['status']}, best epoch {record['best_epoch']}", flush=True)
    with results_lock(out):  # save_result may be dropping a record of this file meanwhile
        final = load_results(out)
        merged = {k: r for k, r in (load_results(path) | interim).items() if k not in final}
        write_json(path, merged)
    if interim:
        print(table(interim))
    return interim


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=[], metavar="DATASET:VARIANT")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (changes the run folders), e.g. train.epochs=2",
    )
    ap.add_argument(
        "--threads", type=int, default=1, help="torch / faiss threads (not part of the run's identity)"
    )
    ap.add_argument("--out", type=Path, help="results JSON (required in every mode but --curves)")
    ap.add_argument("--table", action="store_true", help="print the markdown table of --out and exit")
    ap.add_argument(
        "--interim",
        action="store_true",
        help="test the best-so-far weights of the --runs not yet in --out (training or cut short), add them "
        "to OUT_interim.json (never to --out; other runs' records stay there until those runs finish) and "
        "exit; the training runs are not touched",
    )
    ap.add_argument(
        "--curves",
        type=int,
        nargs="+",
        metavar="EPOCH",
        help="print the validation NDCG@20 of the --runs at these epochs, from their checkpoints (finished or "
        "still training), and exit",
    )
    args = ap.parse_args(argv)
    runs = [parse_run(spec) for spec in args.runs]
    if any(o.startswith("seed=") for o in args.overrides):
        ap.error("--set seed=...: give seeds with --seeds (the results key and the run folder follow them)")
    extra = [*args.overrides, f"train.num_threads={args.threads}", "train.progress=false"]
    if args.curves:  # reads only the runs' checkpoints, never the results file
        print(curves(runs, args.seeds, extra, args.curves))
        return
    if args.out is None:
        ap.error("--out is required unless --curves is given")

    results = load_results(args.out)
    if args.table:
        print(table(results))
        return
    if args.interim:
        report_interim(runs, args.seeds, extra, args.out, results, threads=args.threads)
        return
    for seed in args.seeds:  # seeds outermost: a cut-short session has every variant for the first seeds
        for dataset, variant in runs:
            cfg = build_config(dataset, variant, seed, extra)
            key = run_key(dataset, variant, seed, cfg)
            with claim_run(cfg) as claimed:
                # re-read: another driver sharing --out may have finished this run meanwhile
                results = load_results(args.out)
                if key in results:
                    print(f"{key}: done already, skipped", flush=True)
                    continue
                if not claimed:
                    print(f"{key}: being trained by another driver, skipped", flush=True)
                    continue
                from recsys.pipeline import RunFolderBusy

                try:
                    r = train_one(dataset, variant, seed, extra)
                # e.g. `recsys train` of the same config (same fingerprint, same folder)
                except RunFolderBusy:
                    print(f"{key}: its run folder is in use by another training, skipped", flush=True)
                    continue
            print(
                f"{key}: test HR@20 {r['test']['hit@20']:.4f} NDCG@20 {r['test']['ndcg@20']:.4f} "
                f"(reference protocol {r['test_reference_protocol']['hit@20']:.4f} / "
                f"{r['test_reference_protocol']['ndcg@20']:.4f}), best epoch {r['best_epoch']}",
                flush=True,
            )
            results = save_result(args.out, key, r)
    if results:
        print(table(results))


if __name__ == "__main__":
    main()
