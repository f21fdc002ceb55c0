"""Time one LightGCN training step: ours (``recsys.models.LightGCN``) against torch-geometric's LightGCN.

A step is the forward pass, the BPR loss with LightGCN's L2 term on a batch of 2048 triples, the backward pass
and one Adam step, on the real Gowalla training graph (LightGCN's split, 29,858 users, 40,981 items, 810,128
interactions), 3 layers, 64 dimensions.  Both models get the same batches (drawn by
``recsys.sampling.BPRSampler``), the same initial weights, the same loss formula and the same optimiser
settings, in the same process, interleaved step by step so that other load on the machine hits both alike;
the table reports medians.

Variants (all compute the same function; the script first checks that their final embeddings agree):

* ``ours``: the model as shipped (layers 1..K-1 over all nodes with stored transposes, the last layer only
  at the batch's rows, hand-written backward).
* ``ours-full-propagation``: our model propagating every layer over all nodes through
  ``recsys.graph.sparse_matmul`` (torch sparse CSR with the stored transpose), autograd for the rest.
* ``ours-pyg-propagation``: our parameters propagated by torch-geometric's ``LGConv`` on a pre-normalised
  ``torch.sparse_csr`` adjacency (the "torch-geometric propagation inside our model" measurement).
* ``pyg[<input>]``: ``torch_geometric.nn.models.LightGCN`` fed each input it accepts: a pre-normalised
  ``torch.sparse_csr`` / ``torch.sparse_csc`` adjacency (``normalize=False``), the raw ``sparse_csr``
  adjacency (``normalize=True``, normalised every call), an ``EdgeIndex`` and a plain ``edge_index`` with
  pre-computed weights.  Slow inputs are probed with one step; the fastest is timed in full and is the
  reference of the ratio.

Usage::

    .venv/bin/python bench/bench_lightgcn_step.py [--repeats 15] [--threads N] [--out result.json]

The data folder is ``$RECSYS_SHARED_DATA/gowalla-lightgcn`` (default ``../shared/data`` beside the repository);
without it the script prints why and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from _results import write_json
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys.graph import normalized_adjacency  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.sampling import BPRSampler  # noqa: E402

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse CSC tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


# ---- data -------------------------------------------------------------------------------------------------
def read_lightgcn_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``uid iid iid ...`` per line -> (users, items) int64 arrays, through the project's own reader."""
    from features.readers import read_user_lines

    inter, _ = read_user_lines(path)
    ids = inter.select(inter["user_id"].cast(int), inter["item_id"].cast(int))
    return ids["user_id"].to_numpy(), ids["item_id"].to_numpy()


def load_gowalla_train(folder: Path) -> sp.csr_matrix:
    u, i = read_lightgcn_file(folder / "train.txt")
    tu, ti = read_lightgcn_file(folder / "test.txt")
    shape = (int(max(u.max(), tu.max())) + 1, int(max(i.max(), ti.max())) + 1)
    return sp.csr_matrix((np.ones(u.size, dtype=np.float32), (u, i)), shape=shape)


# ---- memory -------------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak resident set size of this process (since start or the last :func:`reset_peak_rss`)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """Current resident set size (0 where /proc is unavailable)."""
    return _status_mib("VmRSS") or 0.0


# ---- the step, shared by every variant ----------------------------------------------------------------------
def bpr_with_l2(
    final_u: torch.Tensor, final_i: torch.Tensor, e0_u: torch.Tensor, e0_i: torch.Tensor, batch, reg: float
) -> torch.Tensor:
    """LightGCN's loss (mean softplus BPR + reg/2 * squared norms of the batch's layer-0 rows / B) from
    full final tables ``[U, d]``, ``[I, d]`` and layer-0 tables."""
    users, pos, neg = batch["users"], batch["pos"], batch["neg"]
    e_u = final_u[users]
    bpr = F.softplus((e_u * final_i[neg]).sum(-1) - (e_u * final_i[pos]).sum(-1)).mean()
    sq = e0_u[users].pow(2).sum() + e0_i[pos].pow(2).sum() + e0_i[neg].pow(2).sum()
    return bpr + reg * 0.5 * sq / users.numel()


def make_optimizer(params, kind: str) -> torch.optim.Optimizer:
    if kind == "adam-fused":
        return torch.optim.Adam(params, lr=1e-3, fused=True)
    if kind == "adam-foreach":
        return torch.optim.Adam(params, lr=1e-3, foreach=True)
    return torch.optim.Adam(params, lr=1e-3, foreach=False)


class Variant:
    """One way of computing the step; ``step(batch)`` runs forward, backward and the optimiser."""

    def __init__(self, name: str, module: torch.nn.Module, loss_fn: Callable, optimizer: str) -> None:
        self.name = name
        self.module = module
        self.loss_fn = loss_fn
        self.opt = make_optimizer(module.parameters(), optimizer)
        self.times: list[float] = []
        self.peak_mib = 0.0  # process peak RSS during this variant's steps
        self.step_extra_mib = 0.0  # max over its steps of (peak RSS during the step - RSS before it)

    def step(self, batch) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(batch)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - t0


def build_variants(
    train: sp.csr_matrix, args, u0: torch.Tensor, i0: torch.Tensor
) -> tuple[dict[str, Variant], torch.Tensor]:
    from torch_geometric.nn.conv import LGConv
    from torch_geometric.nn.models import LightGCN as PygLightGCN

    n_users, n_items = train.shape
    n = n_users + n_items
    reg = 1e-4
    cfg = {"name": "lightgcn", "dim": args.dim, "layers": args.layers, "reg": reg}
    variants: dict[str, Variant] = {}

    def ours_model():
        m = build_model(cfg, n_users, n_items)
        with torch.no_grad():
            m.user_emb.weight.copy_(u0)
            m.item_emb.weight.copy_(i0)
        m.prepare(train)
        return m

    m = ours_model()
    variants["ours"] = Variant("ours", m, lambda b, m=m: m.loss(b)[0], args.optimizer)

    m = ours_model()

    def full_prop_loss(b, m=m):
        fu, fi = m.propagate()
        return bpr_with_l2(fu, fi, m.user_emb.all(), m.item_emb.all(), b, reg)

    variants["ours-full-propagation"] = Variant("ours-full-propagation", m, full_prop_loss, args.optimizer)

    adj_csr = normalized_adjacency(train)  # pre-normalised D^-1/2 A D^-1/2, (U+I)^2, symmetric
    m = ours_model()
    convs = [LGConv(normalize=False) for _ in range(args.layers)]

    def pyg_prop_loss(b, m=m):
        x = torch.cat([m.user_emb.all(), m.item_emb.all()])
        out = x
        for conv in convs:
            x = conv(x, adj_csr)
            out = out + x
        out = out / (args.layers + 1)
        return bpr_with_l2(out[:n_users], out[n_users:], m.user_emb.all(), m.item_emb.all(), b, reg)

    variants["ours-pyg-propagation"] = Variant("ours-pyg-propagation", m, pyg_prop_loss, args.optimizer)

    # torch-geometric's model, every input format it takes
    coo = sp.coo_matrix(train)
    row = torch.from_numpy(coo.row.astype(np.int64))
    col = torch.from_numpy(coo.col.astype(np.int64)) + n_users
    edge_index = torch.stack([torch.cat([row, col]), torch.cat([col, row])])
    raw_csr = (
        torch.sparse_coo_tensor(edge_index, torch.ones(edge_index.shape[1]), (n, n))
        .coalesce()
        .to_sparse_csr()
    )
    inputs: dict[str, tuple[object, torch.Tensor | None, bool]] = {
        "sparse_csr": (adj_csr, None, False),
        "sparse_csc": (adj_csr.to_sparse_csc(), None, False),
        "sparse_csr+normalize": (raw_csr, None, True),
    }
    adj_coo = adj_csr.to_sparse_coo().coalesce()
    ei_norm, w_norm = adj_coo.indices(), adj_coo.values()
    try:
        from torch_geometric import EdgeIndex

        eidx, perm = EdgeIndex(ei_norm, sparse_size=(n, n)).sort_by("col")
        inputs["EdgeIndex"] = (eidx, w_norm[perm], False)
    except Exception as exc:  # older torch-geometric
        print(f"  (EdgeIndex variant unavailable: {exc})")
    inputs["edge_index+weight"] = (ei_norm, w_norm, False)

    for label, (adj, weight, normalize) in inputs.items():
        pm = PygLightGCN(n, args.dim, args.layers, normalize=normalize)
        with torch.no_grad():
            pm.embedding.weight.copy_(torch.cat([u0, i0]))

        def pyg_loss(b, pm=pm, adj=adj, weight=weight):
            out = pm.get_embedding(adj, weight)
            e0 = pm.embedding.weight
            return bpr_with_l2(out[:n_users], out[n_users:], e0[:n_users], e0[n_users:], b, reg)

        name = f"pyg[{label}]"
        variants[name] = Variant(name, pm, pyg_loss, args.optimizer)
    return variants, adj_csr


def check_equal_embeddings(variants: dict[str, Variant], adj_csr: torch.Tensor) -> float:
    """Max |ours - torch-geometric| over the final embeddings of all nodes (same weights, before any step)."""
    with torch.no_grad():
        fu, fi = variants["ours"].module.propagate()
        ref = variants["pyg[sparse_csr]"].module.get_embedding(adj_csr)
    return float(torch.cat([fu, fi]).sub(ref).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with train.txt / test.txt")
    parser.add_argument(
        "--repeats", type=int, default=15, help="timed steps per variant (after a warm-up and a probe step)"
    )
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--optimizer",
        choices=["adam-fused", "adam-foreach", "adam-loop"],
        default="adam-fused",
        help="the same Adam implementation for every variant",
    )
    parser.add_argument(
        "--slow-threshold-ms",
        type=float,
        default=1000.0,
        help="variants slower than this on the probe step are not timed further",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    shared = Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))
    folder = args.data or shared / "gowalla-lightgcn"
    if not (folder / "train.txt").exists():
        print(f"SKIP: Gowalla (LightGCN split) not found at {folder}; set RECSYS_SHARED_DATA or --data")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    train = load_gowalla_train(folder)
    n_users, n_items = train.shape
    print(
        f"Gowalla train: {n_users} users, {n_items} items, {train.nnz} interactions; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.optimizer}"
    )

    gen = torch.Generator().manual_seed(2020)
    sampler = BPRSampler(train, mode="interactions", batch_size=args.batch_size, generator=gen)
    n_batches = 2 + args.repeats
    it = iter(sampler)
    batches = [next(it) for _ in range(n_batches)]

    torch.manual_seed(0)
    u0 = torch.randn(n_users, args.dim) * 0.1
    i0 = torch.randn(n_items, args.dim) * 0.1
    variants, adj_csr = build_variants(train, args, u0, i0)
    diff = check_equal_embeddings(variants, adj_csr)
    print(f"max |ours - torch-geometric| over all final embeddings (same weights): {diff:.2e}")

    # probe: a warm-up step then one timed step each; slow variants are reported with that step only
    baseline_rss = peak_rss_mib()
    probes: dict[str, float] = {}
    for v in variants.values():
        v.step(batches[0])
        probes[v.name] = v.step(batches[1]) * 1e3
        print(f"  probe {v.name:28s} {probes[v.name]:9.1f} ms", flush=True)
    fastest_pyg = min((k for k in probes if k.startswith("pyg[")), key=probes.__getitem__)
    timed = [
        v
        for v in variants.values()
        if probes[v.name] <= args.slow_threshold_ms or v.name in ("ours", fastest_pyg)
    ]

    # interleaved timing: step r of every timed variant, then step r+1 ...
    can_reset = reset_peak_rss()
    for batch in batches[2:]:
        for v in timed:
            before = rss_mib()
            if can_reset:
                reset_peak_rss()
            dt = v.step(batch)
            v.peak_mib = max(v.peak_mib, peak_rss_mib())
            v.step_extra_mib = max(v.step_extra_mib, peak_rss_mib() - before)
            v.times.append(dt)

    pyg_timed = [v for v in timed if v.name.startswith("pyg[")]
    ref = min(pyg_timed, key=lambda v: statistics.median(v.times)) if pyg_timed else None
    ref_ms = statistics.median(ref.times) * 1e3 if ref else float("nan")
    rows = []
    for v in variants.values():
        if v.times:
            med = statistics.median(v.times) * 1e3
            q1, q3 = np.percentile(np.asarray(v.times) * 1e3, [25, 75])
            rows.append(
                {
                    "variant": v.name,
                    "median_ms": med,
                    "q1_ms": float(q1),
                    "q3_ms": float(q3),
                    "steps": len(v.times),
                    "ratio_vs_fastest_pyg": med / ref_ms,
                    "peak_rss_mib": v.peak_mib if can_reset else None,
                    "step_peak_extra_rss_mib": v.step_extra_mib if can_reset else None,
                }
            )
        else:
            rows.append(
                {
                    "variant": v.name,
                    "median_ms": probes[v.name],
                    "q1_ms": None,
                    "q3_ms": None,
                    "steps": 1,
                    "ratio_vs_fastest_pyg": probes[v.name] / ref_ms,
                    "peak_rss_mib": None,
                    "step_peak_extra_rss_mib": None,
                }
            )

    print(
        f"\n{'variant':30s} {'ms/step (median)':>17s} {'IQR':>17s} {'ratio':>7s} "
        f"{'peak RSS MiB':>13s} {'step +RSS MiB':>14s}"
    )
    for row in rows:
        iqr = f"{row['q1_ms']:.1f}-{row['q3_ms']:.1f}" if row["q1_ms"] is not None else "(1 probe step)"
        rss = f"{row['peak_rss_mib']:.0f}" if row["peak_rss_mib"] else "-"
        extra = f"{row['step_peak_extra_rss_mib']:.0f}" if row["step_peak_extra_rss_mib"] is not None else "-"
        print(
            f"{row['variant']:30s} {row['median_ms']:17.1f} {iqr:>17s} {row['ratio_vs_fastest_pyg']:7.3f} "
            f"{rss:>13s} {extra:>14s}"
        )
    print(
        "ratio: median ms/step over the fastest torch-geometric input's; peak RSS: the whole process (every "
        "variant's model and graph stay resident); step +RSS: the most one step added above the RSS before it"
    )
    ours_ms = statistics.median(variants["ours"].times) * 1e3
    ratio = ours_ms / ref_ms
    verdict = "PASS" if ratio <= 0.4 else "FAIL"
    print(
        f"\nours / fastest torch-geometric ({ref.name if ref else '-'}) = {ratio:.3f}  "
        f"(target <= 0.4: {verdict}); process RSS before timing {baseline_rss:.0f} MiB"
    )

    if args.out:
        result = {
            "benchmark": "lightgcn_step",
            "data": str(folder),
            "n_users": n_users,
            "n_items": n_items,
            "nnz": int(train.nnz),
            "batch_size": args.batch_size,
            "dim": args.dim,
            "layers": args.layers,
            "optimizer": args.optimizer,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "torch_geometric": __import__("torch_geometric").__version__,
            "cpu": platform.processor() or platform.machine(),
            "repeats": args.repeats,
            "max_abs_diff_vs_pyg": diff,
            "fastest_pyg": ref.name if ref else None,
            "ratio_ours_vs_fastest_pyg": ratio,
            "target_ratio": 0.4,
            "pass": ratio <= 0.4,
            "rows": rows,
        }
        write_json(args.out, result, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
