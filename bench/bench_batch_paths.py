"""Batch paths a service calls with many rows: explanations of many users (DCCF) and the encoding of many new
items (two-tower), each timed against a bare peer that computes the same output, interleaved, in one process.

    .venv/bin/python bench/bench_batch_paths.py --users 200 --items 10000 --repeats 3 \
        --out bench/results/bench_batch_paths.json

* ``explain``: ``recsys.explain.explain_user`` called per user, ``explain_users`` for all of them, and a peer
  that runs the DCCF propagation once and then, per user, the masked top-k and the intent attribution in plain
  torch. The model is ``configs/gowalla_dccf.yaml``'s on MovieLens-100K (``configs/ml100k_lightgcn.yaml``'s
  data), at its initial weights: the cost does not depend on them.
* ``new_items``: ``features.new_items.encode_new_items`` on MovieLens-100K's item feature spec (genres and
  release year given, ``year_bucket`` derived) against a vectorised Polars encoding; the outputs are checked
  equal before timing.

Needs ``../shared/data/ml-100k`` (or ``$RECSYS_SHARED_DATA``). One torch thread.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _results import write_json  # noqa: E402


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def explain_case(n_users: int, repeats: int) -> dict:
    import numpy as np
    import torch
    import yaml

    from features import DataConfig, prepare
    from recsys.explain import explain_user, explain_users
    from recsys.models import build_model

    data = DataConfig.model_validate(
        yaml.safe_load((REPO / "configs/ml100k_lightgcn.yaml").read_text())["data"]
    )
    ds = prepare(data)
    model_cfg = yaml.safe_load((REPO / "configs/gowalla_dccf.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = build_model(model_cfg, ds.n_users, ds.n_items)
    model.prepare(ds.matrix("train"))
    model.eval()
    train = ds.matrix("train")
    users = np.random.default_rng(0).integers(0, ds.n_users, n_users).tolist()

    @torch.no_grad()
    def peer() -> list[list[int]]:
        views = model.forward_views()
        n_u = model.n_users
        users_final, items_final = views.final[:n_u], views.final[n_u:]
        weights = torch.stack([model.intent_weights(e[:n_u], "user") for e in views.layers[:-1]]).mean(0)
        affinity = items_final @ model.user_intent
        out = []
        for u in users:
            scores = items_final @ users_final[u]
            scores[
                torch.as_tensor(train.indices[train.indptr[u] : train.indptr[u + 1]], dtype=torch.long)
            ] = -torch.inf
            top = torch.topk(scores, 10).indices
            (weights[u][None, :] * affinity[top]).argmax(1)  # the attribution, as explain_user computes it
            out.append(top.tolist())
        return out

    expected = peer()
    got = [[r.item_idx for r in e.recommendations] for e in explain_users(model, users, train)]
    assert got == expected, "explain_users and the peer disagree"
    times: dict[str, list[float]] = {"explain_user per user": [], "explain_users": [], "peer": []}
    for _ in range(repeats):
        times["explain_user per user"].append(_timed(lambda: [explain_user(model, u, train) for u in users]))
        times["explain_users"].append(_timed(lambda: explain_users(model, users, train)))
        times["peer"].append(_timed(peer))
    return {"users": n_users, "n_users": ds.n_users, "n_items": ds.n_items, "seconds": times}


def new_items_case(n_items: int, repeats: int) -> dict:
    import numpy as np
    import polars as pl
    import yaml

    from features import DataConfig, prepare
    from features.new_items import encode_new_items
    from features.side_features import decade

    data = yaml.safe_load((REPO / "configs/ml100k_two_tower.yaml").read_text())["data"]
    spec = prepare(DataConfig.model_validate(data)).manifest["side_features"]["items"]
    genres = spec["genres"]["labels"]
    rng = np.random.default_rng(0)
    rows = [
        {
            "genres": [genres[j] for j in rng.choice(len(genres), int(rng.integers(1, 4)), replace=False)],
            "release_year": int(rng.integers(1925, 1999)),
        }
        for _ in range(n_items)
    ]

    def peer() -> pl.DataFrame:
        genre_code = {label: j + 1 for j, label in enumerate(genres)}
        bucket_code = {label: j + 1 for j, label in enumerate(spec["year_bucket"]["labels"])}
        frame = pl.DataFrame(
            {
                "genres": [[genre_code.get(g, 0) for g in row["genres"]] for row in rows],
                "release_year": [row["release_year"] for row in rows],
            },
            schema={"genres": pl.List(pl.Int64), "release_year": pl.Int64},
        )
        buckets = frame.select(decade(pl.col("release_year")))["release_year"].to_list()
        codes = pl.Series("year_bucket", [bucket_code.get(b, 0) for b in buckets], dtype=pl.Int64)
        return frame.with_columns(codes).select(list(spec))

    assert encode_new_items(rows, spec).equals(peer()), "encode_new_items and the peer disagree"
    times: dict[str, list[float]] = {"encode_new_items": [], "peer": []}
    for _ in range(repeats):
        times["encode_new_items"].append(_timed(lambda: encode_new_items(rows, spec)))
        times["peer"].append(_timed(peer))
    return {"items": n_items, "seconds": times}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from recsys.tracking import git_commit

    cases = {
        "explain": explain_case(args.users, args.repeats),
        "new_items": new_items_case(args.items, args.repeats),
    }
    for name, case in cases.items():
        peer = statistics.median(case["seconds"]["peer"])
        for label, values in case["seconds"].items():
            median = statistics.median(values)
            print(f"{name:9s} {label:22s} median {median:.3f} s  x peer {median / peer:.1f}")
    if args.out:
        write_json(
            args.out,
            {
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "git_commit": git_commit(),
                "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch_threads": 1},
                "cases": cases,
            },
        )
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
