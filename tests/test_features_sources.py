"""MovieLens-100K acquisition: the local copy with checksums, and (network permitting) the RecBole wheel."""

from __future__ import annotations

import os
import shutil

import polars as pl
import pytest

from features import DataConfig, DataSourceError, DataValidationError, obtain_movielens_100k, prepare
from features.sources import ML100K_SHA256
from tests.conftest import fixture_data

DATA = fixture_data()


def test_shared_copy_is_used_and_verified(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_SHARED_DATA", str(shared_data))
    folder = obtain_movielens_100k(tmp_path / "dl")
    assert folder == shared_data / "ml-100k"
    assert not (tmp_path / "dl").exists()  # nothing downloaded


def test_shared_copy_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "shared" / "ml-100k"
    shutil.copytree(DATA / "ml100k_mini", fake)  # synthetic files: their hashes differ from the real ones
    monkeypatch.setenv("RECSYS_SHARED_DATA", str(tmp_path / "shared"))
    with pytest.raises(
        DataValidationError,
        match=r"ml-100k/u\.data, column 'sha256': expected SHA256 " + ML100K_SHA256["u.data"],
    ):
        obtain_movielens_100k(tmp_path / "dl")


@pytest.mark.slow
def test_recbole_wheel_route_matches_grouplens_files(shared_data, tmp_path):
    """Download recbole==1.2.1 (about 2 MB) into a temporary cache; skipped offline."""
    if os.environ.get("RECSYS_OFFLINE"):
        pytest.skip("RECSYS_OFFLINE is set")
    try:
        folder = obtain_movielens_100k(tmp_path / "dl", use_shared=False, timeout_s=120)
    except DataSourceError as exc:
        pytest.skip(f"PyPI not reachable: {str(exc).splitlines()[0]}")
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert obtain_movielens_100k(tmp_path / "dl", use_shared=False) == folder  # cached, no second download

    split = {"protocol": "random_ratio", "test_ratio": 0.1, "valid_ratio": 0.1, "seed": 42}
    a = prepare(
        DataConfig(source="movielens_100k", path=str(shared_data / "ml-100k"), split=split),
        cache_dir=tmp_path / "c",
    )
    b = prepare(DataConfig(source="movielens_100k", path=str(folder), split=split), cache_dir=tmp_path / "c")
    assert a.root != b.root  # different source files, different cache keys
    for name in ("train", "valid", "test"):
        assert a.split(name).equals(b.split(name)), name
    assert a.user_vocab.equals(b.user_vocab) and a.users is not None and a.users.equals(b.users)
    # Items agree except RecBole's two known differences: item 267's title "unkonwn", and item 1412 whose
    # "(V)" suffix RecBole dropped from the title and wrote as its release year (unknown here).
    assert a.items is not None and b.items is not None
    assert a.items["genres"].equals(b.items["genres"])
    years = a.items.join(b.items, on="item_idx").filter(
        pl.col("release_year").ne_missing(pl.col("release_year_right"))
    )
    assert years.join(a.item_vocab, on="item_idx")["item_id"].to_list() == ["1412"]
    diff = a.item_vocab.join(b.item_vocab, on=["item_idx", "item_id"]).filter(
        pl.col("title") != pl.col("title_right")
    )
    assert sorted(diff["item_id"].to_list()) == ["1412", "267"]


# M4: without side features, a MovieLens folder lacking u.genre still reads its titles (standard genres).
def test_movielens_titles_without_genre_file(tmp_path):
    import shutil

    from features.movielens import movielens_files, read_movielens
    from tests.conftest import fixture_data

    src = fixture_data() / "ml100k_mini"
    for name in ("u.data", "u.item"):
        shutil.copy(src / name, tmp_path / name)
    files = movielens_files(tmp_path, side_features=False)
    assert "genres" not in files
    _, users, items = read_movielens(files)
    assert users is None and items is not None and items.height > 0


# O1: an empty ml-100k folder under $RECSYS_SHARED_DATA is passed over, not verified as a copy.
def test_empty_shared_candidate_is_skipped(tmp_path, monkeypatch):
    from features import sources

    (tmp_path / "ml-100k").mkdir()
    monkeypatch.setenv("RECSYS_SHARED_DATA", str(tmp_path))
    sibling = sources.shared_candidates()[-1]
    if not (sibling / "u.data").exists():
        pytest.skip("no shared ml-100k copy beside the repository")
    assert sources.obtain_movielens_100k(tmp_path / "cache") == sibling


# O4: a cached download whose checksums do not match is not used.
def test_corrupt_cached_download_is_not_used(tmp_path, monkeypatch):
    from features import sources
    from features.errors import DataSourceError

    target = tmp_path / sources._CACHE_NAME
    target.mkdir()
    for name in sources.RECBOLE_ML100K_SHA256:
        (target / name).write_text("damaged\n")

    def no_network(dest, timeout_s):
        raise DataSourceError("offline")

    monkeypatch.setattr(sources, "_download_wheel", no_network)
    with pytest.raises(DataSourceError, match="offline"):
        sources.obtain_movielens_100k(tmp_path, use_shared=False)
