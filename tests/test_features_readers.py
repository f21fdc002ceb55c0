"""Readers on small files: generic CSV/TSV/Parquet, user lines, Amazon sequences, MovieLens (both layouts)."""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pytest

from features.errors import DataValidationError
from features.movielens import movielens_files, read_movielens
from features.readers import read_amazon_seq, read_interactions, read_item_attributes, read_user_lines
from tests.conftest import fixture_data

DATA = fixture_data()


def test_csv_with_configured_columns_and_blank_line(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("who,what,stars,when,extra\nalice,42,4.5,1000,z\n\nbob,7,3,1001.0,z\n")
    df = read_interactions(path, user="who", item="what", rating="stars", timestamp="when")
    assert df.schema == {
        "user_id": pl.String,
        "item_id": pl.String,
        "rating": pl.Float64,
        "timestamp": pl.Int64,
        "_line": pl.Int64,
    }
    assert df.rows() == [("alice", "42", 4.5, 1000, 2), ("bob", "7", 3.0, 1001, 4)]


def test_tsv_without_header_and_iso_timestamps(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("u1\ti1\t2020-01-01T00:00:00\nu2\ti2\t2020-01-02T00:00:00\n")
    df = read_interactions(path, user="column_1", item="column_2", timestamp="column_3", has_header=False)
    assert df["timestamp"].to_list() == [1577836800, 1577923200]
    assert df["_line"].to_list() == [1, 2]


def test_parquet_typed_columns(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "user": [10, 11],
            "item": ["a", "b"],
            "r": [1, 5],
            "t": [dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, 0, 0, 1)],
        }
    ).write_parquet(path)
    df = read_interactions(path, user="user", item="item", rating="r", timestamp="t")
    assert df["user_id"].to_list() == ["10", "11"]
    assert df["rating"].to_list() == [1.0, 5.0]
    assert df["timestamp"].to_list() == [1577836800, 1577836801]


def test_user_lines_with_user_without_items(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("0 5 3\n1\n2 3  4 \n")
    inter, users = read_user_lines(path)
    assert inter.select("user_id", "item_id").rows() == [("0", "5"), ("0", "3"), ("2", "3"), ("2", "4")]
    assert users["user_id"].to_list() == ["0", "1", "2"]


def test_amazon_positions_become_timestamps(tmp_path):
    path = tmp_path / "Toy.txt"
    path.write_text("1 7 8 9\n2 9 7\n")
    df = read_amazon_seq(path)
    assert df.select("user_id", "item_id", "timestamp").rows() == [
        ("1", "7", 0),
        ("1", "8", 1),
        ("1", "9", 2),
        ("2", "9", 0),
        ("2", "7", 1),
    ]


def test_item_attributes(tmp_path):
    path = tmp_path / "Toy_item2attributes.json"
    path.write_text('{"7": [1, 2], "8": []}')
    df = read_item_attributes(path)
    assert df.schema == {"item_id": pl.String, "attributes": pl.List(pl.Int64)}
    assert df.rows() == [("7", [1, 2]), ("8", [])]


@pytest.mark.parametrize("folder", ["ml100k_mini", "ml100k_mini_atomic"])
def test_movielens_layouts(folder):
    inter, users, items = read_movielens(movielens_files(DATA / folder))
    assert inter.height == 40 and users is not None and items is not None
    assert inter.schema["rating"] == pl.Float64 and inter.schema["timestamp"] == pl.Int64
    assert users.columns == ["user_id", "age", "gender", "occupation", "zip_code"]
    row = items.filter(pl.col("item_id") == "3").row(0, named=True)
    assert row["title"] == "Café Lumière"  # Latin-1 u.item decoded; year moved to release_year
    assert row["release_year"] == 1996 and row["genres"] == ["Drama"]
    unknown = items.filter(pl.col("item_id") == "4").row(0, named=True)
    assert unknown["release_year"] is None and unknown["genres"] == ["unknown"]


def test_a_u_item_written_in_utf8_keeps_its_titles(tmp_path):
    """GroupLens wrote u.item in Latin-1; a file in that format written today is UTF-8, and was read as
    Latin-1 ("Amélie" came out as "AmÃ©lie")."""
    import shutil

    folder = tmp_path / "ml"
    shutil.copytree(DATA / "ml100k_mini", folder)
    text = (folder / "u.item").read_bytes().decode("latin-1").replace("Night Train", "東京物語")
    (folder / "u.item").write_bytes(text.encode("utf-8"))
    _, _, items = read_movielens(movielens_files(folder))
    titles = dict(zip(items["item_id"].to_list(), items["title"].to_list(), strict=True))
    assert titles["2"] == "東京物語" and titles["3"] == "Café Lumière"


def test_movielens_layouts_agree():
    classic = read_movielens(movielens_files(DATA / "ml100k_mini"))
    atomic = read_movielens(movielens_files(DATA / "ml100k_mini_atomic"))
    assert classic[0].drop("_line").equals(atomic[0].drop("_line"))
    assert classic[1].equals(atomic[1])
    cols = ["item_id", "release_year", "genres"]
    assert classic[2].select(cols).equals(atomic[2].select(cols))


# R17: data.separator must win over the suffix's default separator.
def test_configured_separator_overrides_csv_suffix(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id;item_id\nu1;i1\nu2;i2\n")
    df = read_interactions(path, separator=";")
    assert df.select("user_id", "item_id", "_line").rows() == [("u1", "i1", 2), ("u2", "i2", 3)]


# R4: a header with a byte-order mark still refuses a read column named twice.
def test_bom_header_repeated_read_column_refused(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("\ufeffuser_id,item_id,user_id\nu1,i1,u9\n".encode("utf-8"))
    with pytest.raises(DataValidationError, match="each column name once"):
        read_interactions(path)


# R12: attribute id 0 is reserved for padding and must be refused.
def test_item_attribute_zero_refused(tmp_path):
    path = tmp_path / "x_item2attributes.json"
    path.write_text(json.dumps({"1": [3, 0]}))
    with pytest.raises(DataValidationError, match="positive integer attribute ids"):
        read_item_attributes(path)


# R13: an item id key of exactly 2**63 does not fit int64 and must be refused.
def test_item_attribute_key_2pow63_refused(tmp_path):
    path = tmp_path / "x_item2attributes.json"
    path.write_text(json.dumps({str(2**63): [1], "1": [2]}))
    with pytest.raises(DataValidationError, match="non-negative 64-bit"):
        read_item_attributes(path)
