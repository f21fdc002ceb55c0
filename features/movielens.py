"""MovieLens-100K readers: the GroupLens folder (``u.data``, ``u.user``, ``u.item``, ``u.genre``) and RecBole's
atomic files (``ml-100k.inter``, ``ml-100k.user``, ``ml-100k.item``) that ship in the ``recbole`` wheel.

Both layouts are read into the same frames, so that a dataset prepared from either is the same:

* interactions ``[user_id: Utf8, item_id: Utf8, rating: Float64, timestamp: Int64, _line: Int64]``
* users ``[user_id, age: Int64, gender: Utf8, occupation: Utf8, zip_code: Utf8]``
* items ``[item_id, title: Utf8, release_year: Int64 (null when unknown), genres: List[Utf8]]``

Titles: GroupLens writes ``Toy Story (1995)`` and RecBole ``Toy Story`` with ``release_year`` 1995 apart, so
the year suffix is moved out of the GroupLens title.  RecBole's copy differs from GroupLens in two item rows
only: item 267's title is spelled ``unkonwn``, and item 1412 (``... (1995) (V)``) has title ``...
(1995)`` and release year ``V`` (read as unknown), where GroupLens gives 1995 from its release date.
Interactions, users and genres are identical row for row.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features._text import (
    LINE,
    parse_float,
    parse_int,
    parse_timestamp,
    read_lines,
    require_file,
    require_one_line_each,
    split_fields,
)
from features.errors import DataValidationError

# The 19 genre flags of u.item, in u.genre order (RecBole's atomic files carry names only).
ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]

CLASSIC_FILES = {"interactions": "u.data", "users": "u.user", "items": "u.item", "genres": "u.genre"}
ATOMIC_FILES = {"interactions": "ml-100k.inter", "users": "ml-100k.user", "items": "ml-100k.item"}


def movielens_files(folder: Path, side_features: bool = True) -> dict[str, Path]:
    """The files of a MovieLens-100K folder to read, by role, in whichever layout the folder has.

    Titles live in the item file, so it is read even without side features when it exists.
    """
    if not folder.is_dir():
        raise DataValidationError(
            folder,
            "a MovieLens-100K folder (u.data, u.user, u.item, u.genre)",
            got="<missing folder>" if not folder.exists() else "<a file>",
        )
    layout = (
        ATOMIC_FILES
        if not (folder / "u.data").exists() and (folder / "ml-100k.inter").exists()
        else CLASSIC_FILES
    )
    files = {role: folder / name for role, name in layout.items()}
    require_file(files["interactions"], "MovieLens ratings file")
    if side_features:
        for role in ("users", "items", "genres"):
            if role in files:
                require_file(files[role], f"MovieLens {role} file")
    else:
        files.pop("users")
        if not files["items"].exists():
            files.pop("items")
            files.pop("genres", None)
        elif "genres" in files and not files["genres"].exists():
            files.pop("genres")  # the standard genre list is used (only titles are needed)
    return files


def read_movielens(files: dict[str, Path]) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame | None]:
    """Read the files listed by :func:`movielens_files` -> (interactions, users or None, items or None)."""
    if files["interactions"].name == "u.data":
        inter = read_u_data(files["interactions"])
        users = read_u_user(files["users"]) if "users" in files else None
        genres = read_u_genre(files["genres"]) if "genres" in files else ML100K_GENRES
        items = read_u_item(files["items"], genres) if "items" in files else None
    else:
        inter = read_atomic_inter(files["interactions"])
        users = read_atomic_user(files["users"]) if "users" in files else None
        items = read_atomic_item(files["items"]) if "items" in files else None
    return inter, users, items


# ---- GroupLens layout -------------------------------------------------------------------------------------
def read_u_data(path: Path) -> pl.DataFrame:
    """``u.data``: ``user \\t item \\t rating \\t unix time`` per line."""
    df = split_fields(
        read_lines(path),
        path,
        "\t",
        ["user", "item", "rating", "time"],
        "user id, item id, rating, unix time",
    )
    return _typed_ratings(df, path)


def read_u_user(path: Path) -> pl.DataFrame:
    """``u.user``: ``id|age|gender|occupation|zip``."""
    df = split_fields(
        read_lines(path),
        path,
        "|",
        ["id", "age", "gender", "occupation", "zip"],
        "id|age|gender|occupation|zip code",
    )
    users = df.select(
        parse_int(df, "id", path, "a user id").cast(pl.String).alias("user_id"),
        parse_int(df, "age", path, "an age").alias("age"),
        pl.col("gender").str.strip_chars(),
        pl.col("occupation").str.strip_chars(),
        pl.col("zip").str.strip_chars().alias("zip_code"),
        LINE,
    )
    require_one_line_each(users, "user_id", path, "user id", column_label="id")
    return users.drop(LINE)


def read_u_genre(path: Path) -> list[str]:
    """``u.genre``: ``name|id`` lines -> genre names ordered by id (the order of u.item's flags)."""
    df = split_fields(read_lines(path), path, "|", ["name", "id"], "genre name|genre id")
    df = df.with_columns(parse_int(df, "id", path, "a genre id").alias("gid")).sort("gid")
    if df["gid"].to_list() != list(range(df.height)):
        raise DataValidationError(
            path, f"genre ids 0..{df.height - 1}, each once", column="id", got=df["gid"].to_list()
        )
    # Genre names become feature columns: a name twice silently merged two genres' flags into one.
    names = df["name"].str.strip_chars()
    repeated = df.filter(names.is_duplicated()).sort("_line")
    if repeated.height:
        r = repeated.row(-1, named=True)
        raise DataValidationError(
            path,
            "each genre name once (this one is on an earlier line too)",
            line=r["_line"],
            column="name",
            got=r["name"],
        )
    return df["name"].to_list()


def read_u_item(path: Path, genres: list[str]) -> pl.DataFrame:
    """``u.item``: ``id|title|release date|video date|url|<one 0/1 flag per genre>``, in Latin-1 as GroupLens
    wrote it, or in UTF-8 when the whole file decodes as UTF-8 (a file written in that format today: its
    titles were read as Latin-1, "Amélie" as "AmÃ©lie"; GroupLens' file is not valid UTF-8)."""
    names = ["id", "title", "release", "video", "url", *[f"g{k}" for k in range(len(genres))]]
    try:
        Path(path).read_bytes().decode("utf-8")
        encoding = "utf-8"
    except (UnicodeDecodeError, OSError):  # read_lines names a missing or unreadable file
        encoding = "latin-1"
    df = split_fields(
        read_lines(path, encoding=encoding),
        path,
        "|",
        names,
        f"id|title|release date|video release date|IMDb URL|{len(genres)} genre flags",
    )
    flags = [f"g{k}" for k in range(len(genres))]
    bad = df.filter(pl.any_horizontal([~pl.col(f).is_in(["0", "1"]) for f in flags])).head(1)
    if bad.height:
        row = bad.row(0, named=True)
        k = next(k for k, f in enumerate(flags) if row[f] not in ("0", "1"))
        raise DataValidationError(
            path, "a genre flag 0 or 1", line=row[LINE], column=f"genre {genres[k]!r}", got=row[flags[k]]
        )
    # "Toy Story (1995)" -> title "Toy Story", year 1995 (RecBole's spelling); else the release date's year.
    year_in_title = pl.col("title").str.extract(r"^(.*\S)\s+\((\d{4})\)\s*$", 2).cast(pl.Int64)
    title = pl.col("title").str.extract(r"^(.*\S)\s+\((\d{4})\)\s*$", 1)
    release_year = pl.col("release").str.extract(r"(\d{4})\s*$", 1).cast(pl.Int64)
    genre_list = pl.concat_list(
        [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
    )
    items = df.select(
        parse_int(df, "id", path, "an item id").cast(pl.String).alias("item_id"),
        pl.coalesce(title, pl.col("title").str.strip_chars()).alias("title"),
        pl.coalesce(year_in_title, release_year).alias("release_year"),
        genre_list.list.drop_nulls().alias("genres"),
        LINE,
    )
    require_one_line_each(items, "item_id", path, "item id", column_label="id")
    return items.drop(LINE)


# ---- RecBole atomic layout --------------------------------------------------------------------------------
def read_atomic(path: Path) -> tuple[pl.DataFrame, dict[str, str]]:
    """A RecBole atomic file: a tab-separated header of ``name:type`` then one row per line.

    Returns ``([_line, <name>...] all Utf8, {name: type})``; types are ``token``, ``float``, ``token_seq`` and
    ``float_seq``.
    """
    lines = read_lines(path)
    header = lines.head(1)["line"].to_list()
    fields = header[0].split("\t") if header else []
    types: dict[str, str] = {}
    for k, field in enumerate(fields, start=1):
        name, _, typ = field.partition(":")
        if not name or typ not in ("token", "float", "token_seq", "float_seq"):
            raise DataValidationError(
                path,
                "a RecBole header of 'name:type' fields (type token, float, token_seq or float_seq)",
                line=1,
                column=f"field {k}",
                got=field,
            )
        types[name] = typ
    body = split_fields(lines.slice(1), path, "\t", list(types), "\\t".join(fields))
    if body.height == 0:
        raise DataValidationError(path, "at least one data line after the header", got="<header only>")
    return body, types


def _require(path: Path, types: dict[str, str], names: list[str]) -> None:
    missing = [n for n in names if n not in types]
    if missing:
        raise DataValidationError(
            path,
            f"fields {names} in the header",
            line=1,
            column=", ".join(missing),
            got=f"<fields {list(types)}>",
        )


def read_atomic_inter(path: Path) -> pl.DataFrame:
    """``ml-100k.inter``: ``user_id:token  item_id:token  rating:float  timestamp:float``."""
    df, types = read_atomic(path)
    _require(path, types, ["user_id", "item_id", "rating", "timestamp"])
    df = df.rename({"user_id": "user", "item_id": "item", "timestamp": "time"})
    return _typed_ratings(df, path)


def read_atomic_user(path: Path) -> pl.DataFrame:
    """``ml-100k.user``: ``user_id  age  gender  occupation  zip_code`` (all tokens)."""
    df, types = read_atomic(path)
    _require(path, types, ["user_id", "age", "gender", "occupation", "zip_code"])
    users = df.select(
        parse_int(df, "user_id", path, "a user id").cast(pl.String).alias("user_id"),
        parse_int(df, "age", path, "an age").alias("age"),
        pl.col("gender").str.strip_chars(),
        pl.col("occupation").str.strip_chars(),
        pl.col("zip_code").str.strip_chars(),
        LINE,
    )
    require_one_line_each(users, "user_id", path, "user id", column_label="user_id")
    return users.drop(LINE)


def read_atomic_item(path: Path) -> pl.DataFrame:
    """``ml-100k.item``: ``item_id  movie_title:token_seq  release_year:token  class:token_seq`` (genres
    space-separated; no MovieLens genre name contains a space)."""
    df, types = read_atomic(path)
    _require(path, types, ["item_id", "movie_title", "release_year", "class"])
    items = df.select(
        parse_int(df, "item_id", path, "an item id").cast(pl.String).alias("item_id"),
        pl.col("movie_title").str.strip_chars().alias("title"),
        # RecBole writes "unkonwn" for the one movie without a date: not a year, so null.
        pl.col("release_year").str.strip_chars().cast(pl.Int64, strict=False).alias("release_year"),
        pl.col("class").str.extract_all(r"\S+").alias("genres"),
        LINE,
    )
    require_one_line_each(items, "item_id", path, "item id", column_label="item_id")
    return items.drop(LINE)


def _typed_ratings(df: pl.DataFrame, path: Path) -> pl.DataFrame:
    """``[_line, user, item, rating, time]`` as Utf8 -> the canonical typed interaction frame."""
    return df.select(
        parse_int(df, "user", path, "a user id").cast(pl.String).alias("user_id"),
        parse_int(df, "item", path, "an item id").cast(pl.String).alias("item_id"),
        parse_float(df, "rating", path, "a rating").alias("rating"),
        parse_timestamp(df, "time", path).alias("timestamp"),
        LINE,
    )
