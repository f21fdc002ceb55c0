"""Serving latency: the embedded ``Retriever`` against a bare FAISS search that returns the same items.

For each catalogue (MovieLens-100K: 943 users, 1,682 items, 100k seen pairs; Gowalla, LightGCN's split:
29,858 users, 40,981 items, 810k seen pairs), random 64-dim float32 embeddings (seeded: latency does not
depend on the values), an exact index built by ``serving.build_index`` with the real seen matrix, loaded with
one FAISS thread. One call per query row, timed call by call, the cases interleaved per row after a warm-up:

* ``recommend``   ``Retriever.recommend(user, k)``, seen items excluded; peer: ``IndexFlatIP.search`` for
  ``k + |seen| + 1`` candidates, the seen ones dropped (``np.isin``), ties ordered, the first k kept;
* ``vector``      ``Retriever.recommend_for_vector(q, k)``; peer: ``search(q, k + 1)``;
* ``similar``     ``Retriever.similar_items(item, k)``; peer: ``search(item vector, k + 1)``, the item dropped;
* ``batch``       ``recommend`` for ``--batch`` users in one call; peer: one batched search, then the same
  per-row filtering as ``recommend``'s peer.

Each peer orders equal scores by position, as the retriever does (float32 scores of random vectors do tie
now and then), and every answer is checked to hold the peer's items in the peer's order before it is timed. The table shows the median microseconds per call (per batch for ``batch``) and the ratio to the
peer; the ratio is what to compare between machines.

    .venv/bin/python bench/bench_serving.py --calls 300 --heavy-user --out bench/results/bench_serving.json

``--heavy-user`` also times ``recommend`` for a batch of 10,000 users holding one who has seen 30,000 of
50,000 items, against the same batch without that user (:func:`heavy_user_case`).

Needs ``../shared/data/ml-100k`` and ``../shared/data/gowalla-lightgcn`` (or ``$RECSYS_SHARED_DATA``); a
catalogue whose files are absent is skipped with a message.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import write_json  # noqa: E402

DIM = 64


def shared_data() -> Path:
    return Path(os.environ.get("RECSYS_SHARED_DATA", REPO.parent / "shared" / "data"))


def ml100k_seen(root: Path) -> sp.csr_matrix | None:
    """MovieLens-100K's ratings as a seen matrix (raw ids are 1-based integers)."""
    path = root / "ml-100k" / "u.data"
    if not path.exists():
        return None
    raw = np.loadtxt(path, dtype=np.int64, usecols=(0, 1))
    return sp.csr_matrix((np.ones(len(raw), np.uint8), (raw[:, 0] - 1, raw[:, 1] - 1)))


def gowalla_seen(root: Path) -> sp.csr_matrix | None:
    """Gowalla's LightGCN training pairs (``uid iid iid ...`` per line) as a seen matrix."""
    path = root / "gowalla-lightgcn" / "train.txt"
    if not path.exists():
        return None
    rows, cols = [], []
    for line in path.read_text().splitlines():
        ids = [int(x) for x in line.split()]
        rows += [ids[0]] * (len(ids) - 1)
        cols += ids[1:]
    return sp.csr_matrix((np.ones(len(rows), np.uint8), (rows, cols)))


def catalogues():
    """``(name, seen matrix)`` of each catalogue whose files are under :func:`shared_data`; the others are
    named as skipped."""
    root = shared_data()
    for name, load in (("ml-100k", ml100k_seen), ("gowalla", gowalla_seen)):
        seen = load(root)
        if seen is None:
            print(f"{name}: skipped, its files are not under {root}")
            continue
        yield name, seen


def random_world(rng: np.random.Generator, seen: sp.csr_matrix):
    """Seeded random ``DIM``-dim float32 user and item embeddings for a seen matrix's shape, and their ids
    ``u0..``, ``i0..`` (latency does not depend on the values)."""
    n_users, n_items = seen.shape
    users = rng.normal(size=(n_users, DIM)).astype(np.float32)
    items = rng.normal(size=(n_items, DIM)).astype(np.float32)
    return users, items, [f"u{u}" for u in range(n_users)], [f"i{i}" for i in range(n_items)]


def bare_filtered(index, queries: np.ndarray, seen_rows: list[np.ndarray], k: int) -> list[list[int]]:
    """The peer: one FAISS search for enough candidates, the excluded ones dropped, equal scores put in
    position order (the retriever's documented rule; float32 scores do tie), the first k kept."""
    fetch = k + max(len(s) for s in seen_rows) + 1
    dist, pos = index.search(queries, fetch)
    out = []
    for d, p, s in zip(dist, pos, seen_rows, strict=True):
        keep = ~np.isin(p, s)
        d, p = d[keep], p[keep]
        out.append(p[np.lexsort((p, -d))][:k].tolist())
    return out


def run_catalogue(name: str, seen: sp.csr_matrix, calls: int, batch: int, k: int, seed: int) -> dict:
    import faiss

    from serving import Retriever, build_index

    rng = np.random.default_rng(seed)
    n_users, n_items = seen.shape
    users, items, user_ids, item_ids = random_world(rng, seen)
    with tempfile.TemporaryDirectory() as tmp:
        build_index(items, item_ids, Path(tmp) / "index", user_emb=users, user_ids=user_ids, seen=seen)
        retriever = Retriever.load(Path(tmp) / "index", num_threads=1)
    flat = faiss.IndexFlatIP(DIM)
    flat.add(items)
    seen_of = [seen.indices[seen.indptr[u] : seen.indptr[u + 1]] for u in range(n_users)]

    def positions(recs: list[list]) -> list[list[int]]:
        return [[int(r.item_id[1:]) for r in row] for row in recs]

    cases = {
        "recommend": (
            lambda u, i: retriever.recommend(user_ids[u], k),
            lambda u, i: bare_filtered(flat, users[u : u + 1], [seen_of[u]], k),
        ),
        "vector": (
            lambda u, i: retriever.recommend_for_vector(users[u], k),
            lambda u, i: bare_filtered(flat, users[u : u + 1], [np.array([], dtype=np.int64)], k),
        ),
        "similar": (
            lambda u, i: retriever.similar_items(item_ids[i], k),
            lambda u, i: bare_filtered(flat, items[i : i + 1], [np.array([i])], k),
        ),
    }
    batch_users = rng.choice(n_users, size=min(batch, n_users), replace=False)
    batch_ids = [user_ids[u] for u in batch_users]
    cases["batch"] = (
        lambda u, i: retriever.recommend(batch_ids, k),
        lambda u, i: bare_filtered(flat, users[batch_users], [seen_of[u] for u in batch_users], k),
    )
    for case, (ours, peer) in cases.items():  # same answers, before anything is timed
        for u, i in zip(rng.integers(n_users, size=20), rng.integers(n_items, size=20), strict=True):
            if positions(ours(u, i)) != peer(u, i):
                raise AssertionError(
                    f"{name} {case}: the retriever and the peer disagree (user {u}, item {i})"
                )
    times: dict[str, dict[str, list[float]]] = {c: {"ours": [], "peer": []} for c in cases}
    queries = list(zip(rng.integers(n_users, size=calls), rng.integers(n_items, size=calls), strict=True))
    for step, (u, i) in enumerate([queries[0]] * 5 + queries):  # five warm-up calls, not recorded
        for case, (ours, peer) in cases.items():
            if case == "batch" and step % 25:  # a batch costs as much as hundreds of single calls
                continue
            for side, fn in (("ours", ours), ("peer", peer)):
                t0 = time.perf_counter_ns()
                fn(u, i)
                if step >= 5:
                    times[case][side].append((time.perf_counter_ns() - t0) / 1e3)
    result = {"n_users": n_users, "n_items": n_items, "n_seen": int(seen.nnz), "batch": len(batch_ids)}
    for case, t in times.items():
        ours_us, peer_us = statistics.median(t["ours"]), statistics.median(t["peer"])
        result[case] = {
            "calls": len(t["ours"]),
            "median_us": round(ours_us, 1),
            "peer_median_us": round(peer_us, 1),
            "ratio": round(ours_us / peer_us, 2),
        }
    return result


def heavy_user_case(seed: int) -> dict:
    """One user with a long history in a batch: 50,000 items, 10,000 users who have seen 100 items each
    (seeded random), user 0 30,000; ``recommend`` of all users against the same call without user 0 (the
    batch's other rows should not pay for that user's candidates), medians of 3, alternating which goes
    first, after a warm-up. Synthetic: no benchmark file has such a user at this scale."""
    from serving import Retriever, build_index

    rng = np.random.default_rng(seed)
    n_items, n_users = 50_000, 10_000
    items = rng.normal(size=(n_items, DIM)).astype(np.float32)
    users = rng.normal(size=(n_users, DIM)).astype(np.float32)
    rows = np.r_[np.repeat(np.arange(n_users), 100), np.zeros(30_000, dtype=np.int64)]
    cols = np.r_[rng.integers(0, n_items, size=n_users * 100), rng.choice(n_items, 30_000, replace=False)]
    seen = sp.csr_matrix((np.ones(rows.size, np.uint8), (rows, cols)), shape=(n_users, n_items))
    ids = [f"u{u}" for u in range(n_users)]
    with tempfile.TemporaryDirectory() as tmp:
        build_index(
            items, [f"i{i}" for i in range(n_items)], Path(tmp) / "i", user_emb=users, user_ids=ids, seen=seen
        )
        retriever = Retriever.load(Path(tmp) / "i", num_threads=1)
    retriever.recommend(ids[:100], k=20)  # warm-up
    samples: dict[str, list[float]] = {"without_user_0_s": [], "with_user_0_s": []}
    cases = [("without_user_0_s", ids[1:]), ("with_user_0_s", ids)]
    for repeat in range(3):  # alternating which case goes first
        for name, batch in cases if repeat % 2 == 0 else cases[::-1]:
            t0 = time.perf_counter()
            retriever.recommend(batch, k=20)
            samples[name].append(time.perf_counter() - t0)
    times = {name: round(statistics.median(t), 2) for name, t in samples.items()}
    times["ratio"] = round(times["with_user_0_s"] / times["without_user_0_s"], 2)
    times["repeats"] = 3
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="timed single-row calls per case")
    parser.add_argument("--batch", type=int, default=1000, help="users per batched recommend call")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--heavy-user", action="store_true", help="also time a batch holding one heavy user")
    args = parser.parse_args()

    results = {}
    for name, seen in catalogues():
        results[name] = run_catalogue(name, seen, args.calls, args.batch, args.k, args.seed)
        r = results[name]
        print(f"{name}: {r['n_users']} users, {r['n_items']} items, {r['n_seen']} seen")
        for case in ("recommend", "vector", "similar", "batch"):
            c = r[case]
            print(
                f"  {case:<10} {c['median_us']:>10.1f} us   peer {c['peer_median_us']:>10.1f} us   x{c['ratio']}"
            )
    heavy = None
    if args.heavy_user:
        heavy = heavy_user_case(args.seed)
        print(f"batch of 10,000 users with / without one user of 30,000 seen items: {heavy}")
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if args.out:
        write_json(
            args.out,
            {
                "command": "bench/bench_serving.py " + " ".join(sys.argv[1:]),
                "git_commit": commit,
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "k": args.k,
                "dim": DIM,
                "faiss_threads": 1,
                "catalogues": results,
                **({"heavy_user": heavy} if heavy is not None else {}),
            },
        )


if __name__ == "__main__":
    main()
