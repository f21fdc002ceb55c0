"""Side features: raw user/item attributes -> integer-coded tables keyed by dense index.

Categorical columns become ``Int64`` codes with **0 reserved for unknown/missing** (so an embedding table of
size ``cardinality`` with padding index 0 works directly); multi-valued columns become ``List[Int64]`` of
codes.  Each encoder returns the table and a *spec* for the manifest::

    {"age_bucket": {"kind": "code", "cardinality": 8, "labels": ["<18", "18-24", ...]}, ...}

where ``labels[c - 1]`` is the label of code ``c`` and ``cardinality`` counts code 0.  ``kind`` is ``code``
(one code), ``multi_code`` (a list of codes) or ``int`` (a plain integer, e.g. the release year).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import polars as pl

if TYPE_CHECKING:
    from polars.expr.whenthen import ChainedThen, Then

__all__ = [
    "DERIVED_ITEM_FEATURES",
    "codebook",
    "decade",
    "encode",
    "movielens_user_features",
    "movielens_item_features",
    "attribute_item_features",
]

# MovieLens-1M's age groups (also used for 100K, whose ages are exact): <18, 18-24, 25-34, 35-44, 45-49,
# 50-55, 56+.
AGE_BUCKETS: list[tuple[int, str]] = [
    (18, "<18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (50, "45-49"),
    (56, "50-55"),
    (10**9, "56+"),
]


def decade(year: pl.Expr) -> pl.Expr:
    """Release year -> its decade's label (1997 -> ``"1990s"``): MovieLens' ``year_bucket``."""
    return (year // 10 * 10).cast(pl.String) + pl.lit("s")


#: Item features derived from another one: name -> (source feature, Polars expression of the source).
#: New items (:func:`features.new_items.encode_new_items`) get them from their source, as the pipeline does.
DERIVED_ITEM_FEATURES = {"year_bucket": ("release_year", decade)}


def codebook(values: pl.Series) -> list[str]:
    """Sorted distinct non-empty labels of a Utf8 series; label ``k`` gets code ``k + 1``."""
    vals = values.cast(pl.String).drop_nulls().str.strip_chars()
    return vals.filter(vals != "").unique().sort().to_list()


def encode(expr: pl.Expr, labels: list[str]) -> pl.Expr:
    """Map a Utf8 expression to ``Int64`` codes of ``labels`` (1-based); missing or unlisted -> 0.

    Values are stripped first, as :func:`codebook` strips them to make the labels."""
    mapping = {lab: i + 1 for i, lab in enumerate(labels)}
    return expr.cast(pl.String).str.strip_chars().replace_strict(mapping, default=0, return_dtype=pl.Int64)


def _code_spec(labels: list[str]) -> dict:
    return {"kind": "code", "cardinality": len(labels) + 1, "labels": labels}


def _age_bucket(age: pl.Expr) -> pl.Expr:
    out: Then | ChainedThen = pl.when(age.is_null()).then(pl.lit(None, dtype=pl.String))
    for upper, label in AGE_BUCKETS:
        out = out.when(age < upper).then(pl.lit(label))
    return out.otherwise(pl.lit(None, dtype=pl.String))


def movielens_user_features(users: pl.DataFrame, user_vocab: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """MovieLens users -> ``[user_idx, age: Int64, age_bucket, gender, occupation, zip1, zip3]`` (codes).

    ``zip1`` is the first character of the zip code (US postal region; a letter for the few Canadian codes),
    ``zip3`` the first three (sectional centre).  Users of the vocabulary without a row get nulls / code 0.
    """
    raw = user_vocab.join(users, on="user_id", how="left", maintain_order="left").with_columns(
        _age_bucket(pl.col("age")).alias("_age_bucket"),
        pl.col("zip_code").str.to_uppercase().str.slice(0, 1).alias("_zip1"),
        pl.col("zip_code").str.to_uppercase().str.slice(0, 3).alias("_zip3"),
    )
    books = {
        "age_bucket": [label for _, label in AGE_BUCKETS],
        "gender": codebook(raw["gender"]),
        "occupation": codebook(raw["occupation"]),
        "zip1": codebook(raw["_zip1"]),
        "zip3": codebook(raw["_zip3"]),
    }
    src = {
        "age_bucket": "_age_bucket",
        "gender": "gender",
        "occupation": "occupation",
        "zip1": "_zip1",
        "zip3": "_zip3",
    }
    table = raw.select(
        "user_idx",
        pl.col("age").cast(pl.Int64),
        *[encode(pl.col(src[name]), labels).alias(name) for name, labels in books.items()],
    ).sort("user_idx")
    spec = {"age": {"kind": "int"}, **{name: _code_spec(labels) for name, labels in books.items()}}
    return table, spec


def movielens_item_features(
    items: pl.DataFrame, item_vocab: pl.DataFrame, genres: list[str]
) -> tuple[pl.DataFrame, dict]:
    """MovieLens items -> ``[item_idx, genres: List[Int64], release_year: Int64, year_bucket]``.

    ``genres`` holds the codes of the movie's genres (``genres`` order, 1-based; the genre literally named
    "unknown" is a real MovieLens genre and has its own code), ``year_bucket`` the decade (``"1990s"``).
    """
    extra = sorted(set(items["genres"].explode().drop_nulls().to_list()) - set(genres))
    labels = list(genres) + extra
    raw = item_vocab.select("item_idx", "item_id").join(
        items, on="item_id", how="left", maintain_order="left"
    )
    decades = codebook(raw.select(decade(pl.col("release_year")).alias("d"))["d"])
    mapping = {g: i + 1 for i, g in enumerate(labels)}
    table = raw.select(
        "item_idx",
        pl.col("genres")
        .list.eval(pl.element().replace_strict(mapping, default=0, return_dtype=pl.Int64))
        .fill_null(pl.lit([], dtype=pl.List(pl.Int64)))
        .alias("genres"),
        pl.col("release_year").cast(pl.Int64),
        encode(decade(pl.col("release_year")), decades).alias("year_bucket"),
    ).sort("item_idx")
    spec = {
        "genres": {"kind": "multi_code", "cardinality": len(labels) + 1, "labels": labels},
        "release_year": {"kind": "int"},
        "year_bucket": _code_spec(decades),
    }
    return table, spec


def attribute_item_features(attrs: pl.DataFrame, item_vocab: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Amazon item attributes (category, brand ids) -> ``[item_idx, attributes: List[Int64]]``.

    The file's attribute ids are positive integers. Compact ids (as in the benchmark files: the largest is
    below twice their number plus 1024) are used as codes unchanged (0 stays free; ``labels`` null). Sparse
    ids are mapped to dense codes 1..n in id order, with the ids as ``labels``: each code is a row of an
    embedding table, and one id of 10**12 used as a row asked for terabytes. Items without an entry get an
    empty list.
    """
    table = (
        item_vocab.select("item_idx", "item_id")
        .join(attrs, on="item_id", how="left", maintain_order="left")
        .select("item_idx", pl.col("attributes").fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
        .sort("item_idx")
    )
    ids = (
        attrs["attributes"].explode().drop_nulls().unique().sort()
        if attrs.height
        else pl.Series([], dtype=pl.Int64)
    )
    top = cast(int, ids.max()) if ids.len() else None  # attribute ids: an Int64 series
    if top is None or int(top) < 2 * ids.len() + 1024:
        cardinality = int(top) + 1 if top is not None else 1
        return table, {"attributes": {"kind": "multi_code", "cardinality": cardinality, "labels": None}}
    codes = pl.DataFrame({"id": ids, "code": pl.int_range(1, ids.len() + 1, eager=True, dtype=pl.Int64)})
    table = table.with_columns(
        pl.col("attributes").list.eval(pl.element().replace_strict(codes["id"], codes["code"]))
    )
    labels = [str(i) for i in ids.to_list()]
    return table, {"attributes": {"kind": "multi_code", "cardinality": ids.len() + 1, "labels": labels}}
