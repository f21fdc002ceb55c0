"""Batch export of many users' recommendations (``serving.export``): the file holds exactly what the embedded
retriever answers, in both formats, reads back through ``recsys evaluate``'s reader, and is never left torn."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from serving import Retriever, build_index
from serving.errors import UnknownUserError
from serving.export import export_recommendations, read_user_ids
from serving.rerank import RerankingRetriever
from tests.test_rerank import served  # noqa: F401 - a fixture
from tests.test_serving_retriever import ALL_SEEN, HEAVY, ITEM_IDS, USER_IDS, make_world

K = 7


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Retriever:
    items, users, seen = make_world()
    item_ids = list(ITEM_IDS)
    item_ids[3] = 'i3, "the quoted one"'  # a comma and quotes must survive the CSV
    out = tmp_path_factory.mktemp("export") / "idx"
    build_index(items, item_ids, out, user_emb=users, user_ids=USER_IDS, seen=seen)
    return Retriever.load(out)


def read(path) -> pl.DataFrame:
    if path.suffix == ".csv":
        return pl.read_csv(path, schema_overrides={"user": pl.String, "item": pl.String})
    return pl.read_parquet(path)


def expected_rows(recommender, users: list[str], k: int) -> list[tuple]:
    return [
        (u, r.item_id, r.score, rank)
        for u, recs in zip(users, recommender.recommend(users, k=k), strict=True)
        for rank, r in enumerate(recs, 1)
    ]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_file_holds_the_retrievers_answers_for_every_user(retriever, tmp_path, suffix):
    path = tmp_path / f"recs{suffix}"
    summary = export_recommendations(retriever, path, k=K, batch_size=6)
    got = read(path)
    assert got.columns == ["user", "item", "score", "rank"]
    expected = expected_rows(retriever, list(USER_IDS), K)
    # scores: float32 in both; the CSV's text gives them back exactly
    assert [(u, i, np.float32(s), r) for u, i, s, r in got.iter_rows()] == [
        (u, i, np.float32(s), r) for u, i, s, r in expected
    ]
    # the user who has seen everything has no row; the one with three unseen items has three
    assert USER_IDS[ALL_SEEN] not in set(got["user"])
    assert got.filter(pl.col("user") == USER_IDS[HEAVY]).height == 3
    assert summary.n_rows == len(expected) and summary.n_users == len(USER_IDS) - 1
    assert summary.skipped == () and summary.path == path


def test_batches_do_not_change_the_file(retriever, tmp_path):
    export_recommendations(retriever, tmp_path / "a.parquet", k=K, batch_size=1)
    export_recommendations(retriever, tmp_path / "b.parquet", k=K, batch_size=1000)
    assert read(tmp_path / "a.parquet").equals(read(tmp_path / "b.parquet"))


def test_the_csv_reads_back_through_the_evaluation_reader(retriever, tmp_path):
    """``recsys evaluate --recs`` ranks by score: each user's rank-1 item as truth gives hit@1 = 1, and the
    rank-2 item hit@1 = 0 and hit@2 = 1. (Float embeddings: with equal scores the reader's tie rule, by item
    id, may differ from the index's, by position.)"""
    from eval.recs_file import evaluate_recs_file

    items, users, seen = make_world(integer=False)
    folder = build_index(items, ITEM_IDS, tmp_path / "idx", user_emb=users, user_ids=USER_IDS, seen=seen)
    recs = tmp_path / "recs.csv"
    export_recommendations(Retriever.load(folder), recs, k=K)
    table = read(recs)
    for rank, expect in ((1, {"hit@1": 1.0}), (2, {"hit@1": 0.0, "hit@2": 1.0})):
        truth = tmp_path / f"truth{rank}.parquet"
        table.filter(pl.col("rank") == rank).select("user", "item").write_parquet(truth)
        metrics = evaluate_recs_file(recs, truth, ks=(1, 2))
        assert {m: metrics[m] for m in expect} == expect


def test_users_are_written_in_the_order_given(retriever, tmp_path):
    users = ["u9", "u2", "u30"]
    export_recommendations(retriever, tmp_path / "r.csv", users, k=2)
    assert read(tmp_path / "r.csv")["user"].to_list() == ["u9", "u9", "u2", "u2", "u30", "u30"]


def test_unknown_users_stop_the_job_unless_skipped(retriever, tmp_path):
    path = tmp_path / "r.parquet"
    path.write_bytes(b"yesterday's file")
    with pytest.raises(UnknownUserError, match="'nobody', 'ghost'.*skip_unknown=True"):
        export_recommendations(retriever, path, ["u4", "nobody", "ghost"], k=2)
    assert path.read_bytes() == b"yesterday's file"
    summary = export_recommendations(retriever, path, ["u4", "nobody", "ghost"], k=2, skip_unknown=True)
    assert summary.skipped == ("nobody", "ghost") and read(path)["user"].to_list() == ["u4", "u4"]


def test_no_known_user_left_writes_nothing(retriever, tmp_path):
    """A users file of another dataset with skip_unknown blanked yesterday's file and exited 0."""
    path = tmp_path / "r.csv"
    path.write_text("yesterday\n")
    with pytest.raises(UnknownUserError, match="none of the users is known; nothing was written"):
        export_recommendations(retriever, path, ["ghost1", "ghost2"], k=2, skip_unknown=True)
    assert path.read_text() == "yesterday\n" and [p.name for p in tmp_path.iterdir()] == ["r.csv"]


def test_large_batches_are_searched_in_parts(retriever, tmp_path, monkeypatch):
    """FAISS's scores moved in the last bit from 2,000 rows a call on: each call stays at MAX_SEARCH_ROWS."""
    import serving.export

    monkeypatch.setattr(serving.export, "MAX_SEARCH_ROWS", 4)
    sizes = []

    class Counting:
        user_ids, item_ids = retriever.user_ids, retriever.item_ids

        def recommend_positions(self, users, k):
            sizes.append(len(users))
            return retriever.recommend_positions(users, k)

    export_recommendations(Counting(), tmp_path / "a.parquet", k=K, batch_size=10)
    export_recommendations(retriever, tmp_path / "b.parquet", k=K, batch_size=1)
    assert max(sizes) == 4 and sum(sizes) == len(USER_IDS)
    assert read(tmp_path / "a.parquet").equals(read(tmp_path / "b.parquet"))


def test_an_interrupted_job_leaves_the_previous_file_whole(retriever, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,score,rank\nold,file,1.0,1\n")

    class FailsOnSecondBatch:
        user_ids, item_ids = retriever.user_ids, retriever.item_ids
        calls = 0

        def recommend_positions(self, users, k):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("the machine went away")
            return retriever.recommend_positions(users, k)

    with pytest.raises(RuntimeError, match="went away"):
        export_recommendations(FailsOnSecondBatch(), path, k=3, batch_size=4)
    assert path.read_text() == "user,item,score,rank\nold,file,1.0,1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]  # no temporary file left behind


def test_bad_arguments_are_named(retriever, tmp_path):
    with pytest.raises(ValueError, match=r"output file .*recs.json: unknown extension '.json'"):
        export_recommendations(retriever, tmp_path / "recs.json")
    with pytest.raises(ValueError, match=r"repeat 1 id\(s\): \['u2'\]"):
        export_recommendations(retriever, tmp_path / "r.csv", ["u2", "u1", "u2"])
    with pytest.raises(ValueError, match="user_ids is empty; nothing was written"):
        export_recommendations(retriever, tmp_path / "r.csv", [])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        export_recommendations(retriever, tmp_path / "r.csv", batch_size=0)
    with pytest.raises(ValueError, match="k must be"):
        export_recommendations(retriever, tmp_path / "r.csv", k=0)
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(ValueError, match=r"output file .*folder.csv is a folder"):
        export_recommendations(retriever, tmp_path / "folder.csv")
    assert [p.name for p in tmp_path.iterdir()] == ["folder.csv"]


def test_a_reranked_export_holds_the_reranking_retrievers_answers(served, tmp_path):  # noqa: F811
    retriever, reranker, _ = served
    reranking = RerankingRetriever(retriever, reranker)
    users = [f"u{u}" for u in range(30)]
    export_recommendations(reranking, tmp_path / "r.parquet", k=5, batch_size=7)
    got = [(u, i, np.float32(s), r) for u, i, s, r in read(tmp_path / "r.parquet").iter_rows()]
    assert got == [(u, i, np.float32(s), r) for u, i, s, r in expected_rows(reranking, users, 5)]
    assert reranking.recommend([], k=5) == []  # no rows: LightGBM is not asked


def test_user_id_files(tmp_path):
    good = tmp_path / "users.txt"
    good.write_bytes("\ufeffu1\n  u2 \n7\n\n".encode())  # a BOM, padding, a trailing blank line
    assert read_user_ids(good) == ["u1", "u2", "7"]
    # lines end at \n (and \r\n) only: U+2028 or \x1c inside an id made two ids of it
    odd = tmp_path / "odd.txt"
    odd.write_bytes("u1\u2028x\r\nu2\x1cy\n".encode())
    assert read_user_ids(odd) == ["u1\u2028x", "u2\x1cy"]
    cases = {
        "u1\n\nu2\n": r"line 2: blank line",
        "u1\nu2\nu1\n": r"line 3: user 'u1' again \(first on line 1\)",
        "u1\r\n\r\nu2\n": r"line 2: blank line",
        "": "is empty",
    }
    for text, message in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(ValueError, match=f"users file .*bad.txt.*{message}"):
            read_user_ids(bad)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="latin1.txt is not UTF-8"):
        read_user_ids(tmp_path / "latin1.txt")
    with pytest.raises(FileNotFoundError, match="users file .*missing.txt does not exist"):
        read_user_ids(tmp_path / "missing.txt")


def test_recommend_command_writes_every_users_list(tmp_path, capsys):
    """``recsys recommend --all-users / --users --out``: the file holds, for each user, what ``recommend
    --user --json`` prints, through the index (MF-BPR) and through the scorer of a model without one
    (RP3beta); bad combinations are one error line and write nothing."""
    import json

    import yaml

    from recsys.cli import main
    from recsys.pipeline import load_run, scorer_top_k
    from tests.test_run_lifecycle import _config

    cfg = _config(tmp_path, epochs=2)
    raw = yaml.safe_load(cfg.read_text())
    raw["model"] = {"name": "rp3beta"}
    rp3 = tmp_path / "rp3.yaml"
    rp3.write_text(yaml.safe_dump(raw))
    runs = {}
    for name, path in (("mf", cfg), ("rp3", rp3)):
        assert main(["train", "-c", str(path)]) == 0
        runs[name] = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]

    for name, run_id in runs.items():
        out = tmp_path / f"{name}.parquet"
        assert main(["recommend", "--run", run_id, "--all-users", "--out", str(out), "--k", "4"]) == 0
        table = pl.read_parquet(out)
        assert f"to {out}" in capsys.readouterr().out
        ds = load_run(run_id).dataset
        assert table["user"].unique(maintain_order=True).to_list() == [
            str(u) for u in ds.user_vocab.sort("user_idx")["user_id"]
        ]
        for user in ("u0", "u3", "u7"):
            assert main(["recommend", "--run", run_id, "--user", user, "--k", "4", "--json"]) == 0
            printed = [(r["item_id"], r["score"]) for r in json.loads(capsys.readouterr().out)]
            mine = table.filter(pl.col("user") == user)
            assert mine["item"].to_list() == [i for i, _ in printed]
            assert mine["score"].to_numpy() == pytest.approx([s for _, s in printed], rel=1e-6)
            assert mine["rank"].to_list() == list(range(1, len(printed) + 1))
    run = load_run(runs["rp3"])
    items = run.dataset.item_vocab.sort("item_idx")["item_id"].cast(str).to_list()
    table = pl.read_parquet(tmp_path / "rp3.parquet")
    for u, user in enumerate(run.dataset.user_vocab.sort("user_idx")["user_id"].cast(str)):
        want = [items[i] for i, _ in scorer_top_k(run, u, 4)]
        assert table.filter(pl.col("user") == user)["item"].to_list() == want

    users = tmp_path / "users.txt"
    users.write_text("u3\nnobody\nu1\n")
    out = tmp_path / "some.csv"
    args = ["recommend", "--run", runs["mf"], "--users", str(users), "--out", str(out), "--k", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {users}: unknown user id: 'nobody'" in err and "give --skip-unknown" in err
    assert not out.exists()
    assert main([*args, "--skip-unknown"]) == 0
    assert "1 unknown user(s) left out" in capsys.readouterr().out
    assert pl.read_csv(out)["user"].to_list() == ["u3", "u3", "u1", "u1"]
    ghosts = tmp_path / "ghosts.txt"
    ghosts.write_text("ghost1\nghost2\n")
    before = out.read_bytes()
    assert (
        main(["recommend", "--run", runs["mf"], "--users", str(ghosts), "--out", str(out), "--skip-unknown"])
        == 2
    )
    assert "no user of the file is a user of run" in capsys.readouterr().err and out.read_bytes() == before
    refused = {
        ("--all-users",): "--out FILE goes with --all-users",
        ("--user", "u1", "--out", str(out)): "for one --user, drop it",
        ("--all-users", "--user", "u1", "--out", str(out)): "give exactly one of",
        ("--user", "u1", "--skip-unknown"): "--skip-unknown goes with --users",
        ("--all-users", "--out", str(tmp_path / "r.json")): "unknown extension '.json'",
        ("--users", str(tmp_path / "none.txt"), "--out", str(out)): "none.txt does not exist",
        ("--user", "u1", "--batch-size", "10"): "--batch-size goes with --all-users or --users FILE",
        # the user list as the output: it was replaced by the recommendations
        ("--users", str(out), "--out", str(tmp_path / "." / out.name)): "is the --users file",
    }
    before = out.read_bytes()
    for extra, message in refused.items():
        assert main(["recommend", "--run", runs["mf"], *extra]) == 2
        assert message in capsys.readouterr().err
    assert out.read_bytes() == before and not (tmp_path / "r.json").exists()
