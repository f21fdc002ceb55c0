"""A corpus of malformed inputs: each must fail with a DataValidationError naming the file, the line (or row
/ column) and what was expected.  Files are written into tmp_path by the tests themselves."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import zlib
from pathlib import Path

import polars as pl
import pytest

from features import DataConfig, DataValidationError, PreparedDataset, prepare
from features.readers import read_amazon_seq, read_interactions, read_item_attributes, read_user_lines
from tests.conftest import fixture_data

DATA = fixture_data()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def ml_folder(tmp_path: Path, **replace: str | bytes) -> Path:
    """A copy of the synthetic MovieLens fixture with some files replaced (or deleted with None)."""
    folder = tmp_path / "ml"
    shutil.copytree(DATA / "ml100k_mini", folder)
    for name, content in replace.items():
        name = name.replace("_", ".")
        if content is None:
            (folder / name).unlink()
        else:
            write(folder / name, content)
    return folder


def prep_ml(folder: Path, tmp_path: Path, **kw):
    return prepare(DataConfig(source="movielens_100k", path=str(folder), **kw), cache_dir=tmp_path / "cache")


def prep_lines(folder: Path, tmp_path: Path, **kw):
    return prepare(DataConfig(source="user_lines", path=str(folder), **kw), cache_dir=tmp_path / "cache")


# ---- missing / empty files --------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    folder = ml_folder(tmp_path, u_data=None)
    with pytest.raises(
        DataValidationError,
        match=r"ml/u\.data: expected an existing MovieLens ratings file, "
        r"got <missing file>",
    ):
        prep_ml(folder, tmp_path)


def test_missing_test_file_for_presplit(tmp_path):
    write(tmp_path / "g" / "train.txt", "0 1 2\n")
    with pytest.raises(
        DataValidationError, match=r"g/test\.txt: expected an existing test file.*holds: train\.txt"
    ):
        prep_lines(tmp_path / "g", tmp_path)


def test_a_missing_relative_path_is_shown_as_read_from_the_current_folder(tmp_path, monkeypatch):
    # configs/ say ../shared/data/...: run from elsewhere, the error showed only the relative path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        DataValidationError, match=r"read from the current folder: here .*/\.\./shared/data/g/"
    ):
        prep_lines(Path("../shared/data/g"), tmp_path)


def test_empty_file(tmp_path):
    path = write(tmp_path / "inter.csv", "")
    with pytest.raises(
        DataValidationError,
        match=r"inter\.csv: expected a non-empty interactions file, "
        r"got <empty file>",
    ):
        read_interactions(path)


def test_header_only_csv(tmp_path):
    path = write(tmp_path / "inter.csv", "user_id,item_id\n")
    with pytest.raises(DataValidationError, match=r"inter\.csv: expected at least one interaction"):
        read_interactions(path)


def test_only_blank_lines(tmp_path):
    path = write(tmp_path / "train.txt", "\n  \n\n")
    with pytest.raises(
        DataValidationError, match=r"train\.txt: expected at least one 'uid iid iid \.\.\.' line"
    ):
        read_user_lines(path)


def test_temporal_cut_among_equal_timestamps_leaves_no_train(tmp_path):
    # Day-granular timestamps: the 0.8 quantile is the one timestamp there is, and all of it goes to test.
    path = write(tmp_path / "inter.csv", "user,item,ts\n1,1,5\n1,2,5\n2,1,5\n2,2,5\n")
    split = {"protocol": "temporal", "temporal_cut": 0.8}
    cfg = DataConfig(
        source="interactions",
        path=str(path),
        columns={"user": "user", "item": "item", "timestamp": "ts"},
        split=split,
    )
    with pytest.raises(
        DataValidationError,
        match=r"inter\.csv: expected interactions in the train split, got <none> .*'cut_timestamp': 5.*"
        r"set split\.cut_timestamp",
    ):
        prepare(cfg, cache_dir=tmp_path / "cache")
    # a cut after the last timestamp leaves test empty; the hint then names that cause
    late = cfg.model_copy(
        update={"split": cfg.split.model_copy(update={"temporal_cut": None, "cut_timestamp": 10**6})}
    )
    with pytest.raises(DataValidationError, match=r"in the test split.*after the last timestamp"):
        prepare(late, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# ---- columns ----------------------------------------------------------------------------------------------
def test_missing_columns_lists_existing(tmp_path):
    path = write(tmp_path / "ratings.csv", "user,item,stars\n1,2,5\n")
    with pytest.raises(
        DataValidationError,
        match=r"ratings\.csv, column 'rating': expected column\(s\) "
        r"'rating', got <columns \['user', 'item', 'stars'\]>",
    ):
        read_interactions(path, user="user", item="item", rating="rating")


def test_parquet_null_user_id_names_the_row(tmp_path):
    path = tmp_path / "inter.parquet"
    pl.DataFrame({"user_id": [1, None, 3], "item_id": ["a", "b", "c"]}).write_parquet(path)
    with pytest.raises(
        DataValidationError,
        match=r"inter\.parquet, row 2, column 'user_id': expected a user id, "
        r"got <empty>",
    ):
        read_interactions(path)


# ---- ids --------------------------------------------------------------------------------------------------
def test_non_numeric_user_id_in_u_data(tmp_path):
    folder = ml_folder(tmp_path, u_data="1\t2\t3\t880000000\nabc\t2\t3\t880000001\n")
    with pytest.raises(
        DataValidationError,
        match=r"u\.data, line 2, column 'user': expected a user id "
        r"\(an integer\), got 'abc'",
    ):
        prep_ml(folder, tmp_path)


def test_negative_item_id_in_user_lines(tmp_path):
    path = write(tmp_path / "train.txt", "0 1 2\n1 3\n2 4 -5 6\n")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 3, column 'token 3': expected an item id "
        r"\(a non-negative integer\), got '-5'",
    ):
        read_user_lines(path)


def test_minus_one_is_no_id_and_a_fraction_is_no_timestamp(tmp_path):
    with pytest.raises(
        DataValidationError, match=r"line 2, column 'token 3': .*non-negative integer\), got '-1'"
    ):
        read_amazon_seq(write(tmp_path / "Beauty.txt", "1 1 2\n2 3 -1\n"))
    path = write(tmp_path / "t.csv", "u,i,t\n1,2,10\n1,3,10.5\n")
    with pytest.raises(
        DataValidationError, match=r"t\.csv, line 3, column 't': expected a timestamp \(an integer\)"
    ):
        read_interactions(path, user="u", item="i", timestamp="t")


def test_user_lines_first_token_not_an_integer(tmp_path):
    path = write(tmp_path / "train.txt", "0 1 2\nuser7 3 4\n")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 2, column 'token 1': expected the user id "
        r"as the first token \(an integer\), got 'user7'",
    ):
        read_user_lines(path)


def test_user_lines_duplicate_user_line(tmp_path):
    path = write(tmp_path / "train.txt", "0 1 2\n1 3\n0 4 5\n")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 3, column 'token 1': expected each user on "
        r"one line only, got <user 0 again \(first on line 1\)>",
    ):
        read_user_lines(path)


def test_amazon_non_integer_item_token(tmp_path):
    path = write(tmp_path / "Beauty.txt", "1 1 2 3\n2 4 5x 6\n")
    with pytest.raises(
        DataValidationError,
        match=r"Beauty\.txt, line 2, column 'token 3': expected an item id "
        r"\(an integer\), got '5x'",
    ):
        read_amazon_seq(path)


# ---- ratings and timestamps -------------------------------------------------------------------------------
def test_nan_rating(tmp_path):
    path = write(tmp_path / "r.csv", "u,i,r\na,x,4\nb,y,NaN\n")
    with pytest.raises(
        DataValidationError,
        match=r"r\.csv, line 3, column 'r': expected a rating \(a finite "
        r"number\), got 'NaN'",
    ):
        read_interactions(path, user="u", item="i", rating="r")


def test_empty_rating(tmp_path):
    path = write(tmp_path / "r.csv", "u,i,r\na,x,4\nb,y,5\nc,z,\n")
    with pytest.raises(
        DataValidationError,
        match=r"r\.csv, line 4, column 'r': expected a rating \(a number\), "
        r"got <empty>",
    ):
        read_interactions(path, user="u", item="i", rating="r")


def test_non_numeric_rating_in_u_data(tmp_path):
    folder = ml_folder(tmp_path, u_data="1\t2\tfive\t880000000\n")
    with pytest.raises(
        DataValidationError,
        match=r"u\.data, line 1, column 'rating': expected a rating "
        r"\(a number\), got 'five'",
    ):
        prep_ml(folder, tmp_path)


def test_non_numeric_timestamp(tmp_path):
    path = write(tmp_path / "r.tsv", "u\ti\tts\na\tx\t100\nb\ty\tyesterday\n")
    with pytest.raises(
        DataValidationError,
        match=r"r\.tsv, line 3, column 'ts': expected a timestamp "
        r"\(an integer\), got 'yesterday'",
    ):
        read_interactions(path, user="u", item="i", timestamp="ts")


def test_a_row_with_empty_ids_is_not_a_blank_line(tmp_path):
    # Blank lines are skipped; a line whose id fields are empty but which holds other text is an error.
    path = write(tmp_path / "r.csv", "u,i,ts,note\na,x,100,ok\n\n,,,lost row\n")
    with pytest.raises(
        DataValidationError, match=r"r\.csv, line 4, column 'u': expected a user id.*got <empty>"
    ):
        read_interactions(path, user="u", item="i", timestamp="ts")


@pytest.mark.parametrize(("sep", "suffix"), [(",", "csv"), ("\t", "tsv")])
def test_a_line_of_separators_only_is_a_row_with_empty_ids(tmp_path, sep, suffix):
    # `,,` has every field empty, as a blank line reads, but it is a record: an error, not a skipped line
    path = write(
        tmp_path / f"r.{suffix}", f"u{sep}i{sep}ts\na{sep}x{sep}100\n\n{sep}{sep}\nb{sep}y{sep}101\n"
    )
    with pytest.raises(
        DataValidationError, match=rf"r\.{suffix}, line 4, column 'u': expected a user id.*got <empty>"
    ):
        read_interactions(path, user="u", item="i", timestamp="ts")
    # truly empty lines (also with Windows line ends) are still skipped, and line numbers kept
    crlf = write(tmp_path / f"w.{suffix}", f"u{sep}i\r\na{sep}x\r\n\r\nb{sep}y\r\n")
    assert read_interactions(crlf, user="u", item="i")["_line"].to_list() == [2, 4]


def test_timestamp_beyond_64_bits(tmp_path):
    path = write(tmp_path / "r.csv", "u,i,ts\na,x,100\nb,y,99999999999999999999\n")
    with pytest.raises(
        DataValidationError,
        match=r"r\.csv, line 3, column 'ts': expected a timestamp that fits in 64 bits, got '99999999999999999999'",
    ):
        read_interactions(path, user="u", item="i", timestamp="ts")
    pq = tmp_path / "r.parquet"
    pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "ts": [100.0, 1e20]}).write_parquet(pq)
    with pytest.raises(DataValidationError, match=r"r\.parquet, row 2, column 'ts': .*fits in 64 bits"):
        read_interactions(pq, user="u", item="i", timestamp="ts")
    unsigned = tmp_path / "u.parquet"
    pl.DataFrame(
        {"u": ["a", "b"], "i": ["x", "y"], "ts": pl.Series([100, 2**64 - 1], dtype=pl.UInt64)}
    ).write_parquet(unsigned)
    with pytest.raises(DataValidationError, match=r"u\.parquet, row 2, column 'ts': .*fits in 64 bits"):
        read_interactions(unsigned, user="u", item="i", timestamp="ts")
    # the largest 64-bit integer fits, though as a float it rounds up to 2**63
    edge = write(tmp_path / "edge.csv", "u,i,ts\na,x,9223372036854775807\n")
    assert read_interactions(edge, user="u", item="i", timestamp="ts")["timestamp"].to_list() == [2**63 - 1]


def test_unparseable_datetime_timestamp(tmp_path):
    path = write(tmp_path / "r.csv", "u,i,ts\na,x,2020-01-01T10:00:00\nb,y,tomorrow\n")
    with pytest.raises(
        DataValidationError,
        match=r"r\.csv, line 3, column 'ts': expected a timestamp "
        r"\(an integer or an ISO-8601 date-time\), got 'tomorrow'",
    ):
        read_interactions(path, user="u", item="i", timestamp="ts")


# ---- truncated / ragged lines -----------------------------------------------------------------------------
def test_truncated_u_data_line(tmp_path):
    folder = ml_folder(tmp_path, u_data="1\t2\t3\t880000000\n1\t3\t4\n")
    with pytest.raises(
        DataValidationError,
        match=r"u\.data, line 2: expected 4 tab-separated fields "
        r"\(user id, item id, rating, unix time\), got <3 fields",
    ):
        prep_ml(folder, tmp_path)


def test_truncated_u_item_line(tmp_path):
    good = (DATA / "ml100k_mini" / "u.item").read_bytes().split(b"\n")
    bad = b"\n".join([good[0], b"2|Night Train (1994)|01-Jan-1994||http://x|0|1", *good[2:]])
    folder = ml_folder(tmp_path, u_item=bad)
    with pytest.raises(
        DataValidationError,
        match=r"u\.item, line 2: expected 24 '\|'-separated fields "
        r"\(id\|title.*got <7 fields",
    ):
        prep_ml(folder, tmp_path)


def test_u_item_genre_flag_not_binary(tmp_path):
    good = (DATA / "ml100k_mini" / "u.item").read_bytes().split(b"\n")
    bad = b"\n".join([good[0], good[1].replace(b"|0|1|", b"|0|2|", 1), *good[2:]])
    folder = ml_folder(tmp_path, u_item=bad)
    with pytest.raises(
        DataValidationError,
        match=r"u\.item, line 2, column \"genre 'Action'\": expected a genre "
        r"flag 0 or 1, got '2'",
    ):
        prep_ml(folder, tmp_path)


def test_u_genre_name_listed_twice(tmp_path):
    # each name becomes a feature column: "Action" twice merged the two genres' flags, silently
    genres = (DATA / "ml100k_mini" / "u.genre").read_text(encoding="latin-1").splitlines()
    genres[2] = genres[1].split("|")[0] + "|2"
    folder = ml_folder(tmp_path, u_genre="\n".join(genres) + "\n")
    name = genres[1].split("|")[0]
    with pytest.raises(
        DataValidationError,
        match=rf"u\.genre, line 3, column 'name': expected each genre name once .*got '{name}'",
    ):
        prep_ml(folder, tmp_path)


def test_u_user_age_not_integer(tmp_path):
    folder = ml_folder(tmp_path, u_user="1|24|M|technician|85711\n2|fifty|F|other|94043\n")
    with pytest.raises(
        DataValidationError,
        match=r"u\.user, line 2, column 'age': expected an age "
        r"\(an integer\), got 'fifty'",
    ):
        prep_ml(folder, tmp_path)


def test_u_user_repeated_user_id(tmp_path):
    # A repeated id would multiply the user's row in every join and surface later as a cache-file mismatch.
    folder = ml_folder(
        tmp_path, u_user="1|24|M|technician|85711\n2|53|F|other|94043\n1|24|M|technician|85711\n"
    )
    with pytest.raises(
        DataValidationError,
        match=r"u\.user, line 3, column 'id': expected each user id on one line only, "
        r"got <user id 1 again \(first on line 1\)>",
    ):
        prep_ml(folder, tmp_path)
    assert not any((tmp_path / "cache").glob("*/manifest.json"))  # nothing published


def test_u_item_repeated_item_id(tmp_path):
    good = (DATA / "ml100k_mini" / "u.item").read_bytes().rstrip(b"\n").split(b"\n")
    folder = ml_folder(tmp_path, u_item=b"\n".join([*good, good[1]]) + b"\n")
    with pytest.raises(
        DataValidationError,
        match=rf"u\.item, line {len(good) + 1}, column 'id': expected each item id on one line only, "
        r"got <item id 2 again \(first on line 2\)>",
    ):
        prep_ml(folder, tmp_path, side_features=False)


def test_ragged_csv_line_with_extra_fields(tmp_path):
    path = write(tmp_path / "r.csv", "u,i\na,x\nb,y,extra\nc,z\n")
    with pytest.raises(DataValidationError, match=r"r\.csv, line 3: expected at most 2 fields per line"):
        read_interactions(path, user="u", item="i")


@pytest.mark.parametrize(
    ("content", "line", "got"),
    [
        # a quote opened and never closed: Polars would read the rest of the file into one field
        ('u\ti\ttitle\na\tx\tok\nb\ty\t"big tv\nc\tz\tok\n', 3, "unexpected end of data"),
        ('u\ti\ttitle\na\tx\t"ok"1\nb\ty\tok\n', 2, "'\t' expected after '\"'"),
    ],
)
def test_broken_quote_names_the_line_it_starts_on(tmp_path, content, line, got):
    path = write(tmp_path / "q.tsv", content)
    with pytest.raises(
        DataValidationError, match=rf"q\.tsv, line {line}: expected a field that starts with a quote"
    ) as e:
        read_interactions(path, user="u", item="i")
    assert got in str(e.value)


def test_quote_inside_a_field_is_text(tmp_path):
    # Polars alone fails on this file ("CSV malformed"); no field starts with a quote, so it is read unquoted
    path = write(tmp_path / "q.tsv", 'u\ti\ttitle\na\tx\t12" tv\nb"2\ty\tok"\n')
    df = read_interactions(path, user="u", item="i")
    assert df.rows() == [("a", "x", 2), ('b"2', "y", 3)]


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ('u\ti\ttitle\na\tx\t12" tv\nb\ty\t"ok"\n', 2),
        # quoted fields before it (a doubled quote, a separator inside) are read as the format says
        ('u,i,title\na,x,"a ""b"", c"\nb,y,"ok"\nc,z,x"y\n', 4),
        ('u,i,title\r\na,x,"fine"\r\nb,y,"ok"\r\nc,z,x"y\r\n', 4),
    ],
)
def test_quote_inside_a_field_of_a_quoted_file(tmp_path, content, line):
    # Polars reads that " as a quote (other fields are quoted) and fails without a line: the line is found
    path = write(tmp_path / "q.tsv", content)
    with pytest.raises(
        DataValidationError, match=rf'q\.tsv, line {line}: expected a field holding a " to be'
    ) as e:
        read_interactions(path, user="u", item="i", separator="\t" if "\t" in content else ",")
    assert "quote such a field whole" in str(e.value)


def test_recbole_atomic_bad_header(tmp_path):
    folder = tmp_path / "atomic"
    shutil.copytree(DATA / "ml100k_mini_atomic", folder)
    write(folder / "ml-100k.inter", "user_id:token\titem_id\trating:float\ttimestamp:float\n1\t2\t3\t4\n")
    with pytest.raises(
        DataValidationError,
        match=r"ml-100k\.inter, line 1, column 'field 2': expected a RecBole "
        r"header of 'name:type' fields",
    ):
        prep_ml(folder, tmp_path)


# ---- encodings --------------------------------------------------------------------------------------------
def test_bad_utf8_in_user_lines(tmp_path):
    path = write(tmp_path / "train.txt", b"0 1 2\n1 \xff3 4\n")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 2, column 'byte 3': expected UTF-8 text, "
        r"got <undecodable byte 0xff>",
    ):
        read_user_lines(path)


def test_bad_utf8_in_csv(tmp_path):
    path = write(tmp_path / "r.csv", b"user_id,item_id\nalice,x\nb\xe9b,y\n")
    with pytest.raises(DataValidationError, match=r"r\.csv, line 3, column 'byte 2': expected UTF-8 text"):
        read_interactions(path)


# ---- JSON attributes --------------------------------------------------------------------------------------
def test_malformed_json(tmp_path):
    path = write(tmp_path / "Beauty_item2attributes.json", '{"1": [1, 2],\n "2": [3,, 4]}')
    with pytest.raises(
        DataValidationError,
        match=r"Beauty_item2attributes\.json, line 2, column 'char 10': "
        r"expected valid JSON, got 'Expecting value'",
    ):
        read_item_attributes(path)


def test_attribute_ids_not_integers(tmp_path):
    path = write(
        tmp_path / "Beauty_item2attributes.json", json.dumps({"1": [1, 2], "2": [3, "brand"]}, indent=1)
    )
    with pytest.raises(
        DataValidationError,
        match=r"Beauty_item2attributes\.json, line 6, column \"item '2'\": "
        r"expected a list of positive integer attribute ids",
    ):
        read_item_attributes(path)


def test_attribute_item_key_not_integer(tmp_path):
    path = write(tmp_path / "Beauty_item2attributes.json", '{"1": [1], "B00X": [2]}')
    with pytest.raises(
        DataValidationError,
        match=r"Beauty_item2attributes\.json, line 1, column \"key 'B00X'\": "
        r"expected item ids \(object keys\) that are non-negative 64-bit integers",
    ):
        read_item_attributes(path)


def test_attribute_item_key_in_other_digits(tmp_path):
    # str.isdigit() accepts Arabic-Indic digits, which Polars cannot cast to an integer.
    path = write(tmp_path / "Beauty_item2attributes.json", '{"1": [1],\n "\u0661": [2]}')
    with pytest.raises(DataValidationError, match=r"line 2, .*non-negative 64-bit integers"):
        read_item_attributes(path)


def test_attribute_item_given_twice(tmp_path):
    # "01" is item 1 again; a repeated key would otherwise be dropped by json.loads without a word.
    for text, line, first in (
        ('{"1": [1],\n "01": [2]}', 2, "'1'"),
        ('{"1": [1],\n "2": [3],\n "1": [2]}', 3, "'1'"),
    ):
        path = write(tmp_path / "Beauty_item2attributes.json", text)
        with pytest.raises(
            DataValidationError,
            match=rf"Beauty_item2attributes\.json, line {line}, column \"key '0?1'\": expected each item id "
            rf"once \(as an object key\), got <item 1 again \(first as key {first}\)>",
        ):
            read_item_attributes(path)


# ---- presplit and Parquet ---------------------------------------------------------------------------------
def test_presplit_test_item_unseen_in_train(tmp_path):
    write(tmp_path / "g" / "train.txt", "0 0 1 2\n1 1 2\n")
    write(tmp_path / "g" / "test.txt", "0 3\n1 0 7\n")
    with pytest.raises(
        DataValidationError,
        match=r"g/test\.txt, line 1, column 'item': expected test items that "
        r"also occur in the train file, got <item 3 \(user 0\).*2 such rows>",
    ):
        prep_lines(tmp_path / "g", tmp_path)
    # ... and the option to drop them instead
    ds = prep_lines(tmp_path / "g", tmp_path, split={"protocol": "presplit", "presplit_unseen": "drop"})
    assert ds.manifest["dropped"]["test_unseen"] == 2
    assert ds.manifest["counts"]["test"] == 1


def test_parquet_file_that_is_not_parquet(tmp_path):
    path = write(tmp_path / "inter.parquet", "user_id,item_id\n1,2\n")
    with pytest.raises(
        DataValidationError,
        match=r"inter\.parquet, column 'byte 1': expected a Parquet file "
        r"\(starting and ending with the bytes 'PAR1'\)",
    ):
        read_interactions(path)


# ---- prepared folders -------------------------------------------------------------------------------------
def test_load_reports_missing_manifest_key(tmp_path):
    ds = prep_ml(DATA / "ml100k_mini", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(ds.root, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    del manifest["n_items"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataValidationError, match=r"broken/manifest\.json, column 'n_items': expected keys"):
        PreparedDataset.load(broken)


def unseal(folder: Path) -> None:
    """Drop the recorded sha256s, as in a folder written before they existed, to reach the checks below them."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for key in ("file_sha256", "manifest_sha256"):
        manifest["provenance"].pop(key)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def unsealed_copy(tmp_path: Path) -> tuple[PreparedDataset, Path]:
    """A prepared mini MovieLens and an unsealed copy of its folder (``tmp_path / "broken"``) to damage."""
    ds = prep_ml(DATA / "ml100k_mini", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(ds.root, broken)
    unseal(broken)
    return ds, broken


def test_load_refuses_changed_bytes_and_an_edited_manifest(tmp_path):
    ds = prep_ml(DATA / "ml100k_mini", tmp_path)
    for damage in ("bit", "config", "files"):
        broken = tmp_path / damage
        shutil.copytree(ds.root, broken)
        manifest = json.loads((broken / "manifest.json").read_text())
        if damage == "bit":  # one flipped bit in a Parquet page: it used to load, with other numbers
            data = bytearray((broken / "train.parquet").read_bytes())
            data[len(data) // 2] ^= 1
            (broken / "train.parquet").write_bytes(bytes(data))
            match = r"train\.parquet: expected the sha256 recorded in manifest\.json"
        else:  # an edited config, or a file dropped from the list (its side features silently gone)
            if damage == "config":
                manifest["config"]["min_user_interactions"] = 3
            else:
                manifest["files"].remove("items")
            (broken / "manifest.json").write_text(json.dumps(manifest))
            match = r"manifest\.json, column 'provenance\.manifest_sha256': expected the manifest as prepare"
        with pytest.raises(DataValidationError, match=match):
            PreparedDataset.load(broken)
    unseal(broken)  # a folder from before the sha256s loads as before
    assert PreparedDataset.load(broken).n_users == ds.n_users


def test_load_reports_row_count_mismatch(tmp_path):
    _, broken = unsealed_copy(tmp_path)
    pl.read_parquet(broken / "test.parquet").head(1).write_parquet(broken / "test.parquet")
    with pytest.raises(
        DataValidationError,
        match=r"broken/test\.parquet, column 'rows': expected \d+ rows "
        r"\(as manifest\.json says\), got 1",
    ):
        PreparedDataset.load(broken)


def test_load_reports_a_missing_index_and_mistyped_manifest_values(tmp_path):
    _, broken = unsealed_copy(tmp_path)
    train = pl.read_parquet(broken / "train.parquet")
    train.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("user_idx")).alias(
        "user_idx")).write_parquet(broken / "train.parquet")  # fmt: skip
    with pytest.raises(DataValidationError, match=r"train\.parquet, column 'user_idx': .*got <1 missing>"):
        PreparedDataset.load(broken)
    train.write_parquet(broken / "train.parquet")
    manifest = json.loads((broken / "manifest.json").read_text())
    for key, value in (("counts", [3, 1, 1]), ("n_users", "two"), ("files", None), ("n_items", True)):
        (broken / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        with pytest.raises(DataValidationError, match=rf"manifest\.json, column '{key}': expected"):
            PreparedDataset.load(broken)


def test_load_refuses_an_index_equal_to_the_vocabulary_size(tmp_path):
    ds, broken = unsealed_copy(tmp_path)
    test = pl.read_parquet(broken / "test.parquet")
    test.with_columns(pl.lit(ds.n_items, dtype=pl.Int64).alias("item_idx")).write_parquet(
        broken / "test.parquet"
    )
    with pytest.raises(
        DataValidationError,
        match=rf"test\.parquet, column 'item_idx': expected item_idx in \[0, {ds.n_items}\)",
    ):
        PreparedDataset.load(broken)


def test_load_reports_missing_file(tmp_path):
    ds = prep_ml(DATA / "ml100k_mini", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(ds.root, broken)
    (broken / "item_vocab.parquet").unlink()
    with pytest.raises(
        DataValidationError,
        match=r"broken/item_vocab\.parquet: expected the file listed in "
        r"manifest\.json",
    ):
        PreparedDataset.load(broken)


def test_corpus_is_large_enough():
    cases = [name for name in globals() if name.startswith("test_") and name != "test_corpus_is_large_enough"]
    assert len(cases) >= 18


# ---- messy real-world files: line endings, byte-order marks, headers, records over several lines -----------
def test_old_mac_line_endings_in_user_lines(tmp_path):
    # read as one line, user 1 would become an item of user 0
    path = write(tmp_path / "train.txt", b"0 1 2\r1 3\r")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 1: expected lines ending in \\n or \\r\\n, got <a carriage",
    ):
        read_user_lines(path)


def test_old_mac_line_endings_in_a_csv(tmp_path):
    # Polars reads the whole file as the header line: it used to end in "expected at least one interaction"
    for name, content, line in [("mac.csv", b"u,i\r1,10\r2,11\r", 1), ("lead.csv", b"\n\nu,i\r1,10\r", 3)]:
        with pytest.raises(
            DataValidationError,
            match=rf"{name}, line {line}: expected lines ending in .*old Mac line endings",
        ):
            read_interactions(write(tmp_path / name, content), user="u", item="i")


def test_readers_take_text_paths(tmp_path):
    csv_path = write(tmp_path / "i.csv", "u,i\n1,10\n")
    assert read_interactions(str(csv_path), user="u", item="i").rows() == [("1", "10", 2)]
    assert read_user_lines(str(write(tmp_path / "train.txt", "0 1 2\n")))[0].height == 2
    assert read_amazon_seq(str(write(tmp_path / "Beauty.txt", "1 1 2\n"))).height == 2
    assert read_item_attributes(str(write(tmp_path / "a.json", '{"1": [1]}'))).height == 1


def test_byte_order_mark_in_line_files_and_json(tmp_path):
    pairs, _ = read_user_lines(write(tmp_path / "train.txt", "\ufeff0 1 2\r\n1 3\r\n"))
    assert pairs.select("user_id", "item_id").rows() == [("0", "1"), ("0", "2"), ("1", "3")]
    seq = read_amazon_seq(write(tmp_path / "Beauty.txt", "\ufeff1 1 2 3\n2 4 5\n"))
    assert seq["user_id"].unique().sort().to_list() == ["1", "2"]
    attrs = read_item_attributes(write(tmp_path / "Beauty_item2attributes.json", '\ufeff{"1": [1, 2]}'))
    assert attrs.height == 1


def test_compressed_files_are_refused_by_name(tmp_path):
    # Polars decompresses gzip / zlib / zstd on its own, but the checks read the file's bytes: a gzipped CSV
    # failed with a bare UnicodeDecodeError, a cut-off download with a bare OSError, and a gzipped line file
    # was read, its errors naming lines and bytes of the compressed data.
    lines = b"".join(b"%d %d %d\n" % (u, u + 1, u + 2) for u in range(3000))
    cases = [
        ("inter.csv", gzip.compress(b"user_id,item_id\n1,2\n"), read_interactions, "gzip"),
        ("train.txt", gzip.compress(lines), read_user_lines, "gzip"),
        ("cut.txt", gzip.compress(lines)[:500], read_user_lines, "gzip"),
        ("Beauty.txt", zlib.compress(b"1 1 2\n"), read_amazon_seq, "zlib"),
        ("a.json", gzip.compress(b'{"1": [1]}'), read_item_attributes, "gzip"),
    ]
    for name, content, reader, kind in cases:
        with pytest.raises(
            DataValidationError,
            match=rf"{re.escape(name)}: expected an uncompressed .*got <a {kind}-compressed",
        ):
            reader(write(tmp_path / name, content))
    # prepare refuses it before anything is hashed or cached
    write(tmp_path / "g" / "train.txt", gzip.compress(lines))
    with pytest.raises(DataValidationError, match=r"g/train\.txt: expected an uncompressed train file"):
        prep_lines(tmp_path / "g", tmp_path, split={"protocol": "leave_one_out"})
    assert not (tmp_path / "cache").exists()


def test_deeply_nested_json(tmp_path):
    path = write(tmp_path / "Beauty_item2attributes.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataValidationError, match=r"Beauty_item2attributes\.json: expected a JSON object"):
        read_item_attributes(path)


def test_header_naming_a_column_twice(tmp_path):
    # a column nobody reads may repeat (Excel's trailing separators give empty names)
    unread = write(tmp_path / "u.csv", "user_id,item_id,note,note,,\n1,3,a,b,,\n")
    assert read_interactions(unread).rows() == [("1", "3", 2)]
    path = write(tmp_path / "d.csv", "user_id,user_id,item_id\n1,9,3\n")
    with pytest.raises(
        DataValidationError,
        match=r"d\.csv, line 1, column 'user_id': expected each column name once in the header, "
        r"got <'user_id' as fields 1 and 2>",
    ):
        read_interactions(path)


def test_blank_lines_before_the_first_record_keep_line_numbers(tmp_path):
    path = write(tmp_path / "lb.csv", "\n\nuser_id,item_id,rating\n1,2,3\n1,3,x\n")
    with pytest.raises(DataValidationError, match=r"lb\.csv, line 5, column 'rating'"):
        read_interactions(path, rating="rating")
    headerless = write(tmp_path / "h.csv", "\n1,2\n3,4\n")
    df = read_interactions(headerless, user="column_1", item="column_2", has_header=False)
    assert df.rows() == [("1", "2", 2), ("3", "4", 3)]


@pytest.mark.parametrize(
    ("name", "content", "line", "to"),
    [
        # TSV: a review that merely starts with a quote would swallow the next two rows
        ("sw.tsv", 'user_id\titem_id\ttitle\n1\t2\t"Great\n3\t4\tx\n5\t6\tok"\n7\t8\ty\n', 2, 4),
        # CSV: a quoted line break is valid CSV, but every later line number would be off by one
        ("emb.csv", 'user_id,item_id,title\n1,2,x\n1,3,"a\nb"\n1,4,y\n', 3, 4),
    ],
)
def test_record_over_several_lines(tmp_path, name, content, line, to):
    path = write(tmp_path / name, content)
    with pytest.raises(
        DataValidationError,
        match=rf"line {line}: expected one record per line, got <a quoted field running on to line {to}>",
    ):
        read_interactions(path)


def test_timestamps_iso_only_with_offsets(tmp_path):
    path = write(
        tmp_path / "t.csv",
        "u,i,ts\na,x,2020-01-01T00:00:00Z\na,y,2020-01-01T02:00:00+02:00\nb,x,2020-01-01 00:00:07\n"
        "b,y,2020-01-01\nc,x,2020-01-01T01:00+0100\n",
    )
    ts = read_interactions(path, user="u", item="i", timestamp="ts")["timestamp"].to_list()
    assert ts == [1577836800, 1577836800, 1577836807, 1577836800, 1577836800]
    # day and month order is ambiguous outside ISO-8601: Polars would read 01/02/2020 as 1 February
    us = write(tmp_path / "us.csv", "u,i,ts\na,x,2020-01-01\na,y,01/02/2020\n")
    with pytest.raises(
        DataValidationError, match=r"us\.csv, line 3, column 'ts': .*ISO-8601.*got '01/02/2020'"
    ):
        read_interactions(us, user="u", item="i", timestamp="ts")


def test_date_times_with_a_fraction_of_a_second_are_refused(tmp_path):
    # cut to seconds, a user's latest event (.9 s) tied with an earlier one and leave-one-out tested the wrong item
    from datetime import datetime

    times = [datetime(2020, 1, 1, 0, 0, 0, 900_000), datetime(2020, 1, 1)]
    pl.DataFrame({"u": ["a", "a"], "i": ["x", "y"], "ts": times}).write_parquet(tmp_path / "r.parquet")
    with pytest.raises(
        DataValidationError,
        match=r"r\.parquet, row 1, column 'ts': expected a date-time in whole seconds, got '2020-01-01 00:00:00\.9",
    ):
        read_interactions(tmp_path / "r.parquet", user="u", item="i", timestamp="ts")
    iso = write(tmp_path / "t.csv", "u,i,ts\na,x,2020-01-01T00:00:00Z\na,y,2020-01-01T00:00:00.900Z\n")
    with pytest.raises(DataValidationError, match=r"t\.csv, line 3, .*whole seconds.*unix milliseconds"):
        read_interactions(iso, user="u", item="i", timestamp="ts")
    # whole seconds in a finer unit are fine
    pl.DataFrame({"u": ["a"], "i": ["x"], "ts": [datetime(2020, 1, 1, 0, 0, 7)]}).with_columns(
        pl.col("ts").cast(pl.Datetime("ns"))
    ).write_parquet(tmp_path / "ns.parquet")
    ts = read_interactions(tmp_path / "ns.parquet", user="u", item="i", timestamp="ts")["timestamp"]
    assert ts.to_list() == [1577836807]


@pytest.mark.parametrize("dtype", [pl.Duration("us"), pl.Time])
def test_parquet_timestamp_of_a_non_instant_type(tmp_path, dtype):
    pq = tmp_path / "r.parquet"
    values = pl.Series([1_000_000, 2_000_000]).cast(pl.Int64).cast(dtype)
    pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "ts": values}).write_parquet(pq)
    with pytest.raises(
        DataValidationError, match=r"r\.parquet, column 'ts': expected a timestamp .*got <dtype"
    ):
        read_interactions(pq, user="u", item="i", timestamp="ts")


@pytest.mark.parametrize("column", ["rating", "ts"])
@pytest.mark.parametrize("values", [[[1, 2], [3]], [{"a": 1}, {"a": 2}]], ids=["list", "struct"])
def test_parquet_rating_or_timestamp_of_a_nested_type_is_named(tmp_path, column, values):
    # was a raw Polars error (a list column cannot be cast to text) with no file or column in it
    frame = {"u": ["a", "b"], "i": ["x", "y"], "rating": [4.0, 5.0], "ts": [1, 2]}
    pl.DataFrame({**frame, column: values}).write_parquet(tmp_path / "n.parquet")
    with pytest.raises(DataValidationError, match=rf"n\.parquet, column '{column}': expected .*got <dtype"):
        read_interactions(tmp_path / "n.parquet", user="u", item="i", rating="rating", timestamp="ts")


def test_a_boolean_parquet_rating_reads_as_one_and_zero(tmp_path):
    # a "liked" flag: read as 1.0 / 0.0 before the nested-type check, and again now
    frame = {"u": ["a", "b", "c"], "i": ["x", "y", "z"], "liked": [True, False, True], "ts": [1, 2, 3]}
    pl.DataFrame(frame).write_parquet(tmp_path / "b.parquet")
    read = read_interactions(tmp_path / "b.parquet", user="u", item="i", rating="liked", timestamp="ts")
    assert read["rating"].to_list() == [1.0, 0.0, 1.0]


def test_categorical_or_all_null_parquet_ratings_and_timestamps_read_as_their_text(tmp_path):
    # the nested-type check refused these by dtype; they are text, read (or refused by row) as text
    base = {"u": ["a", "b"], "i": ["x", "y"], "r": ["4", "5"], "ts": ["1", "2"]}
    pl.DataFrame(base).with_columns(pl.col("ts", "r").cast(pl.Categorical)).write_parquet(
        tmp_path / "c.parquet"
    )
    read = read_interactions(tmp_path / "c.parquet", user="u", item="i", rating="r", timestamp="ts")
    assert read["rating"].to_list() == [4.0, 5.0] and read["timestamp"].to_list() == [1, 2]
    pl.DataFrame(base).with_columns(pl.lit(None).alias("r")).write_parquet(tmp_path / "n.parquet")
    with pytest.raises(
        DataValidationError, match=r"n\.parquet, row 1, column 'r': expected a rating .*<empty>"
    ):
        read_interactions(tmp_path / "n.parquet", user="u", item="i", rating="r", timestamp="ts")


def test_parquet_with_categorical_ids_and_parquet_named_csv(tmp_path):
    frame = pl.DataFrame({"u": ["a", "b"], "i": ["x", "y"]}).with_columns(pl.col("u").cast(pl.Categorical))
    frame.write_parquet(tmp_path / "c.parquet")
    assert read_interactions(tmp_path / "c.parquet", user="u", item="i").rows() == [
        ("a", "x", 1),
        ("b", "y", 2),
    ]
    frame.write_parquet(tmp_path / "c.csv")
    with pytest.raises(
        DataValidationError, match=r"c\.csv: expected a delimited text file, got <a Parquet file>"
    ):
        read_interactions(tmp_path / "c.csv", user="u", item="i")


def test_file_with_a_column_named_like_the_line_index(tmp_path):
    path = write(tmp_path / "l.csv", "user_id,item_id,_line\n1,2,99\n")
    assert read_interactions(path).rows() == [("1", "2", 2)]
    pl.DataFrame({"user_id": ["1"], "item_id": ["2"], "_line": [99]}).write_parquet(tmp_path / "l.parquet")
    assert read_interactions(tmp_path / "l.parquet").rows() == [("1", "2", 1)]


def test_rating_or_timestamp_columns_named_like_another_role_or_the_line_index(tmp_path):
    # the frame was renamed to the file's names to parse them: a Polars DuplicateError, not a table
    path = write(tmp_path / "c.csv", "uid,iid,user_id,timestamp,_line\n1,2,5,10,7\n1,3,4,11,8\n")
    got = read_interactions(path, user="uid", item="iid", rating="user_id", timestamp="_line")
    assert got.rows() == [("1", "2", 5.0, 7, 2), ("1", "3", 4.0, 8, 3)]
    got = read_interactions(path, user="uid", item="iid", rating="timestamp", timestamp="user_id")
    assert got.rows() == [("1", "2", 10.0, 5, 2), ("1", "3", 11.0, 4, 3)]
    pl.DataFrame({"u": ["1"], "i": ["2"], "_row": [3.0]}).write_parquet(tmp_path / "r.parquet")
    assert read_interactions(tmp_path / "r.parquet", user="u", item="i", rating="_row").rows() == [
        ("1", "2", 3.0, 1)
    ]
    # errors still name the file's column
    write(tmp_path / "bad.csv", "uid,iid,user_id\n1,2,5\n1,3,x\n")
    with pytest.raises(DataValidationError, match=r"bad\.csv, line 3, column 'user_id': expected a rating"):
        read_interactions(tmp_path / "bad.csv", user="uid", item="iid", rating="user_id")


def test_user_lines_id_beyond_64_bits(tmp_path):
    path = write(tmp_path / "train.txt", "0 1 2\n99999999999999999999 3\n")
    with pytest.raises(
        DataValidationError,
        match=r"train\.txt, line 2, column 'token 1': expected the user id as the first token "
        r"\(an integer that fits in 64 bits\), got '99999999999999999999'",
    ):
        read_user_lines(path)
