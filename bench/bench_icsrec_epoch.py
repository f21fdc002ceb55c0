"""One ICSRec training epoch against one SASRec epoch on the same samples, in the same process.

Both models train on Beauty's dynamic-sliding subsequences with the same batches (batch 256, Adam lr 1e-3,
fused, as the Trainer steps).  The ICSRec epoch includes its per-epoch work: encoding every training
subsequence (no gradient, length-sorted blocks) and the warm-started faiss k-means, each timed apart.  The
issue's bound: ICSRec at most 3x SASRec.

    .venv/bin/python bench/bench_icsrec_epoch.py [--batches N] [--threads 1] [--extra duorec gru4rec ...]

``--batches`` caps the batches of both epochs (the clustering always covers all subsequences; the ratio is
then reported for the capped epoch and extrapolated to the full one).  ``--extra`` times other next-item
models after the two, in the same process, each against SASRec: DuoRec (three encoder passes, no clustering)
and GRU4Rec, at their paper configurations (``configs/beauty_<model>.yaml``), on the same samples; ``sasrec_bce``
and ICLRec (five encoder passes and a warm-started clustering of the users' inputs per epoch) on their own
per-user batches, with the shared 2-block encoder (ICLRec's Beauty config has 1), so that ICLRec's cost is
read against ``sasrec_bce``'s.  Writes ``bench/results/bench_icsrec_epoch.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from _results import write_json

ROOT = Path(__file__).resolve().parents[1]


WARMUP_BATCHES = 3
# --extra models: their encoder settings beyond the shared SASRec ones (configs/beauty_<model>.yaml)
EXTRA = {
    "duorec": {},
    "gru4rec": {"dim": 64, "hidden": 128, "layers": 1, "max_len": 50, "dropout": 0.3},
    "sasrec_bce": {},
    "iclrec": {},
    "bert4rec": {"dropout": 0.1, "attn_dropout": 0.1},  # mask_ratio 0.6, last_item_ratio 0.5: the defaults
}


def train_batches(model, sampler, n_batches: int) -> tuple[float, float, int]:
    """Run the Trainer's step on the first ``n_batches`` batches; returns (wall s, CPU s, batches).

    ``WARMUP_BATCHES`` untimed steps come first (the same first batches), so that neither model is timed
    cold: the first steps pay for allocations and kernel choices that the rest of an epoch does not."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model.train()
    for k, batch in enumerate(sampler):
        if k >= WARMUP_BATCHES:
            break
        total, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in sampler:
        total, _ = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        done += 1
        if done >= n_batches:
            break
    return time.perf_counter() - t0, time.process_time() - c0, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "amazon-seq"))
    parser.add_argument("--name", default="Beauty")
    parser.add_argument("--batches", type=int, default=None, help="cap on batches per epoch (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--extra", nargs="*", default=[], choices=list(EXTRA), help="more models to time")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bench_icsrec_epoch.json"))
    args = parser.parse_args()

    import faiss

    from features import DataConfig, prepare
    from recsys.models import build_model
    from recsys.pipeline import prepare_model
    from recsys.trainer import epoch_generator

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    ds = prepare(DataConfig(source="amazon_seq", path=args.data, name=args.name))
    shared = {
        "dim": 64,
        "max_len": 50,
        "layers": 2,
        "heads": 2,
        "ffn_dim": 256,
        "dropout": 0.5,
        "attn_dropout": 0.5,
    }

    class TC:
        batch_size = 256

    results = {}
    for name in ("sasrec", "icsrec", *args.extra):
        torch.manual_seed(1)
        model_cfg = EXTRA[name] if name == "gru4rec" else {**shared, **EXTRA.get(name, {})}
        model = build_model({"name": name, **model_cfg}, ds.n_users, ds.n_items)
        prepare_model(model, ds)
        sampler = model.make_sampler(TC, epoch_generator(1, 0))
        n_batches = min(args.batches or len(sampler), len(sampler))
        row = {"samples": len(model.train_samples), "batches_total": len(sampler), "batches_run": n_batches}
        if name == "icsrec":
            t0 = time.perf_counter()
            reps = model.encode_samples()
            row["encode_all_s"] = time.perf_counter() - t0
            from recsys.models.icsrec import kmeans

            t0 = time.perf_counter()
            cold = kmeans(
                reps.numpy(),
                model.config.intents,
                iters=model.config.kmeans_iters,
                seed=1,
                redo=model.config.kmeans_redo,
            )
            row["kmeans_cold_s"] = time.perf_counter() - t0
            model.intent_centroids.copy_(torch.from_numpy(cold))
            model.intent_epoch.fill_(0)
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit_intents(seed=2)  # what every epoch does: encode all + warm-started k-means
            row["cluster_epoch_s"] = time.perf_counter() - t0
            row["cluster_epoch_cpu_s"] = time.process_time() - c0
        elif hasattr(model, "fit_intents"):  # ICLRec: one cold clustering, then time a warm-started epoch's
            t0 = time.perf_counter()
            model.fit_intents(seed=1)
            row["kmeans_cold_s"] = time.perf_counter() - t0
            t0, c0 = time.perf_counter(), time.process_time()
            model.fit_intents(seed=2)
            row["cluster_epoch_s"] = time.perf_counter() - t0
            row["cluster_epoch_cpu_s"] = time.process_time() - c0
        seconds, cpu, done = train_batches(model, sampler, n_batches)
        row["train_s"], row["train_cpu_s"] = seconds, cpu
        row["s_per_batch"], row["cpu_s_per_batch"] = seconds / done, cpu / done
        row["epoch_s_full"] = row["s_per_batch"] * len(sampler) + row.get("cluster_epoch_s", 0.0)
        row["epoch_cpu_s_full"] = row["cpu_s_per_batch"] * len(sampler) + row.get("cluster_epoch_cpu_s", 0.0)
        results[name] = row
        print(name, json.dumps(row))

    s, i = results["sasrec"], results["icsrec"]
    ratio = i["epoch_s_full"] / s["epoch_s_full"]
    out = {
        "dataset": args.name,
        "threads": args.threads,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, faiss {faiss.__version__}",
        "batches_capped": args.batches is not None,
        "warmup_batches": WARMUP_BATCHES,
        "sasrec": s,
        "icsrec": i,
        "icsrec_over_sasrec_epoch": ratio,
        "icsrec_over_sasrec_per_batch": i["s_per_batch"] / s["s_per_batch"],
        # CPU seconds of this process: less sensitive to other jobs on a shared machine than wall time
        "icsrec_over_sasrec_epoch_cpu": i["epoch_cpu_s_full"] / s["epoch_cpu_s_full"],
    }
    for name in args.extra:
        e = results[name]
        out[name] = e
        out[f"{name}_over_sasrec_epoch"] = e["epoch_s_full"] / s["epoch_s_full"]
        out[f"{name}_over_sasrec_epoch_cpu"] = e["epoch_cpu_s_full"] / s["epoch_cpu_s_full"]
        print(f"{name} epoch / SASRec epoch = {out[f'{name}_over_sasrec_epoch']:.2f} (wall), "
              f"{out[f'{name}_over_sasrec_epoch_cpu']:.2f} (CPU)")  # fmt: skip
    write_json(Path(args.out), out, indent=2)
    print(
        f"ICSRec epoch / SASRec epoch = {ratio:.2f} (wall), {out['icsrec_over_sasrec_epoch_cpu']:.2f} (CPU)  -> {args.out}"
    )


if __name__ == "__main__":
    main()
