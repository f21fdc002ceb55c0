"""The approximate index (FAISS ``IndexIVFFlat``, ``recsys index --nlist N``) against the exact one, on a trained
run's real embeddings: how many of the exact top-k it finds, and how much faster it answers.

For each ``--run``: its exact index and an inverted file of ``--nlist`` lists are built in a temporary folder
(the same embeddings, seen items and normalisation as ``recsys index``); ``--users`` known users are drawn
(seeded). For each ``--nprobe``, the inverted file is loaded with that many lists probed per query and asked
``recommend(users, k)`` in batches of ``--batch`` users, seen items excluded; so is the exact index, the cases
interleaved, ``--repeats`` times (one FAISS thread; median seconds). Recall@k is the share of the exact
top-k the approximate list holds, averaged over the users; "exact lists" counts the users whose whole list,
order included, is the exact one.

    RECSYS_HOME=... .venv/bin/python bench/bench_ivf.py --run RUN_ID --nlist 256 \\
        --nprobe 1 2 4 8 16 32 --out bench/results/bench_ivf_gowalla.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._results import provenance, write_json  # noqa: E402


def answer(retriever, users: list[str], k: int, batch: int) -> list[list[str]]:
    out = []
    for start in range(0, len(users), batch):
        out += [[r.item_id for r in row] for row in retriever.recommend(users[start : start + batch], k=k)]
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--nlist", type=int, required=True)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from recsys.pipeline import build_run_index, load_run
    from serving import Retriever

    run = load_run(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        exact_dir = build_run_index(run, Path(tmp) / "exact")
        exact_build = time.perf_counter() - start
        start = time.perf_counter()
        ivf_dir = build_run_index(run, Path(tmp) / "ivf", nlist=args.nlist, nprobe=1)
        ivf_build = time.perf_counter() - start
        exact = Retriever.load(exact_dir, num_threads=1)
        index = exact.index
        rng = np.random.default_rng(0)
        users = [
            str(u) for u in rng.choice(index.user_ids, size=min(args.users, index.n_users), replace=False)
        ]
        want = answer(exact, users, args.k, args.batch)
        cases = {"exact": exact} | {
            f"nprobe={n}": Retriever.load(ivf_dir, nprobe=n) for n in args.nprobe if n <= args.nlist
        }
        seconds: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, retriever in cases.items():
                seconds[name].append(timed(lambda r=retriever: answer(r, users, args.k, args.batch)))
        rows = {}
        for name, retriever in cases.items():
            got = answer(retriever, users, args.k, args.batch)
            recall = np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True) if w])
            rows[name] = {
                "seconds": statistics.median(seconds[name]),
                "all_seconds": seconds[name],
                f"recall@{args.k}": float(recall),
                "exact_lists": float(np.mean([g == w for g, w in zip(got, want, strict=True)])),
            }
        base = rows["exact"]["seconds"]
        for name, row in rows.items():
            row["speedup"] = base / row["seconds"]
            print(
                f"{name:>10}: recall@{args.k} {row[f'recall@{args.k}']:.4f}, exact lists "
                f"{row['exact_lists']:.3f}, {row['seconds']:.3f} s ({row['speedup']:.2f}x the exact index)"
            )
    if args.out:
        write_json(
            args.out,
            {
                **provenance(),
                "run_id": args.run,
                "model": run.config.model["name"],
                "n_items": index.n_items,
                "n_users_asked": len(users),
                "nlist": args.nlist,
                "k": args.k,
                "batch": args.batch,
                "build_seconds": {"exact": exact_build, "ivf": ivf_build},
                "results": rows,
            },
        )


if __name__ == "__main__":
    main()
