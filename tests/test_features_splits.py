"""Leakage and correctness tests of the split protocols (features.splits), plus Gowalla presplit on real data."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from features import DataConfig, DataValidationError, prepare
from features.splits import (
    leave_one_out_split,
    presplit,
    random_ratio_split,
    temporal_cut_value,
    temporal_split,
)


def synthetic(n_users=60, max_items=25, n_items=200, seed=0) -> pl.DataFrame:
    """Random implicit log without repeated pairs: users with 1..max_items items, random timestamps."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        k = int(rng.integers(1, max_items + 1))
        for i in rng.choice(n_items, size=k, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
            ts.append(int(rng.integers(0, 10_000)))
    return pl.DataFrame({"user_id": users, "item_id": items, "timestamp": ts})


def pairs(df: pl.DataFrame) -> set[tuple[str, str]]:
    return set(zip(df["user_id"].to_list(), df["item_id"].to_list(), strict=True))


def assert_no_leakage(split) -> None:
    tr, va, te = pairs(split.train), pairs(split.valid), pairs(split.test)
    assert not tr & te, "a (user, item) pair is in train and test"
    assert not tr & va, "a (user, item) pair is in train and valid"
    assert not va & te, "a (user, item) pair is in valid and test"


# ---- random ratio -----------------------------------------------------------------------------------------
def test_random_ratio_no_leakage_and_every_row_once():
    df = synthetic()
    s = random_ratio_split(df, 0.2, 0.1, seed=3)
    assert_no_leakage(s)
    assert s.train.height + s.valid.height + s.test.height == df.height
    assert pairs(s.train) | pairs(s.valid) | pairs(s.test) == pairs(df)


def test_random_ratio_each_user_keeps_train():
    df = synthetic()
    s = random_ratio_split(df, 0.5, 0.4, seed=1)
    counts = df.group_by("user_id").len()
    multi = set(counts.filter(pl.col("len") >= 2)["user_id"])
    assert multi <= set(s.train["user_id"])
    singles = set(counts.filter(pl.col("len") == 1)["user_id"])
    assert singles.isdisjoint(set(s.test["user_id"]) | set(s.valid["user_id"]))


def test_random_ratio_per_user_proportions():
    df = pl.DataFrame({"user_id": ["a"] * 10 + ["b"] * 20, "item_id": [str(i) for i in range(30)]})
    s = random_ratio_split(df, 0.2, 0.1, seed=0)
    test_counts = dict(s.test.group_by("user_id").len().iter_rows())
    valid_counts = dict(s.valid.group_by("user_id").len().iter_rows())
    assert test_counts == {"a": 2, "b": 4} and valid_counts == {"a": 1, "b": 2}


def test_random_ratio_seeded_reproducible_and_seed_dependent():
    df = synthetic()
    a = random_ratio_split(df, 0.2, 0.1, seed=7)
    b = random_ratio_split(df, 0.2, 0.1, seed=7)
    c = random_ratio_split(df, 0.2, 0.1, seed=8)
    assert a.test.equals(b.test) and a.valid.equals(b.valid) and a.train.equals(b.train)
    assert pairs(a.test) != pairs(c.test)


def test_random_ratio_repeated_pairs_do_not_leak():
    # Without dedup a pair can occur twice; the later split loses it and it is counted.
    df = pl.DataFrame({"user_id": ["a"] * 6, "item_id": ["x", "x", "x", "y", "z", "w"]})
    s = random_ratio_split(df, 0.5, 0.0, seed=0)
    assert_no_leakage(s)
    assert s.dropped["test_seen_in_train"] + s.train.height + s.test.height == df.height


# ---- leave one out ----------------------------------------------------------------------------------------
def test_leave_one_out_last_is_test_second_last_is_valid():
    df = synthetic(seed=5)
    s = leave_one_out_split(df)
    assert_no_leakage(s)
    ranked = df.with_row_index("row").sort("timestamp", "row")
    last = ranked.group_by("user_id", maintain_order=True).agg(
        pl.col("item_id").last().alias("last"),
        pl.col("item_id").get(-2, null_on_oob=True).alias("second"),
        pl.len().alias("n"),
    )
    eligible = last.filter(pl.col("n") >= 3)
    test = dict(s.test.select("user_id", "item_id").iter_rows())
    valid = dict(s.valid.select("user_id", "item_id").iter_rows())
    assert len(test) == s.test.height == eligible.height  # one test item per eligible user
    for user, last_item, second, _ in eligible.iter_rows():
        assert test[user] == last_item
        assert valid[user] == second
    # the test item is the user's latest interaction: nothing in train is later
    latest_train = s.train.group_by("user_id").agg(pl.col("timestamp").max().alias("t"))
    joined = s.test.join(latest_train, on="user_id")
    assert (joined["timestamp"] >= joined["t"]).all()


def test_leave_one_out_small_users_stay_in_train_and_ties_use_file_order():
    df = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "b", "b"],
            "item_id": ["1", "2", "x", "y", "z", "w"],
            "timestamp": [1, 2, 5, 5, 5, 1],
        }
    )
    s = leave_one_out_split(df)
    assert set(s.train.filter(pl.col("user_id") == "a")["item_id"]) == {"1", "2"}
    assert s.test["item_id"].to_list() == ["z"]  # ties at 5 -> the last in file order
    assert s.valid["item_id"].to_list() == ["y"]


def test_leave_one_out_without_timestamp_uses_file_order():
    df = pl.DataFrame({"user_id": ["a"] * 4, "item_id": ["p", "q", "r", "s"]})
    s = leave_one_out_split(df)
    assert s.test["item_id"].to_list() == ["s"] and s.valid["item_id"].to_list() == ["r"]


# ---- temporal ---------------------------------------------------------------------------------------------
def test_temporal_train_before_test_and_unseen_dropped():
    df = synthetic(seed=9)
    cut = temporal_cut_value(df, 0.8)
    s = temporal_split(df, cut)
    assert_no_leakage(s)
    assert s.train["timestamp"].max() < s.test["timestamp"].min()
    assert s.train["timestamp"].max() < cut <= s.test["timestamp"].min()
    assert set(s.test["user_id"]) <= set(s.train["user_id"])
    assert set(s.test["item_id"]) <= set(s.train["item_id"])
    n_after = df.filter(pl.col("timestamp") >= cut).height
    assert s.test.height + s.dropped["test_unseen"] == n_after
    assert s.dropped["test_unseen"] > 0  # this synthetic log has unseen items after the cut


def test_temporal_cut_quantile_as_documented():
    # SplitConfig.temporal_cut: at or after an actual timestamp (the lower neighbour), so at least 1 - q
    for n, in_test in ((10, 3), (100, 21)):
        df = pl.DataFrame({"timestamp": list(range(1, n + 1))})
        assert df.filter(pl.col("timestamp") >= temporal_cut_value(df, 0.8)).height == in_test


def test_temporal_with_validation_window():
    df = synthetic(seed=2)
    cut, vcut = temporal_cut_value(df, 0.8), temporal_cut_value(df, 0.6)
    s = temporal_split(df, cut, vcut)
    assert_no_leakage(s)
    assert s.train["timestamp"].max() < vcut <= s.valid["timestamp"].min()
    assert s.valid["timestamp"].max() < cut <= s.test["timestamp"].min()
    with pytest.raises(ValueError, match="before"):
        temporal_split(df, vcut, cut)


# ---- presplit ---------------------------------------------------------------------------------------------
def _presplit_frames():
    train = pl.DataFrame(
        {"user_id": ["a", "a", "a", "b", "b"], "item_id": ["1", "2", "3", "1", "4"], "_line": [1, 1, 1, 2, 2]}
    )
    test = pl.DataFrame({"user_id": ["a", "b", "b"], "item_id": ["4", "2", "9"], "_line": [1, 2, 2]})
    return train, test


def test_presplit_unseen_test_item_is_an_error_naming_the_line():
    train, test = _presplit_frames()
    with pytest.raises(DataValidationError, match=r"test\.txt, line 2, column 'item'.*item 9"):
        presplit(train, test, test_file="test.txt")


def test_presplit_drop_unseen_and_carve_validation():
    train, test = _presplit_frames()
    s = presplit(train, test, unseen="drop", valid_from_train_ratio=0.34, seed=0)
    assert s.dropped["test_unseen"] == 1
    assert pairs(s.test) == {("a", "4"), ("b", "2")}
    assert_no_leakage(s)
    assert pairs(s.train) | pairs(s.valid) == pairs(train)
    assert s.valid.height == 2  # round(3 * .34) = 1 for a, round(2 * .34) = 1 for b
    assert {"a", "b"} <= set(s.train["user_id"])


def test_presplit_keeps_the_test_file_whole_and_warns_when_the_carve_out_leaves_an_item_cold():
    # the unseen check judges test against the whole train file; a carve-out that moves item 5's only
    # training pair to validation keeps the test row (the benchmark's test set) and says so
    train = pl.DataFrame(
        {"user_id": ["c", "c", "d", "d"], "item_id": ["5", "6", "6", "7"], "_line": [1, 1, 2, 2]}
    )
    test = pl.DataFrame({"user_id": ["d"], "item_id": ["5"], "_line": [2]})
    cold_seen = warm_seen = False
    for seed in range(10):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            s = presplit(train, test, valid_from_train_ratio=0.5, seed=seed, test_file="test.txt")
        assert pairs(s.test) == {("d", "5")}
        cold = "5" not in set(s.train["item_id"])
        said = [str(w.message) for w in caught]
        assert [m.startswith("test.txt: 1 of 1 test rows (1 items) have no training") for m in said] == (
            [True] if cold else []
        )
        cold_seen, warm_seen = cold_seen or cold, warm_seen or not cold
    assert cold_seen and warm_seen  # both cases ran
    # a test pair that repeats a training pair is dropped (test_seen_in_train), so it is not counted as kept
    train = pl.DataFrame(
        {"user_id": ["c", "c", "d", "d"], "item_id": ["6", "7", "5", "6"], "_line": [1, 1, 2, 2]}
    )
    test = pl.DataFrame({"user_id": ["d"], "item_id": ["5"], "_line": [3]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = presplit(train, test, valid_from_train_ratio=0.5, seed=1, test_file="test.txt")
    assert s.test.height == 0 and s.dropped["test_seen_in_train"] == 1
    assert not [w for w in caught if "no training interaction left" in str(w.message)]


# ---- real data --------------------------------------------------------------------------------------------
def test_gowalla_presplit_reproduces_the_files(shared_data, tmp_path):
    cfg = DataConfig(
        source="user_lines", path=str(shared_data / "gowalla-lightgcn"), split={"protocol": "presplit"}
    )
    ds = prepare(cfg, cache_dir=tmp_path)
    assert (ds.n_users, ds.n_items) == (29_858, 40_981)
    assert ds.manifest["counts"] == {"train": 810_128, "valid": 0, "test": 217_242}
    # ids were already dense 0-based: the mapping is the identity
    assert (ds.user_vocab["user_id"] == ds.user_vocab["user_idx"].cast(pl.String)).all()
    assert (ds.item_vocab["item_id"] == ds.item_vocab["item_idx"].cast(pl.String)).all()
    # identical to the file, row for row: line 1 of train.txt is user 0's items in file order
    first = (shared_data / "gowalla-lightgcn" / "train.txt").read_text().split("\n", 1)[0].split()
    user0 = ds.train.filter(pl.col("user_idx") == int(first[0]))["item_idx"].to_list()
    assert user0 == [int(t) for t in first[1:]]
    tr, te = ds.matrix("train"), ds.matrix("test")
    assert tr.nnz == 810_128 and te.nnz == 217_242
    assert tr.multiply(te).nnz == 0  # no train/test overlap


# ---- boundaries and rounding the protocols document ------------------------------------------------------
def test_the_temporal_quantile_cut_is_the_lower_neighbour():
    # 10 distinct times: the 0.75 quantile lies between the 7th (60) and the 8th (70); "lower" takes 60
    df = pl.DataFrame(
        {"user_id": ["u"] * 10, "item_id": [f"i{k}" for k in range(10)], "timestamp": range(0, 100, 10)}
    )
    assert temporal_cut_value(df, 0.75) == 60
    assert temporal_cut_value(df, 0.8) == 70  # 3 of 10 events at or after it, as the config reference says


def test_random_ratio_rounds_half_up_for_valid_too():
    df = pl.DataFrame({"user_id": ["u"] * 10, "item_id": [f"i{k}" for k in range(10)]})
    for seed in range(5):
        s = random_ratio_split(df, 0.25, 0.25, seed)
        assert (s.train.height, s.valid.height, s.test.height) == (4, 3, 3)  # 2.5 -> 3 each


def test_random_ratio_never_puts_a_repeated_pair_in_train_and_valid():
    # dedup: false keeps repeated pairs; the copy drawn into valid must go when another copy is in train
    df = pl.DataFrame({"user_id": ["u"] * 8, "item_id": ["a", "a", "a", "a", "b", "c", "d", "e"]})
    removed = 0
    for seed in range(20):
        s = random_ratio_split(df, 0.25, 0.25, seed)
        assert not pairs(s.train) & pairs(s.valid) and not pairs(s.valid) & pairs(s.test)
        assert not pairs(s.train) & pairs(s.test)
        removed += s.dropped["valid_seen_in_train"]
    assert removed  # the case ran


def test_temporal_split_refuses_a_valid_cut_at_the_test_cut():
    df = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": [1, 2]})
    with pytest.raises(ValueError, match=r"valid_cut \(2\) must be before cut \(2\)"):
        temporal_split(df, 2, 2)


def test_random_ratio_rounds_half_up_exactly():
    """0.35 of 90 interactions is 31.5, which rounds up to 32; floating point made it 31.499999999999996,
    floored to 31 (as for 0.29, 0.7, 0.94, ...). Common ratios were exact and are unchanged."""
    from features.splits import float_rounding_differs, half_up_share

    assert half_up_share(90, 0.35) == 32 and half_up_share(3, 0.5) == 2 and half_up_share(7, 0.1) == 1
    df = pl.DataFrame({"user_id": ["a"] * 90 + ["b"] * 20, "item_id": [str(i) for i in range(110)]})
    split = random_ratio_split(df, test_ratio=0.35, valid_ratio=0.25, seed=3)
    counts = dict(split.test.group_by("user_id").len().iter_rows())
    assert counts == {"a": 32, "b": 7}  # 31.5 -> 32, 7.0 -> 7
    assert dict(split.valid.group_by("user_id").len().iter_rows()) == {"a": 23, "b": 5}  # 22.5 -> 23
    ratios = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.29, 0.35, 0.7, 0.94)
    assert [r for r in ratios if float_rounding_differs(r)] == [0.29, 0.35, 0.7, 0.94]


def test_the_cache_key_marks_only_the_ratios_whose_split_changed(monkeypatch):
    import importlib

    from features.config import DataConfig

    prep = importlib.import_module("features.prepare")
    files = {"interactions": "0" * 64}

    def key(test_ratio: float, mark: bool = True) -> str:
        if not mark:  # as the code before exact rounding computed it
            monkeypatch.setattr(prep, "float_rounding_differs", lambda ratio: False)
        cfg = DataConfig(
            source="interactions", path="x.csv", split={"protocol": "random_ratio", "test_ratio": test_ratio}
        )
        out = prep.content_hash(cfg, files)
        monkeypatch.undo()
        return out

    assert key(0.1) == key(0.1, mark=False)  # the same splits: the folders prepared before are reused
    assert key(0.35) != key(0.35, mark=False)  # other splits: prepared again
