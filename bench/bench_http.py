"""The HTTP app (``recsys serve``) against the embedded retriever it wraps: what one request costs on top.

Serves a run's index with ``recsys serve`` (uvicorn, a separate process, one FAISS thread) on a free local
port and, in this process, loads the same index into a ``Retriever``. Then, one random known user per call,
alternating between the two and timing each call alone:

* ``embedded``: ``Retriever.recommend([user], k)``;
* ``http``: ``GET /recommend?user=U&k=K`` over one keep-alive connection (``httpx.Client``), the JSON parsed;
* with ``--reranker DIR`` also ``RerankingRetriever.recommend`` and ``GET ...&rerank=true``;
* for a sequence model's run (SASRec, ICSRec; the server then runs with ``--run``, holding the model's
  encoder) also ``Retriever.recommend_for_sequences([session], encoder, k)`` and
  ``GET /recommend_for_sequence?items=...&k=K``, for a session of ``--session-length`` random catalogue items.

A run without an index (EASE, RP3beta) is served from its model (``recsys serve --run``, which fits it again
before it answers): the embedded side is ``ScorerRecommender`` (``recommend([user], k)`` and
``recommend_for_sequences([session], k)``, the session read as an item set), so the same command measures what
scoring the whole catalogue per request costs, against an index run's numbers on the same data.

Every HTTP answer is checked to hold the embedded answer's items in the same order before it is timed.
Prints medians (µs) and the ratio http / embedded, and writes them with ``--out``:

    RECSYS_HOME=... .venv/bin/python bench/bench_http.py --run RUN_ID [--reranker DIR] --calls 300 \\
        --out bench/results/bench_http.json
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import provenance, write_json  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(client, url: str, server: subprocess.Popen, seconds: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"recsys serve exited with {server.returncode}")
        try:
            if client.get(url + "/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {seconds} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, help="MLflow run id (its index is built on first use)")
    parser.add_argument("--reranker", help="a folder of `recsys rerank` for the run")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--session-length", type=int, default=10, help="items per session (sequence models)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import httpx
    import numpy as np

    from recsys.pipeline import build_run_index, default_index_dir, load_run, sequence_query_encoder
    from recsys.scorer_recommender import ScorerRecommender
    from serving import Reranker, RerankingRetriever, Retriever

    index_dir = default_index_dir(args.run)
    run = load_run(args.run)
    port = free_port()
    command = [sys.executable, "-m", "recsys.cli", "serve", "--port", str(port), "--threads", "1"]
    command += ["--log-level", "warning"]
    encoder = None
    embedded: dict[str, Any]
    if not getattr(type(run.model), "indexable", True):  # EASE, RP3beta: the model scores each request
        if args.reranker:
            parser.error("a run without an index has no re-ranker")
        import torch

        torch.set_num_threads(1)  # as the server's --threads 1
        scorer = ScorerRecommender(run)
        embedded = {"plain": scorer, "sequence": scorer}
        users_known, catalogue = scorer.user_ids, scorer.item_ids
        command += ["--run", args.run]
    else:
        if not (index_dir / "manifest.json").exists():
            build_run_index(run, index_dir)
        embedded = {"plain": Retriever.load(index_dir, num_threads=1)}
        if args.reranker:
            embedded["reranked"] = RerankingRetriever(embedded["plain"], Reranker.load(args.reranker))
        if callable(getattr(run.model, "encode_sequences", None)):
            encoder = sequence_query_encoder(run.model)
            embedded["sequence"] = embedded["plain"]
        users_known, catalogue = embedded["plain"].index.user_ids, embedded["plain"].index.item_ids
        command += ["--index", str(index_dir)]
        if encoder is not None:
            command += ["--run", args.run]  # the server loads the model's encoder
    if args.reranker:
        command += ["--reranker", args.reranker]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {}
    try:
        with httpx.Client(timeout=30) as client:
            wait_until_up(client, url, server, seconds=900.0)  # a run without an index is fitted first
            if "sequence" in embedded and not client.get(url + "/health").json()["sequences"]:
                raise RuntimeError("the server does not answer item sequences")
            rng = np.random.default_rng(0)
            users = rng.choice(users_known, size=args.calls + 20)
            for i, user in enumerate(users):
                session = [str(x) for x in rng.choice(catalogue, size=args.session_length, replace=False)]
                for case, retriever in embedded.items():
                    if case == "sequence":
                        start = time.perf_counter()
                        if encoder is None:  # a model scoring item sets
                            local = retriever.recommend_for_sequences([session], k=args.k)[0]
                        else:
                            local = retriever.recommend_for_sequences([session], encoder, k=args.k)[0]
                        t_local = time.perf_counter() - start
                        path, params = "/recommend_for_sequence", {"items": session, "k": args.k}
                    else:
                        start = time.perf_counter()
                        local = retriever.recommend([str(user)], k=args.k)[0]
                        t_local = time.perf_counter() - start
                        path = "/recommend"
                        params = {"user": str(user), "k": args.k, "rerank": case == "reranked"}
                    start = time.perf_counter()
                    answer = client.get(url + path, params=params)
                    answer.raise_for_status()
                    remote = answer.json()
                    t_http = time.perf_counter() - start
                    if [r["item_id"] for r in remote] != [r.item_id for r in local]:
                        raise AssertionError(
                            f"{case}, call {i}: the HTTP answer differs from the embedded one"
                        )
                    if i >= 20:  # the first calls warm caches and the connection up
                        times.setdefault(f"{case}_embedded", []).append(t_local * 1e6)
                        times.setdefault(f"{case}_http", []).append(t_http * 1e6)
    finally:
        server.terminate()
        server.wait(timeout=30)
    medians = {key: statistics.median(values) for key, values in times.items()}
    for case in embedded:
        e, h = medians[f"{case}_embedded"], medians[f"{case}_http"]
        print(
            f"{case}: embedded {e:.0f} µs, HTTP {h:.0f} µs (x{h / e:.2f}; medians of {args.calls}, k = {args.k})"
        )
    if args.out:
        write_json(
            args.out,
            {
                **provenance(),
                "run_id": args.run,
                "k": args.k,
                "calls": args.calls,
                "model": run.config.model["name"],
                "session_length": args.session_length if "sequence" in embedded else None,
                "median_us": medians,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
