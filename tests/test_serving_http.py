"""The HTTP app (serving.http) against the library it wraps: every answer is the Retriever's (or the
RerankingRetriever's) for the same query, bad input is a 4xx naming what is wrong and never a 500, and
``recsys serve`` hands uvicorn the same app."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient

from serving import Retriever, build_index
from serving.http import MAX_K, create_app
from serving.rerank import Reranker, RerankingRetriever

N_ITEMS, N_USERS, DIM = 60, 30, 8
USERS = [f"u{u}" for u in range(N_USERS)]
ITEMS = [f"i{j}" for j in range(N_ITEMS)]
TITLES = [f"Film {j}" if j % 3 else None for j in range(N_ITEMS)]  # some items have no title


@pytest.fixture
def world(tmp_path):
    """An index of 60 items for 30 users with seen items and titles, its retriever, and a TestClient of the
    app over it (server errors come back as 500 responses rather than raised, so that a test sees them)."""
    rng = np.random.default_rng(5)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    seen = sp.random(N_USERS, N_ITEMS, density=0.2, format="csr", random_state=6)
    seen.data[:] = 1.0
    folder = build_index(
        items, ITEMS, tmp_path / "idx", user_emb=users, user_ids=USERS, seen=seen, item_titles=TITLES,
        run_id="run-a", metadata={"dataset_manifest_hash": "a" * 64},
    )  # fmt: skip
    client = TestClient(create_app(folder), raise_server_exceptions=False)
    return folder, Retriever.load(folder), seen, client


def as_json(recs) -> list[list[dict]]:
    return [[{"item_id": r.item_id, "score": r.score, "title": r.title} for r in row] for row in recs]


def ok(response) -> object:
    assert response.status_code == 200, response.text
    return response.json()


def detail(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["detail"]


def test_health_describes_the_index(world):
    folder, _, _, client = world
    assert ok(client.get("/health")) == {
        "status": "ok", "index": str(folder), "run_id": "run-a", "n_items": N_ITEMS, "n_users": N_USERS,
        "dim": DIM, "index_type": "IndexFlatIP", "nprobe": None, "reranker": False, "sequences": False,
    }  # fmt: skip
    schema = ok(client.get("/openapi.json"))  # the interactive docs at /docs read it
    assert set(schema["paths"]) == {
        "/health",
        "/recommend",
        "/similar",
        "/recommend_for_vector",
        "/recommend_for_sequence",
    }
    assert set(schema["paths"]["/recommend"]) == {"get", "post"}


def test_recommend_get_and_post_give_the_retrievers_lists_without_seen_items(world):
    _, retriever, seen, client = world
    users = ["u0", "u7", "u29", "u7"]  # order kept, a repeat answered twice
    expected = as_json(retriever.recommend(users, k=7))
    assert all(len(row) == 7 for row in expected)
    assert ok(client.post("/recommend", json={"users": users, "k": 7})) == expected
    assert [ok(client.get("/recommend", params={"user": u, "k": 7})) for u in users] == expected
    for user, row in zip(users, expected, strict=True):
        returned = {ITEMS.index(r["item_id"]) for r in row}
        assert not returned & set(seen[USERS.index(user)].indices)  # never a seen item
        assert [r["title"] for r in row] == [TITLES[ITEMS.index(r["item_id"])] for r in row]
        assert [r["score"] for r in row] == sorted((r["score"] for r in row), reverse=True)
    # the default k is 10; the whole unseen catalogue when k asks for more than there is
    assert len(ok(client.get("/recommend", params={"user": "u3"}))) == 10
    everything = ok(client.get("/recommend", params={"user": "u3", "k": MAX_K}))
    assert len(everything) == N_ITEMS - seen[3].nnz
    # exclude_seen=false ranks over every item: the retriever's answer, seen items included
    open_lists = ok(client.post("/recommend", json={"users": users, "k": 30, "exclude_seen": False}))
    assert open_lists == as_json(retriever.recommend(users, k=30, exclude_seen=False))
    assert {ITEMS.index(r["item_id"]) for r in open_lists[0]} & set(seen[0].indices)
    assert (
        ok(client.get("/recommend", params={"user": "u0", "k": 30, "exclude_seen": "false"})) == open_lists[0]
    )
    assert ok(client.post("/recommend", json={"users": [], "k": 3})) == []


def test_similar_items(world):
    _, retriever, _, client = world
    expected = as_json(retriever.similar_items(["i4", "i59"], k=6))
    assert ok(client.post("/similar", json={"items": ["i4", "i59"], "k": 6})) == expected
    assert ok(client.get("/similar", params={"item": "i4", "k": 6})) == expected[0]
    assert "i4" not in {r["item_id"] for r in expected[0]} and len(expected[0]) == 6
    by_product = as_json(retriever.similar_items(["i4", "i59"], k=6, metric="inner_product"))
    assert by_product != expected  # the two metrics differ here, so the parameter is seen to reach the search
    body = {"items": ["i4", "i59"], "k": 6, "metric": "inner_product"}
    assert ok(client.post("/similar", json=body)) == by_product
    assert (
        ok(client.get("/similar", params={"item": "i4", "k": 6, "metric": "inner_product"})) == by_product[0]
    )
    assert client.get("/similar", params={"item": "i4", "metric": "dot"}).status_code == 422
    assert client.post("/similar", json={"items": ["i4"], "metric": "dot"}).status_code == 422


def test_the_http_metrics_are_the_retrievers():
    from typing import get_args

    from serving.http import Metric
    from serving.retriever import SIMILARITY_METRICS

    assert get_args(Metric) == SIMILARITY_METRICS


def test_recommend_for_vector(world):
    _, retriever, _, client = world
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(2, DIM)).tolist()
    plain = as_json(retriever.recommend_for_vector(np.array(vectors), k=5))
    assert ok(client.post("/recommend_for_vector", json={"vectors": vectors, "k": 5})) == plain
    # each vector's own exclusions: the first list loses its top two items, the second list nothing
    exclude = [[plain[0][0]["item_id"], plain[0][1]["item_id"]], []]
    got = ok(
        client.post("/recommend_for_vector", json={"vectors": vectors, "k": 5, "exclude_items": exclude})
    )
    assert got == as_json(retriever.recommend_for_vector(np.array(vectors), k=5, exclude_items=exclude))
    assert got[0][:3] == plain[0][2:5] and got[1] == plain[1]
    assert ok(client.post("/recommend_for_vector", json={"vectors": [], "k": 5})) == []


def test_unknown_ids_are_404s_naming_them(world):
    _, _, _, client = world
    text = detail(client.post("/recommend", json={"users": ["u1", "nobody", "ghost"]}), 404)
    assert "unknown user ids: 'nobody', 'ghost' (the index knows 30 users)" in text
    assert "POST /recommend_for_vector" in text  # the way in for a new user, over HTTP
    assert "'nobody'" in detail(client.get("/recommend", params={"user": "nobody"}), 404)
    assert "unknown item id: 'i999'" in detail(client.get("/similar", params={"item": "i999"}), 404)
    assert "'i77'" in detail(client.post("/similar", json={"items": ["i1", "i77"]}), 404)
    body = {"vectors": [[0.0] * DIM], "exclude_items": [["i1", "gone"]]}
    assert "unknown item id: 'gone'" in detail(client.post("/recommend_for_vector", json=body), 404)


def test_k_outside_1_to_max_k_is_a_422(world):
    _, _, _, client = world
    for k in (0, -3, MAX_K + 1, 10**6):
        assert client.get("/recommend", params={"user": "u1", "k": k}).status_code == 422
        assert client.get("/similar", params={"item": "i1", "k": k}).status_code == 422
        response = client.post("/recommend", json={"users": ["u1"], "k": k})
        assert detail(response, 422)[0]["loc"] == ["body", "k"]
        body = {"vectors": [[0.0] * DIM], "k": k}
        assert detail(client.post("/recommend_for_vector", json=body), 422)[0]["loc"] == ["body", "k"]
    for k in (1.5, True, "10", None):  # JSON bodies take k as an integer only
        assert client.post("/similar", json={"items": ["i1"], "k": k}).status_code == 422


def test_bad_vectors_are_422s_with_the_librarys_message(world):
    _, _, _, client = world
    short = {"vectors": [[1.0] * (DIM - 1)]}
    assert detail(client.post("/recommend_for_vector", json=short), 422) == (
        f"queries must have shape [B, {DIM}] (d of this index), got (1, {DIM - 1})"
    )
    ragged = {"vectors": [[1.0] * DIM, [1.0] * 3]}
    assert "dimension 8, got lengths [3, 8]" in detail(client.post("/recommend_for_vector", json=ragged), 422)
    # Python's JSON reader accepts NaN and Infinity: the library refuses them by row
    for value in (float("nan"), float("inf")):
        raw = json.dumps({"vectors": [[0.0] * DIM, [value] + [0.0] * (DIM - 1)]})  # writes NaN, Infinity
        response = client.post(
            "/recommend_for_vector", content=raw, headers={"content-type": "application/json"}
        )
        assert detail(response, 422) == "queries contain NaN or inf in rows [1]"
    huge = {"vectors": [[3e38] * DIM]}  # finite in float32, but the inner products overflow
    assert "overflow float32" in detail(client.post("/recommend_for_vector", json=huge), 422)
    mismatch = {"vectors": [[0.0] * DIM], "exclude_items": [[], []]}
    assert "one list of item ids per query row" in detail(
        client.post("/recommend_for_vector", json=mismatch), 422
    )


def test_malformed_requests_are_4xx_never_500(world):
    _, _, _, client = world
    bodies = {
        "/recommend": [
            {},
            {"users": "u1"},
            {"users": [None]},
            {"users": [True]},
            {"users": [1.5]},
            {"users": [["u1"]]},
            {"users": ["u1"], "exclude_seen": "no"},
            {"users": ["u1"], "typo": 1},
            [],
            "u1",
            {"users": [3]},
            {"users": ["u1"] * 1001},
        ],
        "/similar": [{"items": {}}, {"items": ["i1"], "k": "ten"}, {"items": [{"id": "i1"}]}],
        "/recommend_for_vector": [
            {"vectors": "x"},
            {"vectors": [["a"] * DIM]},
            {"vectors": [[0.0] * DIM], "exclude_items": ["i1"]},
            {"vectors": [[0.0] * DIM], "exclude_items": [[None]]},
            {"vectors": [0.0] * DIM},
        ],
    }
    for path, cases in bodies.items():
        for body in cases:
            response = client.post(path, json=body)
            assert response.status_code in (404, 422), (path, body, response.status_code, response.text)
    # each POST body: its row limit, its keys, and the inner limits of vectors and exclusions
    from serving.http import MAX_BATCH, MAX_DIM, MAX_SEQUENCE

    too_many = MAX_BATCH + 1
    limits = {
        "/similar": [{"items": ["i1"] * too_many}, {"items": ["i1"], "typo": 1}],
        "/recommend_for_vector": [
            {"vectors": [[0.0] * DIM] * too_many},
            {"vectors": [[0.0] * DIM], "typo": 1},
            {"vectors": [[0.0] * (MAX_DIM + 1)]},
            {"vectors": [[0.0] * DIM], "exclude_items": [["i1"] * (MAX_SEQUENCE + 1)]},
            {"vectors": [["1.0"] * DIM]},
            {"vectors": [[True] * DIM]},
        ],
        "/recommend_for_sequence": [{"sequences": [["i1"]] * too_many}, {"sequences": [["i1"]], "typo": 1}],
    }
    for path, cases in limits.items():
        for body in cases:
            assert client.post(path, json=body).status_code == 422, (path, str(body)[:80])
    assert client.post("/recommend_for_vector", json={"vectors": [[1] * DIM]}).status_code == 200  # integers
    response = client.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert client.get("/recommend").status_code == 422  # no user
    assert client.get("/recommend", params={"user": "u1", "k": "2.5"}).status_code == 422
    # a repeated or unknown query parameter: FastAPI kept the last of a repeat and ignored unknown ones
    assert "query parameter 'user' given 2 times" in detail(
        client.get("/recommend", params=[("user", "u1"), ("user", "u2")]), 422
    )
    assert "query parameter 'k' given 2 times" in detail(client.get("/similar?item=i1&k=2&k=3"), 422)
    assert "unknown query parameter 'kk'" in detail(client.get("/recommend?user=u1&kk=5"), 422)
    assert "unknown query parameter 'user'" in detail(client.get("/similar?item=i1&user=u1"), 422)
    # an integer id is read as its text, as the library reads it: "3" is no user of this index
    assert "unknown user id: '3'" in detail(client.post("/recommend", json={"users": [3]}), 404)


def test_rerank_without_a_reranker_is_a_400(world):
    _, _, _, client = world
    text = detail(client.get("/recommend", params={"user": "u1", "rerank": "true"}), 400)
    assert "no re-ranker" in text and "--reranker" in text
    assert "no re-ranker" in detail(client.post("/recommend", json={"users": ["u1"], "rerank": True}), 400)


def test_an_index_without_users_or_seen_items_says_what_it_cannot_answer(tmp_path):
    rng = np.random.default_rng(8)
    items = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    bare = TestClient(create_app(build_index(items, ITEMS, tmp_path / "bare")), raise_server_exceptions=False)
    assert ok(bare.get("/health"))["n_users"] == 0
    assert "without user embeddings" in detail(bare.get("/recommend", params={"user": "u1"}), 400)
    assert len(ok(bare.get("/similar", params={"item": "i1", "k": 4}))) == 4  # items alone are enough here
    users = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    folder = build_index(items, ITEMS, tmp_path / "unseen", user_emb=users, user_ids=USERS)
    unseen = TestClient(create_app(folder), raise_server_exceptions=False)
    assert "exclude_seen=false" in detail(unseen.get("/recommend", params={"user": "u1"}), 400)
    got = ok(unseen.get("/recommend", params={"user": "u1", "k": 4, "exclude_seen": "false"}))
    assert got == as_json(Retriever.load(folder).recommend("u1", k=4, exclude_seen=False))[0]


@pytest.fixture
def reranker_dir(tmp_path):
    """A re-ranker fitted for run-a (the synthetic lists of tests/test_rerank.py), saved to a folder."""
    from tests.test_rerank import lists_where_popularity_decides

    f, y, _ = lists_where_popularity_decides(np.random.default_rng(3), 200, n=15)
    reranker = Reranker.fit(f, y, params={"num_leaves": 3, "min_data_in_leaf": 20}, rounds=10,
                            info={"run_id": "run-a", "normalized": False})  # fmt: skip
    return reranker.save(tmp_path / "reranker")


def test_rerank_serves_the_reranking_retrievers_lists(world, reranker_dir):
    folder, retriever, seen, _ = world
    client = TestClient(create_app(folder, reranker_dir=reranker_dir), raise_server_exceptions=False)
    assert ok(client.get("/health"))["reranker"] is True
    users = ["u2", "u11", "u20"]
    expected = as_json(RerankingRetriever(retriever, Reranker.load(reranker_dir)).recommend(users, k=5))
    assert ok(client.post("/recommend", json={"users": users, "k": 5, "rerank": True})) == expected
    assert [
        ok(client.get("/recommend", params={"user": u, "k": 5, "rerank": "true"})) for u in users
    ] == expected
    plain = ok(client.post("/recommend", json={"users": users, "k": 5}))
    assert plain == as_json(retriever.recommend(users, k=5))  # rerank=false stays the retrieval order
    assert plain != expected  # the re-ranker does reorder these lists (and its scores replace inner products)
    candidates = as_json(retriever.recommend(users, k=15))
    for user, row, cands in zip(users, expected, candidates, strict=True):
        assert {r["item_id"] for r in row} <= {c["item_id"] for c in cands}
        assert not {ITEMS.index(r["item_id"]) for r in row} & set(seen[USERS.index(user)].indices)
    text = detail(
        client.post("/recommend", json={"users": users, "rerank": True, "exclude_seen": False}), 422
    )
    assert "exclude_seen=true" in text
    assert "'ghost'" in detail(client.get("/recommend", params={"user": "ghost", "rerank": "true"}), 404)


def test_concurrent_requests_get_the_same_answers(world, reranker_dir):
    """The searching endpoints are plain functions run in FastAPI's thread pool, sharing one retriever."""
    import inspect
    from concurrent.futures import ThreadPoolExecutor

    folder, retriever, _, _ = world
    app = create_app(folder, reranker_dir=reranker_dir)
    searching = [
        r
        for r in app.routes
        if getattr(r, "path", "")
        in ("/recommend", "/similar", "/recommend_for_vector", "/recommend_for_sequence")
    ]
    assert len(searching) == 7 and not any(inspect.iscoroutinefunction(r.endpoint) for r in searching)
    client = TestClient(app)
    bodies = [{"users": USERS[i : i + 10], "k": 8, "rerank": i % 2 == 1} for i in range(0, 20, 5)]
    expected = [ok(client.post("/recommend", json=b)) for b in bodies]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: ok(client.post("/recommend", json=bodies[i % 4])), range(40)))
    assert got == [expected[i % 4] for i in range(40)]


def test_a_bad_folder_fails_when_the_app_is_created(tmp_path, world, reranker_dir):
    folder = world[0]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_app(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a re-ranker folder"):
        create_app(folder, reranker_dir=folder)
    other = Reranker.load(reranker_dir)
    other.info["run_id"] = "run-b"
    with pytest.raises(ValueError, match="fitted on run run-b"):
        create_app(folder, reranker_dir=other.save(tmp_path / "other"))


def test_serve_command_runs_uvicorn_on_the_app(world, reranker_dir, monkeypatch, capsys):
    import uvicorn

    from recsys.cli import main

    folder, retriever, _, _ = world
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    argv = [
        "serve",
        "--index",
        str(folder),
        "--reranker",
        str(reranker_dir),
        "--port",
        "8123",
        "--threads",
        "1",
    ]
    assert main([*argv, "--limit-concurrency", "16"]) == 0
    (app, kw), = calls  # fmt: skip
    assert kw == {"host": "127.0.0.1", "port": 8123, "log_level": "info", "limit_concurrency": 16}
    client = TestClient(app)
    assert ok(client.get("/health"))["reranker"] is True
    assert (
        ok(client.get("/recommend", params={"user": "u4", "k": 3}))
        == as_json(retriever.recommend("u4", k=3))[0]
    )
    assert "serving index" in capsys.readouterr().err

    assert main(["serve"]) == 2
    assert "give --index DIR or --run RUN_ID" in capsys.readouterr().err
    assert main(["serve", "--index", str(folder / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--index", str(folder), "--port", "70000"])
    assert len(calls) == 1
    # a port another socket listens on, or a host that does not resolve: one line naming them, nothing loaded
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--index", str(folder), "--port", str(port)]) == 2
        assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err
    assert main(["serve", "--index", str(folder), "--host", "no-such-host.invalid"]) == 2
    assert "error: cannot listen on no-such-host.invalid:8000" in capsys.readouterr().err
    assert len(calls) == 1

    def fails_to_start(app, **kw):  # uvicorn logs the reason, then exits with 3
        raise SystemExit(3)

    monkeypatch.setattr(uvicorn, "run", fails_to_start)
    assert main(argv) == 2
    assert "error: the server on 127.0.0.1:8123 could not start" in capsys.readouterr().err

    def stops_cleanly(app, **kw):  # sys.exit(): SystemExit(None), a stop, not a failure to start
        raise SystemExit(None)

    monkeypatch.setattr(uvicorn, "run", stops_cleanly)
    assert main(argv) == 0
    assert "could not start" not in capsys.readouterr().err


def test_the_body_round_trips_through_json(world):
    """Scores are the float32 values the library computes, exactly (JSON carries a float64 that holds them)."""
    _, retriever, _, client = world
    recs = retriever.recommend(["u9"], k=4)[0]
    raw = client.get("/recommend", params={"user": "u9", "k": 4}).text
    assert [r["score"] for r in json.loads(raw)] == [r.score for r in recs]
    assert all(float(np.float32(r["score"])) == r["score"] for r in json.loads(raw))


def test_serve_run_builds_the_runs_index_on_first_use(world, monkeypatch, capsys, tmp_path):
    import uvicorn
    import yaml

    from recsys.cli import main
    from recsys.pipeline import default_index_dir
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    raw = make_cfg(write_synthetic_interactions(tmp_path / "x.csv"), epochs=1)
    raw["tracking"] = {"experiment": "serve-test"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(tmp_path / "cfg.yaml"), "model.dim=8"]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    assert not default_index_dir(run_id).exists()
    assert main(["serve", "--run", run_id]) == 0
    retriever = Retriever.load(default_index_dir(run_id))  # built, as `recsys recommend` builds it
    client = TestClient(calls[0])
    health = ok(client.get("/health"))
    assert (health["run_id"], health["n_users"]) == (run_id, retriever.index.n_users) and health[
        "n_users"
    ] > 0
    user = retriever.index.user_ids[0]
    assert (
        ok(client.get("/recommend", params={"user": user, "k": 5}))
        == as_json(retriever.recommend(user, k=5))[0]
    )
    # an index of another run is refused by name
    assert main(["serve", "--run", run_id, "--index", str(world[0])]) == 2
    assert f"was built from run run-a, not from run {run_id}" in capsys.readouterr().err
    assert len(calls) == 1


def mean_encoder(retriever: Retriever, n_items: int | None = None):
    """A stand-in sequence encoder: the mean of the sequence's item vectors (zeros when empty)."""

    def encode(sequences):
        vectors = retriever.index.item_vectors(np.arange(retriever.index.n_items))
        return np.stack([vectors[s].mean(axis=0) if len(s) else np.zeros(DIM) for s in sequences])

    if n_items is not None:
        encode.n_items = n_items
    return encode


def test_sequences_are_answered_with_the_apps_encoder(world):
    folder, retriever, _, plain = world
    encoder = mean_encoder(retriever)
    client = TestClient(create_app(folder, sequence_encoder=encoder), raise_server_exceptions=False)
    assert ok(client.get("/health"))["sequences"] is True
    sequences = [["i3", "i7", "i8"], [], ["i50"]]
    expected = as_json(retriever.recommend_for_sequences(sequences, encoder, k=4))
    assert ok(client.post("/recommend_for_sequence", json={"sequences": sequences, "k": 4})) == expected
    got = ok(client.get("/recommend_for_sequence", params={"items": ["i3", "i7", "i8"], "k": 4}))
    assert got == expected[0] and not {r["item_id"] for r in got} & {"i3", "i7", "i8"}
    assert (
        ok(client.get("/recommend_for_sequence", params={"k": 4})) == expected[1]
    )  # no items: empty session
    # items is a list: repeating it is the way to send a sequence; repeating k is an error
    assert "'k' given 2 times" in detail(client.get("/recommend_for_sequence?items=i3&k=4&k=5"), 422)
    kept = ok(client.post("/recommend_for_sequence", json={"sequences": [["i3"]], "k": 60,
                                                            "exclude_history": False}))  # fmt: skip
    assert kept == as_json(retriever.recommend_for_sequences([["i3"]], encoder, k=60, exclude_history=False))
    assert "i3" in {r["item_id"] for r in kept[0]}
    # errors: by name, never a 500
    assert "unknown item id: 'nope'" in detail(
        client.get("/recommend_for_sequence", params={"items": ["i1", "nope"]}), 404
    )
    added = TestClient(create_app(folder, sequence_encoder=mean_encoder(retriever, n_items=50)))
    assert "'i55' were added to the index after training" in detail(
        added.post("/recommend_for_sequence", json={"sequences": [["i1", "i55"]]}), 422
    )
    for body in ({"sequences": "i1"}, {"sequences": [["i1"]], "k": 0}, {"sequences": [["i1"]], "exclude": 1},
                 {"sequences": [["i1"] * 10_001]}, {"sequences": [[True]]}):  # fmt: skip
        assert client.post("/recommend_for_sequence", json=body).status_code == 422, body
    # a server without an encoder says how to get one
    assert "start it with `recsys serve --run RUN`" in detail(
        plain.get("/recommend_for_sequence", params={"items": ["i1"]}), 400
    )


def test_serve_run_of_a_sequence_model_answers_sequences(monkeypatch, capsys, tmp_path):
    import uvicorn
    import yaml

    from recsys.cli import main
    from recsys.pipeline import default_index_dir, load_run, sequence_query_encoder
    from tests.test_models_sasrec import sasrec_cfg, write_cyclic_sequences

    raw = sasrec_cfg(write_cyclic_sequences(tmp_path / "d", n_users=40), epochs=2, num_threads=1)
    raw["tracking"] = {"experiment": "serve-sasrec"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(tmp_path / "cfg.yaml")]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    import torch

    threads = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("torch threads", n)))
    assert main(["serve", "--run", run_id]) == 0
    assert "and item sequences (the run's encoder)" in capsys.readouterr().err
    # one torch thread per encoding (idle torch threads spin and slow the other requests); calls[1:] follow
    assert calls.pop(0) == ("torch threads", 1) and torch.get_num_threads() == threads
    client = TestClient(calls[0])
    assert ok(client.get("/health"))["sequences"] is True
    retriever = Retriever.load(default_index_dir(run_id))
    encoder = sequence_query_encoder(load_run(run_id).model)
    session = ["4", "5", "6"]
    assert (
        ok(client.get("/recommend_for_sequence", params={"items": session, "k": 5}))
        == as_json(retriever.recommend_for_sequences([session], encoder, k=5))[0]
    )
    # the model runs in FastAPI's thread pool, several requests at once: each gets its own answer
    from concurrent.futures import ThreadPoolExecutor

    sessions = [[str(i), str(i + 1)] for i in range(1, 9)]
    # one at a time, as the requests ask: a batch of the 8 gave some scores about 1 float32 ulp apart
    expected = [as_json(retriever.recommend_for_sequences([s], encoder, k=5))[0] for s in sessions]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(
            lambda i: ok(client.post("/recommend_for_sequence", json={"sequences": [sessions[i % 8]], "k": 5})),
            range(48),
        ))  # fmt: skip
    assert got == [[expected[i % 8]] for i in range(48)]
    # started again, over the index built the first time: the encoder is loaded again
    assert main(["serve", "--run", run_id, "--threads", "2"]) == 0
    assert calls[1] == ("torch threads", 2) and ok(TestClient(calls[2]).get("/health"))["sequences"] is True


def test_one_answer_holds_at_most_max_results_items(world, monkeypatch):
    """1000 users x k = 1000 was one small request for a 1,000,000-item answer that kept the server busy for
    seconds; rows x k is bounded (k counted up to the catalogue's size)."""
    import inspect

    import serving.http

    _, _, _, client = world
    monkeypatch.setattr(serving.http, "MAX_RESULTS", 100)
    assert len(ok(client.post("/recommend", json={"users": USERS[:10], "k": 10}))) == 10
    text = detail(client.post("/recommend", json={"users": USERS[:11], "k": 10}), 422)
    assert "11 lists of 10 items would be more than 100 results" in text
    for path, body in (
        ("/similar", {"items": ITEMS[:11], "k": 10}),
        ("/recommend_for_vector", {"vectors": [[0.5] * DIM] * 11, "k": 10}),
    ):
        assert "more than 100 results" in detail(client.post(path, json=body), 422)
    assert len(ok(client.post("/similar", json={"items": ITEMS[:1], "k": 1000}))) == 1  # 59 items, not 1000
    # /health runs on the event loop, so a pool of threads busy searching does not delay it
    app = create_app(world[0])
    (health,) = [r for r in app.routes if getattr(r, "path", "") == "/health"]
    assert inspect.iscoroutinefunction(health.endpoint)


def test_an_encoder_of_another_dimension_is_refused_when_the_app_is_created(world):
    folder, retriever, _, _ = world

    def narrow(sequences):
        return np.zeros((len(sequences), DIM // 2), dtype=np.float32)

    with pytest.raises(ValueError, match=r"shape \(1, 4\) for one sequence; the index .* needs \(1, 8\)"):
        create_app(folder, sequence_encoder=narrow)
    # the library names it too
    with pytest.raises(ValueError, match=r"returned shape \(1, 4\) for 1 sequences; expected \[1, 8\]"):
        retriever.recommend_for_sequences([["i1"]], narrow)


def test_titles_are_sent_as_utf8(tmp_path):
    """The JSON is rendered with json.dumps in the worker thread: non-ASCII titles stay UTF-8, as FastAPI's own
    rendering sent them (escapes made such answers a fifth longer)."""
    items = np.eye(4, dtype=np.float32)
    folder = build_index(
        items, ["a", "b", "c", "d"], tmp_path / "idx", item_titles=["映画", "Café", None, "x"]
    )
    response = TestClient(create_app(folder)).get("/similar", params={"item": "d", "k": 3})
    assert response.headers["content-type"] == "application/json"
    assert "映画".encode() in response.content and b"\\u" not in response.content
    assert [r["title"] for r in response.json()] == ["映画", "Café", None]


def test_get_recommend_for_sequence_honours_exclude_history(world):
    """``GET /recommend_for_sequence?...&exclude_history=false`` keeps the session's own items in the answer,
    as the POST body's flag does (the GET endpoint read the flag, then always left them out)."""
    folder, retriever, _, _ = world
    encoder = mean_encoder(retriever)
    client = TestClient(create_app(folder, sequence_encoder=encoder), raise_server_exceptions=False)
    params = {"items": ["i3", "i7"], "k": N_ITEMS, "exclude_history": "false"}
    got = ok(client.get("/recommend_for_sequence", params=params))
    expected = retriever.recommend_for_sequences([["i3", "i7"]], encoder, k=N_ITEMS, exclude_history=False)
    assert got == as_json(expected)[0] and {"i3", "i7"} <= {r["item_id"] for r in got}


def test_serve_refuses_another_runs_index_before_loading_it_and_after(world, monkeypatch, capsys):
    from types import SimpleNamespace

    import torch
    import uvicorn

    import serving.http
    from recsys.cli import main

    folder = world[0]  # built from run "run-a"
    calls, apps = [], []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(app))
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    # the loaded app holds run-b's index: one swapped in after the folder's manifest was checked
    swapped = SimpleNamespace(
        state=SimpleNamespace(retriever=SimpleNamespace(index=SimpleNamespace(run_id="run-b")))
    )
    monkeypatch.setattr(serving.http, "create_app", lambda *a, **kw: apps.append(a) or swapped)
    assert main(["serve", "--run", "run-a", "--index", str(folder), "--port", "0"]) == 2
    assert "was built from run run-b, not from run run-a" in capsys.readouterr().err
    assert calls == [] and len(apps) == 1
    # a folder whose manifest names another run is refused before anything is loaded
    assert main(["serve", "--run", "run-c", "--index", str(folder), "--port", "0"]) == 2
    assert "was built from run run-a, not from run run-c" in capsys.readouterr().err
    assert calls == [] and len(apps) == 1


def test_serve_refuses_tracking_uri_without_a_run(tmp_path, capsys, monkeypatch):
    """`serve --index DIR --tracking-uri URI` served the index and never read URI: the option was ignored."""
    import numpy as np
    import uvicorn

    from recsys.cli import main
    from serving import build_index

    folder = build_index(np.eye(3, dtype=np.float32), ["a", "b", "c"], tmp_path / "idx")
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    assert main(["serve", "--index", str(folder), "--tracking-uri", "sqlite:///x.db", "--port", "0"]) == 2
    assert "--tracking-uri goes with --run" in capsys.readouterr().err
    assert calls == []
    assert main(["serve", "--index", str(folder), "--port", "0"]) == 0
    assert len(calls) == 1
