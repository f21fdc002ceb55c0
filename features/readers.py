"""Readers: raw files -> validated Polars frames with canonical columns.

Every reader returns interactions as ``[user_id: Utf8, item_id: Utf8, rating: Float64 (optional),
timestamp: Int64 (optional), _line: Int64]`` where ``_line`` is the 1-based line of the row in its file
(kept so that later checks, such as unseen test items, can still name the line; dropped before writing).
Ids are kept as text, so string ids (``"A1B2"``) and numeric ids share one code path; numeric formats write
the canonical decimal form (``"007"`` -> ``"7"``).

Validation is done per column with Polars expressions; on failure the first offending row is reported
through :class:`features.errors.DataValidationError` with its file, line (or row) and column.
"""

from __future__ import annotations

import csv
import json
import mmap
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from features._text import (
    LINE,
    locate_decode_error,
    old_mac_line_endings,
    parse_float,
    parse_int,
    parse_timestamp,
    read_lines,
    require_file,
    require_one_line_each,
)
from features.config import DataConfig
from features.errors import DataValidationError
from features.movielens import movielens_files, read_movielens

__all__ = [
    "RawData",
    "read_interactions",
    "read_user_lines",
    "read_amazon_seq",
    "read_item_attributes",
    "source_files",
    "read_source",
]

PARQUET_SUFFIXES = (".parquet", ".pq")
_ROW = "__recsys_row_index__"  # the scans' row index: a name no file uses (a file may have a `_line` column)
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


@dataclass
class RawData:
    """Everything a source yields before filtering and splitting.

    Attributes:
        interactions: canonical interaction frame (for ``presplit``: the train file).
        test: the benchmark's own test interactions (``presplit`` only).
        user_ids: every user id the files mention, including users listed without any item (``Utf8``).
        users: raw user side features keyed by ``user_id``, or None.
        items: raw item side features keyed by ``item_id`` (may hold ``title``), or None.
    """

    interactions: pl.DataFrame
    files: dict[str, Path]
    test: pl.DataFrame | None = None
    user_ids: pl.Series | None = None
    users: pl.DataFrame | None = None
    items: pl.DataFrame | None = None


# ---- generic CSV / TSV / Parquet --------------------------------------------------------------------------
def read_interactions(
    path: str | Path,
    *,
    user: str = "user_id",
    item: str = "item_id",
    rating: str | None = None,
    timestamp: str | None = None,
    separator: str | None = None,
    has_header: bool = True,
) -> pl.DataFrame:
    """Read a generic interactions file (CSV, TSV or Parquet) with configurable column names.

    Only the named columns are read (the scan is lazy, so other columns are never parsed).  Blank lines are
    skipped.  User and item ids may be any non-empty text or integers.

    Returns:
        ``[user_id: Utf8, item_id: Utf8, rating: Float64?, timestamp: Int64?, _line: Int64]``; for Parquet
        ``_line`` is the 1-based row number.
    """
    path = require_file(path, "interactions file")
    wanted = {"user_id": user, "item_id": item}
    if rating is not None:
        wanted["rating"] = rating
    if timestamp is not None:
        wanted["timestamp"] = timestamp
    is_parquet = path.suffix.lower() in PARQUET_SUFFIXES
    if is_parquet:
        _check_parquet_magic(path)
        lf = pl.scan_parquet(path).with_row_index(_ROW, offset=1)
        where = "_row"
    else:
        found = separator or _SEPARATORS.get(path.suffix.lower())
        if found is None:
            raise DataValidationError(
                path,
                "a .csv, .tsv or .parquet suffix, or data.separator set",
                got=path.suffix or "<no suffix>",
            )
        sep = found  # a str also after the if/else, where only text files read it
        # All columns as text: types are checked below, column by column, so that an error can name the line.
        # The row index is offset so that it equals the file's line number (one record per line assumed).
        # Headerless columns are named column_1, column_2, ... (1-based, whatever the Polars version says).
        rename = None if has_header else (lambda cols: [f"column_{k + 1}" for k in range(len(cols))])
        # Blank lines before the first record: Polars skips them before a header (shifting every line number)
        # and takes the first for a one-column header-less row, so they are skipped here, and counted.
        lead = leading_blank_lines(path)
        if has_header:
            check_header(path, sep, wanted.values(), lead)

        def scan(quote_char: str | None) -> pl.LazyFrame:
            return pl.scan_csv(
                path,
                separator=sep,
                has_header=has_header,
                infer_schema=False,
                skip_lines=lead,
                row_index_name=_ROW,
                row_index_offset=1 + lead + int(has_header),
                encoding="utf8",
                with_column_names=rename,
                quote_char=quote_char,
            )

        lf = scan('"')
        where = LINE
    headerless = not (has_header or is_parquet)
    try:
        df = _collect(lf, wanted, path, headerless)
    except (pl.exceptions.PolarsError, OSError) as exc:
        # Polars takes any `"` for a quote, also inside a field (`12" tv`), and then fails. When no field of
        # the file starts with one, every quote is text: read it again without quoting (same fields).
        if is_parquet or not _quotes_are_text(path, sep):
            raise explain_scan_error(path, exc, is_parquet, separator) from None
        try:
            df = _collect(scan(None), wanted, path, headerless)
        except (pl.exceptions.PolarsError, OSError) as exc2:
            raise explain_scan_error(path, exc2, is_parquet, separator) from None
    if not is_parquet:
        check_one_record_per_line(path, sep, df.height + lead + int(has_header))
    if where == "_row":
        df = df.rename({LINE: "_row"})
    # A blank CSV line reads as a row of nulls: skip it, like the line-based readers do. So does a line of
    # separators only (`,,`), which is a record with empty ids: keep it, so that it fails below.
    if not is_parquet:
        nulls = df.filter(pl.col("_blank"))[LINE].to_list()
        empty = set(empty_lines(path, nulls)) if nulls else set()
        df = df.filter(~(pl.col("_blank") & pl.col(LINE).is_in(list(empty))))
    df = df.drop("_blank")
    if df.height == 0:
        raise DataValidationError(path, "at least one interaction", got="<no data rows>")
    out = [
        _id_column(df, "user_id", user, path, where),
        _id_column(df, "item_id", item, path, where),
    ]
    # Parsed under their canonical names, errors naming the file's: renaming the frame to the file's names
    # clashed when one is another canonical name or the row index (a rating column named "user_id", "_line").
    if rating is not None:
        out.append(parse_float(df, "rating", path, "a rating", where=where, label=rating).alias("rating"))
    if timestamp is not None:
        out.append(parse_timestamp(df, "timestamp", path, where=where, label=timestamp).alias("timestamp"))
    return df.select(*out, pl.col(where).cast(pl.Int64).alias(LINE))


def _collect(lf: pl.LazyFrame, wanted: dict[str, str], path: Path, headerless: bool) -> pl.DataFrame:
    """The wanted columns of a scan (named by their canonical names), its row index and a ``_blank`` flag."""
    names = [n for n in lf.collect_schema().names() if n != _ROW]
    missing = [c for c in wanted.values() if c not in names]
    if missing:
        raise DataValidationError(
            path,
            f"column(s) {', '.join(repr(m) for m in missing)}",
            column=missing[0],
            got=f"<columns {names}>",
            hint="set data.columns.user/item/rating/timestamp to the file's names"
            + ("; without a header the columns are column_1, column_2, ..." if headerless else ""),
        )
    # A line is blank when every field is empty, not only the ones read: `,,,text` is a row with missing ids.
    blank = pl.all_horizontal([pl.col(n).is_null() for n in names]).alias("_blank")
    return lf.select(
        pl.col(_ROW).alias(LINE), *[pl.col(src).alias(dst) for dst, src in wanted.items()], blank
    ).collect()


def empty_lines(path: Path, lines: list[int]) -> list[int]:
    """Those of the 1-based ``lines`` of a text file that hold nothing (not even a separator or a space)."""
    wanted, out = set(lines), []
    last = max(wanted, default=0)
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if number in wanted and not raw.rstrip(b"\r\n"):
                out.append(number)
            if number >= last:
                break
    return out


def leading_blank_lines(path: Path) -> int:
    """How many empty lines a delimited text file starts with.

    Refuses, naming the line, a Parquet file under a text name and a first record with a carriage return
    inside it: old Mac line endings (``\\r`` alone), which Polars reads as one line (the header) and no rows."""
    n = 0
    with path.open("rb") as fh:
        if fh.read(4) == b"PAR1":
            raise DataValidationError(
                path, "a delimited text file", got="<a Parquet file>", hint="name it .parquet"
            )
        fh.seek(0)
        while raw := fh.readline(1 << 20):  # bounded: a file without \n would otherwise be read whole
            if raw.rstrip(b"\r\n"):
                if b"\r" in raw.rstrip(b"\r\n"):
                    raise old_mac_line_endings(path, n + 1)
                break
            n += 1
    return n


def check_header(path: Path, sep: str, read: Iterable[str], lead: int = 0) -> None:
    """Refuse a header (on line ``lead + 1``) that names a column to ``read`` twice: Polars would rename the
    second copy and read the first.  Other repeated names (``note,note``, empty names of trailing
    separators) are columns nobody reads, and pass."""
    read = set(read)
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        for _ in range(lead):
            fh.readline()
        header = next(csv.reader(fh, delimiter=sep), [])
    first: dict[str, int] = {}
    for k, name in enumerate(header, start=1):
        if name in first and name in read:
            raise DataValidationError(
                path,
                "each column name once in the header",
                line=lead + 1,
                column=name,
                got=f"<{name!r} as fields {first[name]} and {k}>",
            )
        first[name] = k


def check_one_record_per_line(path: Path, sep: str, records: int) -> None:
    """Refuse a file whose records do not match its lines one to one (``records`` counts the header and the
    blank lines): a quoted field that runs over several lines would shift every later line number, and in a
    TSV file a field that merely starts with ``"`` silently swallows the rows up to the next quote."""
    lines = count_lines(path)
    if records == lines:
        return
    # Error path: find the first record that spans lines with the csv module.
    for start, end, _ in _records(path, sep):
        if end > start:
            raise DataValidationError(
                path,
                "one record per line",
                line=start,
                got=f"<a quoted field running on to line {end}>",
                hint='a field that starts with " is quoted up to the next lone "; remove such quotes, or '
                "put the field's line breaks inside it in another form",
            )
    raise DataValidationError(path, "one record per line", got=f"<{records} records on {lines} lines>")


def count_lines(path: Path) -> int:
    """A text file's number of lines (a last line without its newline counts), by one pass over its bytes."""
    lines, last = 0, b""
    for block in _blocks(path):
        lines += block.count(b"\n")
        last = block
    return lines + (bool(last) and not last.endswith(b"\n"))


def record_start_lines(path: Path, sep: str) -> list[int]:
    """The first line of every record of a delimited text file (blank lines and the header included), for
    files whose quoted fields run over lines: the line numbers of its rows are then not ``2, 3, ...``."""
    return [start for start, _, _ in _records(path, sep)]


def _blocks(path: Path) -> Iterator[bytes]:
    """A file's bytes in 1 MiB blocks."""
    with path.open("rb") as fh:
        yield from iter(lambda: fh.read(1 << 20), b"")


def _records(path: Path, sep: str, strict: bool = False) -> Iterator[tuple[int, int, list[str]]]:
    """``(first line, last line, fields)`` of each record of a delimited UTF-8 file, by Python's csv module
    (error paths only: it is slow).  ``strict`` raises ``csv.Error`` where Polars fails too: a quote that never
    closes, or text after a closing quote; the record then starts on the line after the last one yielded."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=sep, strict=strict)
        start = 1
        for record in reader:
            yield start, reader.line_num, record
            start = reader.line_num + 1


def _stray_quote_line(path: Path, sep: str) -> int | None:
    """The first line holding a ``"`` inside a field that does not start with one (``4,x"y``), or None.

    Quoted fields (which may span lines and hold doubled quotes) are skipped as the csv format reads them."""
    quoted = False  # inside a quoted field, which may continue on the next line
    with path.open(newline="", encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            at, end = 0, len(line.rstrip("\r\n"))
            while at < end or (quoted and at < len(line)):
                if quoted:  # up to the closing quote; a doubled one is a literal quote
                    close = line.find('"', at)
                    if close < 0:
                        break  # the field goes on on the next line
                    if line.startswith('""', close):
                        at = close + 2
                        continue
                    quoted, at = False, close + 1
                    at = line.find(sep, at)
                    at = end if at < 0 else at + 1
                elif line.startswith('"', at):
                    quoted, at = True, at + 1
                else:  # an unquoted field, up to the separator
                    stop = line.find(sep, at, end)
                    stop = end if stop < 0 else stop
                    if '"' in line[at:stop]:
                        return number
                    at = stop + 1
    return None


def _quotes_are_text(path: Path, sep: str) -> bool:
    """Whether no field of a delimited text file starts with a ``"`` (then quoting plays no part in it)."""
    opens_quote = re.compile(rb"(?:^|" + re.escape(sep.encode()) + rb')"', re.MULTILINE)
    if path.stat().st_size == 0:
        return False  # nothing to read again (and mmap refuses an empty file)
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return opens_quote.search(data) is None


def _id_column(df: pl.DataFrame, col: str, label: str, path: Path, where: str) -> pl.Series:
    """Ids may be text or integers; they must not be empty. Returns them as Utf8, named ``col``."""
    dtype = df.schema[col]
    # Categorical / Enum: pandas `category` columns and Arrow dictionaries of strings
    if not (dtype == pl.String or dtype.is_integer() or isinstance(dtype, (pl.Categorical, pl.Enum))):
        raise DataValidationError(path, "ids as text or integers", column=label, got=f"<dtype {dtype}>")
    text = df.select(where, pl.col(col).cast(pl.String).str.strip_chars().alias("_v"))
    bad = text.filter(pl.col("_v").is_null() | (pl.col("_v") == "")).head(1)
    if bad.height:
        r = bad.row(0, named=True)
        loc = {"row": r[where]} if where == "_row" else {"line": r[where]}
        raise DataValidationError(
            path, "a user id" if col == "user_id" else "an item id", column=label, got="<empty>", **loc
        )
    return text["_v"].alias(col)


def _check_parquet_magic(path: Path) -> None:
    # A Parquet file starts and ends with b"PAR1"; checking costs 8 bytes of I/O and turns an opaque
    # decoder error ("out of spec") into a clear one.
    with path.open("rb") as fh:
        head = fh.read(4)
        size = path.stat().st_size
        fh.seek(max(0, size - 4))
        tail = fh.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise DataValidationError(
            path, "a Parquet file (starting and ending with the bytes 'PAR1')", column="byte 1", got=head
        )


def explain_scan_error(
    path: Path, exc: Exception, is_parquet: bool = False, separator: str | None = None
) -> Exception:
    """Turn a Polars scan error into a DataValidationError naming the line, by re-reading the file."""
    if is_parquet:
        return DataValidationError(path, "a readable Parquet file", got=f"<{type(exc).__name__}: {exc}>")
    err = locate_decode_error(path, "utf-8")
    if err is not None:
        return err
    sep = separator or _SEPARATORS.get(path.suffix.lower(), ",")
    # Polars reports ragged rows and broken quoting without a line number: find the first such record with
    # the csv module (error path). Strict mode fails where Polars does: a field that opens a quote and never
    # closes it (it would swallow the rest of the file), or text after a closing quote.
    width, start = None, 1  # start: the line the next record starts on
    try:
        for _, end, record in _records(path, sep, strict=True):
            if record and width is None:
                width = len(record)
            elif record and width is not None and len(record) > width:
                return DataValidationError(
                    path,
                    f"at most {width} fields per line, like the first line",
                    line=end,
                    got=f"<{len(record)} fields>",
                )
            start = end + 1
    except csv.Error as quote_error:
        return DataValidationError(
            path,
            "a field that starts with a quote to end with one, followed by the separator or the line's end",
            line=start,
            got=f"<{quote_error}>",
            hint='a field holding a literal " must be quoted whole, with that quote doubled: "12"" tv"',
        )
    stray = _stray_quote_line(path, sep)
    if stray is not None:
        return DataValidationError(
            path,
            'a field holding a " to be quoted whole (other fields of the file are quoted, so Polars reads it '
            "as a quote)",
            line=stray,
            got=f"<{str(exc).splitlines()[0]}>",
            hint='quote such a field whole, with its quotes doubled ("12"" tv")',
        )
    has_quote = any(b'"' in block for block in _blocks(path))
    return DataValidationError(
        path,
        "a well-formed delimited text file",
        got=f"<{str(exc).splitlines()[0]}>",
        hint=(
            'Polars reads a " inside a field as a quote when other fields of the file are quoted: quote such '
            'a field whole, with its quotes doubled ("12"" tv")'
            if has_quote
            else None
        ),
    )


# ---- "one line per user" (LightGCN) and Amazon sequences --------------------------------------------------
def _read_id_lines(path: str | Path, what: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Parse ``uid iid iid ...`` lines (whitespace-separated non-negative integers).

    Returns:
        interactions ``[user_id, item_id, _line, _pos]`` (``_pos``: 0-based position of the item in its
        line) and users ``[user_id, _line]`` with one row per non-blank line, items or not.
    """
    lines = read_lines(path)
    tok = lines.select(LINE, pl.col("line").str.extract_all(r"\S+").alias("_t")).filter(
        pl.col("_t").list.len() > 0
    )
    if tok.height == 0:
        raise DataValidationError(path, f"at least one '{what}' line", got="<only blank lines>")
    tok = tok.with_columns(pl.col("_t").list.first().alias("_u"))
    uid = parse_int(tok, "_u", path, "the user id as the first token", column_label="token 1")
    tok = tok.with_columns(uid.alias("_uid"))
    require_one_line_each(tok, "_uid", path, "user", column_label="token 1")
    users = tok.select(pl.col("_uid").cast(pl.String).alias("user_id"), LINE)
    long = (
        tok.select(
            LINE,
            "_uid",
            pl.col("_t").list.slice(1).alias("_i"),
            pl.int_ranges(0, pl.col("_t").list.len() - 1, dtype=pl.Int64).alias("_pos"),
        )
        .explode(["_i", "_pos"])
        .filter(pl.col("_i").is_not_null())
    )
    items = parse_int(long, "_i", path, "an item id", column_label=pl.format("token {}", pl.col("_pos") + 2))
    inter = long.select(
        pl.col("_uid").cast(pl.String).alias("user_id"),
        items.cast(pl.String).alias("item_id"),
        LINE,
        "_pos",
    )
    return inter, users


def read_user_lines(path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """LightGCN's ``uid iid iid ...`` format (one line per user, no timestamps, order not meaningful).

    Returns:
        (interactions ``[user_id, item_id, _line]``, users ``[user_id, _line]``); a line with a user id and no
        items yields the user without interactions.
    """
    inter, users = _read_id_lines(path, "uid iid iid ...")
    return inter.drop("_pos"), users


def read_amazon_seq(path: str | Path) -> pl.DataFrame:
    """S3-Rec's Amazon ``uid i1 i2 ... in`` sequences (time order, no timestamps).

    The position of an item in its line becomes its ``timestamp`` (0, 1, 2, ...), so that time-ordered
    protocols (leave-one-out) see the sequence order.

    Returns:
        ``[user_id, item_id, timestamp: Int64, _line]``.
    """
    inter, _ = _read_id_lines(path, "uid i1 i2 ...")
    return inter.select("user_id", "item_id", pl.col("_pos").alias("timestamp"), LINE)


def read_item_attributes(path: str | Path) -> pl.DataFrame:
    """``<name>_item2attributes.json``: ``{"item id": [attribute id, ...], ...}``.

    Attribute ids must be positive integers (0 is reserved for "unknown / padding").

    Returns:
        ``[item_id: Utf8, attributes: List[Int64]]``.
    """
    path = require_file(path, "item attributes file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark, if any, is not JSON text
    except UnicodeDecodeError:
        err = locate_decode_error(path)
        assert err is not None
        raise err from None
    try:
        # Pairs, not a dict: json.loads would keep only the last of two equal keys, without a word.
        obj = json.loads(text, object_pairs_hook=_JsonPairs)
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            path, "valid JSON", line=exc.lineno, column=f"char {exc.colno}", got=exc.msg
        ) from None
    except RecursionError:
        raise DataValidationError(
            path, "a JSON object mapping item id -> list of attribute ids", got="<JSON nested too deeply>"
        ) from None
    if not isinstance(obj, _JsonPairs):
        raise DataValidationError(
            path,
            "a JSON object mapping item id -> list of attribute ids",
            line=1,
            got=f"<JSON {type(obj).__name__}>",
        )
    item_ids, values = [], []
    first_key: dict[int, str] = {}
    # One pass over items (not interactions) in Python: JSON values arrive as Python objects anyway.
    for key, value in obj:
        digits = key.strip()
        # isdigit() alone also accepts other scripts' digits ("١"), which Polars cannot cast.
        if not (digits.isascii() and digits.isdigit()) or int(digits) >= 2**63:
            raise DataValidationError(
                path,
                "item ids (object keys) that are non-negative 64-bit integers",
                column=f"key {key!r}",
                got=key,
                **_json_pos(text, key),
            )
        item = int(digits)
        if item in first_key:
            raise DataValidationError(
                path,
                "each item id once (as an object key)",
                column=f"key {key!r}",
                got=f"<item {item} again (first as key {first_key[item]!r})>",
                **_json_pos(text, key, repeat=key == first_key[item]),
            )
        first_key[item] = key
        if not isinstance(value, list) or not all(type(a) is int and 0 < a < 2**63 for a in value):
            raise DataValidationError(
                path,
                "a list of positive integer attribute ids",
                column=f"item {key!r}",
                got=value,
                **_json_pos(text, key),
            )
        item_ids.append(str(item))  # canonical: "007" -> "7"
        values.append(value)
    return pl.DataFrame(
        {"item_id": item_ids, "attributes": values},
        schema={"item_id": pl.String, "attributes": pl.List(pl.Int64)},
    )


class _JsonPairs(list):
    """A JSON object as its ``(key, value)`` pairs in file order, repeats kept."""


def _json_pos(text: str, key: str, *, repeat: bool = False) -> dict:
    """Line of ``"key"`` in a JSON text (its first occurrence, or its second when ``repeat``), for error
    messages."""
    # The file may spell a non-ASCII key as such or \u-escaped.
    for quoted in dict.fromkeys((json.dumps(key, ensure_ascii=False), json.dumps(key))):
        pos = text.find(quoted)
        if repeat and pos >= 0:
            pos = text.find(quoted, pos + 1)
        if pos >= 0:
            return {"line": text.count("\n", 0, pos) + 1}
    return {}


# ---- by config --------------------------------------------------------------------------------------------
def source_files(cfg: DataConfig, root: Path) -> dict[str, Path]:
    """The files a config will read, by role (``interactions``, ``test``, ``users``, ``items``, ...).

    Listed before anything is parsed so that their content hashes can key the prepared-dataset cache.
    ``root`` is ``cfg.path`` resolved (for ``movielens_100k`` with ``path: auto``, the obtained folder).
    Missing required files raise :class:`DataValidationError`.
    """
    src = cfg.source
    if src == "interactions":
        return {"interactions": require_file(root, "interactions file")}
    if src == "movielens_100k":
        return movielens_files(root, cfg.side_features)
    if src == "user_lines":
        if root.is_file():
            if cfg.split.protocol == "presplit":
                raise DataValidationError(
                    root,
                    "a folder holding data.train_file and data.test_file for split.protocol 'presplit'",
                    got="<a single file>",
                )
            return {"interactions": require_file(root, "user lines file")}
        files = {"interactions": require_file(root / cfg.train_file, "train file")}
        test = root / cfg.test_file if cfg.test_file else None
        if cfg.split.protocol == "presplit":
            assert test is not None
            files["test"] = require_file(test, "test file")
        elif test is not None and test.exists():
            files["test"] = require_file(test, "test file")
        return files
    if src == "amazon_seq":
        if root.is_file() or root.suffix == ".txt":
            seq, stem = root, root.stem
        else:
            stem = cfg.name or ""
            seq = root / f"{stem}.txt"
        files = {"interactions": require_file(seq, "sequence file")}
        attrs = seq.with_name(f"{stem}_item2attributes.json")
        if cfg.side_features and attrs.exists():
            files["attributes"] = attrs
        return files
    raise AssertionError(src)  # pragma: no cover - Literal-checked by pydantic


def read_source(cfg: DataConfig, files: dict[str, Path]) -> RawData:
    """Read and validate the files of :func:`source_files` into a :class:`RawData`."""
    src = cfg.source
    if src == "interactions":
        c = cfg.columns
        df = read_interactions(
            files["interactions"],
            user=c.user,
            item=c.item,
            rating=c.rating,
            timestamp=c.timestamp,
            separator=cfg.separator,
            has_header=cfg.has_header,
        )
        return RawData(df, files)
    if src == "movielens_100k":
        inter, users, items = read_movielens(files)
        return RawData(inter, files, users=users, items=items)
    if src == "user_lines":
        train, train_users = read_user_lines(files["interactions"])
        test, test_users = read_user_lines(files["test"]) if "test" in files else (None, None)
        user_ids = pl.concat([train_users, test_users]) if test_users is not None else train_users
        if cfg.split.protocol != "presplit" and test is not None:
            # Re-splitting a benchmark: its train and test files together are the interaction log.
            train, test = pl.concat([train, test]), None
        return RawData(train, files, test=test, user_ids=user_ids["user_id"].unique(maintain_order=True))
    if src == "amazon_seq":
        inter = read_amazon_seq(files["interactions"])
        items = read_item_attributes(files["attributes"]) if "attributes" in files else None
        return RawData(inter, files, items=items)
    raise AssertionError(src)  # pragma: no cover
