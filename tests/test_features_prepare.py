"""prepare() end to end: the prepared folder contract, caching, atomicity, side features, and real data."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features import DataConfig, DataValidationError, PreparedDataset, prepare
from features.dataset import SPLITS
from tests.conftest import fixture_data

DATA = fixture_data()


def ml_mini(**kw) -> DataConfig:
    base = {
        "source": "movielens_100k",
        "path": str(DATA / "ml100k_mini"),
        "split": {"protocol": "random_ratio", "test_ratio": 0.2, "valid_ratio": 0.1, "seed": 1},
    }
    return DataConfig(**{**base, **kw})


def test_prepared_folder_contract(tmp_path):
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    names = sorted(p.name for p in ds.root.iterdir())
    assert names == sorted(
        [
            "manifest.json",
            "train.parquet",
            "valid.parquet",
            "test.parquet",
            "user_vocab.parquet",
            "item_vocab.parquet",
            "users.parquet",
            "items.parquet",
        ]
    )
    for split in SPLITS:
        df = ds.split(split)
        assert df.schema == {
            "user_idx": pl.Int64,
            "item_idx": pl.Int64,
            "timestamp": pl.Int64,
            "rating": pl.Float64,
        }
    assert ds.user_vocab.schema == {"user_idx": pl.Int64, "user_id": pl.String}
    assert ds.item_vocab.schema == {"item_idx": pl.Int64, "item_id": pl.String, "title": pl.String}
    assert ds.user_vocab["user_idx"].to_list() == list(range(ds.n_users))
    m = ds.manifest
    for key in (
        "schema_version",
        "n_users",
        "n_items",
        "counts",
        "split",
        "config",
        "source_files",
        "content_hash",
        "dropped",
        "provenance",
        "split_protocol",
    ):
        assert key in m
    assert m["counts"] == {s: ds.split(s).height for s in SPLITS}
    assert set(m["source_files"]) == {"interactions", "users", "items", "genres"}
    assert sum(m["counts"].values()) == 40
    assert "created" in m["provenance"] and "path" not in m["config"]


def test_matrix_is_binary_csr_and_cached(tmp_path):
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    m = ds.matrix("train")
    assert m.format == "csr" and m.dtype == np.float32 and m.shape == (ds.n_users, ds.n_items)
    assert m.nnz == ds.train.height and set(np.unique(m.data)) == {1.0}
    assert ds.matrix("train") is m
    with pytest.raises(KeyError):
        ds.matrix("training")


def test_side_features_encoded(tmp_path):
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    users, items = ds.users, ds.items
    assert users is not None and items is not None
    assert users.columns == ["user_idx", "age", "age_bucket", "gender", "occupation", "zip1", "zip3"]
    assert items.columns == ["item_idx", "genres", "release_year", "year_bucket"]
    assert users.height == ds.n_users and items.height == ds.n_items
    spec = ds.manifest["side_features"]
    assert spec["users"]["age_bucket"]["labels"][0] == "<18"
    # user "3" is 17 and has a Canadian zip "T8H1N"
    row = users.join(ds.user_vocab, on="user_idx").filter(pl.col("user_id") == "3").row(0, named=True)
    assert spec["users"]["age_bucket"]["labels"][row["age_bucket"] - 1] == "<18"
    assert spec["users"]["zip1"]["labels"][row["zip1"] - 1] == "T"
    for col in ("age_bucket", "gender", "occupation", "zip1", "zip3"):
        assert users[col].min() >= 1 and users[col].max() < spec["users"][col]["cardinality"]
    genre_labels = spec["items"]["genres"]["labels"]
    paper = items.join(ds.item_vocab, on="item_idx").filter(pl.col("item_id") == "1").row(0, named=True)
    assert [genre_labels[c - 1] for c in paper["genres"]] == ["Animation", "Children's", "Comedy"]
    assert paper["title"] == "Paper Boats" and paper["release_year"] == 1995
    assert spec["items"]["year_bucket"]["labels"][paper["year_bucket"] - 1] == "1990s"


def test_no_side_features(tmp_path):
    ds = prepare(ml_mini(side_features=False), cache_dir=tmp_path)
    assert ds.users is None and ds.items is None
    assert "title" in ds.item_vocab.columns


def test_second_call_is_a_cache_hit_without_rewriting(tmp_path):
    first = prepare(ml_mini(), cache_dir=tmp_path)
    assert not first.cache_hit
    stamps = {p.name: p.stat().st_mtime_ns for p in first.root.iterdir()}
    time.sleep(0.01)
    second = prepare(ml_mini(), cache_dir=tmp_path)
    assert second.cache_hit and second.root == first.root
    assert {p.name: p.stat().st_mtime_ns for p in second.root.iterdir()} == stamps
    assert second.manifest_hash == first.manifest_hash
    # another seed is another dataset
    other = prepare(ml_mini(split={"protocol": "random_ratio", "seed": 2}), cache_dir=tmp_path)
    assert other.root != first.root and not other.cache_hit
    # force rebuilds in place
    forced = prepare(ml_mini(), cache_dir=tmp_path, force=True)
    assert not forced.cache_hit and forced.root == first.root
    assert forced.train.equals(first.train)
    # a rebuild of the same inputs is the same dataset, even though it was built at another time
    assert forced.manifest_hash == first.manifest_hash
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_cache_key_follows_content_not_path(tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in (DATA / "ml100k_mini").iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    a = prepare(ml_mini(), cache_dir=tmp_path / "c")
    b = prepare(ml_mini(path=str(copy)), cache_dir=tmp_path / "c")
    assert b.cache_hit and b.root == a.root
    moved = prepare(ml_mini(path=str(copy)), cache_dir=tmp_path / "elsewhere")
    assert not moved.cache_hit and moved.manifest_hash == a.manifest_hash
    with (copy / "u.data").open("a") as fh:
        fh.write("6\t8\t5\t889999999\n")
    c = prepare(ml_mini(path=str(copy)), cache_dir=tmp_path / "c")
    assert not c.cache_hit and c.root != a.root


def test_the_suffix_that_decides_the_separator_is_part_of_the_cache_key(tmp_path):
    # the same bytes as .csv and as .tsv are other tables: the .tsv read the .csv's cached folder
    text = "user,item,ts\n" + "".join(
        f"{u},{10 + (u * 7 + t) % 9},{100 * u + t}\n" for u in range(6) for t in range(5)
    )
    (tmp_path / "a.csv").write_text(text)
    (tmp_path / "a.tsv").write_text(text)

    def config(name: str) -> dict:
        return {
            "source": "interactions",
            "path": str(tmp_path / name),
            "columns": {"user": "user", "item": "item", "timestamp": "ts"},
            "split": {"protocol": "leave_one_out"},
        }

    assert not prepare(config("a.csv"), cache_dir=tmp_path / "c").cache_hit
    with pytest.raises(DataValidationError, match=r"a\.tsv"):  # one tab-separated column: no 'user' column
        prepare(config("a.tsv"), cache_dir=tmp_path / "c")
    # keys of configs whose parsing no suffix decides are as before (no prepared folder is orphaned)
    from features.prepare import content_hash

    cfg = DataConfig.model_validate({**config("a.csv"), "separator": ","})
    assert content_hash(
        cfg, {"interactions": "0" * 64}, {"interactions": tmp_path / "a.csv"}
    ) == content_hash(cfg, {"interactions": "0" * 64})


def test_incomplete_folder_is_rebuilt(tmp_path):
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    (ds.root / "manifest.json").unlink()  # as if the process died before the manifest was written
    again = prepare(ml_mini(), cache_dir=tmp_path)
    assert not again.cache_hit and (again.root / "manifest.json").exists()
    # a truncated split file is detected through the manifest's row counts and rebuilt too
    again.train.head(3).write_parquet(again.root / "train.parquet")
    third = prepare(ml_mini(), cache_dir=tmp_path)
    assert not third.cache_hit and third.train.height == again.train.height


def test_crash_while_writing_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    real = pl.DataFrame.write_parquet

    def failing(self, file, *args, **kwargs):
        if str(file).endswith("test.parquet"):
            raise OSError("disk full (simulated)")
        return real(self, file, *args, **kwargs)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        prepare(ml_mini(), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half folder nor a temp folder is left
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)
    assert not prepare(ml_mini(), cache_dir=tmp_path).cache_hit


def test_a_folder_finished_meanwhile_by_another_process_is_kept(tmp_path, monkeypatch):
    """Two jobs preparing the same data at once: the one that finishes second must not delete the folder
    the first one published (and may be loading); it keeps that folder and drops its own copy."""
    prep = importlib.import_module("features.prepare")  # the module; `features.prepare` is the function

    real = prep.build_tables
    published = []

    def build_while_another_job_finishes(*args, **kwargs):
        out = real(*args, **kwargs)
        monkeypatch.setattr(prep, "build_tables", real)
        other = prepare(ml_mini(), cache_dir=tmp_path)  # the other job wins the race
        published.append((other, (other.root / "manifest.json").stat().st_ino))
        return out

    monkeypatch.setattr(prep, "build_tables", build_while_another_job_finishes)
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    first, inode = published[0]
    assert ds.root == first.root
    assert (first.root / "manifest.json").stat().st_ino == inode  # the same file, not a replacement
    assert [p.name for p in tmp_path.iterdir()] == [first.root.name]  # no temp folder left behind
    assert ds.manifest_hash == first.manifest_hash and ds.train.height == first.train.height


def test_default_cache_dir_is_under_recsys_home(_isolated_home):
    ds = prepare(ml_mini())
    assert ds.root.parent == _isolated_home / "prepared"


def test_generic_csv_with_kcore_and_threshold(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    df = pl.DataFrame(
        {
            "uid": [f"user{u}" for u in rng.integers(0, 30, n)],
            "iid": [f"sku-{i}" for i in rng.integers(0, 50, n)],
            "stars": rng.integers(1, 6, n).astype(float),
            "ts": rng.integers(0, 10**6, n),
        }
    )
    path = tmp_path / "log.csv"
    df.write_csv(path)
    cfg = DataConfig(
        source="interactions",
        path=str(path),
        columns={"user": "uid", "item": "iid", "rating": "stars", "timestamp": "ts"},
        rating_threshold=3,
        min_user_interactions=3,
        min_item_interactions=3,
        split={"protocol": "temporal", "temporal_cut": 0.8, "valid_temporal_cut": 0.7},
    )
    ds = prepare(cfg, cache_dir=tmp_path / "c")
    d = ds.manifest["dropped"]
    assert d["below_rating_threshold"] == df.filter(pl.col("stars") < 3).height
    assert d["k_core"] > 0 and "test_unseen" in d
    assert ds.train["timestamp"].max() < ds.valid["timestamp"].min()
    assert ds.valid["timestamp"].max() < ds.test["timestamp"].min()
    assert ds.manifest["split"]["cut_timestamp"] == ds.test["timestamp"].min() or d["test_unseen"] > 0
    assert ds.users is None and ds.items is None
    # every user and item in the vocabularies occurs in some split (dropped ones were compacted away)
    used_items = pl.concat([ds.split(s)["item_idx"] for s in SPLITS]).unique()
    assert used_items.len() == ds.n_items
    assert ds.item_vocab["item_id"].str.starts_with("sku-").all()


def test_user_lines_resplit_keeps_users_without_items(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "train.txt").write_text("0 0 1 2\n1\n2 1 2 3\n")
    (folder / "test.txt").write_text("0 3\n2 0\n")
    ds = prepare(DataConfig(source="user_lines", path=str(folder)), cache_dir=tmp_path / "c")
    assert ds.manifest["split_protocol"] == "presplit"
    assert ds.n_users == 3 and ds.user_vocab["user_id"].to_list() == ["0", "1", "2"]
    assert ds.manifest["counts"] == {"train": 6, "valid": 0, "test": 2}
    re = prepare(
        DataConfig(source="user_lines", path=str(folder), split={"protocol": "random_ratio"}),
        cache_dir=tmp_path / "c",
    )
    assert sum(re.manifest["counts"].values()) == 8


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="rating_threshold needs ratings"):
        DataConfig(source="user_lines", path="x", rating_threshold=1)
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        DataConfig(source="user_lines", path="x", splitt={})
    with pytest.raises(ValueError, match="temporal' needs timestamps"):
        DataConfig(source="interactions", path="x.csv", split={"protocol": "temporal", "temporal_cut": 0.5})
    with pytest.raises(ValueError, match="exactly one of split.temporal_cut"):
        DataConfig(source="movielens_100k", path="x", split={"protocol": "temporal"})
    with pytest.raises(ValueError, match="presplit"):
        DataConfig(source="amazon_seq", path="x", name="B", split={"protocol": "presplit"})
    with pytest.raises(ValueError, match="amazon_seq' has only each user's order"):  # positions, not times
        DataConfig(
            source="amazon_seq", path="x", name="B", split={"protocol": "temporal", "temporal_cut": 0.5}
        )
    assert DataConfig(source="amazon_seq", path="x", name="B").split.protocol == "leave_one_out"
    assert DataConfig(source="user_lines", path="x").split.protocol == "presplit"
    with pytest.warns(UserWarning, match="seed=3 draws only the validation carve-out"):  # presplit, ratio 0
        assert DataConfig(source="user_lines", path="x", split={"seed": 3}).split.protocol == "presplit"
    assert DataConfig(source="interactions", path="x.csv").split.protocol == "random_ratio"
    with pytest.raises(ValueError, match="Input should be 'interactions', 'movielens_100k'"):
        DataConfig(source="csv", path="x.csv")
    # one column in two roles failed inside Polars (rating and timestamp), or was read as both (item)
    for columns, roles in (
        ({"rating": "ts", "timestamp": "ts"}, "rating and timestamp"),
        ({"item": "ts", "timestamp": "ts"}, "item and timestamp"),
        ({"item": "user_id"}, "user and item"),
    ):
        with pytest.raises(ValueError, match=f"column '\\w+' is given as both {roles}"):
            DataConfig(source="interactions", path="x.csv", columns=columns)


# ---- real data --------------------------------------------------------------------------------------------
def test_movielens_100k_real(shared_data, tmp_path):
    ds = prepare(
        DataConfig(
            source="movielens_100k",
            path=str(shared_data / "ml-100k"),
            split={"protocol": "random_ratio", "test_ratio": 0.1, "valid_ratio": 0.1, "seed": 42},
        ),
        cache_dir=tmp_path,
    )
    assert sum(ds.manifest["counts"].values()) == 100_000
    assert (ds.n_users, ds.n_items) == (943, 1_682)
    assert ds.users is not None and ds.users.height == 943
    assert ds.items is not None and ds.items.height == 1_682
    spec = ds.manifest["side_features"]
    assert spec["users"]["occupation"]["cardinality"] == 22  # 21 occupations + unknown
    assert spec["items"]["genres"]["cardinality"] == 20  # 19 genres + unknown code 0
    assert ds.items["genres"].list.len().min() >= 1
    toy = ds.item_vocab.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy["title"] == "Toy Story"
    # rating >= 4 as positives
    pos = prepare(
        DataConfig(
            source="movielens_100k",
            path=str(shared_data / "ml-100k"),
            rating_threshold=4,
            split={"protocol": "temporal", "temporal_cut": 0.8},
        ),
        cache_dir=tmp_path,
    )
    assert sum(pos.manifest["counts"].values()) + pos.manifest["dropped"]["test_unseen"] == 55_375
    assert pos.train["timestamp"].max() < pos.test["timestamp"].min()
    # the ratings below the threshold are kept aside (seen, not positives), for the users and items kept
    raw = pl.read_csv(shared_data / "ml-100k" / "u.data", separator="\t", has_header=False)
    raw.columns = ["user", "item", "rating", "time"]
    low = raw.filter(pl.col("rating") < 4).select(
        pl.col("user").cast(pl.String).alias("user_id"),
        pl.col("item").cast(pl.String).alias("item_id"),
        "time",
    )
    low = low.join(pos.user_vocab, on="user_id").join(
        pos.item_vocab.select("item_id", "item_idx"), on="item_id"
    )
    # each with its period: rated on or after the cut, it is not known when the test period is ranked
    cut = pos.manifest["split"]["cut_timestamp"]
    period = pl.when(pl.col("time") >= cut).then(pl.lit("test")).otherwise(pl.lit("train"))
    assert sorted(pos.below_threshold.rows()) == sorted(low.select("user_idx", "item_idx", period).rows())
    assert pos.manifest["below_threshold_rows"] == low.height == 36_589  # of 44,625: users or items dropped
    assert pos.below_threshold["split"].value_counts().height == 2


def test_beauty_leave_one_out_real(shared_data, tmp_path):
    ds = prepare(
        DataConfig(source="amazon_seq", path=str(shared_data / "amazon-seq"), name="Beauty"),
        cache_dir=tmp_path,
    )
    assert (ds.n_users, ds.n_items) == (22_363, 12_101)
    assert ds.manifest["counts"] == {"train": 198_502 - 2 * 22_363, "valid": 22_363, "test": 22_363}
    # ids from 1 map to idx = id - 1
    assert (ds.item_vocab["item_id"].cast(pl.Int64) == ds.item_vocab["item_idx"] + 1).all()
    # each user's last item (in the file's line order) is the test item, the second last the valid one
    lines = (shared_data / "amazon-seq" / "Beauty.txt").read_text().splitlines()
    last = {int(t[0]): (int(t[-1]), int(t[-2])) for t in (ln.split() for ln in lines)}
    test = ds.test.join(ds.user_vocab, on="user_idx").join(ds.item_vocab, on="item_idx")
    valid = ds.valid.join(ds.user_vocab, on="user_idx").join(ds.item_vocab, on="item_idx")
    assert all(last[int(u)][0] == int(i) for u, i in test.select("user_id", "item_id").iter_rows())
    assert all(last[int(u)][1] == int(i) for u, i in valid.select("user_id", "item_id").iter_rows())
    assert ds.items is not None and ds.items["attributes"].list.len().min() >= 1


def test_gowalla_prepare_cached(shared_data, tmp_path):
    cfg = DataConfig(source="user_lines", path=str(shared_data / "gowalla-lightgcn"))
    t0 = time.perf_counter()
    cold = prepare(cfg, cache_dir=tmp_path)
    t_cold = time.perf_counter() - t0
    mtime = os.stat(cold.root / "manifest.json").st_mtime_ns
    t0 = time.perf_counter()
    warm = prepare(cfg, cache_dir=tmp_path)
    t_warm = time.perf_counter() - t0
    assert warm.cache_hit and os.stat(warm.root / "manifest.json").st_mtime_ns == mtime
    assert t_warm < t_cold
    assert json.loads((warm.root / "manifest.json").read_text())["counts"]["test"] == 217_242
    print(f"gowalla prepare: cold {t_cold:.2f}s, cached {t_warm:.3f}s")


def test_load_round_trip(tmp_path):
    ds = prepare(ml_mini(), cache_dir=tmp_path)
    again = PreparedDataset.load(ds.root)
    assert again.manifest == ds.manifest and again.test.equals(ds.test)
    assert "PreparedDataset('ml-100k'" in repr(again)


def test_a_rewrite_that_restores_size_and_mtime_is_hashed_again(tmp_path):
    # cp -p / rsync -a / tar x over an existing file: same size, same mtime, other bytes
    import os

    from features._hashing import sha256_file

    path = tmp_path / "data.csv"
    path.write_text("u,i\n1,a\n")
    first = sha256_file(path)
    st = path.stat()
    path.write_text("u,i\n1,b\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(path) != first  # the memo used to answer with the old file's hash


def test_a_source_rewritten_during_prepare_is_refused_and_nothing_cached(tmp_path, monkeypatch):
    """The cache key hashes the first read and the tables come from a second one: a file changed between
    the two used to be cached under the other content's key, answering later calls with the wrong data."""
    import shutil

    from features.errors import DataValidationError

    prep = importlib.import_module("features.prepare")
    src = tmp_path / "ml"
    shutil.copytree(DATA / "ml100k_mini", src)
    cfg = ml_mini(path=str(src))
    ratings = src / "u.data"
    first_line, rest = ratings.read_text().split("\n", 1)
    real = prep.build_tables

    def build_while_the_file_is_rewritten(*args, **kwargs):
        out = real(*args, **kwargs)
        ratings.write_text(rest)  # the same file without its first rating
        return out

    monkeypatch.setattr(prep, "build_tables", build_while_the_file_is_rewritten)
    cache = tmp_path / "cache"
    with pytest.raises(DataValidationError, match=r"u\.data: expected a file that stays the same while"):
        prepare(cfg, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []
    monkeypatch.setattr(prep, "build_tables", real)
    ds = prepare(cfg, cache_dir=cache)  # now one file throughout: its own tables under its own key
    assert not ds.cache_hit and ds.train.height + ds.valid.height + ds.test.height == len(rest.splitlines())


def test_prepare_waits_for_a_folder_another_process_is_replacing(monkeypatch):
    """A concurrent prepare(force=True) moves the folder aside for a moment: the final load retries instead
    of failing with "a folder without a manifest is incomplete"."""
    from features.dataset import PreparedDataset
    from features.errors import DataValidationError

    real, calls = PreparedDataset.load.__func__, []

    def flaky(cls, root):
        calls.append(root)
        if len(calls) == 1:
            raise DataValidationError(root / "manifest.json", "a manifest.json", got="<missing file>")
        return real(cls, root)

    monkeypatch.setattr(PreparedDataset, "load", classmethod(flaky))
    ds = prepare(ml_mini(), force=True)
    assert ds.n_users > 0 and len(calls) == 2


def test_a_damaged_cached_folder_is_rebuilt():
    first = prepare(ml_mini())
    data = bytearray((first.root / "train.parquet").read_bytes())
    data[len(data) // 2] ^= 1  # it used to be a cache hit, with other numbers
    (first.root / "train.parquet").write_bytes(bytes(data))
    again = prepare(ml_mini())
    assert not again.cache_hit and again.root == first.root
    assert again.manifest_hash == first.manifest_hash and again.train.equals(first.train)


def test_a_malformed_seal_or_a_vanishing_file_means_rebuild(monkeypatch):
    first = prepare(ml_mini())
    manifest = json.loads((first.root / "manifest.json").read_text())
    manifest["provenance"]["file_sha256"] = None  # outside the digest: it used to crash prepare
    (first.root / "manifest.json").write_text(json.dumps(manifest))
    again = prepare(ml_mini())
    assert not again.cache_hit and again.manifest_hash == first.manifest_hash
    # a file removed between the listing and the read (a concurrent rebuild): a DataValidationError, which
    # prepare() answers by rebuilding, not a raw FileNotFoundError
    from features.errors import DataValidationError

    real = Path.read_bytes

    def vanished(self):
        if self.name == "train.parquet":
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", vanished)
    with pytest.raises(DataValidationError, match=r"train\.parquet: expected a readable file"):
        PreparedDataset.load(again.root)


def test_leftovers_of_a_killed_prepare_are_removed():
    """A prepare killed mid-write leaves .tmp-/.old- folders; the next write of that folder removes a temporary
    folder whose lock nobody holds, and every .old- copy, and keeps a live writer's (its lock is held, in
    whatever pid namespace) and an older version's (no lock file)."""
    import fcntl

    first = prepare(ml_mini())
    parent, name = first.root.parent, first.root.name
    dead, live, old_format = (parent / f".tmp-{name}-{t}" for t in ("dead0001", "live0002", "0123abcd"))
    trash = parent / f".old-{name}-feed0003"
    for path in (dead, live, old_format, trash):
        path.mkdir()
        (path / "train.parquet").write_bytes(b"x" * 100)
    for path in (dead, live):
        path.with_name(path.name + ".lock").touch()
    dead.with_name(dead.name + ".lock").chmod(0o444)  # another user's: the cleaner must not need to write it
    with open(live.with_name(live.name + ".lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live writer
        prepare(ml_mini(), force=True)
    assert not dead.exists() and not trash.exists() and not dead.with_name(dead.name + ".lock").exists()
    assert live.exists() and old_format.exists()
    assert set(parent.glob(f".tmp-{name}-*.lock")) == {live.with_name(live.name + ".lock")}
    assert not list(parent.glob(".lck-*"))  # the writer's lock file is renamed into place, then removed


def _rated_log(tmp_path: Path, rows: list[tuple]) -> Path:
    path = tmp_path / "log.csv"
    pl.DataFrame(rows, schema=["u", "i", "r", "t"], orient="row").write_csv(path)
    return path


def test_the_cache_key_follows_the_rating_threshold(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(int(u), int(i), float(r), t) for t, (u, i, r) in enumerate(zip(
        rng.integers(0, 20, 300), rng.integers(0, 30, 300), rng.integers(1, 6, 300), strict=True))]  # fmt: skip
    path = _rated_log(tmp_path, rows)

    def cfg(threshold: float) -> DataConfig:
        return DataConfig(
            source="interactions", path=str(path), rating_threshold=threshold,
            columns={"user": "u", "item": "i", "rating": "r", "timestamp": "t"},
            split={"protocol": "temporal", "temporal_cut": 0.8, "valid_temporal_cut": 0.7},
        )  # fmt: skip

    a = prepare(cfg(3), cache_dir=tmp_path / "c")
    b = prepare(cfg(4), cache_dir=tmp_path / "c")
    assert a.manifest["content_hash"] != b.manifest["content_hash"]
    assert a.train.height > b.train.height  # the second did not read the first's tables


def test_a_pair_also_rated_high_is_not_set_aside_as_below_the_threshold(tmp_path):
    """User 0 rated item 5 once low (t = 7) and later high: a positive, not a pair rated below the threshold."""
    rows = [(u, i, 5.0, 100 * i + u) for u in range(30) for i in range(6)] + [(0, 5, 1.0, 7)]
    cfg = DataConfig(
        source="interactions", path=str(_rated_log(tmp_path, rows)), rating_threshold=4,
        columns={"user": "u", "item": "i", "rating": "r", "timestamp": "t"}, split={"protocol": "random_ratio"},
    )  # fmt: skip
    ds = prepare(cfg, cache_dir=tmp_path / "c")
    assert ds.manifest["below_threshold_rows"] == 0


def _periods(ds: PreparedDataset) -> dict[tuple[str, str], str]:
    """{(user id, item id): split} of the pairs set aside below the threshold."""
    below = ds.below_threshold.join(ds.user_vocab, on="user_idx").join(
        ds.item_vocab.select("item_idx", "item_id"), on="item_idx"
    )
    return {(r["user_id"], r["item_id"]): r["split"] for r in below.iter_rows(named=True)}


def test_pairs_below_the_threshold_record_their_period_under_leave_one_out(tmp_path):
    """User 0's positives: items 0-3 at t = 10, 20, 30, 40 (valid item 2, test item 3). The low ratings
    fall before the valid item (train), between it and the test item (valid), after it (test), and at the
    test item's own time but later in the file (test: ties go by file order, as the split's). Item 9 is
    rated low twice, in the training period first. User 1 has two positives only: no valid or test item.
    (Users and items are their indices here: ids 0, 1, 2 in numeric order.)"""
    rows = [(0, i, 5.0, 10 * (i + 1)) for i in range(4)] + [
        (0, 5, 1.0, 15), (0, 6, 1.0, 35), (0, 7, 1.0, 45), (0, 8, 1.0, 40), (0, 9, 2.0, 50), (0, 9, 2.0, 5),
        (1, 0, 5.0, 1), (1, 1, 5.0, 2), (1, 5, 1.0, 99),
    ] + [(2, i, 5.0, i) for i in range(10)]  # items 5-9 need a positive to stay in the catalogue  # fmt: skip
    cfg = DataConfig(
        source="interactions", path=str(_rated_log(tmp_path, rows)), rating_threshold=4,
        columns={"user": "u", "item": "i", "rating": "r", "timestamp": "t"}, split={"protocol": "leave_one_out"},
    )  # fmt: skip
    ds = prepare(cfg, cache_dir=tmp_path / "c")
    assert ds.valid.filter(pl.col("user_idx") == 0)["item_idx"].to_list() == [2]
    assert ds.test.filter(pl.col("user_idx") == 0)["item_idx"].to_list() == [3]
    assert _periods(ds) == {
        ("0", "5"): "train", ("0", "6"): "valid", ("0", "7"): "test", ("0", "8"): "test", ("0", "9"): "train",
        ("1", "5"): "train",
    }  # fmt: skip
    # without timestamps the file order is the time: the same rows, in time order
    path = tmp_path / "ordered.csv"
    pl.read_csv(_rated_log(tmp_path, rows)).sort("t", maintain_order=True).drop("t").write_csv(path)
    untimed = prepare(
        DataConfig(source="interactions", path=str(path), rating_threshold=4,
                   columns={"user": "u", "item": "i", "rating": "r"}, split={"protocol": "leave_one_out"}),
        cache_dir=tmp_path / "c",
    )  # fmt: skip
    assert _periods(untimed) == _periods(ds)


def test_pairs_below_the_threshold_record_their_period_under_temporal_and_random_splits(tmp_path):
    rng = np.random.default_rng(1)
    rows = [(int(u), int(i), float(r), t) for t, (u, i, r) in enumerate(zip(
        rng.integers(0, 20, 400), rng.integers(0, 30, 400), rng.integers(1, 6, 400), strict=True))]  # fmt: skip
    path = _rated_log(tmp_path, rows)
    columns = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    split = {"protocol": "temporal", "temporal_cut": 0.8, "valid_temporal_cut": 0.6}
    ds = prepare(
        DataConfig(source="interactions", path=str(path), rating_threshold=4, columns=columns, split=split),
        cache_dir=tmp_path / "c",
    )
    valid_cut, cut = ds.manifest["split"]["valid_cut_timestamp"], ds.manifest["split"]["cut_timestamp"]
    first = (
        pl.read_csv(path).filter(pl.col("r") < 4).group_by("u", "i").agg(pl.col("t").min())
        .with_columns(pl.col("u").cast(pl.String), pl.col("i").cast(pl.String))
    )  # fmt: skip
    expected = {
        (u, i): "test" if t >= cut else "valid" if t >= valid_cut else "train"
        for u, i, t in first.iter_rows()
    }
    got = _periods(ds)
    assert got == {pair: expected[pair] for pair in got}
    assert set(got.values()) == {"train", "valid", "test"}
    shuffled = prepare(
        DataConfig(source="interactions", path=str(path), rating_threshold=4, columns=columns,
                   split={"protocol": "random_ratio", "test_ratio": 0.2, "valid_ratio": 0.1}),
        cache_dir=tmp_path / "c",
    )  # fmt: skip
    assert set(_periods(shuffled).values()) == {"train"}  # no time order: known whichever split is ranked


def test_every_time_ordered_protocol_has_a_below_threshold_period_rule(monkeypatch):
    """The re-ranker trusts the recorded periods under exactly these protocols
    (``recsys.rerank._ordered_split``); each must be a config protocol with a rule in preparation."""
    import importlib
    from typing import get_args

    from features.config import Protocol
    from features.splits import TIME_ORDERED_PROTOCOLS

    prep = importlib.import_module("features.prepare")  # the module (the package exports the function)
    assert set(TIME_ORDERED_PROTOCOLS) < set(get_args(Protocol))
    monkeypatch.setattr(prep, "TIME_ORDERED_PROTOCOLS", (*TIME_ORDERED_PROTOCOLS, "sliding"))
    below = pl.DataFrame(
        {"user_id": ["u"], "item_id": ["i"], "user_idx": [0], "item_idx": [0], "timestamp": [5]}
    )
    with pytest.raises(NotImplementedError, match="'sliding'"):
        prep._below_threshold_periods(below, None, {"protocol": "sliding"})  # type: ignore[arg-type]


# ---- what the cache key holds ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "change"),
    [
        ({"source": "interactions", "path": "a.csv"}, {"dedup": False}),
        ({"source": "interactions", "path": "a.csv"}, {"columns": {"user": "uid"}}),
        ({"source": "interactions", "path": "a.csv"}, {"has_header": False}),
        ({"source": "interactions", "path": "a.csv"}, {"separator": ";"}),
        ({"source": "interactions", "path": "a.csv"}, {"min_user_interactions": 2}),
        ({"source": "interactions", "path": "a.csv"}, {"min_item_interactions": 2}),
        ({"source": "interactions", "path": "a.csv"}, {"split": {"seed": 1}}),
        ({"source": "movielens_100k", "path": "ml"}, {"side_features": False}),
        ({"source": "movielens_100k", "path": "ml"}, {"rating_threshold": 4.0}),
        ({"source": "amazon_seq", "path": "d", "name": "Beauty"}, {"name": "Sports"}),
        ({"source": "user_lines", "path": "g"}, {"train_file": "other.txt"}),
    ],
)
def test_every_config_key_that_shapes_the_data_is_in_the_cache_key(base, change):
    from features.prepare import content_hash

    hashes = {"interactions": "0" * 64}
    assert content_hash(DataConfig(**base), hashes) != content_hash(DataConfig(**{**base, **change}), hashes)
    assert content_hash(DataConfig(**base), hashes) == content_hash(
        DataConfig(**{**base, "path": "x"}), hashes
    )


def test_the_schema_version_is_in_the_cache_key(monkeypatch):
    prep = importlib.import_module("features.prepare")  # the module; `features.prepare` is the function
    cfg = DataConfig(source="interactions", path="a.csv")
    before = prep.content_hash(cfg, {"interactions": "0" * 64})
    monkeypatch.setattr(prep, "SCHEMA_VERSION", prep.SCHEMA_VERSION + 1)
    assert prep.content_hash(cfg, {"interactions": "0" * 64}) != before


def test_k_core_on_a_user_lines_resplit_drops_users_without_enough_items(tmp_path):
    # users listed without items are kept, unless a k-core asks for a minimum
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "train.txt").write_text("0 0 1 2\n1\n2 1 2 3\n3 0\n")
    ds = prepare(
        DataConfig(
            source="user_lines",
            path=str(folder),
            split={"protocol": "leave_one_out"},
            min_user_interactions=3,
        ),
        cache_dir=tmp_path / "c",
    )
    assert ds.user_vocab["user_id"].to_list() == ["0", "2"]


def test_a_validation_quantile_cut_that_falls_on_the_test_cut_is_refused(tmp_path):
    # most events share one time: the 0.3 and the 0.6 quantiles are both that time
    rows = [(u, i, 100) for u in range(4) for i in range(5)] + [(u, 9, 200 + u) for u in range(4)]
    (tmp_path / "a.csv").write_text("u,i,t\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    cfg = DataConfig(
        source="interactions",
        path=str(tmp_path / "a.csv"),
        columns={"user": "u", "item": "i", "timestamp": "t"},
        split={"protocol": "temporal", "temporal_cut": 0.6, "valid_temporal_cut": 0.3},
    )
    with pytest.raises(
        DataValidationError, match=r"a\.csv, column 'timestamp': expected a validation cut before"
    ):
        prepare(cfg, cache_dir=tmp_path / "c")


def test_the_hash_memo_sees_a_rewrite_by_its_change_time_and_skips_files_still_being_written(
    tmp_path, monkeypatch
):
    import features._hashing as hashing

    path = tmp_path / "data.csv"
    path.write_text("u,i\n1,a\n")
    monkeypatch.setattr(hashing, "_RACY_NS", -(10**18))  # remember every file, however fresh
    first = hashing.sha256_file(path)
    st = path.stat()
    path.write_text("u,i\n1,b\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, inode and mtime: only ctime tells
    assert hashing.sha256_file(path) != first
    # a file system that keeps whole seconds (here: 1000 s): a rewrite within one tick keeps the whole state,
    # so a file changed within the racy window of now must not be remembered
    real_state = hashing.file_state

    def coarse(p: Path) -> tuple[int, int, int, int]:
        size, mtime, ino, ctime = real_state(p)
        tick = 10**12
        return size, mtime // tick * tick, ino, ctime // tick * tick

    monkeypatch.setattr(hashing, "file_state", coarse)
    monkeypatch.setattr(hashing, "_RACY_NS", 10**13)
    path.write_text("u,i\n1,c\n")
    third = hashing.sha256_file(path)
    path.write_text("u,i\n1,d\n")
    assert hashing.sha256_file(path) != third


def test_side_feature_codes_strip_values_and_sparse_attribute_ids_become_dense_codes():
    from features.side_features import attribute_item_features, encode

    codes = pl.DataFrame({"g": [" M", "F ", "X", None]}).select(encode(pl.col("g"), ["F", "M"]))
    assert codes["g"].to_list() == [2, 1, 0, 0]
    vocab = pl.DataFrame({"item_idx": [0, 1, 2], "item_id": ["1", "2", "3"]})
    attrs = pl.DataFrame(
        {"item_id": ["1", "2"], "attributes": [[5, 10**12], [10**12]]},
        schema={"item_id": pl.String, "attributes": pl.List(pl.Int64)},
    )
    table, spec = attribute_item_features(attrs, vocab)
    assert table["attributes"].to_list() == [[1, 2], [2], []]
    assert spec["attributes"] == {"kind": "multi_code", "cardinality": 3, "labels": ["5", str(10**12)]}


def test_a_folder_of_other_inputs_under_this_key_is_not_reused(tmp_path):
    # the folder name carries only 16 hex digits of the key: the manifest's full key decides
    import shutil

    a = prepare(ml_mini(), cache_dir=tmp_path / "c")
    other = ml_mini(split={"protocol": "leave_one_out"})
    b = prepare(other, cache_dir=tmp_path / "c")
    shutil.rmtree(b.root)
    shutil.copytree(a.root, b.root)  # a complete, sealed folder, of other inputs
    again = prepare(other, cache_dir=tmp_path / "c")
    assert not again.cache_hit and again.manifest["split_protocol"] == "leave_one_out"


def test_a_file_listed_in_a_sha256sums_above_it_is_verified(tmp_path):
    """The benchmark folders ship SHA256SUMS (sha256sum's format) and ask loaders to verify what they read."""
    import hashlib

    data = tmp_path / "data" / "logs"
    data.mkdir(parents=True)
    csv = data / "x.csv"
    csv.write_text("user_id,item_id\n" + "".join(f"{u},{i}\n" for u in range(6) for i in range(5)))
    digest = hashlib.sha256(csv.read_bytes()).hexdigest()
    sums = tmp_path / "data" / "SHA256SUMS"
    cfg = DataConfig(source="interactions", path=str(csv))
    for listing in (
        f"{digest}  ./logs/x.csv\n",  # as sha256sum writes it from the folder
        f"not a checksum line\n{digest.upper()} *logs/x.csv\n",  # binary mode, upper case, a stray line
        f"{'0' * 64}  ./logs/other.csv\n",  # does not list this file: not checked
    ):
        sums.write_text(listing)
        assert prepare(cfg, cache_dir=tmp_path / "c", force=True).n_users == 6
    sums.write_text(f"{'0' * 64}  ./logs/other.csv\n{'ab' * 32}  ./logs/x.csv\n")
    with pytest.raises(DataValidationError) as err:
        prepare(cfg, cache_dir=tmp_path / "fresh")
    assert str(csv) in str(err.value) and f"SHA256 {'ab' * 32} (as {sums} lists it on line 2)" in str(
        err.value
    )
    assert f"got '{digest}'" in str(err.value) and "damaged or replaced copy" in str(err.value)
    assert not (tmp_path / "fresh").exists() or not any((tmp_path / "fresh").iterdir())  # nothing cached
    # one in the file's own folder that does not list it: the search goes on up
    (data / "SHA256SUMS").write_text(f"{'0' * 64}  ./y.csv\n")
    with pytest.raises(DataValidationError, match="lists it on line 2"):
        prepare(cfg, cache_dir=tmp_path / "fresh")
    (data / "SHA256SUMS").write_text(f"{digest}  x.csv\n")  # the nearest listing decides
    assert prepare(cfg, cache_dir=tmp_path / "fresh").n_users == 6
