"""``recsys quickstart``: MovieLens-100K end to end in a few minutes on two CPU cores.

Gets the data (the local benchmark copy when present, else the copy that ships on PyPI inside the
``recbole==1.2.1`` wheel, checksum-verified and cached), prepares it, trains LightGCN next to the most-popular
baseline, prints the test metrics, builds the FAISS index, shows one user's history and top-10 by title and
the five films most like the first of that history, and says where the MLflow run is.
"""

from __future__ import annotations

import time

from recsys.config import ExperimentConfig, validate_config
from recsys.paths import default_tracking_uri, recsys_home


def quickstart_config(data_path: str, model: dict, epochs: int | None = None) -> ExperimentConfig:
    """The quickstart's experiment: ratings >= 4 as positives, a seeded 80/10/10 random split per user,
    early stopping on validation NDCG@10."""
    raw = {
        "name": f"quickstart-ml100k-{model['name']}",
        "seed": 42,
        "data": {
            "source": "movielens_100k",
            "path": data_path,
            "rating_threshold": 4.0,
            "split": {"protocol": "random_ratio", "test_ratio": 0.1, "valid_ratio": 0.1, "seed": 42},
        },
        "model": model,
        "train": {
            "epochs": 60 if epochs is None else epochs,
            "batch_size": 1024,
            "lr": 5e-3,
            "early_stopping": {"metric": "ndcg@10", "patience": 8},
        },
        "eval": {"ks": [10, 20]},
        "tracking": {"experiment": "quickstart"},
    }
    return validate_config(raw, source="quickstart")


def run_quickstart(epochs: int | None = None, user: str = "1", echo=print) -> int:
    from features import obtain_movielens_100k
    from recsys.cli import format_metrics_table
    from recsys.cli_serve import print_recommendations, show_recommendations
    from recsys.pipeline import LoadedRun, build_run_index, train_experiment
    from serving import Retriever

    t0 = time.perf_counter()
    echo("== 1. data: MovieLens-100K")
    data_dir = obtain_movielens_100k(recsys_home() / "downloads")
    echo(f"   using {data_dir}")

    echo("\n== 2. training (most-popular baseline, then LightGCN with early stopping on validation)")
    pop = train_experiment(quickstart_config(str(data_dir), {"name": "popularity"}), echo=lambda *_: None)
    cfg = quickstart_config(str(data_dir), {"name": "lightgcn", "dim": 64, "layers": 3, "reg": 1e-4}, epochs)
    res = train_experiment(cfg, echo=lambda m: echo("   " + m))
    if pop is None or res is None:  # a data-parallel process other than 0 (torchrun): process 0 reports
        return 0
    ds = res.dataset
    echo(f"   LightGCN: {len(res.history)} epochs, {res.train_seconds:.1f} s")

    echo("\n== 3. test metrics (full ranking over all items, training and validation items excluded)")
    echo(format_metrics_table({"most-popular": pop.test_metrics, "lightgcn": res.test_metrics}, cfg.eval.ks))

    echo("\n== 4. FAISS index")
    index_dir = build_run_index(LoadedRun(res.run_id or "local", cfg, ds, res.model))
    echo(f"   {index_dir}")
    retriever = Retriever.load(index_dir)

    echo("\n== 5. recommendations")
    import polars as pl

    uidx = ds.user_vocab.filter(pl.col("user_id") == user)["user_idx"]
    if uidx.len() == 0:
        echo(f"   user {user!r} is not in the dataset; showing user {ds.user_vocab['user_id'][0]!r}")
        user = ds.user_vocab["user_id"][0]
        uidx = ds.user_vocab.filter(pl.col("user_id") == user)["user_idx"]
    # The user's positives (all three splits), best rated first; the index excludes these and the items
    # rated below the threshold, which the count of seen items includes.
    known = pl.concat([ds.train, ds.valid, ds.test]).filter(pl.col("user_idx") == uidx[0])
    hist = known.join(ds.item_vocab, on="item_idx")
    if "rating" in known.columns and "timestamp" in known.columns:
        hist = hist.sort("rating", "timestamp", descending=[True, True], nulls_last=True)
    titles = hist["title"].to_list() if "title" in hist.columns else hist["item_id"].to_list()
    n_seen = ds.known_matrix()[int(uidx[0])].nnz
    print_recommendations(retriever, user, 10, history_titles=titles, n_seen=n_seen)
    liked = str(hist["item_id"][0]) if hist.height else None
    if liked is not None:  # the items nearest the user's first-listed film, by the cosine of their vectors
        similar = retriever.similar_items([liked], k=5)[0]
        show_recommendations(
            f"top-{len(similar)} most similar to {titles[0]} (item {liked}), by cosine:", similar
        )

    echo("\n== 6. tracking")
    echo(f"   MLflow run {res.run_id} in {default_tracking_uri()}")
    echo(f"   browse it with: mlflow ui --backend-store-uri {default_tracking_uri()}")
    echo(f"   recommend again: recsys recommend --run {res.run_id} --user {user} --k 10")
    if liked is not None:
        echo(f"   similar items:   recsys recommend --run {res.run_id} --similar {liked}")
    if pop.run_id and res.run_id:  # is LightGCN's gain over the baseline more than the users' spread?
        echo(f"   compare the two: recsys compare --run {pop.run_id} --run {res.run_id}")
    echo(f"\nquickstart finished in {time.perf_counter() - t0:.0f} s")
    return 0
