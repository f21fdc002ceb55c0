"""Side-feature tables -> fixed-shape NumPy arrays a feature tower reads (no torch here).

A prepared dataset stores side features as Polars tables with a spec in the manifest (see
:mod:`features.side_features`): ``code`` (one integer code, 0 = unknown), ``multi_code`` (a list of codes)
and ``int`` (a plain number).  A tower needs them as arrays, one *field* per feature:

* ``code``: ``int64[N]``; the row's own dense index is also a ``code`` field (the id feature);
* ``multi_code``: ``int64[N, L]``, left-aligned and padded with :data:`PAD` (-1); an empty list is ``[0]``
  (the unknown value), so every row has at least one value;
* ``dense``: ``float32[N]``, standardised to zero mean and unit variance over the table; missing -> 0.

Codes outside ``[0, cardinality)`` (a new item with a label never seen) are mapped to 0, the unknown code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl

from features.errors import DataValidationError

__all__ = ["PAD", "FeatureField", "FeatureArrays", "feature_arrays", "fields_from_spec"]

PAD = -1
"""Padding of multi-valued fields: no value."""

FieldKind = Literal["code", "multi_code", "dense"]


@dataclass(frozen=True)
class FeatureField:
    """One input feature of a tower.

    Attributes:
        name: column name (the id field is named by the key, e.g. ``item_idx``).
        kind: ``code``, ``multi_code`` or ``dense``.
        cardinality: number of codes (code 0 included) for ``code`` / ``multi_code``; 0 for ``dense``.
        mean, std: standardisation of a ``dense`` field (fitted on the training table, reused for new rows).
    """

    name: str
    kind: FieldKind
    cardinality: int = 0
    mean: float = 0.0
    std: float = 1.0


@dataclass
class FeatureArrays:
    """The fields of N rows as arrays (see the module docstring for the layout of each kind)."""

    fields: list[FeatureField]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    n_rows: int = 0

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]


def fields_from_spec(table: pl.DataFrame, spec: dict[str, Any], key: str, n_rows: int) -> list[FeatureField]:
    """The fields of a side-feature table: the id field ``key`` first, then every column of ``spec``
    (manifest ``side_features``) in table order.  ``int`` columns become standardised dense fields."""
    fields = [FeatureField(key, "code", n_rows)]
    for name in table.columns:
        if name == key:
            continue
        if name not in spec:
            raise DataValidationError(
                "<side-feature table>", f"a spec entry for column {name!r}", got=sorted(spec)
            )
        kind = spec[name].get("kind")
        if kind in ("code", "multi_code"):
            fields.append(FeatureField(name, kind, int(spec[name]["cardinality"])))
        elif kind == "int":
            x = table[name].cast(pl.Float64).drop_nulls().to_numpy()
            mean = float(x.mean()) if x.size else 0.0
            std = float(x.std()) if x.size and x.std() > 0 else 1.0
            fields.append(FeatureField(name, "dense", 0, mean, std))
        else:
            raise DataValidationError(
                "<side-feature spec>", "kind 'code', 'multi_code' or 'int'", column=name, got=kind
            )
    return fields


def feature_arrays(
    table: pl.DataFrame | None, fields: list[FeatureField], key: str, n_rows: int
) -> FeatureArrays:
    """Arrays of ``fields`` for rows ``0..n_rows-1`` of ``table`` (keyed by ``key``; a row missing from the
    table, or no table at all, gets unknown codes and mean values).  The id field holds the key itself."""
    if table is None:
        table = pl.DataFrame({key: np.arange(n_rows, dtype=np.int64)})
    if key not in table.columns:
        raise DataValidationError("<side-feature table>", f"a key column {key!r}", got=table.columns)
    if table[key].null_count() or table[key].is_duplicated().any():
        # a repeated key would multiply its row in the join below and misalign every array
        dup = table.filter(table[key].is_duplicated())[key].head(1).to_list()
        raise DataValidationError(
            "<side-feature table>", f"each {key} once, none missing", column=key, got=f"<{key} {dup or None}>"
        )
    keys = table[key].to_numpy()
    if keys.size and (keys.min() < 0 or keys.max() >= n_rows):
        raise DataValidationError(
            "<side-feature table>", f"{key} in [0, {n_rows})", column=key, got=int(keys.max())
        )
    full = pl.DataFrame({key: np.arange(n_rows, dtype=np.int64)}).join(
        table, on=key, how="left", maintain_order="left"
    )
    values: dict[str, np.ndarray] = {}
    for f in fields:
        if f.name == key:
            values[f.name] = np.arange(n_rows, dtype=np.int64)
            continue
        if f.name not in full.columns:
            raise DataValidationError("<side-feature table>", f"a column {f.name!r}", got=full.columns)
        col = full[f.name]
        if f.kind == "code":
            codes = col.fill_null(0).cast(pl.Int64).to_numpy()
            values[f.name] = np.where((codes >= 0) & (codes < f.cardinality), codes, 0).astype(np.int64)
        elif f.kind == "multi_code":
            values[f.name] = _padded_lists(col, f.cardinality)
        else:
            x = col.cast(pl.Float64).to_numpy()
            x = np.where(np.isfinite(x), (x - f.mean) / f.std, 0.0)
            values[f.name] = x.astype(np.float32)
    return FeatureArrays(list(fields), values, n_rows)


def _padded_lists(col: pl.Series, cardinality: int) -> np.ndarray:
    """A list column -> ``int64[N, L]`` padded with PAD; empty lists -> ``[0]``; out-of-range or missing
    codes -> 0."""
    lists = col.fill_null(pl.lit([], dtype=pl.List(pl.Int64))).cast(pl.List(pl.Int64))
    # a null inside a list is an unknown value (code 0); dropping it would misalign rows and columns below
    lists = lists.list.eval(pl.element().fill_null(0))
    lengths = lists.list.len().to_numpy().astype(np.int64)
    width = max(int(lengths.max()) if lengths.size else 1, 1)
    flat = lists.explode().drop_nulls().to_numpy().astype(np.int64)
    flat = np.where((flat >= 0) & (flat < cardinality), flat, 0)
    out = np.full((lengths.size, width), PAD, dtype=np.int64)
    rows = np.repeat(np.arange(lengths.size), lengths)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = flat
    out[lengths == 0, 0] = 0
    return out
