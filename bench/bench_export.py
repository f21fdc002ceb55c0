"""Batch export: ``serving.export_recommendations`` against the loop a user would write with the public
``Retriever.recommend``, for every user of a real catalogue.

Catalogues as in ``bench_serving.py``: MovieLens-100K (943 users, 1,682 items) and Gowalla, LightGCN's split
(29,858 users, 40,981 items, 810k seen pairs as the seen matrix), random 64-dim float32 embeddings (seeded:
the time does not depend on the values), one exact index, one FAISS thread. Three ways to write every user's
top-``k`` to one Parquet file, each run ``--repeats`` times, interleaved:

* ``export``   ``export_recommendations(retriever, path, k=k, batch_size=1024)`` (arrays per batch, streamed
  to the file with pyarrow);
* ``peer``     ``retriever.recommend(batch of 1024 users, k)`` per batch, one Python tuple per item, one Polars
  frame of all rows written at the end (``write_parquet``);
* ``search``   ``retriever.recommend_positions`` over the same batches, nothing written: the floor.

Both files are read back and checked to hold the same rows before anything is reported. The table gives the
median seconds, the peak Python heap of one more call of each, traced apart (``tracemalloc``: NumPy's arrays
are counted, pyarrow's and FAISS's own buffers are not), and the ratios to the peer, which are what to compare
between machines.

    .venv/bin/python bench/bench_export.py --repeats 3 --out bench/results/bench_export.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import provenance, write_json  # noqa: E402
from bench_serving import catalogues, random_world  # noqa: E402


def peer_export(retriever, user_ids: list[str], path: Path, k: int, batch_size: int) -> None:
    import polars as pl

    rows = []
    for start in range(0, len(user_ids), batch_size):
        batch = user_ids[start : start + batch_size]
        for user, recs in zip(batch, retriever.recommend(batch, k), strict=True):
            rows += [(user, r.item_id, r.score, rank) for rank, r in enumerate(recs, 1)]
    frame = pl.DataFrame(
        rows,
        schema={"user": pl.String, "item": pl.String, "score": pl.Float32, "rank": pl.Int32},
        orient="row",
    )
    frame.write_parquet(path)


def search_only(retriever, user_ids: list[str], k: int, batch_size: int) -> None:
    for start in range(0, len(user_ids), batch_size):
        retriever.recommend_positions(user_ids[start : start + batch_size], k)


def seconds_of(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_heap_mb(fn) -> float:
    """Peak traced Python heap (MB) of one call; traced apart from the timed calls (tracing slows the
    allocations of Python objects, so it would weigh on the peer's time more than on ours)."""
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def run_catalogue(name, seen, k: int, batch_size: int, repeats: int, seed: int) -> dict:
    import polars as pl

    from serving import Retriever, build_index, export_recommendations

    n_users, n_items = seen.shape
    users, items, user_ids, item_ids = random_world(np.random.default_rng(seed), seen)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_index(items, item_ids, tmp / "index", user_emb=users, user_ids=user_ids, seen=seen)
        retriever = Retriever.load(tmp / "index", num_threads=1)
        ours_path, peer_path = tmp / "ours.parquet", tmp / "peer.parquet"
        cases = {
            "export": lambda: export_recommendations(retriever, ours_path, k=k, batch_size=batch_size),
            "peer": lambda: peer_export(retriever, user_ids, peer_path, k, batch_size),
            "search": lambda: search_only(retriever, user_ids, k, batch_size),
        }
        cases["export"](), cases["peer"]()  # warm-up, and the check below
        ours, peer = pl.read_parquet(ours_path), pl.read_parquet(peer_path)
        if not ours.equals(peer):
            raise AssertionError(f"{name}: the exported file and the peer's differ")
        rows = ours.height
        seconds: dict[str, list[float]] = {c: [] for c in cases}
        for _ in range(repeats):
            for case, fn in cases.items():
                seconds[case].append(seconds_of(fn))
        peaks = {case: peak_heap_mb(fn) for case, fn in cases.items()}
        size = ours_path.stat().st_size
    out = {
        "users": n_users,
        "items": n_items,
        "rows": rows,
        "file_mb": round(size / 2**20, 2),
        "seconds": {c: statistics.median(v) for c, v in seconds.items()},
        "peak_heap_mb": peaks,
        "all_seconds": seconds,
    }
    out["ratio_to_peer"] = {c: out["seconds"][c] / out["seconds"]["peer"] for c in cases}
    out["heap_ratio_to_peer"] = {c: out["peak_heap_mb"][c] / out["peak_heap_mb"]["peer"] for c in cases}
    print(
        f"{name}: {n_users} users, {rows} rows; "
        + ", ".join(
            f"{c} {out['seconds'][c]:.2f} s (x{out['ratio_to_peer'][c]:.2f}), heap {out['peak_heap_mb'][c]:.0f} MB"
            for c in cases
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {}
    for name, seen in catalogues():
        results[name] = run_catalogue(name, seen, args.k, args.batch_size, args.repeats, args.seed)
    if args.out:
        write_json(args.out, {**provenance(), "k": args.k, "batch_size": args.batch_size, "results": results})


if __name__ == "__main__":
    main()
