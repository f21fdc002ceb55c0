"""Serving runs without an index (EASE, RP3beta): ScorerRecommender in Python, its HTTP app, `recsys serve`.

Every answer is checked against scores computed here from the fitted matrix: ``X_u @ M`` with the user's known
items (or the session's items) left out, score descending, equal scores by item position."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from recsys.cli import main
from tests.test_trainer import make_cfg, write_synthetic_interactions


def _train(tmp_path, capsys, model: dict) -> str:
    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    raw["model"], raw["tracking"] = model, {"experiment": "item-item"}
    config = tmp_path / f"{model['name']}.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(config)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1].split()[-1]


def _expected(item_sets: np.ndarray, m: np.ndarray, exclude: np.ndarray | None, k: int) -> list[list[int]]:
    """Top-k positions per row of ``item_sets @ m`` (binary [B, I] sets), ``exclude`` [B, I] bool left out."""
    scores = (item_sets > 0).astype(np.float64) @ m
    if exclude is not None:
        scores[exclude] = -np.inf
    out = []
    for row in scores:
        order = np.lexsort((np.arange(row.size), -row))
        out.append([int(j) for j in order if np.isfinite(row[j])][:k])
    return out


@pytest.fixture
def ease_run(tmp_path, capsys):
    from recsys.pipeline import load_run

    run_id = _train(tmp_path, capsys, {"name": "ease", "l2": 2.0})
    return load_run(run_id)


def test_recommend_sessions_and_neighbours_are_the_models_scores(ease_run, monkeypatch):
    import recsys.scorer_recommender as module
    from recsys.scorer_recommender import ScorerRecommender
    from serving.errors import UnknownItemError, UnknownUserError

    run = ease_run
    ds, model = run.dataset, run.model
    rec = ScorerRecommender(run)
    assert rec.run_id == run.run_id and rec.model_name == "ease"
    assert rec.scores_item_sets and rec.has_similar_items
    m = np.asarray(model.item_item, dtype=np.float64)
    known = ds.known_matrix().toarray() > 0
    history = sum(ds.matrix(s) for s in ("train", "valid", "test")).toarray() > 0
    users = list(rec.user_ids)

    # known users: every known item left out, or ranked too
    want = _expected(history, m, known, 5)
    got = rec.recommend(users, k=5)
    assert [[rec.item_ids.index(r.item_id) for r in row] for row in got] == want
    scores = (history.astype(np.float64) @ m)[7]
    assert [r.score for r in got[7]] == pytest.approx([scores[j] for j in want[7]], abs=1e-5)
    assert [r.item_id for r in rec.recommend("u7", k=5)[0]] == [
        rec.item_ids[j] for j in want[ds_row(ds, "u7")]
    ]
    everything = _expected(history, m, None, 5)
    got = rec.recommend(users, k=5, exclude_seen=False)
    assert [[rec.item_ids.index(r.item_id) for r in row] for row in got] == everything
    assert any(known[u, j] for u, row in enumerate(everything) for j in row)  # the option changed something

    # many users in blocks of a few rows give the same lists as one block
    whole = rec.recommend(users, k=5)  # one block (the patch below applies to every instance)
    monkeypatch.setattr(module, "_SCORES_PER_BLOCK", 3 * len(rec.item_ids))
    assert rec.recommend(users, k=5) == whole
    blocked = rec.recommend_for_sequences([[rec.item_ids[j]] for j in range(10)], k=4)
    monkeypatch.undo()
    assert blocked == rec.recommend_for_sequences([[rec.item_ids[j]] for j in range(10)], k=4)

    # a session is an item set: a known user's items, in any order and repeated, give that user's list
    # (this data has no rating threshold, so the known items are the history)
    u = ds_row(ds, "u3")
    items = [rec.item_ids[j] for j in np.flatnonzero(history[u])[::-1]]
    session = rec.recommend_for_sequences([items + items[:2]], k=5)[0]
    assert session == rec.recommend(["u3"], k=5)[0]
    sets = np.zeros((2, m.shape[0]), dtype=bool)
    sets[0, [rec.item_ids.index(x) for x in ("i1", "i40")]] = True
    kept = rec.recommend_for_sequences([["i1", "i40"], []], k=6, exclude_history=False)
    assert [[rec.item_ids.index(r.item_id) for r in row] for row in kept] == _expected(sets, m, None, 6)
    left_out = rec.recommend_for_sequences([["i1", "i40"]], k=6)
    assert [[rec.item_ids.index(r.item_id) for r in row] for row in left_out] == _expected(
        sets[:1], m, sets[:1], 6
    )
    assert [(r.item_id, r.score) for r in kept[1]] == [
        (rec.item_ids[j], 0.0) for j in range(6)
    ]  # all tie at 0
    assert rec.recommend_for_sequences([], k=3) == []

    # neighbours: the rows of M, the item itself left out
    weights, found = model.similar_items([rec.item_ids.index("i5")], 4)
    assert [(r.item_id, r.score) for r in rec.similar_items("i5", k=4)[0]] == [
        (rec.item_ids[j], float(w)) for w, j in zip(weights[0], found[0], strict=True)
    ]

    # refusals name what is wrong
    with pytest.raises(
        UnknownUserError, match=r"unknown user ids: 'nobody', 'x' \(the index knows 120 users\)"
    ):
        rec.recommend(["u1", "nobody", "x", "nobody"], k=3)
    with pytest.raises(UnknownItemError, match="unknown item id: 'nope'"):
        rec.recommend_for_sequences([["i1"], ["nope"]], k=3)
    with pytest.raises(UnknownItemError, match="unknown item id: 'nope'"):
        rec.similar_items(["nope"], k=3)
    with pytest.raises(TypeError, match="a list of item ids, not the string 'i1'"):
        rec.recommend_for_sequences(["i1"], k=3)
    for call in (lambda: rec.recommend("u1", k=0), lambda: rec.similar_items("i1", k=-1)):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            call()
    with pytest.raises(UnknownUserError, match="unknown user id: '3'"):  # an integer id is read as its text
        rec.recommend(3, k=2)
    with pytest.raises(TypeError, match="user ids are text"):
        rec.recommend([1.5], k=2)


def ds_row(ds, user: str) -> int:
    return int(ds.user_vocab.filter(ds.user_vocab["user_id"] == user)["user_idx"][0])


def test_the_http_app_serves_the_model(ease_run):
    from recsys.scorer_recommender import ScorerRecommender
    from serving.http import create_model_app

    rec = ScorerRecommender(ease_run)
    client = TestClient(create_model_app(rec), raise_server_exceptions=False)
    health = client.get("/health").json()
    assert health == {
        "status": "ok",
        "run_id": ease_run.run_id,
        "model": "ease",
        "n_items": len(rec.item_ids),
        "n_users": 120,
        "sequences": True,
        "similar": True,
    }

    def ids(rows):
        return [r.item_id for r in rows]

    answer = client.get("/recommend", params={"user": "u3", "k": 5})
    assert answer.status_code == 200
    assert [r["item_id"] for r in answer.json()] == ids(rec.recommend("u3", k=5)[0])
    body = client.post("/recommend", json={"users": ["u3", "u9"], "k": 4, "exclude_seen": False}).json()
    assert [[r["item_id"] for r in row] for row in body] == [
        ids(row) for row in rec.recommend(["u3", "u9"], k=4, exclude_seen=False)
    ]
    assert [r["item_id"] for r in client.get("/similar", params={"item": "i5", "k": 3}).json()] == ids(
        rec.similar_items("i5", k=3)[0]
    )
    assert [
        [r["item_id"] for r in row] for row in client.post("/similar", json={"items": ["i5"]}).json()
    ] == [ids(rec.similar_items("i5")[0])]
    session = client.get("/recommend_for_sequence", params={"items": ["i1", "i40"], "k": 5}).json()
    assert [r["item_id"] for r in session] == ids(rec.recommend_for_sequences([["i1", "i40"]], k=5)[0])
    posted = client.post("/recommend_for_sequence", json={"sequences": [["i1"], []], "k": 2}).json()
    assert [[r["item_id"] for r in row] for row in posted] == [
        ids(row) for row in rec.recommend_for_sequences([["i1"], []], k=2)
    ]

    # what this app cannot do is a 400 saying why; bad requests are the index app's 404 / 422
    for response, status, text in [
        (client.get("/recommend", params={"user": "u3", "rerank": True}), 400, "no re-ranker"),
        (
            client.post("/recommend_for_vector", json={"vectors": [[0.5]], "k": 2}),
            400,
            "/recommend_for_sequence",
        ),
        (
            client.get("/recommend", params={"user": "nobody"}),
            404,
            "POST their items to /recommend_for_sequence",
        ),
        (client.get("/similar", params={"item": "nope"}), 404, "unknown item id: 'nope'"),
        (client.get("/recommend_for_sequence", params={"items": ["i1", "nope"]}), 404, "'nope'"),
        (client.get("/similar", params={"item": "i5", "metric": "cosine"}), 422, "unknown query parameter"),
        (client.post("/similar", json={"items": ["i5"], "metric": "cosine"}), 422, "metric"),
        (client.get("/recommend", params={"user": "u3", "k": 0}), 422, "k"),
        (client.post("/recommend", json={"users": ["u1"] * 1001}), 422, "users"),
    ]:
        assert response.status_code == status, (response.status_code, response.text)
        assert text in response.text


def test_serve_runs_an_item_item_run_from_its_model(tmp_path, capsys, monkeypatch):
    import uvicorn

    run_id = _train(tmp_path, capsys, {"name": "rp3beta"})
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append((app, kw)))
    assert main(["serve", "--run", run_id, "--port", "0"]) == 0
    assert f"serving run {run_id} (rp3beta, scored by the model: it has no index)" in capsys.readouterr().err
    ((app, kw),) = served
    assert kw["port"] == 0
    client = TestClient(app)
    assert client.get("/health").json()["model"] == "rp3beta"
    assert main(["recommend", "--run", run_id, "--user", "u3", "--k", "5", "--json"]) == 0
    import json

    cli = [r["item_id"] for r in json.loads(capsys.readouterr().out)]
    assert [r["item_id"] for r in client.get("/recommend", params={"user": "u3", "k": 5}).json()] == cli
    assert not (tmp_path / "recsys_home" / "indexes").exists()  # nothing was indexed
    for option in (["--reranker", str(tmp_path)], ["--nprobe", "2"], ["--index", str(tmp_path / "idx")]):
        assert main(["serve", "--run", run_id, "--port", "0", *option]) == 2
        assert (
            f"error: {option[0]} is for an index; run {run_id} (rp3beta) has none" in capsys.readouterr().err
        )
    assert len(served) == 1


def test_options_an_item_item_run_cannot_use_are_refused_before_it_is_fitted(tmp_path, capsys, monkeypatch):
    """`recsys serve --run` of EASE refused before fitting (7 minutes and 6.7 GB on Gowalla); serving the
    model must not bring that back for the options it refuses (--reranker, --nprobe, --index), nor may
    `recommend` fit it only to refuse --reranker or --metric."""
    import uvicorn

    import recsys.pipeline

    run_id = _train(tmp_path, capsys, {"name": "rp3beta"})
    prepared = []
    monkeypatch.setattr(recsys.pipeline, "prepare_model", lambda *a: prepared.append(a))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("served"))
    for option in (["--reranker", str(tmp_path)], ["--nprobe", "2"], ["--index", str(tmp_path / "idx")]):
        assert main(["serve", "--run", run_id, "--port", "0", *option]) == 2
        assert f"{option[0]} is for an index; run {run_id} (rp3beta) has none" in capsys.readouterr().err
    for argv, text in [
        (["--user", "u3", "--reranker", str(tmp_path)], "error: --reranker is for an index"),
        (["--similar", "i5", "--metric", "cosine"], "error: --metric compares item vectors"),
        (["--all-users", "--out", str(tmp_path / "r.csv"), "--reranker", str(tmp_path)], "is for an index"),
        # --index DIR was ignored: the lists came from the model, and nothing went to DIR
        (["--user", "u3", "--index", str(tmp_path / "idx")], f"error: --index is for an index; run {run_id}"),
        (
            ["--all-users", "--out", str(tmp_path / "r.csv"), "--index", str(tmp_path / "idx")],
            "--index is for",
        ),
    ]:
        assert main(["recommend", "--run", run_id, *argv]) == 2, argv
        assert text in capsys.readouterr().err
    assert prepared == []
    assert not (tmp_path / "r.csv").exists()


def test_a_batch_of_sessions_is_checked_whole_as_the_retrievers_is(ease_run):
    """Retriever.recommend_for_sequences names every unknown id of the batch at once, and refuses a string
    sequence wherever it is; the model's answer stopped at the first sequence holding an unknown id."""
    from recsys.scorer_recommender import ScorerRecommender
    from serving.errors import UnknownItemError

    rec = ScorerRecommender(ease_run)
    with pytest.raises(UnknownItemError, match=r"unknown item ids: 'nope1', 'nope2' \(the index knows 80"):
        rec.recommend_for_sequences([["nope1"], ["i1"], ["nope2", "nope1"]], k=3)
    with pytest.raises(TypeError, match="a list of item ids, not the string 'i1'"):
        rec.recommend_for_sequences([["nope1"], "i1"], k=3)


def test_recommend_positions_is_called_as_the_retrievers(ease_run):
    """Retriever.recommend_positions(user_ids, k=10, exclude_seen=True): k has a default and exclude_seen is
    positional; a caller swapping in the model's recommender got a TypeError for either."""
    from recsys.scorer_recommender import ScorerRecommender

    rec = ScorerRecommender(ease_run)
    scores, positions = rec.recommend_positions(["u3"])
    assert positions.shape == (1, 10) and scores.dtype == np.float32
    _, everything = rec.recommend_positions(["u3"], 5, False)
    assert [rec.item_ids[p] for p in everything[0]] == [
        r.item_id for r in rec.recommend("u3", k=5, exclude_seen=False)[0]
    ]


def test_a_session_of_a_users_history_leaves_out_only_its_own_items(tmp_path, capsys):
    """With data.rating_threshold a user's known items also hold the pairs rated below it: no query input,
    but left out of the user's list. A session names its items and nothing else, so the user's history as a
    session ranks those low-rated items too: the two lists are not the same (the docs said they were)."""
    from recsys.pipeline import load_run
    from recsys.scorer_recommender import ScorerRecommender
    from tests.test_cli import threshold_config

    csv = tmp_path / "r.csv"
    rows = [f"u{u},i{i},{(u * 7 + i * 3) % 5 + 1}" for u in range(30) for i in range(12) if (u + i) % 3]
    csv.write_text("user,item,rating\n" + "\n".join(rows) + "\n")
    config = threshold_config(tmp_path, csv, 3)
    raw = yaml.safe_load(config.read_text())
    raw["model"] = {"name": "ease", "l2": 2.0}
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(config)]) == 0
    run = load_run(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    rec, ds = ScorerRecommender(run), run.dataset
    history = sum(ds.matrix(s) for s in ("train", "valid", "test")).tocsr()
    low = ds.known_matrix() - (history > 0)
    differ = 0
    for u, user in enumerate(rec.user_ids):
        mine = rec.recommend(user, k=5)[0]
        rated_low = {rec.item_ids[j] for j in low[u].indices}
        items = [rec.item_ids[j] for j in history[u].indices]
        session = rec.recommend_for_sequences([items], k=5 + len(rated_low))[0]
        assert not rated_low & {r.item_id for r in mine}
        assert [r for r in session if r.item_id not in rated_low][:5] == mine  # the same scores otherwise
        differ += session[:5] != mine
    assert differ  # the low-rated items are listed in sessions: the claim of equal lists does not hold
