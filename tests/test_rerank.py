"""The LightGBM re-ranking stage: features by hand, fitting, the folder format, serving, and the command line
(fit on validation, measured on test with the evaluation's own ranking)."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from serving import Retriever, build_index
from serving._topk import ExcludedItems
from serving.rerank import FEATURES, ItemStatistics, Reranker, RerankingRetriever, candidate_features


def rows(*lists: list[int]) -> ExcludedItems:
    return ExcludedItems.from_lists([np.asarray(r, dtype=np.int64) for r in lists])


def test_candidate_features_by_hand():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    known = rows([0, 1], [0])  # item counts 2, 1, 0, 0: mean 0.75; users know 2 and 1 items: mean 1.5
    items = ItemStatistics.from_arrays(vectors, known)
    assert items.mean_history == 1.5
    np.testing.assert_allclose(items.norm, [1, 2, 3, 0])
    np.testing.assert_allclose(items.log_popularity, np.log(np.array([3, 2, 1, 1]) / 1.75), rtol=1e-6)
    history = rows([0], [])  # user 0 knows item 0; user 1 knows nothing
    scores = np.array([[5.0, 3.0, -np.inf], [4.0, 2.0, 0.5]], dtype=np.float32)
    positions = np.array([[2, 1, -1], [0, 3, 2]])
    f = candidate_features(scores, positions, history, items)
    assert f.shape == (2, 3, len(FEATURES))
    col = {name: f[..., j] for j, name in enumerate(FEATURES)}
    np.testing.assert_allclose(col["score"][1], [4.0, 2.0, 0.5])
    np.testing.assert_allclose(col["rank"][1], [0, 1, 2])
    np.testing.assert_allclose(col["gap_to_top"][0, :2], [0.0, 2.0])
    np.testing.assert_allclose(col["item_norm"][1], [1.0, 0.0, 3.0])
    np.testing.assert_allclose(col["item_log_popularity"][0, :2], np.log([1 / 1.75, 2 / 1.75]), rtol=1e-6)
    np.testing.assert_allclose(col["user_log_history"][:, 0], np.log([2 / 2.5, 1 / 2.5]), rtol=1e-6)
    # item 2 points where user 0's only item points, item 1 at a right angle; an empty history gives 0
    np.testing.assert_allclose(col["history_cosine"][0, :2], [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(col["history_cosine"][1], [0.0, 0.0, 0.0])
    assert np.isnan(f[0, 2]).all()  # the padding slot
    with pytest.raises(ValueError, match="history has 1 rows, the candidates 2"):
        candidate_features(scores, positions, rows([0]), items)


def lists_where_popularity_decides(rng, n_lists: int, n: int = 20):
    """Candidate lists whose one relevant item is the most popular candidate, at a random place in the list,
    so the retrieval order carries no signal and the popularity feature all of it."""
    f = rng.normal(size=(n_lists, n, len(FEATURES))).astype(np.float32)
    f[..., 1] = np.arange(n)  # rank
    labels = np.zeros((n_lists, n), dtype=np.float32)
    labels[np.arange(n_lists), np.argmax(f[..., 4], axis=1)] = 1.0
    scores = -np.sort(-rng.normal(size=(n_lists, n)), axis=1).astype(np.float32)
    return f, labels, scores


def test_the_reranker_learns_what_retrieval_misses():
    rng = np.random.default_rng(0)
    f, y, _ = lists_where_popularity_decides(rng, 400)
    hf, hy, _ = lists_where_popularity_decides(rng, 100)
    model = Reranker.fit(f, y, valid=(hf, hy), params={"num_leaves": 7, "min_data_in_leaf": 20}, seed=1)
    assert model.n_candidates == 20 and 0 < model.info["best_iteration"] <= 500
    tf, ty, ts = lists_where_popularity_decides(rng, 200)
    positions = np.tile(np.arange(20), (200, 1))
    _, top = model.rerank(ts, positions, tf, k=1)
    hit_at_1 = ty[np.arange(200), top[:, 0]].mean()
    assert hit_at_1 > 0.8  # the retrieval order puts it first 1 time in 20
    assert ty[:, 0].mean() < 0.2


def test_padding_stays_last_and_ties_keep_the_retrieval_order():
    rng = np.random.default_rng(1)
    f, y, _ = lists_where_popularity_decides(rng, 200, n=6)
    model = Reranker.fit(f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=5, seed=0)
    tf = np.repeat(f[:1], 2, axis=0)
    tf[1, 1:] = tf[1, 0]  # six identical candidates: equal ranker scores
    tf[0, 4:] = np.nan  # a list that ran out after 4 items
    positions = np.array([[10, 11, 12, 13, -1, -1], [20, 21, 22, 23, 24, 25]])
    scores = np.zeros((2, 6), dtype=np.float32)
    out_scores, out_pos = model.rerank(scores, positions, tf, k=6)
    assert sorted(out_pos[0, :4]) == [10, 11, 12, 13] and out_pos[0, 4:].tolist() == [-1, -1]
    assert np.isneginf(out_scores[0, 4:]).all()
    assert out_pos[1].tolist() == [20, 21, 22, 23, 24, 25]  # equal scores: the retrieval order
    with pytest.raises(ValueError, match="positive integer"):
        model.rerank(scores, positions, tf, k=0)


def test_a_saved_reranker_loads_and_predicts_the_same(tmp_path):
    rng = np.random.default_rng(2)
    f, y, _ = lists_where_popularity_decides(rng, 100)
    model = Reranker.fit(
        f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=20, info={"run_id": "r1"}
    )
    folder = model.save(tmp_path / "rr")
    again = Reranker.load(folder)
    np.testing.assert_array_equal(again.predict(f), model.predict(f))
    assert again.n_candidates == 20 and again.info["run_id"] == "r1"
    model.save(folder)  # replacing a folder in place works
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["rr"]

    text = (folder / "reranker.txt").read_text()
    (folder / "reranker.txt").write_text(text.replace("Tree=0", "Tree=9", 1))
    with pytest.raises(ValueError, match=r"reranker\.txt: \d+ bytes with another SHA-256; expected"):
        Reranker.load(folder)
    manifest = json.loads((folder / "reranker.json").read_text())
    manifest["features"] = ["score"]
    (folder / "reranker.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="features \\['score'\\] differ"):
        Reranker.load(folder)
    with pytest.raises(ValueError, match="not a re-ranker folder"):
        Reranker.load(tmp_path)
    old = {**manifest, "format": "recsys-reranker/1"}  # an earlier format: features computed otherwise
    (folder / "reranker.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"format 'recsys-reranker/1', expected .*; fit it again"):
        Reranker.load(folder)
    model.save(folder)  # ... and a folder of it may be replaced
    assert Reranker.load(folder).n_candidates == 20


@pytest.fixture
def served(tmp_path):
    """An index of 60 items for 30 users with seen items, and a re-ranker fitted for its run."""
    rng = np.random.default_rng(3)
    items, users = rng.normal(size=(60, 8)).astype(np.float32), rng.normal(size=(30, 8)).astype(np.float32)
    seen = sp.random(30, 60, density=0.2, format="csr", random_state=4)
    seen.data[:] = 1.0
    folder = build_index(
        items, [f"i{j}" for j in range(60)], tmp_path / "idx", user_emb=users,
        user_ids=[f"u{u}" for u in range(30)], seen=seen, run_id="run-a",
        metadata={"dataset_manifest_hash": "a" * 64},
    )  # fmt: skip
    f, y, _ = lists_where_popularity_decides(rng, 200, n=15)
    reranker = Reranker.fit(f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=10,
                            info={"run_id": "run-a", "normalized": False})  # fmt: skip
    return Retriever.load(folder), reranker, seen


def test_the_reranking_retriever_reorders_the_retrieved_unseen_items(served):
    retriever, reranker, seen = served
    reranking = RerankingRetriever(retriever, reranker)
    users = [f"u{u}" for u in range(30)]
    got = reranking.recommend(users, k=5)
    candidates = retriever.recommend(users, k=15)
    for u, (recs, cands) in enumerate(zip(got, candidates, strict=True)):
        assert len(recs) == 5
        assert {r.item_id for r in recs} <= {c.item_id for c in cands}  # only the retrieved candidates
        assert not {int(r.item_id[1:]) for r in recs} & set(seen[u].indices)  # never a seen item
        assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)
    # the reorder is the ranker's: recomputing its scores for the candidate lists gives the same top 5
    index = retriever.index
    pos = index.user_positions(users)
    s, c = index.search(index.user_emb[pos], 15, exclude=index.seen_items(pos))
    stats = ItemStatistics.from_arrays(
        index.item_vectors(np.arange(60)), rows(*[seen[u].indices for u in range(30)])
    )
    _, top = reranker.rerank(s, c, candidate_features(s, c, index.seen_items(pos), stats), 5)
    assert [[r.item_id for r in recs] for recs in got] == [[f"i{p}" for p in row] for row in top]
    # a k beyond the fitted list length retrieves k candidates
    assert all(len(recs) == 20 for recs in reranking.recommend(users[:3], k=20))


def test_the_reranking_retriever_is_safe_to_share_between_threads(served):
    retriever, reranker, _ = served
    reranking = RerankingRetriever(retriever, reranker)
    users = [f"u{u}" for u in range(30)]
    expected = reranking.recommend(users, k=5)
    results, errors = {}, []

    def work(t: int) -> None:
        try:
            for _ in range(20):
                results.setdefault(t, []).append(reranking.recommend(users, k=5))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(r == expected for runs in results.values() for r in runs)


def test_a_reranker_of_another_run_is_refused(served):
    retriever, reranker, _ = served
    other = Reranker(reranker.booster, reranker.n_candidates, {"run_id": "run-b"})
    with pytest.raises(ValueError, match="fitted on run run-b, the index .* is run run-a"):
        RerankingRetriever(retriever, other)
    cosine = Reranker(reranker.booster, reranker.n_candidates, {"run_id": "run-a", "normalized": True})
    with pytest.raises(ValueError, match="fitted on cosine scores"):
        RerankingRetriever(retriever, cosine)
    biased = Reranker(reranker.booster, reranker.n_candidates, {"run_id": "run-a", "bias_columns": 1})
    with pytest.raises(
        ValueError, match=r"left out 1 bias column\(s\) of the item vectors, .* has 0: rebuild"
    ):
        RerankingRetriever(retriever, biased)  # an index from before bias columns were recorded


def test_item_features_leave_out_an_index_s_bias_columns(tmp_path, served):
    """Served: ``item_norm`` and ``history_cosine`` are over the items' directions, the bias column left out
    (the stored vectors with a large bias column would make every cosine near 1 and every norm the bias)."""
    retriever, reranker, seen = served
    directions = retriever.index.item_vectors(np.arange(60))
    stacked = np.hstack([directions, np.full((60, 1), 100.0, np.float32)])
    folder = build_index(
        stacked, list(retriever.index.item_ids), tmp_path / "biased",
        user_emb=np.hstack([retriever.index.user_emb, np.ones((30, 1), np.float32)]),
        user_ids=list(retriever.index.user_ids), seen=seen, run_id="run-a", bias_columns=1,
    )  # fmt: skip
    fitted = Reranker(reranker.booster, reranker.n_candidates, {"run_id": "run-a", "bias_columns": 1})
    reranking = RerankingRetriever(Retriever.load(folder), fitted)
    older = Reranker(reranker.booster, reranker.n_candidates, {"run_id": "run-a"})  # fitted before the record
    with pytest.raises(ValueError, match=r"left out 0 bias column\(s\) .* has 1: fit the re-ranker again"):
        RerankingRetriever(Retriever.load(folder), older)
    np.testing.assert_allclose(reranking._items.norm, np.linalg.norm(directions, axis=1), rtol=1e-6)
    assert reranking._items.unit.shape == (60, 8)


def test_fitting_features_leave_out_a_model_s_bias_columns():
    """Fitted: the most-popular model's one column is a bias (``bias_columns = 1``), so it has no direction:
    ``item_norm`` and ``history_cosine`` are 0 rather than the count and a cosine of 1 between any two items."""
    from recsys.models import build_model
    from recsys.rerank import split_candidates

    class Dataset:
        n_items = 5
        pairs = {"train": [(0, 0), (1, 0), (1, 1), (2, 2)], "valid": [(0, 3), (1, 4), (2, 3)], "test": []}

        def matrix(self, split):
            if not self.pairs[split]:
                return sp.csr_matrix((3, 5))
            r, c = zip(*self.pairs[split], strict=True)
            return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(3, 5))

    model = build_model({"name": "popularity"}, 3, 5)
    model.prepare(Dataset().matrix("train"))
    got = split_candidates(model, Dataset(), "valid", 3)
    assert got.item_dim == 1
    for name in ("item_norm", "history_cosine"):
        np.testing.assert_array_equal(got.features[..., FEATURES.index(name)][got.positions >= 0], 0.0)


def test_rerank_command_measures_both_stages_with_the_evaluations_ranking(tmp_path, capsys):
    from recsys.cli import main
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    cfg = tmp_path / "cfg.yaml"
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv", n_users=300), epochs=5)
    raw["tracking"] = {"experiment": "rerank-test"}
    cfg.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(cfg)]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["evaluate", "--run", run_id, "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)

    out = tmp_path / "rr"
    assert main(["rerank", "--run", run_id, "--candidates", "30", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the first stage's top-k is exactly what `recsys evaluate` ranks: same users, exclusions and metrics
    for key, value in evaluated.items():
        assert report["test"]["retrieval"][key] == pytest.approx(value, abs=1e-12), key
    assert set(report["test"]["reranked"]) == set(evaluated)
    assert 0 < report["candidate_recall"] <= 1 and report["fit_users"] > report["holdout_users"] > 0
    # only users with a relevant candidate fit or stop the ranker (the others have nothing to order)
    from recsys.pipeline import load_run
    from recsys.rerank import split_candidates

    loaded = load_run(run_id)
    labels = split_candidates(loaded.model, loaded.dataset, "valid", 30).labels
    useful = int(labels.any(axis=1).sum())
    assert report["fit_users"] + report["holdout_users"] == useful < labels.shape[0]
    cross = report["cross_check"]  # every useful validation user, scored by rankers fitted without it
    assert cross["folds"] == 5 and cross["users"] == report["fit_users"] + report["holdout_users"]
    assert cross["difference"] == pytest.approx(cross["reranked_ndcg@10"] - cross["retrieval_ndcg@10"])
    assert cross["split_users"] >= cross["users"]  # every validation user with truth: the test's scale
    assert Reranker.load(out).info["run_id"] == run_id
    import mlflow

    child = mlflow.get_run(report["mlflow_run_id"])  # tracked beside the run it re-ranks
    assert child.data.tags["mlflow.parentRunId"] == run_id
    assert child.info.experiment_id == mlflow.get_run(run_id).info.experiment_id
    assert child.data.metrics["test_final/reranked/ndcg_at_10"] == report["test"]["reranked"]["ndcg@10"]
    assert child.data.params["n_candidates"] == "30" and child.data.params["cross_check_folds"] == "5"
    assert child.data.metrics["cross_check/difference"] == cross["difference"]
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id, "reranker")}
    assert logged == {"reranker/reranker.json", "reranker/reranker.txt"}
    # the run id the command prints last is the child's: given to a command that needs a model, it says whose
    for command in (
        ["evaluate", "--run", child.info.run_id],
        ["recommend", "--run", child.info.run_id, "--user", "u3"],
        ["compare", "--run", run_id, "--run", child.info.run_id],
    ):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"is a re-ranker's run (`recsys rerank`), a child of run {run_id}" in err
        # evaluate and compare have no --reranker: the hint names the commands that have
        assert f"give --run {run_id} (`recommend` and `serve` apply the re-ranker with --reranker DIR" in err

    assert (
        main(["recommend", "--run", run_id, "--user", "u3", "--k", "5", "--reranker", str(out), "--json"])
        == 0
    )
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 5
    from features import PreparedDataset
    from recsys.pipeline import load_run

    ds: PreparedDataset = load_run(run_id).dataset
    user = ds.user_vocab.filter(ds.user_vocab["user_id"] == "u3")["user_idx"].item()
    known = set(
        ds.item_vocab.filter(ds.item_vocab["item_idx"].is_in(ds.known_matrix()[user].indices))["item_id"]
    )
    assert not {r["item_id"] for r in recs} & known
    # the batch job re-ranks every user's list the same way
    batch = tmp_path / "all.parquet"
    assert (
        main(["recommend", "--run", run_id, "--all-users", "--out", str(batch), "--reranker", str(out)]) == 0
    )
    import polars as pl

    mine = pl.read_parquet(batch).filter(pl.col("user") == "u3").head(5)
    assert mine["item"].to_list() == [r["item_id"] for r in recs]
    assert mine["score"].to_numpy() == pytest.approx([r["score"] for r in recs], rel=1e-6)
    assert main(["recommend", "--run", run_id, "--sequence", "i1", "--reranker", str(out)]) == 2
    assert "--reranker re-ranks a known user's list" in capsys.readouterr().err
    # the command printed at the end runs as printed, once USER is a user (it had `--run RUN` and no user)
    again = tmp_path / "rr2"
    assert main(["rerank", "--run", run_id, "--candidates", "30", "--folds", "0", "--out", str(again)]) == 0
    hint = re.search(r"serve it with `(recsys [^`]+)`", capsys.readouterr().out)
    assert hint is not None
    import shlex

    assert main(shlex.split(hint.group(1).replace("USER", "u3"))[1:] + ["--k", "5", "--json"]) == 0
    assert [r["item_id"] for r in json.loads(capsys.readouterr().out)] == [r["item_id"] for r in recs]


def test_rerank_refuses_runs_it_cannot_fit_with_one_line(tmp_path, capsys):
    from recsys.cli import main
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    csv = write_synthetic_interactions(tmp_path / "x.csv")
    run_ids = []
    for overrides, expected in (
        (["data.split.valid_ratio=0.0"], "has no validation split, which the re-ranker is fitted on"),
        (["model={name: rp3beta}"], "does not score by inner products of embeddings"),
    ):
        cfg = tmp_path / "cfg.yaml"
        raw = make_cfg(csv, epochs=2)
        raw["tracking"] = {"experiment": "rerank-refusals"}
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["train", "-c", str(cfg), *overrides]) == 0
        run_ids.append(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
        assert (
            main(["rerank", "--run", run_ids[-1], "--candidates", "30", "--out", str(tmp_path / "rr")]) == 2
        )
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "rr").exists()
    # RP3beta has no index: --reranker must not fall back to its unre-ranked scorer without a word
    # (refused before the model is fitted, naming the option)
    assert main(["recommend", "--run", run_ids[1], "--user", "u3", "--reranker", str(tmp_path / "rr")]) == 2
    assert "error: --reranker is for an index; run" in capsys.readouterr().err
    batch = ["--all-users", "--out", str(tmp_path / "all.csv"), "--reranker", str(tmp_path / "rr")]
    assert main(["recommend", "--run", run_ids[1], *batch]) == 2  # the batch job neither
    assert "error: --reranker is for an index; run" in capsys.readouterr().err
    assert main(["rerank", "--run", run_ids[0], "--candidates", "5"]) == 2  # fewer than the run's max k (10)
    assert "n_candidates must be an integer >= max(ks) = 10, got 5" in capsys.readouterr().err
    # more candidates than items: refused before retrieval (the gathers of 100,000 padded slots per user ran
    # out of memory, and the kernel killed the process without a word)
    assert main(["train", "-c", str(cfg)]) == 0
    fittable = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["rerank", "--run", fittable, "--candidates", "100000", "--folds", "0"]) == 2
    assert re.search(
        r"n_candidates must be at most the catalogue's \d+ items, got 100,000", capsys.readouterr().err
    )


def test_no_test_interaction_reaches_the_fit(tmp_path, capsys):
    """Scrambling the test split changes the test numbers, never the fitted ranker or its selection."""
    from types import SimpleNamespace

    from recsys.cli import main
    from recsys.pipeline import load_run
    from recsys.rerank import fit_reranker
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(make_cfg(write_synthetic_interactions(tmp_path / "x.csv", n_users=300))))
    assert main(["train", "-c", str(cfg), "tracking.enabled=true"]) == 0
    run = load_run(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    test = sp.csr_matrix(run.dataset.matrix("test"))
    scrambled = sp.csr_matrix(
        (test.data, np.random.default_rng(0).permutation(test.shape[1])[test.indices], test.indptr),
        test.shape,
    )

    class ScrambledTest:
        def __getattr__(self, name):
            return getattr(run.dataset, name)

        def matrix(self, split):
            return scrambled if split == "test" else run.dataset.matrix(split)

    first = fit_reranker(run, n_candidates=30, ks=(10,))
    again = fit_reranker(SimpleNamespace(run_id=run.run_id, model=run.model, dataset=ScrambledTest()),
                         n_candidates=30, ks=(10,))  # fmt: skip
    assert first.reranker.booster.model_to_string() == again.reranker.booster.model_to_string()
    assert first.holdout == again.holdout and first.reranker.info["trials"] == again.reranker.info["trials"]
    assert first.test["retrieval"]["ndcg@10"] != again.test["retrieval"]["ndcg@10"]
    assert first.cross_check == again.cross_check and first.cross_check is not None
    # the cross-check estimates the procedure; it leaves the ranker that is kept and served as it was
    unchecked = fit_reranker(run, n_candidates=30, ks=(10,), folds=0)
    assert unchecked.cross_check is None and "cross_check" not in unchecked.reranker.info
    assert unchecked.reranker.booster.model_to_string() == first.reranker.booster.model_to_string()
    assert unchecked.test == first.test and unchecked.holdout == first.holdout


def test_the_fit_counts_pairs_rated_below_the_threshold_as_known_like_the_index():
    from recsys.rerank import known_before

    class Dataset:  # 3 users x 4 items; user 1 rated item 3 below the threshold
        below_threshold = __import__("polars").DataFrame({"user_idx": [1], "item_idx": [3]})

        def matrix(self, split):
            pairs = {"train": [(0, 0), (1, 1)], "valid": [(1, 2)], "test": [(2, 0)]}[split]
            r, c = zip(*pairs, strict=True)
            return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(3, 4))

    assert known_before(Dataset(), "valid").toarray().tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
    assert known_before(Dataset(), "test").toarray().tolist() == [[1, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]

    class Periods(Dataset):  # a time-ordered split: user 0 rated item 1 low in the validation period, item 2
        below_threshold = __import__("polars").DataFrame(  # in the test period; user 1 item 3 in training
            {"user_idx": [0, 0, 1], "item_idx": [1, 2, 3], "split": ["valid", "test", "train"]}
        )

    assert known_before(Periods(), "valid").toarray().tolist() == [[1, 0, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]
    assert known_before(Periods(), "test").toarray().tolist() == [[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]]

    class Unrecorded(Dataset):  # a folder prepared before the periods were recorded, of a time-ordered split
        manifest = {"split_protocol": "temporal"}
        root = "old-folder"

    with pytest.warns(UserWarning, match="old-folder predates recording when each pair"):
        assert known_before(Unrecorded(), "valid").toarray()[1, 3] == 1  # counted, as before


def test_bad_folders_and_arguments_are_named(tmp_path, served):
    retriever, reranker, _ = served
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a re-ranker; refusing to replace it"):
        reranker.save(precious)
    assert (precious / "notes.txt").read_text() == "keep"

    folder = reranker.save(tmp_path / "rr")
    manifest = json.loads((folder / "reranker.json").read_text())
    for key, value, message in (
        ("n_candidates", None, "n_candidates must be a positive integer, got None"),
        ("n_candidates", -5, "n_candidates must be a positive integer, got -5"),
        ("info", [1, 2], "info must be an object, got list"),
    ):
        (folder / "reranker.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(ValueError, match=rf"reranker\.json: {message}"):
            Reranker.load(folder)

    scores, positions = np.zeros((2, 10), np.float32), np.tile(np.arange(10), (2, 1))
    features = np.zeros((2, 4, len(FEATURES)), np.float32)
    with pytest.raises(ValueError, match=r"must describe the same \[B, N\] candidate lists"):
        reranker.rerank(scores, positions, features, k=5)  # returned 4 of 10 candidates, silently

    info = {"run_id": "run-a", "normalized": False}
    for extra, message in (
        (
            {"dataset_manifest_hash": "f" * 64},
            "fitted on dataset ffffffffffff, .* serves dataset aaaaaaaaaaaa",
        ),
        ({"dim": 16}, "fitted on None items of dimension 16, the index .* has 60 of dimension 8"),
        ({"n_items": 61}, "fitted on 61 items"),
    ):
        other = Reranker(reranker.booster, reranker.n_candidates, {**info, **extra})
        with pytest.raises(ValueError, match=message):
            RerankingRetriever(retriever, other)


def test_a_reranker_loads_while_another_process_saves_it_again(tmp_path, monkeypatch):
    """The writer deletes the replaced folder's files right after its swap: a reader that had read the old
    manifest found no model file and failed on a good folder."""
    from serving import _files

    rng = np.random.default_rng(3)
    f, y, _ = lists_where_popularity_decides(rng, 60)
    first = Reranker.fit(f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=3, info={"v": 1})
    second = Reranker.fit(f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=4, info={"v": 2})
    folder = first.save(tmp_path / "rr")
    real, saved = _files.FolderSnapshot.read, []

    def read_then_save(self, name):
        out = real(self, name)
        if name == "reranker.json" and not saved:
            saved.append(True)
            second.save(folder)  # the re-save lands between the reader's two files
        return out

    monkeypatch.setattr(_files.FolderSnapshot, "read", read_then_save)
    loaded = Reranker.load(folder)
    assert saved and loaded.info["v"] == 2  # the new folder, both files from it


def synthetic_candidates(n_users: int = 240, n: int = 20, n_items: int = 60, seed: int = 0):
    """Candidate lists of ``recsys.rerank.SplitCandidates`` form whose ``user_log_history`` feature holds the
    user's row, so a spy can tell which users a ranker learned on and which it ranked."""
    from recsys.rerank import SplitCandidates

    rng = np.random.default_rng(seed)
    positions = np.stack([rng.permutation(n_items)[:n] for _ in range(n_users)]).astype(np.int64)
    scores = -np.sort(-rng.random((n_users, n)), axis=1).astype(np.float32)
    features = rng.normal(size=(n_users, n, len(FEATURES))).astype(np.float32)
    features[:, :, FEATURES.index("user_log_history")] = np.arange(n_users)[:, None]
    labels = (rng.random((n_users, n)) < 0.1).astype(np.float32)
    labels[np.arange(0, n_users, 7), 3] = 1.0  # most rows have something relevant, some none
    truth = sp.csr_matrix((labels > 0).astype(np.float32))  # columns: list slots...
    truth = sp.csr_matrix(  # ...mapped to the slots' items
        (np.ones(truth.nnz, np.float32), positions[np.repeat(np.arange(n_users), np.diff(truth.indptr)),
                                                    truth.indices], truth.indptr), (n_users, n_items),
    )  # fmt: skip
    return SplitCandidates(np.arange(n_users), scores, positions, features, labels, truth, 8)


def test_the_cross_check_scores_each_user_by_a_ranker_that_never_saw_it(monkeypatch):
    """The held-out users that stop and choose a ranker flatter it; the cross-check's rankers neither learn,
    stop nor choose on the users they score, and every useful user is scored exactly once."""
    from recsys import rerank

    column = FEATURES.index("user_log_history")
    seen: dict[int, set[int]] = {}
    alive: list[Reranker] = []
    scored: list[tuple[int, np.ndarray]] = []
    fit, rerank_rows = Reranker.fit.__func__, Reranker.rerank

    def spy_fit(cls, features, labels, *, valid=None, **kwargs):
        ranker = fit(cls, features, labels, valid=valid, **kwargs)
        users = set(features[:, 0, column].astype(int)) | set(valid[0][:, 0, column].astype(int))
        seen[id(ranker)] = users
        alive.append(ranker)  # ids stay unique only while their objects live
        return ranker

    def spy_rerank(self, scores, positions, features, k):
        out = rerank_rows(self, scores, positions, features, k)
        scored.append((id(self), features[:, 0, column].astype(int), out[1]))
        return out

    monkeypatch.setattr(Reranker, "fit", classmethod(spy_fit))
    monkeypatch.setattr(Reranker, "rerank", spy_rerank)
    valid = synthetic_candidates()
    useful = np.flatnonzero(valid.labels.any(axis=1))
    assert 0 < useful.size < valid.users.size
    result = rerank._cross_check(
        valid, useful, 4, holdout_share=0.2, k=10, n_items=60, params=None, seed=3, num_threads=1
    )
    # the trials' own held-out ranking (choosing a shape) ranks users the trial stopped on; the cross-check's
    # scoring is the rerank by a kept ranker of users outside everything it saw
    outside = [(users, lists) for ranker, users, lists in scored if not set(users) & seen[ranker]]
    assert len(outside) == 4
    assert sorted(np.concatenate([users for users, _ in outside])) == sorted(useful)
    assert result["users"] == useful.size and result["folds"] == 4 and result["split_users"] == 240
    assert result["difference"] == pytest.approx(result["reranked_ndcg@10"] - result["retrieval_ndcg@10"])
    assert result["difference_se"] > 0
    assert result["difference_per_split_user"] == pytest.approx(result["difference"] * useful.size / 240)
    # both sides are scored on each user's own lists: the retrieval order, and what the fold's ranker returned
    from eval.metrics import ranking_metrics

    users = np.concatenate([users for users, _ in outside])
    lists = np.concatenate([lists for _, lists in outside])
    for name, top in (("retrieval", valid.positions[useful, :10]), ("reranked", lists)):
        rows = useful if name == "retrieval" else users
        expected = ranking_metrics(top, valid.truth[rows], (10,), n_items=60)["ndcg@10"]
        assert result[f"{name}_ndcg@10"] == pytest.approx(expected), name


def test_the_rerank_command_doubts_a_gain_the_cross_check_does_not_show(capsys):
    from recsys.cli import _rerank_doubt, main

    flattering = {"retrieval": 0.22, "reranked": 0.23}  # the held-out users that chose it say "better"
    worse = {"folds": 5, "users": 899, "difference": -0.004, "difference_se": 0.003}
    assert "does not beat the retrieval order on validation users it never saw" in _rerank_doubt(
        flattering, worse, 5
    )
    unclear = {**worse, "difference": 0.004}
    assert "within two standard errors of zero" in _rerank_doubt(flattering, unclear, 5)
    assert _rerank_doubt(flattering, {**worse, "difference": 0.007}, 5) is None
    assert "skipped (--folds 0)" in _rerank_doubt(flattering, None, 0)
    assert "even on the held-out users that chose it" in _rerank_doubt(
        flattering | {"reranked": 0.2}, None, 0
    )
    # a tie is no gain, on the cross-check (even one without spread: a zero standard error) or without it
    no_spread = {**worse, "difference": 0.0, "difference_se": 0.0}
    assert "does not beat the retrieval order on validation users" in _rerank_doubt(flattering, no_spread, 5)
    tie = {"retrieval": 0.22, "reranked": 0.22}
    assert "even on the held-out users that chose it" in _rerank_doubt(tie, None, 0)
    with pytest.raises(SystemExit):
        main(["rerank", "--run", "r", "--folds", "1"])
    assert "expected 0 (no cross-check) or at least 2 folds, got '1'" in capsys.readouterr().err


def test_history_cosine_is_to_the_mean_of_the_history():
    """One user knows items 0 = (1, 0) and 1 = (0, 1); candidate 2 = (2, 0): the mean of its cosines to the
    known items is (1 + 0) / 2 = 0.5 (summed, 1.0: the other tests' histories held one item)."""
    from serving.rerank import FEATURES, ItemStatistics, candidate_features

    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]], np.float32)
    known = ExcludedItems(np.array([0, 2]), np.array([0, 1]), checked=True)
    items = ItemStatistics.from_arrays(vectors, known)
    f = candidate_features(np.array([[1.0]], np.float32), np.array([[2]]), known, items)
    assert f[0, 0, FEATURES.index("history_cosine")] == pytest.approx(0.5)


def test_fit_keeps_the_best_held_out_shape_and_reports_candidate_recall_by_hand(monkeypatch):
    """With the first stage replaced by fixed candidate lists: the kept ranker is the trial with the best
    held-out NDCG (the first of equals), and the candidate recall is the share of the test split's relevant
    items that are among the candidates (here every other user has one relevant item outside its list)."""
    from types import SimpleNamespace

    from recsys import rerank
    from recsys.models import build_model

    valid = synthetic_candidates(seed=0)
    test = synthetic_candidates(seed=1)
    truth = test.truth.tolil()
    outside = 0
    for row in range(0, truth.shape[0], 2):  # every other user: one more relevant item, never a candidate
        extra = np.setdiff1d(np.arange(60), test.positions[row])[0]
        truth[row, extra] = 1.0
        outside += 1
    test = rerank.SplitCandidates(
        test.users, test.scores, test.positions, test.features, test.labels, sp.csr_matrix(truth), 8
    )
    monkeypatch.setattr(
        rerank, "split_candidates", lambda model, ds, split, n: {"valid": valid, "test": test}[split]
    )
    run = SimpleNamespace(
        run_id="r",
        model=build_model("mf_bpr", 240, 60),
        dataset=SimpleNamespace(valid=SimpleNamespace(height=1), manifest_hash="h", n_items=60),
    )
    result = rerank.fit_reranker(run, n_candidates=20, ks=(10,), folds=0)
    trials = result.reranker.info["trials"]
    scores = [t["holdout_ndcg@10"] for t in trials]
    best = scores.index(max(scores))
    assert result.holdout["reranked"] == max(scores)
    assert result.reranker.info["params"]["num_leaves"] == trials[best]["num_leaves"]
    assert result.candidate_recall == pytest.approx(test.labels.sum() / (test.labels.sum() + outside))
    assert result.candidate_recall < 1.0


def test_test_candidates_features_count_the_validation_interactions_as_history():
    """On the test split the validation interactions are part of every user's history (module docstring,
    step 3): users 0 and 1 know two items (one training, one validation), user 2 one, so the mean history is
    5/3 and the ``user_log_history`` feature log((n + 1) / (5/3 + 1)); on the validation split every user
    knows one item and the feature is log(2 / 2) = 0."""
    from recsys.models import build_model
    from recsys.rerank import split_candidates

    class Dataset:
        n_items = 6
        pairs = {
            "train": [(0, 0), (1, 1), (2, 2)],
            "valid": [(0, 3), (1, 4)],
            "test": [(0, 5), (1, 5), (2, 5)],
        }

        def matrix(self, split):
            r, c = zip(*self.pairs[split], strict=True)
            return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(3, 6))

    model = build_model({"name": "mf_bpr", "dim": 4}, 3, 6)
    column = FEATURES.index("user_log_history")
    test = split_candidates(model, Dataset(), "test", 3)
    np.testing.assert_allclose(
        test.features[:, 0, column], np.log(np.array([3, 3, 2]) / (5 / 3 + 1)), rtol=1e-6
    )
    assert not np.isin(test.positions, [0, 3]).any(axis=1)[0]  # user 0's known items are not candidates
    valid = split_candidates(model, Dataset(), "valid", 3)
    np.testing.assert_allclose(valid.features[:, 0, column], 0.0, atol=1e-7)


def test_the_rerank_command_fits_with_its_options_and_warns_of_few_useful_users(
    monkeypatch, tmp_path, capsys
):
    # the run and the fit are stand-ins (no training): what is checked is what the command hands the fit,
    # and the warning below 1000 useful validation users
    import functools
    from types import SimpleNamespace

    import recsys.pipeline
    import recsys.rerank
    from recsys.cli import main

    run = SimpleNamespace(config=SimpleNamespace(eval=SimpleNamespace(ks=[5, 10])))
    monkeypatch.setattr(recsys.pipeline, "load_run", lambda run_id, uri=None, require=None: run)
    monkeypatch.setattr(recsys.rerank, "track_reranker", lambda *a, **kw: "child")
    fits = []

    def fit_reranker(run, *, n_candidates, ks, seed, folds, useful):
        fits.append((n_candidates, ks, seed, folds))
        return SimpleNamespace(
            reranker=SimpleNamespace(save=lambda path: path),
            holdout={"retrieval": 0.2, "reranked": 0.3},
            cross_check=None,
            test={"retrieval": {"ndcg@20": 0.1}, "reranked": {"ndcg@20": 0.2}},
            candidate_recall=0.5,
            fit_users=useful - 100,
            holdout_users=100,
        )

    options = ["--candidates", "40", "--k", "20", "--seed", "3", "--folds", "0"]
    for useful, warned in ((999, True), (1000, False)):
        monkeypatch.setattr(recsys.rerank, "fit_reranker", functools.partial(fit_reranker, useful=useful))
        assert main(["rerank", "--run", "r", "--out", str(tmp_path / "rr"), *options]) == 0
        err = capsys.readouterr().err
        assert fits.pop() == (40, (20,), 3, 0)  # --k, not the run's eval.ks
        assert ("only 999 validation users have a relevant item" in err) is warned


def test_rerank_refuses_an_out_it_may_not_replace_before_fitting(tmp_path, monkeypatch, capsys):
    """`rerank --out FOLDER` with a folder that is not a re-ranker (or a file) was refused by the save, after
    the run was loaded and the whole fit and cross-check had run (minutes on Gowalla), all for nothing."""
    import recsys.pipeline
    import recsys.rerank
    from recsys.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the run is neither loaded nor fitted for an --out that cannot be written")

    monkeypatch.setattr(recsys.pipeline, "load_run", never)
    monkeypatch.setattr(recsys.rerank, "fit_reranker", never)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    a_file = tmp_path / "a.csv"
    a_file.write_text("keep me too")
    for out, why in ((theirs, "is a non-empty folder without a reranker.json"), (a_file, "is not a folder")):
        assert main(["rerank", "--run", "r", "--out", str(out)]) == 2
        assert why in capsys.readouterr().err
    assert (theirs / "notes.txt").read_text() == "keep me"
    assert a_file.read_text() == "keep me too"
