"""Score a saved recommendation file against a truth file with the same metrics as the models.

RECS: columns ``user, item, score`` (higher is better); TRUTH: columns ``user, item``.  CSV or Parquet, chosen
by the extension (``.csv``; ``.parquet`` / ``.pq``); other columns are ignored.  Ids are read as strings
(surrounding whitespace stripped), so ``7`` in one file matches ``7`` in the other whatever their types.

* A ``(user, item)`` pair listed more than once in RECS counts once, with its highest score.
* An item scored ``-inf`` is not recommended (as in ``eval.full_ranking_topk``), but it is an item of the
  files: it counts for the id order and for ``coverage@k``'s denominator below.
* Each user's recommendations are ranked by score, descending; equal scores rank the lower item id first,
  comparing ids as integers when every item id in the two files is an integer (signed, any size; ``07`` before
  ``7``), as strings otherwise (the same rule as ``eval.full_ranking_topk``, where ids are dense indices).
* Users in TRUTH without recommendations count, with zero for every metric (a warning says how many); users in
  RECS that are not in TRUTH are ignored; every mean is over the users of TRUTH. When no user of TRUTH has a
  recommendation the files do not match (other ids, another dataset) and it is an error, not all zeros.
* ``coverage@k`` divides by ``n_items`` if given, else by the number of distinct items in the two files.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from eval.metrics import check_ks, ranking_metrics
from features.readers import (
    check_header,
    check_one_record_per_line,
    count_lines,
    explain_scan_error,
    leading_blank_lines,
    record_start_lines,
)

__all__ = ["evaluate_recs_file", "read_recs", "read_truth"]

_CSV = {".csv"}
_PARQUET = {".parquet", ".pq"}


def _read_table(path: str | Path, columns: tuple[str, ...], role: str) -> pl.DataFrame:
    """Read ``columns`` of a CSV/Parquet file; ids as stripped strings.  Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{role} file {path} " + ("is a folder" if path.is_dir() else "does not exist")
        )
    suffix = path.suffix.lower()
    # Polars skips blank lines before the header: count them, so that line numbers stay the file's. This
    # also refuses old Mac line endings (read as one header line) and a Parquet file named .csv, by line.
    lead = leading_blank_lines(path) if suffix in _CSV else 0
    try:
        if suffix in _CSV:
            # a repeated column: Polars would read the first copy without a word
            check_header(path, ",", columns, lead)
            df = pl.read_csv(path, infer_schema=False)
        elif suffix in _PARQUET:
            df = pl.read_parquet(path)
        else:
            raise ValueError(
                f"{role} file {path}: unknown extension {path.suffix!r} (expected .csv, .parquet or .pq)"
            )
    except pl.exceptions.NoDataError:
        raise ValueError(f"{role} file {path} is empty") from None
    except (pl.exceptions.PolarsError, OSError) as e:
        if suffix in _CSV:  # ragged rows and broken quotes, named by line
            raise explain_scan_error(path, e, separator=",") from None
        raise ValueError(f"{role} file {path} cannot be read: {e}") from e
    lines = _line_numbers(path, df.height, lead) if suffix in _CSV else None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{role} file {path} lacks column(s) {', '.join(map(repr, missing))}; it has {df.columns} "
            f"(expected {', '.join(columns)})"
        )
    # Where each row is, for error messages: its line in a CSV (the header is line 1), its row in a Parquet.
    if lines is None:
        df = df.with_row_index(_AT, offset=1)
    else:
        df = df.with_columns(pl.Series(_AT, lines, dtype=pl.UInt32))
    if suffix in _CSV:  # a blank line (every field empty) reads as a row of nulls: skip it, as the readers do
        df = df.filter(~pl.all_horizontal([pl.col(c).is_null() for c in df.columns if c != _AT]))
    df = df.select(_AT, *columns)
    if df.height == 0:
        raise ValueError(f"{role} file {path} has a header but no rows")
    for col in ("user", "item"):
        dtype = df[col].dtype
        if not (dtype == pl.String or dtype.is_integer() or dtype == pl.Categorical or dtype == pl.Enum):
            raise ValueError(f"{role} file {path}: column {col!r} holds {df[col].dtype}, expected ids")
        df = df.with_columns(pl.col(col).cast(pl.String).str.strip_chars())
        broken = df.filter(pl.col(col).str.contains(r"[\r\n]"))
        if broken.height:
            # a quote opened in an id swallows the rows up to the next quote into that one id
            raise ValueError(
                f"{role} file {path}, {_where(path, broken)}: column {col!r} holds a line break (a quoted "
                "field running on over the next lines); expected one line per id"
            )
        empty = df.filter(pl.col(col).is_null() | (pl.col(col) == ""))
        if empty.height:
            raise ValueError(
                f"{role} file {path}: {empty.height} row(s) with an empty {col!r}, first at {_where(path, empty)}"
            )
    return df


_AT = "_at"


def _line_numbers(path: Path, rows: int, lead: int) -> list[int] | range:
    """The line of each of a CSV file's ``rows`` rows (after ``lead`` blank lines and the header): one per
    line, or, where a quoted field of some column runs over lines, each record's first line."""
    if count_lines(path) == rows + lead + 1:
        return range(lead + 2, lead + 2 + rows)
    starts = record_start_lines(path, ",")[lead + 1 :]
    if len(starts) != rows:  # the csv module reads the records otherwise than Polars: say so, by line
        check_one_record_per_line(path, ",", rows + lead + 1)
    return starts


def _where(path: str | Path, bad: pl.DataFrame) -> str:
    """``line N`` (CSV) or ``row N`` (Parquet) of the first row of ``bad``."""
    return f"{'row' if Path(path).suffix.lower() in _PARQUET else 'line'} {bad[_AT][0]}"


def read_recs(path: str | Path) -> pl.DataFrame:
    """``user: String, item: String, score: Float64`` from a RECS file, validated (no null, non-numeric or
    NaN score); duplicate pairs are kept (see :func:`evaluate_recs_file`)."""
    df = _read_table(path, ("user", "item", "score"), "recs")
    score = df["score"]
    if score.dtype == pl.String:
        parsed = score.str.strip_chars().cast(pl.Float64, strict=False)
        bad = df.filter(parsed.is_null() & score.is_not_null() & (score.str.strip_chars() != ""))
        if bad.height:
            examples = ", ".join(repr(v) for v in bad["score"].head(3).to_list())
            raise ValueError(
                f"recs file {path}: {bad.height} non-numeric score value(s), e.g. {examples}, first at "
                f"{_where(path, bad)}"
            )
        score = parsed
    elif score.dtype.is_numeric():
        score = score.cast(pl.Float64)
    else:
        raise ValueError(f"recs file {path}: column 'score' holds {score.dtype}, expected numbers")
    for what, mask in (("row(s) without a score", score.is_null()), ("NaN score(s)", score.is_nan())):
        bad = df.filter(mask)
        if bad.height:
            raise ValueError(f"recs file {path}: {bad.height} {what}, first at {_where(path, bad)}")
    return df.with_columns(score.alias("score")).drop(_AT)


def read_truth(path: str | Path) -> pl.DataFrame:
    """``user: String, item: String`` from a TRUTH file, one row per distinct pair."""
    return _read_table(path, ("user", "item"), "truth").drop(_AT).unique(maintain_order=True)


def _item_codes(items: pl.Series) -> pl.DataFrame:
    """Dense item codes in id order: integer order when every id is an integer, string order otherwise; ids
    of equal value (``07``, ``7``) by their text, so that the order, and the ranking of ties, never varies."""
    frame = pl.DataFrame({"item": items.unique()})
    as_int = frame["item"].cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:
        frame = frame.with_columns(_key=as_int).sort("_key", "item")
    elif frame["item"].str.contains(r"^[+-]?[0-9]+$").all():  # beyond 64 bits: Python's integers
        ordered = sorted(frame["item"].to_list(), key=_integer_order)
        frame = pl.DataFrame({"item": ordered}, schema={"item": pl.String})
    else:
        frame = frame.sort("item")
    return frame.select("item").with_row_index("i", offset=0).with_columns(pl.col("i").cast(pl.Int64))


def _check_users_match(
    recs: pl.DataFrame, listed: pl.DataFrame, users: pl.DataFrame, recs_path, truth_path
) -> None:
    """Refuse files whose users do not meet (every metric would be a silent zero); warn about truth users
    without a list, who count as zeros. ``recs``: the recommended rows (score above -inf); ``listed``: all
    rows, so that a file whose every row is scored -inf is named for what it is."""
    listed_users = listed.select(pl.col("user").unique().sort())
    covered = users.join(recs.select("user").unique(), on="user", how="semi").height
    if covered == 0 and users.join(listed_users, on="user", how="semi").height:
        raise ValueError(
            f"no user of {truth_path} has a recommendation in {recs_path}: every row of theirs is scored -inf, "
            "which means not recommended"
        )
    if covered == 0:
        raise ValueError(
            f"none of the {users.height:,} users of {truth_path} has a recommendation in {recs_path}: do the "
            f"files use the same user ids? truth users look like {users['user'].head(3).to_list()}, "
            f"recommendation users like {listed_users['user'].head(3).to_list()}"
        )
    if covered < users.height:
        warnings.warn(
            f"{users.height - covered:,} of the {users.height:,} users of {truth_path} have no recommendation in "
            f"{recs_path}; they count with zero for every metric",
            stacklevel=3,
        )


_NINES = str.maketrans("0123456789", "9876543210")


def _integer_order(text: str) -> tuple[int, int, str, str]:
    """A sort key that orders integer ids of any size by value, then by text (``int()`` refuses texts of
    more than 4,300 digits): the sign, then the magnitude's length, then its digits (negated for negatives)."""
    digits = text.lstrip("+-").lstrip("0")
    if not digits:
        return (0, 0, "", text)
    if text.startswith("-"):
        return (-1, -len(digits), digits.translate(_NINES), text)
    return (1, len(digits), digits, text)


def evaluate_recs_file(
    recs_path: str | Path,
    truth_path: str | Path,
    ks: Sequence[int] = (20,),
    *,
    n_items: int | None = None,
) -> dict[str, float]:
    """Metrics of the recommendations in ``recs_path`` against ``truth_path`` (rules: the module docstring).

    Args:
        recs_path: CSV/Parquet with ``user, item, score``.
        truth_path: CSV/Parquet with ``user, item``.
        ks: cut-offs; lists are truncated at ``max(ks)``.
        n_items: catalogue size for ``coverage@k`` (default: distinct items in the two files).

    Returns:
        The dict of :func:`eval.metrics.ranking_metrics`.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file is empty or unreadable, lacks a column, or has a non-numeric, missing or NaN score;
            or no user of the truth file has a recommendation.
    """
    ks = check_ks(ks)
    listed = read_recs(recs_path).group_by("user", "item").agg(pl.col("score").max())
    truth = read_truth(truth_path)
    # The items of the two files, -inf ones included: dropping them first changed the id order (an id that
    # is no integer switched every tie to string order) and coverage's denominator.
    items = _item_codes(pl.concat([listed["item"], truth["item"]]))
    recs = listed.filter(pl.col("score") > float("-inf"))

    users = (
        truth.select(pl.col("user").unique().sort())
        .with_row_index("u")
        .with_columns(pl.col("u").cast(pl.Int64))
    )
    _check_users_match(recs, listed, users, recs_path, truth_path)
    truth_codes = truth.join(users, on="user").join(items, on="item")
    n_users, n_codes = users.height, items.height
    # No list is longer than the n_codes items; past that length every metric but precision stays the same,
    # so the lists are cut there (a huge k would otherwise allocate users x k slots).
    width = min(max(ks), n_codes)
    ranked = (
        recs.join(users, on="user", how="inner")  # users without truth are ignored
        .join(items, on="item")
        .sort(["u", "score", "i"], descending=[False, True, False])
        .with_columns(pl.int_range(pl.len()).over("u").alias("rank"))
        .filter(pl.col("rank") < width)
    )
    topk = np.full((n_users, width), -1, dtype=np.int64)
    topk[ranked["u"].to_numpy(), ranked["rank"].to_numpy()] = ranked["i"].to_numpy()
    truth_csr = sp.csr_matrix(
        (
            np.ones(truth_codes.height, dtype=np.float32),
            (truth_codes["u"].to_numpy(), truth_codes["i"].to_numpy()),
        ),
        shape=(n_users, n_codes),
    )
    cut = sorted({min(k, width) for k in ks})
    at = ranking_metrics(topk, truth_csr, cut, n_items=n_codes if n_items is None else n_items)
    names = [key.split("@")[0] for key in at if key.endswith(f"@{cut[0]}")]
    result: dict[str, float] = {}
    for k in ks:
        for name in names:
            value = at[f"{name}@{min(k, width)}"]
            # precision@k counts hits over k slots, the empty ones past the lists included
            result[f"{name}@{k}"] = value * min(k, width) / k if name == "precision" else value
    return result
