"""Low-level helpers shared by the readers: file checks, line reading, typed parsing with line numbers.

The readers parse whole columns at once with Polars expressions; only when a check fails do these helpers
look up *where* (the first offending row), so the happy path stays vectorised and the error path precise.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import polars as pl

from features.errors import DataValidationError

LINE = "_line"  # 1-based line number in the source file, carried until the data is validated


def require_file(path: str | Path, what: str = "file") -> Path:
    """Check that ``path`` is an existing, non-empty, uncompressed regular file; returns it as a ``Path``."""
    path = Path(path)
    if not path.exists():
        parent = path.parent
        listing = sorted(p.name for p in parent.iterdir())[:20] if parent.is_dir() else []
        hint = f"{parent} holds: {', '.join(listing)}" if listing else None
        if not path.is_absolute() and not listing:
            # the shipped configs say ../shared/data/...: read from the current folder, not the config's
            hint = f"a relative path is read from the current folder: here {path.absolute()}"
        raise DataValidationError(path, f"an existing {what}", got="<missing file>", hint=hint)
    if not path.is_file():
        raise DataValidationError(path, f"a {what} (a regular file)", got="<a folder>")
    if path.stat().st_size == 0:
        raise DataValidationError(path, f"a non-empty {what}", got="<empty file>")
    with path.open("rb") as fh:
        head = fh.read(4)
    for magic, kind in _COMPRESSED:
        if head.startswith(magic):
            raise DataValidationError(
                path,
                f"an uncompressed {what}",
                got=f"<a {kind}-compressed file>",
                hint="decompress it and read the uncompressed file: the checks and the line numbers of "
                "their errors are about the file's own bytes",
            )
    return path


# What Polars' scanners decompress on their own (gzip, zlib, zstd): a CSV then failed with a bare
# UnicodeDecodeError, a cut-off download with a bare OSError, and errors named lines of the compressed bytes.
# No Parquet file, JSON or CSV starts so: gzip's and zstd's first bytes are not UTF-8, and zlib's "x" is
# followed by a control character or by 0x9c / 0xda (a lone continuation byte, or an Arabic letter's lead).
_COMPRESSED = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x78\x01", "zlib"),
    (b"\x78\x9c", "zlib"),
    (b"\x78\xda", "zlib"),
)


def locate_decode_error(path: Path, encoding: str = "utf-8") -> DataValidationError | None:
    """Find the first undecodable byte of ``path``: an error naming its line and column, or None."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return DataValidationError(
            path,
            f"{encoding.upper()} text",
            line=line,
            column=f"byte {col}",
            got=f"<undecodable byte 0x{data[exc.start]:02x}>",
        )
    return None


def old_mac_line_endings(path: Path, line: int) -> DataValidationError:
    """The error for a carriage return inside a line (``\\r`` alone ends the lines: old Mac endings)."""
    return DataValidationError(
        path,
        "lines ending in \\n or \\r\\n",
        line=line,
        got="<a carriage return (\\r) inside the line>",
        hint="the file has old Mac line endings: convert them, e.g. tr '\\r' '\\n'",
    )


def read_lines(path: str | Path, encoding: str = "utf-8") -> pl.DataFrame:
    """All lines of a text file as ``[_line: Int64 (1-based), line: Utf8]`` (``\\r\\n`` endings stripped).

    UTF-8 files go through Polars' own line scanner; other encodings (MovieLens' Latin-1 ``u.item``) are
    decoded in Python first, since Polars only reads UTF-8.  Undecodable bytes raise a
    :class:`DataValidationError` naming the line.
    """
    path = require_file(path)
    if encoding.lower().replace("-", "") == "utf8" and hasattr(pl, "scan_lines"):
        try:
            df = pl.scan_lines(path, name="line").collect()
        except pl.exceptions.ComputeError:
            err = locate_decode_error(path, "utf-8")
            if err is not None:
                raise err from None
            raise
    else:
        data = path.read_bytes()
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            err = locate_decode_error(path, encoding)
            assert err is not None
            raise err from None
        df = pl.DataFrame({"line": [text]}).select(pl.col("line").str.split("\n")).explode("line")
        if text.endswith("\n"):
            df = df.head(df.height - 1)
    df = df.select(
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(LINE),
        pl.col("line").str.strip_suffix("\r"),
    )
    # A carriage return left inside a line: old Mac line endings (\r alone), which would make the whole file
    # one line and merge its users.
    bad = df.filter(pl.col("line").str.contains("\r", literal=True)).head(1)
    if bad.height:
        raise old_mac_line_endings(path, bad[LINE][0])
    # A UTF-8 byte-order mark (Windows editors write one) is not part of the first line's text.
    return df.with_columns(
        pl.when(pl.col(LINE) == 1).then(pl.col("line").str.strip_prefix("\ufeff")).otherwise(pl.col("line"))
    )


def split_fields(
    lines: pl.DataFrame, path: Path, sep: str, names: list[str], layout: str, min_fields: int | None = None
) -> pl.DataFrame:
    """Split each non-blank line on ``sep`` into the columns ``names`` (all Utf8), checking the field count.

    Args:
        lines: ``[_line, line]`` from :func:`read_lines`.
        names: column names of the fields; a line must have exactly ``len(names)`` fields (or at least
            ``min_fields`` when given, the rest being null).
        layout: a human description of the expected line, used in the error message.
    Returns:
        ``[_line, *names]``, blank lines dropped.
    """
    n = len(names)
    lines = lines.filter(pl.col("line").str.strip_chars().str.len_chars() > 0)
    parts = lines.with_columns(pl.col("line").str.split(sep).alias("_f"))
    count = pl.col("_f").list.len()
    bad_count = (count < (min_fields or n)) | (count > n)
    bad = parts.filter(bad_count).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        raise DataValidationError(
            path,
            f"{n} {_sep_name(sep)}-separated fields ({layout})",
            line=row[LINE],
            got=f"<{len(row['_f'])} fields: {row['line'][:60]!r}>",
        )
    return parts.select(
        LINE, *[pl.col("_f").list.get(i, null_on_oob=True).alias(c) for i, c in enumerate(names)]
    )


def require_one_line_each(
    df: pl.DataFrame, col: str, path: str | Path, what: str, *, column_label: str
) -> None:
    """Check that no two lines (``_line``) of ``df`` give the same ``col``.

    A file with one line per user or item must list each id once: a repeated id would multiply rows in every
    join on it and give a model a phantom row. Raises a :class:`DataValidationError` naming the repeat's line
    and the first one.
    """
    dup = df.filter(pl.col(LINE) != pl.col(LINE).min().over(col)).sort(LINE).head(1)
    if dup.height:
        r = dup.row(0, named=True)
        first = cast(int, df.filter(pl.col(col) == r[col])[LINE].min())  # line numbers: an integer column
        raise DataValidationError(
            path,
            f"each {what} on one line only",
            line=r[LINE],
            column=column_label,
            got=f"<{what} {r[col]} again (first on line {first})>",
        )


def parse_int(
    df: pl.DataFrame,
    col: str,
    path: str | Path,
    what: str,
    *,
    nonneg: bool = True,
    where: str = LINE,
    column_label: str | pl.Expr | None = None,
) -> pl.Series:
    """Validate that Utf8 column ``col`` holds integers (``>= 0`` when ``nonneg``); return them (Int64, one
    per row of ``df``: computed once here, not again by the caller).

    Raises a :class:`DataValidationError` naming the first bad line (``where`` is the column with 1-based
    line numbers, or ``_row`` for row numbers) and the column (``column_label``: a fixed name, or an
    expression giving it per row, e.g. the token position).
    """
    raw = pl.col(col)
    cast = raw.str.strip_chars().cast(pl.Int64, strict=False)
    label = pl.lit(column_label or col) if not isinstance(column_label, pl.Expr) else column_label
    checked = df.select(where, raw.alias("_raw"), cast.alias("_val"), label.cast(pl.String).alias("_label"))
    problems = [
        (pl.col("_raw").is_null() | (pl.col("_raw").str.strip_chars() == ""), f"{what} (an integer)"),
        (
            pl.col("_val").is_null() & pl.col("_raw").str.strip_chars().str.contains(r"^[+-]?[0-9]+$"),
            f"{what} (an integer that fits in 64 bits)",
        ),
        (pl.col("_val").is_null(), f"{what} (an integer)"),
    ]
    if nonneg:
        problems.append((pl.col("_val") < 0, f"{what} (a non-negative integer)"))
    for mask, expected in problems:
        bad = checked.filter(mask).head(1)
        if bad.height:
            r = bad.row(0, named=True)
            got = "<empty>" if r["_raw"] is None or not r["_raw"].strip() else r["_raw"]
            raise DataValidationError(path, expected, column=r["_label"], got=got, **_loc(where, r))
    return checked["_val"].alias(col)


def _as_text_if_text_like(df: pl.DataFrame, col: str) -> tuple[pl.DataFrame, pl.DataType]:
    """``df`` with column ``col`` as text when it is categorical or all-null (a Parquet writer's choices for
    text values, read as the text they hold), and the column's dtype after that."""
    dtype = df.schema[col]
    if isinstance(dtype, (pl.Categorical, pl.Enum)) or dtype == pl.Null:
        df = df.with_columns(pl.col(col).cast(pl.String))
    return df, df.schema[col]


def parse_float(
    df: pl.DataFrame, col: str, path: Path, what: str, *, where: str = LINE, label: str | None = None
) -> pl.Series:
    """Validate that column ``col`` (Utf8 or numeric) holds finite numbers; return them (Float64). Errors name
    the column ``label`` (default ``col``): the file's name for it, where the frame holds it under another."""
    label = label or col
    df, dtype = _as_text_if_text_like(df, col)
    # a list or struct column: Polars' own error otherwise; a Boolean one reads as 1.0 / 0.0 (a "liked" flag)
    if not (dtype == pl.String or dtype == pl.Boolean or dtype.is_numeric()):
        raise DataValidationError(path, f"{what} (numbers or text)", column=label, got=f"<dtype {dtype}>")
    raw = pl.col(col)
    cast = (raw.str.strip_chars() if dtype == pl.String else raw).cast(pl.Float64, strict=False)
    checked = df.select(where, raw.cast(pl.String).alias("_raw"), cast.alias("_val"))
    bad = checked.filter(pl.col("_raw").is_null() | (pl.col("_raw").str.strip_chars() == "")).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(path, f"{what} (a number)", column=label, got="<empty>", **_loc(where, r))
    bad = checked.filter(pl.col("_val").is_null()).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(path, f"{what} (a number)", column=label, got=r["_raw"], **_loc(where, r))
    bad = checked.filter(~pl.col("_val").is_finite()).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(
            path, f"{what} (a finite number)", column=label, got=r["_raw"], **_loc(where, r)
        )
    return checked["_val"].alias(col)


def parse_timestamp(
    df: pl.DataFrame, col: str, path: Path, *, where: str = LINE, label: str | None = None
) -> pl.Series:
    """Validate a timestamp column and return its values as Int64 (errors name the column ``label``, default
    ``col``).

    Accepted: integers (any unit; unix seconds in the benchmark files), integral floats (RecBole writes
    ``timestamp:float``), Polars Datetime/Date columns (-> unix seconds), and, when *no* value of a text
    column is numeric, ISO-8601 date-times (-> unix seconds). Date-times with a fraction of a second are
    refused (cutting it could reorder events).
    """
    label = label or col
    df, dtype = _as_text_if_text_like(df, col)
    raw = pl.col(col)
    if dtype in (pl.Duration, pl.Time) or not (
        dtype == pl.String or dtype.is_numeric() or dtype.is_temporal()
    ):
        raise DataValidationError(
            path, "a timestamp (integers, dates or date-times)", column=label, got=f"<dtype {dtype}>"
        )
    if dtype.is_temporal():
        bad = df.filter(raw.is_null()).head(1)
        if bad.height:
            raise DataValidationError(
                path, "a timestamp", column=label, got="<empty>", **_loc(where, bad.row(0, named=True))
            )
        if isinstance(dtype, pl.Datetime):
            seen = df.select(where, raw.cast(pl.String).alias("_raw"), raw.alias("_dt"))
            _require_whole_seconds(seen, path, label, where)
        return df.select(raw.dt.epoch("s").cast(pl.Int64)).to_series()
    if dtype.is_integer():
        bad = df.filter(raw.is_null()).head(1)
        if bad.height:
            raise DataValidationError(
                path, "a timestamp", column=label, got="<empty>", **_loc(where, bad.row(0, named=True))
            )
        bad = df.filter(raw.cast(pl.Int64, strict=False).is_null()).head(1)  # a UInt64 beyond 2**63 - 1
        if bad.height:
            r = bad.row(0, named=True)
            raise DataValidationError(
                path, "a timestamp that fits in 64 bits", column=label, got=r[col], **_loc(where, r)
            )
        return df.select(raw.cast(pl.Int64)).to_series()
    text = raw.cast(pl.String).str.strip_chars()
    as_float = text.cast(pl.Float64, strict=False)
    exact = text.cast(pl.Int64, strict=False)  # integers beyond 2**53 lose precision through Float64
    checked = df.select(where, text.alias("_raw"), as_float.alias("_f"), exact.alias("_i"))
    bad = checked.filter(pl.col("_raw").is_null() | (pl.col("_raw") == "")).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(path, "a timestamp", column=label, got="<empty>", **_loc(where, r))
    if dtype == pl.String and checked["_f"].null_count() == checked.height:
        checked = df.select(where, text.alias("_raw"), _iso_datetime(text).alias("_dt"))  # parsed once
        if (unparsed := _first(checked, pl.col("_dt").is_null())) is not None:
            raise DataValidationError(
                path,
                "a timestamp (an integer or an ISO-8601 date-time)",
                column=label,
                got=unparsed["_raw"],
                **_loc(where, unparsed),
            )
        _require_whole_seconds(checked, path, label, where)
        return checked["_dt"].dt.epoch("s").cast(pl.Int64).alias(col)
    bad = checked.filter(
        pl.col("_f").is_null() | ~pl.col("_f").is_finite() | (pl.col("_f") != pl.col("_f").floor())
    )
    bad = bad.head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(
            path, "a timestamp (an integer)", column=label, got=r["_raw"], **_loc(where, r)
        )
    # Out of range when the exact integer cast fails too (2**63 - 1 fits, though as a float it rounds to 2**63).
    bad = checked.filter(pl.col("_i").is_null() & (pl.col("_f").abs() >= 2.0**63)).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        raise DataValidationError(
            path, "a timestamp that fits in 64 bits", column=label, got=r["_raw"], **_loc(where, r)
        )
    # The exact integer when there is one.
    return checked.select(pl.coalesce("_i", pl.col("_f").cast(pl.Int64, strict=False))).to_series().alias(col)


# ISO-8601 only: Polars' own inference also takes 01/02/2020, and reads it day first without a word.
_ISO_NAIVE = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S%.f")
_ISO_OFFSET = ("%Y-%m-%dT%H:%M%z", "%Y-%m-%dT%H:%M:%S%.f%z")


def _iso_datetime(text: pl.Expr) -> pl.Expr:
    """ISO-8601 dates and date-times (``T`` or a space; optional seconds and fraction; ``Z`` or a UTC
    offset) -> ``Datetime[us]`` in UTC (a time without an offset is taken as UTC); null where not ISO."""
    t = text.str.replace(r"Z$", "+00:00").str.replace(" ", "T", literal=True)
    naive = pl.coalesce(*[t.str.strptime(pl.Datetime("us"), f, strict=False) for f in _ISO_NAIVE])
    aware = pl.coalesce(*[t.str.strptime(pl.Datetime("us", "UTC"), f, strict=False) for f in _ISO_OFFSET])
    return pl.coalesce(naive, aware.dt.replace_time_zone(None))


def _require_whole_seconds(checked: pl.DataFrame, path: Path, col: str, where: str) -> None:
    """Refuse date-times with a fraction of a second (``checked``: ``where``, the text ``_raw``, the Datetime
    ``_dt``).

    Timestamps are stored as unix seconds: cutting the fraction would merge events of one second and could
    put a user's latest event before an earlier one (leave-one-out would test the wrong item)."""
    if (r := _first(checked, pl.col("_dt").dt.truncate("1s") != pl.col("_dt"))) is not None:
        raise DataValidationError(
            path,
            "a date-time in whole seconds",
            column=col,
            got=r["_raw"],
            hint="date-times are stored as unix seconds, and cutting the fraction can reorder events; give the "
            "time as integers instead, e.g. unix milliseconds: integers are kept as they are",
            **_loc(where, r),
        )


def _first(frame: pl.DataFrame, mask: pl.Expr) -> dict | None:
    """The first row of ``frame`` where ``mask`` holds, as a dict, or None."""
    bad = frame.filter(mask).head(1)
    return bad.row(0, named=True) if bad.height else None


def _loc(where: str, row: dict) -> dict:
    return {"row": row[where]} if where == "_row" else {"line": row[where]}


def _sep_name(sep: str) -> str:
    return {"\t": "tab", "|": "'|'", ",": "comma", " ": "space"}.get(sep, repr(sep))
