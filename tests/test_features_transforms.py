"""Unit tests of features.transforms on small hand-made frames."""

from __future__ import annotations

import polars as pl
import pytest

from features.transforms import binarize, deduplicate, id_vocab, k_core, map_ids


def frame(rows, cols=("user_id", "item_id")):
    return pl.DataFrame([list(r) for r in rows], schema=list(cols), orient="row")


def test_binarize_keeps_ratings_at_or_above_threshold():
    df = pl.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"], "rating": [3.0, 4.0, 5.0]})
    out = binarize(df, 4)
    assert out["rating"].to_list() == [4.0, 5.0]
    assert out["item_id"].to_list() == ["y", "x"]


def test_binarize_needs_rating():
    with pytest.raises(ValueError, match="rating"):
        binarize(frame([("a", "x")]), 1)


def test_deduplicate_keeps_earliest_by_timestamp_and_original_order():
    df = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "a", "b"],
            "item_id": ["x", "y", "x", "x", "x"],
            "timestamp": [5, 1, 3, 2, 3],
            "tag": ["late", "y", "b-first", "early", "b-second"],
        }
    )
    out = deduplicate(df)
    # (a, x): the row with timestamp 2 wins over 5; (b, x): tie at 3 -> the first in file order.
    assert out["tag"].to_list() == ["y", "b-first", "early"]  # original row order kept


def test_deduplicate_without_timestamp_keeps_first_row():
    df = pl.DataFrame({"user_id": ["a", "a", "a"], "item_id": ["x", "x", "y"], "tag": [1, 2, 3]})
    assert deduplicate(df)["tag"].to_list() == [1, 3]


def test_k_core_needs_several_rounds():
    # Round 1 (min 2 each): item i3 has 1 interaction -> dropped; then user u3 is left with 1 -> dropped in
    # round 2; that leaves item i2 with 1 -> dropped in round 3; then u2 has 1 -> dropped in round 4.
    rows = [
        ("u1", "i1"),
        ("u1", "i0"),
        ("u4", "i1"),
        ("u4", "i0"),
        ("u2", "i1"),
        ("u2", "i2"),
        ("u3", "i2"),
        ("u3", "i3"),
    ]
    out = k_core(frame(rows), 2, 2)
    assert sorted(map(tuple, out.rows())) == [("u1", "i0"), ("u1", "i1"), ("u4", "i0"), ("u4", "i1")]
    users = out.group_by("user_id").len()["len"]
    items = out.group_by("item_id").len()["len"]
    assert users.min() >= 2 and items.min() >= 2


def test_k_core_one_sided_and_off():
    rows = [("u1", "i1"), ("u1", "i2"), ("u2", "i1")]
    assert k_core(frame(rows), 0, 0).height == 3
    assert k_core(frame(rows), 2, 0)["user_id"].unique().to_list() == ["u1"]
    assert k_core(frame(rows), 0, 2)["item_id"].unique().to_list() == ["i1"]


def test_k_core_can_empty_the_data():
    assert k_core(frame([("u1", "i1"), ("u2", "i2")]), 2, 2).height == 0


def test_id_vocab_numeric_order_keeps_dense_zero_based_ids():
    ids = pl.Series(["10", "2", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9"])
    voc = id_vocab(ids, "user")
    assert voc.schema == {"user_idx": pl.Int64, "user_id": pl.String}
    assert voc["user_id"].to_list() == [str(i) for i in range(11)]
    assert (voc["user_idx"].cast(pl.String) == voc["user_id"]).all()


def test_id_vocab_text_ids_sorted_as_text():
    voc = id_vocab(pl.Series(["b", "a", "10", "9"]), "item")
    assert voc["item_id"].to_list() == ["10", "9", "a", "b"]


def test_id_vocab_huge_numeric_ids():
    voc = id_vocab(pl.Series(["123456789012345678901234", "99", "100"]), "item")
    assert voc["item_id"].to_list() == ["99", "100", "123456789012345678901234"]


def test_map_ids_with_extra_users_and_order_kept():
    df = frame([("5", "b"), ("3", "a"), ("5", "a")])
    mapped, uv, iv = map_ids(df, extra_users=pl.Series(["4"]))
    assert uv["user_id"].to_list() == ["3", "4", "5"]
    assert mapped["user_idx"].to_list() == [2, 0, 2]
    assert mapped["item_idx"].to_list() == [1, 0, 0]
    assert mapped.schema["user_idx"] == pl.Int64 and mapped.schema["item_idx"] == pl.Int64
    assert iv["item_id"].to_list() == ["a", "b"]


def test_deduplicate_keeps_a_dated_row_over_an_undated_one():
    """A pair entered once without a time and once at t = 5: the dated row is the earliest known, whichever
    comes first in the file (a null sorted first would have been kept)."""
    df = pl.DataFrame(
        {
            "user_id": ["u", "u", "v"],
            "item_id": ["i", "i", "i"],
            "timestamp": [None, 5, None],
            "row": [0, 1, 2],
        }
    )
    assert deduplicate(df)["row"].to_list() == [1, 2]
