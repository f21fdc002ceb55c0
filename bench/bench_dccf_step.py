"""Time one DCCF training step against one LightGCN step on the same batch, in the same run (issue 3).

A step is the model's ``loss(batch)`` (forward and loss), the backward pass and one Adam step, on the real
Gowalla training graph (LightGCN's split: 29,858 users, 40,981 items, 810,128 interactions), with the batches
of DCCF's sampler: 10,240 triples, users drawn uniformly with replacement (``BPRSampler(mode="users")``).

* ``dccf``: the paper's Gowalla setting (d = 32, 2 layers, 128 intents, InfoNCE on the distinct batch users and
  positive items, per layer and view).
* ``dccf-no-cl``: the same without the contrastive terms (``contrastive: false``), to separate the cost of
  the graph part from the cost of the InfoNCE terms.
* ``lightgcn``: our LightGCN with its official Gowalla setting (d = 64, 3 layers) on the same batches.

The models are stepped in turn on each batch, so that other load on the machine hits them alike; the table
reports medians and the ratio to LightGCN.  Then each DCCF step is split into its phases (propagation, BPR
and regularisers, InfoNCE, backward, optimiser), the peak resident memory of each model's steps is measured
(peak RSS reset before each), and the largest dense tensor created in a DCCF step is reported (to show that no
``N x N``, ``E x E`` or ``E x d`` tensor is built).

Usage::

    .venv/bin/python bench/bench_dccf_step.py [--repeats 10] [--threads N] [--out bench/results/bench_dccf_step.json]
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

import torch
from _results import write_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lightgcn_step import load_gowalla_train, peak_rss_mib, reset_peak_rss, rss_mib  # noqa: E402


def build(name: str, n_users: int, n_items: int, train):
    from recsys.models import build_model

    torch.manual_seed(0)
    cfg = {
        "dccf": {"name": "dccf"},
        "dccf-no-cl": {"name": "dccf", "contrastive": False},
        "lightgcn": {"name": "lightgcn", "dim": 64, "layers": 3, "reg": 1e-4},
    }[name]
    model = build_model(cfg, n_users, n_items)
    model.prepare(train)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def step(model, opt, batch) -> float:
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    total, _ = model.loss(batch)
    total.backward()
    opt.step()
    return time.perf_counter() - t0


def phases(model, opt, batch) -> dict[str, float]:
    """One DCCF step split into its phases (seconds)."""
    out = {}
    t = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    views = model.forward_views()
    out["propagation (4 messages x 2 layers)"] = time.perf_counter() - t
    t = time.perf_counter()
    n_u = model.n_users
    final = views.final
    u, p, n = batch["users"], batch["pos"], batch["neg"]
    e_u = final[u]
    loss = torch.nn.functional.softplus(
        (e_u * final[n_u + n]).sum(-1) - (e_u * final[n_u + p]).sum(-1)
    ).mean()
    c, e0 = model.config, views.layers[0]  # the regularisers of DCCF.loss, so that the phases sum to a step
    loss = loss + c.emb_reg * (e0[u].pow(2).sum() + e0[n_u + p].pow(2).sum() + e0[n_u + n].pow(2).sum())
    if c.disentangle:
        loss = loss + c.intent_reg * (model.user_intent.pow(2).sum() + model.item_intent.pow(2).sum())
    out["bpr + regularisers"] = time.perf_counter() - t
    t = time.perf_counter()
    ssl = model.config.ssl_reg * model.contrastive_loss(views, torch.unique(u), torch.unique(p))
    out["infonce (12 terms, forward + their gradients)"] = time.perf_counter() - t
    t = time.perf_counter()
    (loss + ssl).backward()
    out["backward"] = time.perf_counter() - t
    t = time.perf_counter()
    opt.step()
    out["adam"] = time.perf_counter() - t
    return out


def largest_tensor(model, batch) -> tuple[int, list[int]]:
    """Numel and shape of the largest dense tensor created during one forward + backward."""
    best = [0, []]

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            outs = out if isinstance(out, tuple) else (out,)
            for o in outs:
                if isinstance(o, torch.Tensor) and o.layout == torch.strided and o.numel() > best[0]:
                    best[0], best[1] = o.numel(), list(o.shape)
            return out

    with Spy():
        total, _ = model.loss(batch)
        total.backward()
    model.zero_grad(set_to_none=True)
    return best[0], best[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per model (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="bench/results/bench_dccf_step.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(os.environ.get("RECSYS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    folder = root / "gowalla-lightgcn"
    if not (folder / "train.txt").exists():
        print(f"skipped: {folder}/train.txt not found (set RECSYS_SHARED_DATA)")
        return 0
    from recsys.sampling import BPRSampler

    train = load_gowalla_train(folder)
    n_users, n_items = train.shape
    sampler = BPRSampler(
        train,
        mode="users",
        batch_size=10240,
        generator=torch.Generator().manual_seed(0),
        steps=args.repeats + 2,
    )
    batches = list(sampler)
    names = ["lightgcn", "dccf", "dccf-no-cl"]
    models = {n: build(n, n_users, n_items, train) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for b, batch in enumerate(batches[: args.repeats + 1]):
        for n in names:
            t = step(*models[n], batch)
            if b > 0:  # the first step warms up allocators and kernels
                times[n].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}

    # phases of the DCCF step, memory, largest tensor
    phase = [phases(*models["dccf"], batches[-1]) for _ in range(3)]
    phase_med = {k: statistics.median(p[k] for p in phase) for k in phase[0]}
    peaks = {}
    for n in names:
        reset_peak_rss()
        base = rss_mib()
        step(*models[n], batches[-2])
        peaks[n] = {
            "peak_rss_mib": round(peak_rss_mib(), 1),
            "step_extra_mib": round(peak_rss_mib() - base, 1),
        }
    numel, shape = largest_tensor(models["dccf"][0], batches[-1])
    ssl_rows = {
        "users": int(torch.unique(batches[-1]["users"]).numel()),
        "items": int(torch.unique(batches[-1]["pos"]).numel()),
    }

    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "batch": 10240,
        "repeats": args.repeats,
        "median_step_s": {n: round(v, 4) for n, v in med.items()},
        "ratio_to_lightgcn": {n: round(med[n] / med["lightgcn"], 2) for n in names},
        "dccf_phases_s": {k: round(v, 4) for k, v in phase_med.items()},
        "memory": peaks,
        "largest_dense_tensor_in_dccf_step": {
            "numel": numel,
            "shape": shape,
            "nodes": n_users + n_items,
            "edges": int(train.nnz),
        },
        "infonce_rows": ssl_rows,
    }
    print(json.dumps(result, indent=2))
    write_json(Path(args.out), result, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
