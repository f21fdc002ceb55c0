"""Encode the side features of new items (never seen by the data pipeline) with a prepared dataset's codes.

A prepared dataset's manifest holds, per item feature, its kind and labels (``side_features.items``; see
:mod:`features.side_features`).  A new item arrives with readable values — ``{"genres": ["Comedy", "Drama"],
"year_bucket": "1990s", "release_year": 1997}`` — and is turned into the same codes, so a trained item tower
can embed it.  A label the dataset never had gets code 0 (unknown), as a missing value does; features whose
labels are not stored (Amazon attribute ids) take integer codes as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

__all__ = ["encode_new_items"]


def encode_new_items(
    rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Mapping[str, Any]]
) -> pl.DataFrame:
    """New items' readable features -> a frame of codes with one column per feature of ``spec``.

    Args:
        rows: one mapping per item from feature name to a label (``code``), a list of labels
            (``multi_code``) or a number (``int``); a missing key is a missing value.
        spec: the dataset's ``manifest["side_features"]["items"]``.

    Raises:
        KeyError: a row names a feature the dataset does not have (naming it and the known ones).
        TypeError: a multi-valued feature given as a single string.
    """
    known = set(spec)
    columns: dict[str, list[Any]] = {name: [] for name in spec}
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise KeyError(
                f"new item {i}: unknown feature(s) {unknown}; the dataset's item features are {sorted(known)}"
            )
        for name, s in spec.items():
            value = row.get(name)
            kind = s.get("kind")
            labels = s.get("labels")
            lookup = {lab: j + 1 for j, lab in enumerate(labels)} if labels else None
            if kind == "code":
                columns[name].append(_code(value, lookup, int(s.get("cardinality", 0))))
            elif kind == "multi_code":
                if isinstance(value, str):
                    raise TypeError(
                        f"new item {i}: feature {name!r} is multi-valued; give a list, not {value!r}"
                    )
                vals = [] if value is None else list(value)
                columns[name].append([_code(v, lookup, int(s.get("cardinality", 0))) for v in vals])
            else:
                columns[name].append(None if value is None else int(value))
    schema = {
        name: pl.List(pl.Int64) if s.get("kind") == "multi_code" else pl.Int64 for name, s in spec.items()
    }
    return pl.DataFrame(columns, schema=schema)


def _code(value: Any, lookup: dict[str, int] | None, cardinality: int) -> int:
    if value is None:
        return 0
    if lookup is not None:
        return lookup.get(str(value), 0)
    code = int(value)
    return code if 0 <= code < cardinality else 0
