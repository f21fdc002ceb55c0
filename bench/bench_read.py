"""Benchmark: the validated CSV reader against a bare Polars read of the same columns.

``features.readers.read_interactions`` reads a CSV with Polars, then checks it: a 4-byte Parquet sniff and a
scan of the leading blank lines (one short read), the header for repeated names, one full pass that counts the
file's lines against its records (so that every error can name its line), and per-column parsing of ids,
ratings and timestamps as text.  This measures what those checks cost against ``pl.read_csv`` of the same
columns with types inferred by Polars (no checks at all).

Workload: the real Gowalla training interactions (LightGCN's ``train.txt``, 810,128 pairs) written as a CSV
``user,item,rating,timestamp`` (rating and timestamp made up, seeded), repeated ``--copies`` times; a synthetic
file of the same shape when the data folder is absent.  Both readers run in one process, interleaved,
``--repeats`` times after one warm-up; the table shows medians and minima.

    .venv/bin/python bench/bench_read.py --copies 4 --repeats 5 --out bench/results/bench_read.json
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from _results import write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from features.readers import read_interactions, read_user_lines  # noqa: E402

GOWALLA = REPO.parent / "shared" / "data" / "gowalla-lightgcn" / "train.txt"


def interactions(copies: int, seed: int = 0) -> tuple[pl.DataFrame, str]:
    """``[user, item, rating, timestamp]``: Gowalla's training pairs (or synthetic ones), ``copies`` times."""
    rng = np.random.default_rng(seed)
    if GOWALLA.exists():
        pairs, _ = read_user_lines(GOWALLA)
        users, items, source = pairs["user_id"], pairs["item_id"], str(GOWALLA)
    else:
        n = 810_128
        users = pl.Series(rng.integers(0, 29_858, n)).cast(pl.String)
        items = pl.Series(rng.zipf(1.3, n) % 40_981).cast(pl.String)
        source = "synthetic (Gowalla's shape)"
    n = len(users)
    one = pl.DataFrame(
        {
            "user": users,
            "item": items,
            "rating": rng.integers(1, 6, n).astype(np.float64),
            "timestamp": rng.integers(1_250_000_000, 1_290_000_000, n),
        }
    )
    return pl.concat([one] * copies), source


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="repeat Gowalla's 810k pairs this many times")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    df, source = interactions(args.copies)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interactions.csv"
        df.write_csv(path)
        size_mb = path.stat().st_size / 1e6
        cases = {
            "read_interactions (validated)": lambda: read_interactions(
                path, user="user", item="item", rating="rating", timestamp="timestamp"
            ),
            "pl.read_csv (same columns, no checks)": lambda: pl.read_csv(
                path, columns=["user", "item", "rating", "timestamp"]
            ),
        }
        checked = cases["read_interactions (validated)"]()
        assert checked.height == df.height, (checked.height, df.height)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for fn in cases.values():  # warm-up (page cache, Polars' thread pool)
            fn()
        for _ in range(args.repeats):
            for name, fn in cases.items():
                times[name].append(timed(fn))

    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["pl.read_csv (same columns, no checks)"]
    print(f"{df.height:,} rows, {size_mb:.0f} MB CSV from {source}; {args.repeats} repeats, medians (min)")
    print("| reader | s | x bare read |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {med[name]:.3f} ({min(t):.3f}) | {med[name] / base:.2f} |")
    if args.out:
        write_json(
            args.out,
            {
                "rows": df.height,
                "csv_mb": round(size_mb, 1),
                "source": source,
                "repeats": args.repeats,
                "seconds": times,
                "median_ratio": med["read_interactions (validated)"] / base,
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(),
                    "polars_threads": pl.thread_pool_size(),
                    "polars": pl.__version__,
                },
            },
        )


if __name__ == "__main__":
    main()
