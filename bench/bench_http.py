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
    from serving import Reranker, RerankingRetriever, Retriever

    index_dir = default_index_dir(args.run)
    run = load_run(args.run)
    if not (index_dir / "manifest.json").exists():
        build_run_index(run, index_dir)
    embedded = {"plain": Retriever.load(index_dir, num_threads=1)}
    if args.reranker:
        embedded["reranked"] = RerankingRetriever(embedded["plain"], Reranker.load(args.reranker))
    encoder = None
    if callable(getattr(run.model, "encode_sequences", None)):
        encoder = sequence_query_encoder(run.model)
        embedded["sequence"] = embedded["plain"]
    port = free_port()
    command = [sys.executable, "-m", "recsys.cli", "serve", "--index", str(index_dir), "--port", str(port)]
    command += ["--threads", "1", "--log-level", "warning"]
    if encoder is not None:
        command += ["--run", args.run]  # the server loads the model's encoder
    if args.reranker:
        command += ["--reranker", args.reranker]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {}
    try:
        with httpx.Client(timeout=30) as client:
            wait_until_up(client, url, server)
            if encoder is not None and not client.get(url + "/health").json()["sequences"]:
                raise RuntimeError("the server did not load the run's sequence encoder")
            rng = np.random.default_rng(0)
            users = rng.choice(embedded["plain"].index.user_ids, size=args.calls + 20)
            catalogue = embedded["plain"].index.item_ids
            for i, user in enumerate(users):
                session = [str(x) for x in rng.choice(catalogue, size=args.session_length, replace=False)]
                for case, retriever in embedded.items():
                    if case == "sequence":
                        start = time.perf_counter()
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
                "session_length": args.session_length if encoder is not None else None,
                "median_us": medians,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
