"""Benchmark: blocked full-ranking evaluation vs the bare matrix product it is built on.

Workload: every Gowalla user (29,858) against every item (40,981), random 64-dim float32 embeddings, the
real LightGCN training matrix excluded (810k pairs; a synthetic one with the same size when the file is
absent), top-20.  All cases run in the same process, interleaved, ``--repeats`` times each after one warm-up;
the table shows medians (and minima):

* ``eval (embeddings)``  ``eval.full_ranking_topk_embeddings``: the fast path (one reused score tile);
* ``eval (score_fn)``    ``eval.full_ranking_topk`` with a ``users -> query[users] @ items.T`` closure, i.e.
  what ``evaluate_model`` does with a model's ``scorer()`` (blocks of ``--fn-block-size`` users);
* ``plain torch``        fresh score block, ``index_put_`` masking, ``torch.topk`` over all items (context);
* ``bare mm ...``        the matrix products alone, nothing else:
  ``buffer`` = the same ``U x I`` products blocked like the fast path, into one reused buffer;
  ``alloc`` = blocks of ``--fn-block-size`` users, a fresh output each (what a score function does);
  ``one shot`` = a single ``U x I`` product (4.9 GB; with ``--one-shot``);
  ``padded`` = like ``buffer`` but with the item count padded to a multiple of 128, as the fast path pads it
  (reported for transparency: MKL is much faster with an aligned output row).

The headline ratio is ``eval (embeddings)`` over the fastest bare product of the true shapes
(``buffer``/``alloc``/``one shot``); the ratio over the padded product is printed too.  Results agree
exactly between the two eval paths and with plain ``torch.topk`` up to the order of tied scores.

    .venv/bin/python bench/bench_eval.py --repeats 5 --out bench_eval.json
    .venv/bin/python bench/bench_eval.py --threads 1      # per-core work, less sensitive to other load
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from _results import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval.ranking import CHUNK, default_tile_rows, full_ranking_topk, full_ranking_topk_embeddings  # noqa: E402

N_USERS, N_ITEMS = 29_858, 40_981


def load_train(path: Path) -> tuple[sp.csr_matrix, str]:
    """The Gowalla training matrix from LightGCN's ``train.txt`` (``uid iid iid ...`` per line), or a
    synthetic one with about the same number of interactions and skew when the file is absent."""
    if path.exists():
        from features.readers import read_user_lines

        inter, _ = read_user_lines(path)
        r = inter["user_id"].cast(int).to_numpy()
        c = inter["item_id"].cast(int).to_numpy()
        shape = (max(N_USERS, int(r.max()) + 1), max(N_ITEMS, int(c.max()) + 1))
        return sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=shape), str(path)
    rng = np.random.default_rng(0)
    counts = np.minimum(rng.lognormal(2.9, 0.95, N_USERS).astype(np.int64) + 10, 811)
    r = np.repeat(np.arange(N_USERS), counts)
    c = np.concatenate([rng.choice(N_ITEMS, n, replace=False) for n in counts])
    m = sp.csr_matrix((np.ones(r.size, dtype=np.float32), (r, c)), shape=(N_USERS, N_ITEMS))
    return m, f"synthetic ({path} not found)"


def plain_torch_topk(query, items, exclude, k, block_size):
    """The obvious implementation: a fresh score block, ``index_put_`` masking, ``torch.topk`` over all items."""
    out = torch.empty(query.shape[0], k, dtype=torch.long)
    indptr, indices = exclude.indptr, torch.from_numpy(exclude.indices.astype(np.int64))
    for s in range(0, query.shape[0], block_size):
        scores = query[s : s + block_size] @ items.T
        b = scores.shape[0]
        rows = torch.from_numpy(np.repeat(np.arange(b), np.diff(indptr[s : s + b + 1])))
        scores[rows, indices[indptr[s] : indptr[s + b]]] = float("-inf")
        out[s : s + b] = torch.topk(scores, k, dim=1).indices
    return out


def tie_only_differences(a, b, query, items) -> tuple[int, bool]:
    """Rows where two top-k results differ, and whether every difference is between equal scores."""
    rows = (a != b).any(dim=1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return 0, True
    scores = query[rows] @ items.T
    return int(rows.numel()), bool(torch.equal(scores.gather(1, a[rows]), scores.gather(1, b[rows])))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=Path, default=REPO.parent / "shared/data/gowalla-lightgcn/train.txt")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--block-size", type=int, default=None, help="users per tile of the fast path (default: auto)"
    )
    p.add_argument("--fn-block-size", type=int, default=4096, help="users per score_fn call")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--one-shot", action="store_true", help="also time one U x I product (needs ~5 GB)")
    p.add_argument("--skip-plain", action="store_true", help="do not time the plain torch implementation")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    exclude, source = load_train(args.train)
    n_users, n_items = exclude.shape
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(n_users, args.dim, generator=gen)
    items = torch.randn(n_items, args.dim, generator=gen)
    k, fbs = args.k, args.fn_block_size
    n_pad = -(-n_items // CHUNK) * CHUNK
    # the fast path's tile height, so that the bare product is blocked alike
    bs = args.block_size or default_tile_rows(n_pad)
    items_padded = torch.cat([items, items.new_zeros(n_pad - n_items, args.dim)])

    print(f"{n_users} users x {n_items} items, d={args.dim}, k={k}, {exclude.nnz} excluded pairs ({source})")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; fast-path tile {bs} users, "
        f"score_fn block {fbs} users; load average before: {os.getloadavg()[0]:.2f}"
    )

    buf = torch.empty(bs, n_items)
    buf_padded = torch.empty(bs, n_pad)

    def bare_buffer(out=buf, it=items):
        for s in range(0, n_users, bs):
            q = query[s : s + bs]
            torch.mm(q, it.T, out=out[: q.shape[0]])

    def bare_alloc():
        for s in range(0, n_users, fbs):
            _ = query[s : s + fbs] @ items.T

    def bare_one_shot():
        _ = query @ items.T

    results: dict[str, torch.Tensor] = {}

    def fast():
        results["fast"] = full_ranking_topk_embeddings(query, items, exclude, k, block_size=args.block_size)

    def via_score_fn():
        results["fn"] = full_ranking_topk(
            lambda u: query[u] @ items.T, torch.arange(n_users), exclude, k, fbs
        )

    def plain():
        results["plain"] = plain_torch_topk(query, items, exclude, k, fbs)

    cases = {
        "eval (embeddings)": fast,
        "eval (score_fn)": via_score_fn,
        "plain torch": plain,
        f"bare mm (buffer, block {bs})": bare_buffer,
        f"bare mm (alloc, block {fbs})": bare_alloc,
        "bare mm (one shot)": bare_one_shot,
        f"bare mm (padded to {n_pad}, block {bs})": lambda: bare_buffer(buf_padded, items_padded),
    }
    if args.skip_plain:
        del cases["plain torch"]
    if not args.one_shot:
        del cases["bare mm (one shot)"]

    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up: first-touch page faults, thread pools
        fn()
    for _ in range(args.repeats):  # interleaved, so drifting background load hits every case alike
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0]

    # exactness checks on the real workload
    same_fn = bool(torch.equal(results["fast"], results["fn"]))
    top = results["fast"].numpy()
    valid = top.ravel() >= 0
    rows = np.repeat(np.arange(n_users), k)[valid]
    leaked = int(np.asarray(exclude[rows, top.ravel()[valid]]).sum())
    plain_diff, plain_ties_only = (
        tie_only_differences(results["fast"], results["plain"], query, items)
        if "plain" in results
        else (None, None)
    )

    med = {name: statistics.median(ts) for name, ts in times.items()}
    true_shape = {n: t for n, t in med.items() if n.startswith("bare") and "padded" not in n}
    best_name = min(true_shape, key=true_shape.get)
    best = true_shape[best_name]
    padded_name = next(n for n in med if "padded" in n)
    print()
    print(f"{'case':<40} {'median s':>9} {'min s':>7} {'/ best bare':>12}")
    for name, ts in times.items():
        print(f"{name:<40} {med[name]:9.3f} {min(ts):7.3f} {med[name] / best:12.2f}")
    ratio = med["eval (embeddings)"] / best
    ratio_padded = med["eval (embeddings)"] / med[padded_name]
    print(
        f"\nratio eval / bare product ({best_name}) = {ratio:.2f} (target <= 1.5); "
        f"over the padded product: {ratio_padded:.2f}; score_fn path: {med['eval (score_fn)'] / best:.2f}"
    )
    print(
        f"same result via score_fn: {same_fn}; excluded items returned: {leaked}; rows differing from plain "
        f"torch.topk: {plain_diff} (all ties: {plain_ties_only}); load average after: {load_after:.2f}"
    )

    report = {
        "workload": {
            "n_users": n_users,
            "n_items": n_items,
            "dim": args.dim,
            "k": k,
            "excluded_pairs": int(exclude.nnz),
            "exclude_source": source,
        },
        "setup": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "tile_rows": bs,
            "fn_block_size": fbs,
            "repeats": args.repeats,
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
        },
        "seconds": times,
        "median_seconds": med,
        "best_bare_product": best_name,
        "ratio_eval_to_bare": ratio,
        "ratio_eval_to_padded_bare": ratio_padded,
        "ratio_score_fn_to_bare": med["eval (score_fn)"] / best,
        "same_result_score_fn": same_fn,
        "excluded_items_returned": leaked,
        "rows_differing_from_plain_topk": plain_diff,
        "plain_topk_differences_are_ties": plain_ties_only,
        "load_average_after": load_after,
    }
    if args.out:
        write_json(args.out, report, indent=2)
        print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
