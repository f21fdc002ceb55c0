"""Paired comparison of runs (eval/significance.py, `recsys compare`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from eval.significance import paired_difference


def test_a_paired_difference_by_hand():
    a = np.array([0.0, 0.5, 1.0, 0.25, np.nan])
    b = np.array([0.5, 0.5, 1.0, 1.0, np.nan])  # the last user has no relevant item: left out
    d = paired_difference(a, b, "ndcg@10")
    diffs = np.array([0.5, 0.0, 0.0, 0.75])
    se = diffs.std(ddof=1) / 2  # n = 4
    half = stats.t.ppf(0.975, 3) * se
    assert d.n_users == 4 and (d.better, d.worse, d.tied) == (2, 0, 2)
    assert d.mean_a == pytest.approx(0.4375) and d.mean_b == pytest.approx(0.75)
    assert d.difference == pytest.approx(0.3125)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.3125 - half), pytest.approx(0.3125 + half))
    t = 0.3125 / se
    assert d.p_value == pytest.approx(2 * stats.t.sf(t, 3))  # two-sided
    assert d.to_dict()["metric"] == "ndcg@10"


def test_the_interval_narrows_with_confidence_and_covers_the_truth_usually():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):  # B is A plus 0.01 on average: a 90% interval covers 0.01 about 90% of the time
        a = rng.random(300)
        b = a + 0.01 + rng.normal(0, 0.1, 300)
        d90, d99 = paired_difference(a, b, confidence=0.9), paired_difference(a, b, confidence=0.99)
        assert d99.ci_low < d90.ci_low < d90.difference < d90.ci_high < d99.ci_high
        covered += d90.ci_low <= 0.01 <= d90.ci_high
    assert 0.84 <= covered / 200 <= 0.96


def test_no_spread_and_bad_input():
    same = paired_difference(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2, 0.3]))
    assert (same.difference, same.ci_low, same.ci_high, same.p_value, same.tied) == (0.0, 0.0, 0.0, 1.0, 3)
    shifted = paired_difference(np.array([0.0, 0.5]), np.array([0.25, 0.75]))
    assert (shifted.difference, shifted.p_value) == (0.25, 0.0)
    with pytest.raises(ValueError, match="aligned"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="at least 2 users"):
        paired_difference(np.array([1.0, np.nan]), np.array([0.5, np.nan]))
    with pytest.raises(ValueError, match="at least 2 users"):  # one user has no spread to estimate
        paired_difference(np.array([0.5, np.nan]), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="confidence"):
        paired_difference(np.zeros(3), np.zeros(3), confidence=1.0)
    # a user with a relevant item for one system and none for the other: two protocols, not a pair
    with pytest.raises(ValueError, match="user 1 .* not paired"):
        paired_difference(np.array([0.5, np.nan, 0.2]), np.array([0.5, 0.3, np.nan]))


def test_the_interval_and_p_value_are_scipys_paired_t_test():
    rng = np.random.default_rng(1)
    for n, scale in ((2, 1.0), (3, 1e-6), (7, 1e-3), (40, 0.1), (500, 0.01)):  # small spreads are spreads too
        a = rng.random(n)
        b = a + scale * rng.normal(0.3, 1.0, n)
        for confidence in (0.9, 0.95):
            d = paired_difference(a, b, confidence=confidence)
            ref = stats.ttest_rel(b, a)
            ci = ref.confidence_interval(confidence)
            assert d.p_value == pytest.approx(ref.pvalue, rel=1e-9)
            assert (d.ci_low, d.ci_high) == (
                pytest.approx(ci.low, rel=1e-9),
                pytest.approx(ci.high, rel=1e-9),
            )
    with pytest.raises(ValueError, match="aligned"):  # a column of users is no [U] array
        paired_difference(np.zeros((3, 1)), np.ones((3, 1)))


@pytest.fixture
def two_runs(tmp_path, capsys):
    from recsys.cli import main
    from tests.test_trainer import make_cfg, write_synthetic_interactions

    csv = write_synthetic_interactions(tmp_path / "x.csv")
    ids = []
    for model in ({"name": "popularity"}, {"name": "mf_bpr", "dim": 8}):
        raw = make_cfg(csv, epochs=3)
        raw["model"], raw["tracking"], raw["name"] = model, {"experiment": "compare"}, model["name"]
        cfg = tmp_path / f"{model['name']}.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        assert main(["train", "-c", str(cfg)]) == 0
        ids.append(capsys.readouterr().out.strip().splitlines()[-1].split()[-1])
    return ids, tmp_path, csv


def test_compare_two_runs_pairs_their_users(two_runs, capsys):
    from recsys.cli import main

    (pop, mf), _, _ = two_runs
    assert main(["compare", "--run", pop, "--run", mf, "--json", "--metric", "ndcg@10", "hit@5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["baseline"] == pop and out["split"] == "test"
    rows = out["comparisons"][0]["metrics"]
    assert [r["metric"] for r in rows] == ["ndcg@10", "hit@5"]
    # A's and B's means are exactly what `recsys evaluate --run` reports for each run
    for run_id, side in ((pop, "mean_a"), (mf, "mean_b")):
        assert main(["evaluate", "--run", run_id, "--json", "--k", "5,10"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert rows[0][side] == pytest.approx(metrics["ndcg@10"], abs=1e-12)
        assert rows[1][side] == pytest.approx(metrics["hit@5"], abs=1e-12)
    r = rows[0]
    assert r["better"] + r["worse"] + r["tied"] == r["n_users"]
    assert r["ci_low"] <= r["difference"] <= r["ci_high"] and 0 <= r["p_value"] <= 1
    assert math.isclose(r["difference"], r["mean_b"] - r["mean_a"], abs_tol=1e-12)
    # the validation split, at other cut-offs: the same numbers `evaluate --run --split valid` reports
    assert main(["compare", "--run", pop, "--run", mf, "--json", "--split", "valid", "--k", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)["comparisons"][0]["metrics"]
    assert [r["metric"] for r in rows] == ["recall@3", "ndcg@3"]
    assert main(["evaluate", "--run", mf, "--json", "--split", "valid", "--k", "3"]) == 0
    assert rows[1]["mean_b"] == pytest.approx(json.loads(capsys.readouterr().out)["ndcg@3"], abs=1e-12)
    assert main(["compare", "--run", pop, "--run", mf]) == 0  # the table: recall and ndcg at eval.ks 5, 10
    table = capsys.readouterr().out
    assert "A = " + pop in table and "B = " + mf in table
    assert [line.split()[0] for line in table.splitlines() if line.startswith("  ") and "@" in line] == [
        "recall@5", "ndcg@5", "recall@10", "ndcg@10"
    ]  # fmt: skip
    # --split and --k are the comparison's own: the means are `evaluate --split valid --k 5`'s, not the test's
    assert main(["compare", "--run", pop, "--run", mf, "--json", "--split", "valid", "--k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = out["comparisons"][0]["metrics"]
    assert out["split"] == "valid" and [r["metric"] for r in rows] == ["recall@5", "ndcg@5"]
    for run_id, side in ((pop, "mean_a"), (mf, "mean_b")):
        assert main(["evaluate", "--run", run_id, "--json", "--split", "valid", "--k", "5"]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert [r[side] for r in rows] == pytest.approx([metrics["recall@5"], metrics["ndcg@5"]], abs=1e-12)


def test_compare_refuses_what_cannot_be_paired(two_runs, capsys, monkeypatch):
    from recsys.cli import main
    from tests.test_trainer import make_cfg

    (pop, mf), tmp_path, csv = two_runs
    assert main(["compare", "--run", pop]) == 2
    assert "give two or more different runs" in capsys.readouterr().err
    # a run compared with itself would be reported as a comparison: every user tied, p = 1
    assert main(["compare", "--run", pop, "--run", mf, "--run", pop]) == 2
    assert "give two or more different runs" in capsys.readouterr().err
    assert main(["compare", "--run", pop, "--run", mf, "--metric", "ndcg@20"]) == 2
    assert "metric ndcg@20 needs its cut-off among the cut-offs 5,10 (run " in capsys.readouterr().err
    assert main(["compare", "--run", pop, "--run", mf, "--metric", "ndcg@010"]) == 2  # K is an integer
    assert main(["compare", "--run", pop, "--run", mf, "--metric", "auc@5"]) == 2
    assert "expected NAME@K" in capsys.readouterr().err
    assert main(["compare", "--run", pop, "--run", mf, "--metric", "coverage@5"]) == 2  # no value per user
    assert "metric 'coverage@5': expected NAME@K with NAME one of recall," in capsys.readouterr().err
    raw = make_cfg(csv, epochs=1)  # another split seed: other held-out items
    raw["data"]["split"]["seed"] = 2
    raw["model"], raw["tracking"] = {"name": "popularity"}, {"experiment": "compare"}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", "-c", str(tmp_path / "other.yaml")]) == 0
    other = capsys.readouterr().out.strip().splitlines()[-1].split()[-1]
    assert main(["compare", "--run", pop, "--run", other]) == 2
    assert "trained on other data" in capsys.readouterr().err
    # runs without the tag (tracked elsewhere, or before it was logged): the data is compared on loading
    import recsys.tracking

    with monkeypatch.context() as m:
        m.setattr(recsys.tracking, "run_tag", lambda *args, **kwargs: None)
        assert main(["compare", "--run", pop, "--run", other]) == 2
    assert f"run {other} was trained on other data than run {pop}" in capsys.readouterr().err
    # read from the runs' tags before either run is loaded and ranked (seconds to minutes on large data)
    import recsys.pipeline

    def no_loading(*args, **kwargs):
        raise AssertionError("a run was loaded")

    monkeypatch.setattr(recsys.pipeline, "load_run", no_loading)
    assert main(["compare", "--run", pop, "--run", other]) == 2
    assert f"run {other} was trained on other data than run {pop}" in capsys.readouterr().err


def test_compare_runs_refuses_a_split_it_cannot_evaluate():
    from recsys.compare import compare_runs

    # "train" was ranked with the training items excluded: every metric 0 for both runs, every user tied
    for split in ("train", "tes"):
        with pytest.raises(ValueError, match=f"split must be 'valid' or 'test', got '{split}'"):
            compare_runs(["a", "b"], split=split)  # refused before any run is looked up
    # an empty list of cut-offs or metrics is refused (ks=[] fell back to the first run's eval.ks)
    with pytest.raises(ValueError, match="ks must name at least one cut-off"):
        compare_runs(["a", "b"], ks=[])
    with pytest.raises(ValueError, match="metrics: give at least one"):
        compare_runs(["a", "b"], metrics=[])


def test_compare_counts_a_repeated_metric_once_and_widens_the_table(two_runs, capsys):
    from recsys.cli import main
    from recsys.compare import compare_runs

    (pop, mf), _, _ = two_runs
    report = compare_runs([pop, mf], split="valid", ks=[5], metrics=["ndcg@5", "precision@5", "ndcg@5"])
    assert [d.metric for d in report[0].differences] == ["ndcg@5", "precision@5"]
    metrics = ["--metric", "precision@100", "--metric", "ndcg@5"]
    assert main(["compare", "--run", pop, "--run", mf, "--k", "5,100", *metrics]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.lstrip().startswith("metric "))
    end_a = header.index(" A ") + 2  # the A column's values end under its header (right-aligned)
    rows = [line for line in table if line.lstrip().startswith(("precision@100 ", "ndcg@5 "))]
    assert len(rows) == 2
    for line in rows:  # a 12-character metric column pushed precision@100's row one character right
        assert line[end_a] == " " and float(line[:end_a].split()[-1]) >= 0
