"""Mutual information between item features (features.mutual_info) against hand-computed tables."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from features.mutual_info import feature_value_pairs, mutual_information_matrix

LN2 = math.log(2)


def table() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_idx": [0, 1, 2, 3],
            "a": [1, 1, 2, 2],
            "b": [1, 1, 2, 2],  # a copy of a
            "c": [1, 2, 1, 2],  # independent of a
            "m": [[1], [1, 2], [], [2]],  # multi-valued; the empty list is the value 0
        },
        schema={"item_idx": pl.Int64, "a": pl.Int64, "b": pl.Int64, "c": pl.Int64, "m": pl.List(pl.Int64)},
    )


def test_single_valued_features_match_the_textbook_values():
    mi = mutual_information_matrix(table(), ["a", "b", "c"])
    assert mi.shape == (3, 3)
    np.testing.assert_allclose(mi, mi.T)
    assert mi[0, 1] == pytest.approx(LN2)  # a determines b: MI = H(a) = ln 2
    assert mi[0, 2] == pytest.approx(0.0, abs=1e-12)  # independent
    np.testing.assert_allclose(np.diag(mi), [LN2, LN2, LN2])  # diagonal: the entropy


def test_a_multi_valued_feature_spreads_each_item_over_its_values():
    # Joint of (a, m), each item's unit mass spread evenly over its values (item 1: 1/8 on (1,1) and (1,2);
    # item 2's empty list is the value 0):
    # P(1,1) = 3/8, P(1,2) = 1/8, P(2,0) = 1/4, P(2,2) = 1/4; P(a) = (1/2, 1/2); P(m=0,1,2) = (1/4, 3/8, 3/8).
    expected = (
        3 / 8 * math.log((3 / 8) / (1 / 2 * 3 / 8))
        + 1 / 8 * math.log((1 / 8) / (1 / 2 * 3 / 8))
        + 1 / 4 * math.log((1 / 4) / (1 / 2 * 1 / 4))
        + 1 / 4 * math.log((1 / 4) / (1 / 2 * 3 / 8))
    )
    mi = mutual_information_matrix(table(), ["a", "m"])
    assert mi[0, 1] == pytest.approx(expected)
    assert mi[1, 0] == pytest.approx(expected)


def test_the_id_feature_shares_all_information_and_weights_select_items():
    mi = mutual_information_matrix(table(), ["item_idx", "a", "c"])
    assert mi[0, 1] == pytest.approx(LN2) and mi[0, 2] == pytest.approx(LN2)  # MI(id, f) = H(f)
    # weights restricted to items 0 and 1: a is constant there, so it shares nothing with c
    w = pl.DataFrame({"item_idx": [0, 1], "weight": [1.0, 3.0]})
    mi_w = mutual_information_matrix(table(), ["a", "c"], weights=w)
    assert mi_w[0, 1] == pytest.approx(0.0, abs=1e-12)
    # a 1:3 weighting of c's two values: H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    assert mi_w[1, 1] == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_numeric_features_are_quantile_binned():
    t = pl.DataFrame(
        {"item_idx": list(range(8)), "x": [0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 7.0, 8.0], "a": [1] * 4 + [2] * 4}
    )
    mi = mutual_information_matrix(t, ["x", "a"], bins=2)
    assert mi[0, 1] == pytest.approx(LN2)  # two bins split exactly at the median, like a
    t2 = t.with_columns(pl.col("x").cast(pl.Int64).alias("year"))
    mi2 = mutual_information_matrix(t2, ["year", "a"], dense=["year"], bins=2)
    assert mi2[0, 1] == pytest.approx(LN2)
    # a value on a bin edge (the median 2.0 here) goes to the upper bin: bins {1.0} and {2.0, 2.0, 3.0}
    edge = pl.DataFrame({"item_idx": [0, 1, 2, 3], "x": [1.0, 2.0, 2.0, 3.0]})
    assert feature_value_pairs(edge, "x", "item_idx", bins=2)["__value"].to_list() == [1, 2, 2, 2]


def test_bad_input_names_what_is_wrong():
    with pytest.raises(KeyError, match="'nope'"):
        mutual_information_matrix(table(), ["a", "nope"])
    with pytest.raises(KeyError, match="key column"):
        mutual_information_matrix(table(), ["a"], key="user_idx")
    with pytest.raises(ValueError, match="no rows"):
        mutual_information_matrix(table().head(0), ["a"])
    with pytest.raises(TypeError, match="'s'"):
        mutual_information_matrix(table().with_columns(pl.lit("x").alias("s")), ["s"])


def test_a_key_on_several_rows_is_refused():
    """The joins on the key multiplied such an item's rows: MI of a feature with itself was 0.39, not ln 3."""
    t = pl.DataFrame({"item_idx": [0, 1, 2, 2], "a": [1, 2, 3, 3]})
    with pytest.raises(ValueError, match="key 'item_idx' must be unique .* 2 is on 2 rows"):
        mutual_information_matrix(t, ["a"])
    assert mutual_information_matrix(t.unique("item_idx"), ["a"])[0, 0] == pytest.approx(math.log(3))
    nulls = pl.DataFrame({"item_idx": [0, None, None], "a": [1, 2, 3]})
    with pytest.raises(ValueError, match="None is on 2 rows"):  # the message itself once raised TypeError
        mutual_information_matrix(nulls, ["a"])
