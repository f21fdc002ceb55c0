r"""Mutual information between every pair of item features, computed with Polars.

Correlated feature masking (CFM, Yao et al., "Self-supervised Learning for Large-scale Item
Recommendations", CIKM 2021, arXiv:2007.12865, Sec. 3.3) masks a seed feature together with the features
that share the most information with it, so that the two augmented views of an item cannot be matched by
reading one feature off its near-copy.  The paper ranks features by their pairwise mutual information

.. math::  MI(V_a, V_b) = \sum_{u, v} P(u, v) \log \frac{P(u, v)}{P(u) P(v)}

over the empirical joint distribution of their values.  It does not say how multi-valued features enter.

**Our choice for multi-valued features (genres, Amazon attributes): an item spreads its unit mass evenly
over its values.**  An item with values :math:`S_a` for feature a and :math:`S_b` for feature b adds
:math:`w / (|S_a| |S_b|)` to :math:`P(u, v)` for every pair :math:`(u, v) \in S_a \times S_b` (``w`` the item's
weight, 1 by default, normalised so that all weights sum to 1).  The marginals are the sums of the joint,
so every item counts exactly once whatever the length of its lists, and a single-valued feature is the
ordinary empirical distribution: the definition reduces to the textbook MI when no feature is multi-valued.
An empty list is the value 0 ("unknown"), like a missing categorical code.  The alternative — keeping only a
"dominant" value — needs an order among values that the data does not have (MovieLens genres are a set).

The diagonal holds :math:`MI(V_a, V_a')` under the same definition (two draws from the same item's values):
the entropy :math:`H(V_a)` for a single-valued feature.  Dense (numeric) features are discretised into
quantile bins first.  Natural logarithms (nats).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

__all__ = ["feature_value_pairs", "mutual_information_matrix"]

_KEY, _VAL, _W = "__key", "__value", "__w"


def feature_value_pairs(
    table: pl.DataFrame, column: str, key: str, *, bins: int = 16, label: str | None = None
) -> pl.DataFrame:
    """One feature as ``[__key, __value: Int64, __w: Float64]`` rows: each row of ``table`` spread evenly over
    its values (weights of a row sum to 1).

    ``column`` may be an integer code (one value), a list of codes (multi-valued; an empty or null list is
    the value 0), or a float / numeric column that is cut into ``bins`` quantile bins (null -> bin 0).
    ``label`` names the feature in error messages (default ``column``).
    """
    if column not in table.columns:
        raise KeyError(f"feature {column!r} is not a column of the table; columns: {table.columns}")
    dtype = table.schema[column]
    col = pl.col(column)
    if isinstance(dtype, pl.List):
        values = (
            pl.when(col.is_null() | (col.list.len() == 0))
            .then(pl.lit([0], dtype=pl.List(pl.Int64)))
            .otherwise(col.cast(pl.List(pl.Int64)))
        )
        df = table.select(pl.col(key).alias(_KEY), values.alias(_VAL))
        df = df.with_columns((1.0 / pl.col(_VAL).list.len()).alias(_W)).explode(_VAL)
        return df.with_columns(pl.col(_VAL).fill_null(0))
    if dtype.is_float():
        x = table[column].cast(pl.Float64).to_numpy()
        finite = x[np.isfinite(x)]
        inner = np.linspace(0, 1, bins + 1)[1:-1]
        edges = np.unique(np.quantile(finite, inner)) if finite.size else np.zeros(0)
        # bin 0 holds missing values; quantile bins are 1..len(edges)+1
        codes = np.where(np.isfinite(x), np.searchsorted(edges, np.nan_to_num(x), side="right") + 1, 0)
        return pl.DataFrame(
            {_KEY: table[key], _VAL: codes.astype(np.int64), _W: np.ones(table.height, dtype=np.float64)}
        )
    if not dtype.is_integer():
        raise TypeError(
            f"feature {label or column!r} has dtype {dtype}; expected integer codes, a list of codes or numbers"
        )
    return table.select(
        pl.col(key).alias(_KEY), col.fill_null(0).cast(pl.Int64).alias(_VAL), pl.lit(1.0).alias(_W)
    )


def mutual_information_matrix(
    table: pl.DataFrame,
    features: Sequence[str],
    *,
    key: str = "item_idx",
    dense: Sequence[str] = (),
    weights: Mapping[int, float] | pl.DataFrame | None = None,
    bins: int = 16,
) -> np.ndarray:
    """Pairwise mutual information (nats) between ``features`` of ``table``, ``float64[F, F]``, symmetric.

    Args:
        table: one row per item, keyed by ``key``; every feature a column (code, list of codes, or number).
        features: the F columns, in the order of the result's rows and columns.
        key: the row key column (its values need not be dense).
        dense: integer columns to treat as numbers (quantile-binned) rather than codes, e.g. a release year.
        weights: optional item weights (a frame ``[key, weight]``), e.g. training frequencies, to measure MI
            over interactions instead of over the catalogue; items without a weight get 0.
        bins: quantile bins for numeric features.

    Raises:
        KeyError: a feature or the key is not a column (naming it); ValueError: no rows, a key on several
            rows, or zero total weight.
    """
    if key not in table.columns:
        raise KeyError(f"key column {key!r} is not in the table; columns: {table.columns}")
    if table.height == 0:
        raise ValueError("mutual_information_matrix: the feature table has no rows")
    if not features:
        raise ValueError("mutual_information_matrix: no features given")
    repeated = table.group_by(key, maintain_order=True).len().filter(pl.col("len") > 1)
    if repeated.height:
        # the joins on the key would multiply such an item's rows: the joint mass would not sum to 1
        value, rows = repeated.row(0)
        raise ValueError(
            f"mutual_information_matrix: key {key!r} must be unique (one row per item); "
            f"{value!r} is on {rows} rows"
        )
    base = table.select(key)
    if weights is None:
        base = base.with_columns(pl.lit(1.0).alias("__iw"))
    else:
        wf = (
            weights
            if isinstance(weights, pl.DataFrame)
            else pl.DataFrame({key: list(weights), "weight": list(weights.values())})
        )
        if wf.width != 2 or key not in wf.columns:
            raise ValueError(f"weights must be a frame [{key}, weight], got columns {wf.columns}")
        wcol = next(c for c in wf.columns if c != key)
        base = base.join(wf.select(key, pl.col(wcol).cast(pl.Float64).alias("__iw")), on=key, how="left")
        base = base.with_columns(pl.col("__iw").fill_null(0.0))
    total = float(base["__iw"].sum())
    if total <= 0:
        raise ValueError("mutual_information_matrix: the item weights sum to zero")
    item_w = base.select(pl.col(key).alias(_KEY), (pl.col("__iw") / total).alias("__iw"))

    long = {}
    for name in features:
        if name not in table.columns:
            raise KeyError(f"feature {name!r} is not a column of the table; columns: {table.columns}")
        # the feature may be the key itself (the id feature): select it under another name
        value = pl.col(name).cast(pl.Float64) if name in dense else pl.col(name)
        tab = table.select(pl.col(key), value.alias("__f"))
        long[name] = feature_value_pairs(tab, "__f", key, bins=bins, label=name)
    n = len(features)
    out = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        a = long[features[i]].join(item_w, on=_KEY, how="inner").with_columns(pl.col(_W) * pl.col("__iw"))
        a = a.select(_KEY, pl.col(_VAL).alias("a"), pl.col(_W).alias("wa"))
        for j in range(i, n):
            b = long[features[j]].select(_KEY, pl.col(_VAL).alias("b"), pl.col(_W).alias("wb"))
            out[i, j] = out[j, i] = _mi(a.join(b, on=_KEY, how="inner"))
    return out


def _mi(pairs: pl.DataFrame) -> float:
    """MI of the joint given as rows ``[a, b, wa, wb]`` (an item's mass ``wa * wb`` on the pair (a, b))."""
    joint = pairs.group_by("a", "b").agg((pl.col("wa") * pl.col("wb")).sum().alias("p"))
    joint = joint.filter(pl.col("p") > 0)
    pa = joint.group_by("a").agg(pl.col("p").sum().alias("pa"))
    pb = joint.group_by("b").agg(pl.col("p").sum().alias("pb"))
    terms = (
        joint.join(pa, on="a")
        .join(pb, on="b")
        .select((pl.col("p") * (pl.col("p").log() - pl.col("pa").log() - pl.col("pb").log())).sum())
    )
    return max(float(terms.item()), 0.0)
