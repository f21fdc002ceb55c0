"""``prepare(cfg)``: raw files -> validated, filtered, split, id-mapped, feature-encoded folder, cached.

The cache key is the SHA256 of (config without ``path``, the SHA256 of every source file read, schema
version): the same data at another path reuses the folder when the file keeps its name (the name is part of
the folder's name and of the manifest, so a copy or link under another name is a second folder), and an
edited file or config builds a new one. A source file that changes between its hashing and its parsing
(its size, modification or change time, or inode; a same-size rewrite within one tick of the file system's
clock is not seen) is refused, so that one file's tables are not cached under another's hash.
The folder is written under a temporary name and moved into place with one ``os.replace``, with
``manifest.json`` written last, so an interrupted run never leaves a folder that looks complete; the next
write of that folder removes the temporary copies a killed run left (a lock held by the writer tells them).

Pipeline (each step a function of :mod:`features.transforms` / :mod:`features.splits`)::

    read + validate -> [rating >= threshold] -> [dedup] -> [k-core] -> split -> map ids (vocab = all
    splits) -> side features -> write
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from features._hashing import file_state, sha256_bytes, sha256_file
from features._text import LINE
from features.config import DataConfig
from features.dataset import BELOW_THRESHOLD, MANIFEST, SCHEMA_VERSION, SPLITS, PreparedDataset, seal_manifest
from features.errors import DataValidationError
from features.movielens import ML100K_GENRES
from features.readers import read_source, source_files
from features.side_features import attribute_item_features, movielens_item_features, movielens_user_features
from features.sources import default_download_dir, obtain_movielens_100k, verify_listed_checksum
from features.splits import (
    TIME_ORDERED_PROTOCOLS,
    Split,
    float_rounding_differs,
    leave_one_out_split,
    presplit,
    random_ratio_split,
    temporal_cut_value,
    temporal_part,
    temporal_split,
)
from features.transforms import binarize, deduplicate, id_vocab, k_core

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no leftover cleanup of temporary folders
    fcntl = None  # type: ignore[assignment]

__all__ = ["prepare", "default_cache_dir", "content_hash"]

U, IT = "user_idx", "item_idx"  # dedup, k-core and splits run on the provisional dense indices
ORDER = "__order"  # the row's place in the file, where the rating threshold sets pairs aside


def default_cache_dir() -> Path:
    """``$RECSYS_HOME/prepared``; ``RECSYS_HOME`` defaults to ``~/.cache/recsys``."""
    from features.home import recsys_home

    return recsys_home() / "prepared"


def content_hash(cfg: DataConfig, file_hashes: dict[str, str], files: dict[str, Path] | None = None) -> str:
    """The cache key: sha256 of the config (minus ``path``), the source files' sha256s and the schema; for an
    ``interactions`` file without ``data.separator``, also its suffix, which then decides how it is parsed
    (the same bytes as ``.csv`` and as ``.tsv`` are other tables). Markers set apart folders that older code
    prepared otherwise: random splits whose ratios were rounded wrongly (``exact_ratio_rounding``), rating
    thresholds (``below_threshold``, ``below_threshold_periods``). Other keys are as they always were."""
    payload = {
        "schema_version": SCHEMA_VERSION,
        "config": cfg.model_dump(mode="json", exclude={"path"}),
        "sources": file_hashes,
    }
    if cfg.source == "interactions" and cfg.separator is None and files:
        payload["suffixes"] = {role: path.suffix.lower() for role, path in files.items()}
    split = cfg.split
    if split.protocol in ("random_ratio", "presplit") and any(
        float_rounding_differs(r) for r in (split.test_ratio, split.valid_ratio, split.valid_from_train_ratio)
    ):  # since 2026-12-05 these ratios' shares are rounded exactly: other splits than before
        payload["exact_ratio_rounding"] = True
    if cfg.rating_threshold is not None:  # since 2026-12-02 such folders also keep the pairs below it,
        payload["below_threshold"] = BELOW_THRESHOLD  # and since 2026-12-05 the period of each
        payload["below_threshold_periods"] = True
    return sha256_bytes(json.dumps(payload, sort_keys=True).encode())


def prepare(
    cfg: DataConfig | dict, cache_dir: Path | str | None = None, force: bool = False
) -> PreparedDataset:
    """Read, validate, transform and split the data of ``cfg``; write (or reuse) the prepared folder.

    Args:
        cfg: a :class:`DataConfig` (or a dict validated into one).
        cache_dir: parent folder of prepared datasets (default :func:`default_cache_dir`).
        force: rebuild even when a complete folder for the same inputs exists.
    Returns:
        The loaded :class:`PreparedDataset`; ``cache_hit`` tells whether the folder was reused.
    """
    if not isinstance(cfg, DataConfig):
        cfg = DataConfig.model_validate(cfg)
    if cfg.source == "movielens_100k" and cfg.path == "auto":
        root = obtain_movielens_100k(default_download_dir())
    else:
        root = Path(cfg.path).expanduser()
    files = source_files(cfg, root)
    before = {role: file_state(path) for role, path in files.items()}
    hashes = {role: sha256_file(path) for role, path in files.items()}
    for role, path in files.items():  # a benchmark copy that its folder's SHA256SUMS says is damaged
        verify_listed_checksum(path, hashes[role])
    key = content_hash(cfg, hashes, files)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / f"{_slug(cfg.display_name())}-{key[:16]}"
    if not force and (ds := _complete_dataset(folder, key)) is not None:
        ds.cache_hit = True
        return ds

    t0 = time.perf_counter()
    tables, manifest = build_tables(cfg, files)
    # The key hashes the bytes read first; the tables come from a second read. A file rewritten or replaced
    # in between would cache one file's tables under the other's hash, so the two reads must see one file.
    for role, path in files.items():
        if file_state(path) != before[role]:
            raise DataValidationError(
                files[role],
                "a file that stays the same while it is read",
                got="<changed or replaced during prepare>",
                hint="prepare again once it is written; nothing was cached",
            )
    manifest["content_hash"] = key
    manifest["source_files"] = {role: {"name": files[role].name, "sha256": hashes[role]} for role in files}
    # Where and when it was built: kept out of `manifest_hash`, so that rebuilding the same inputs (or
    # building them from another folder) identifies the same dataset.
    manifest["provenance"] = {
        "data_path": cfg.path,
        "files": {role: str(path.resolve()) for role, path in files.items()},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - t0, 3),
        "polars_version": pl.__version__,
    }
    _write_atomically(folder, tables, manifest, replace_complete=force)
    # Another process may be replacing the folder right now (prepare(force=True)): its files vanish for a
    # moment. Wait for the complete folder it publishes; the last load names what is wrong if none comes.
    for attempt in range(5):
        if (ds := _complete_dataset(folder, key)) is not None:
            return ds
        time.sleep(0.1 * (attempt + 1))
    return PreparedDataset.load(folder)


def build_tables(cfg: DataConfig, files: dict[str, Path]) -> tuple[dict[str, pl.DataFrame], dict[str, Any]]:
    """The whole pipeline in memory: -> (``{file stem: frame}``, manifest without the hashes)."""
    raw = read_source(cfg, files)
    inter = raw.interactions
    n_read = inter.height
    dropped: dict[str, int] = {}

    def step(name: str, df: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
        dropped[name] = df.height - new.height
        return new

    test = raw.test
    below = None
    if cfg.rating_threshold is not None:
        inter = inter.with_row_index(ORDER)  # file order: places a pair below the threshold among the periods
        kept = binarize(inter, cfg.rating_threshold)
        # not positives, but the user has seen these items: kept aside, so that serving never recommends them
        below = (
            inter.filter(~(pl.col("rating") >= cfg.rating_threshold))
            .select("user_id", "item_id", *(["timestamp"] if "timestamp" in inter.columns else []), ORDER)
            .join(kept.select("user_id", "item_id"), on=["user_id", "item_id"], how="anti")  # rated high too
        )
        inter = step("below_rating_threshold", inter, kept)

    # Provisional dense ids over everything read, so that deduplication, k-core and the split (window
    # functions, anti-joins) run on Int64 keys instead of strings; ids that lose all their rows on the way
    # are compacted away afterwards (keeping the numeric order, so LightGCN's ids stay idx == id).
    users = [inter["user_id"], *([test["user_id"]] if test is not None else [])]
    if raw.user_ids is not None:
        users.append(raw.user_ids)  # users listed without items
    items = [inter["item_id"], *([test["item_id"]] if test is not None else [])]
    user_vocab = id_vocab(pl.concat(users), "user")
    item_vocab = id_vocab(pl.concat(items), "item")
    # The text ids are no longer needed (vocabularies map back), except in the presplit test file, where an
    # unseen item is reported by its original id.
    inter = _map(inter, user_vocab, item_vocab).drop("user_id", "item_id")
    test = _map(test, user_vocab, item_vocab) if test is not None else None

    if cfg.dedup:
        inter = step("duplicates", inter, deduplicate(inter, U, IT))
        if test is not None:
            test = step("test_duplicates", test, deduplicate(test, U, IT))
    if cfg.min_user_interactions or cfg.min_item_interactions:
        inter = step(
            "k_core", inter, k_core(inter, cfg.min_user_interactions, cfg.min_item_interactions, U, IT)
        )
    if inter.height == 0:
        raise DataValidationError(
            files["interactions"],
            "interactions left after filtering",
            got="<none>",
            hint="check data.rating_threshold and the k-core settings",
        )

    split, split_info = _split(cfg, inter, test, files)
    _require_train_and_test(split, split_info, files)
    if below is not None:
        below = _below_threshold_periods(_map(below, user_vocab, item_vocab), split, split_info)
    dropped.update(split.dropped)
    parts = {"train": split.train, "valid": split.valid, "test": split.test}
    user_vocab, item_vocab, parts = _compact(
        user_vocab,
        item_vocab,
        parts,
        keep_all_users=raw.user_ids is not None and not cfg.min_user_interactions,
    )

    keep = [c for c in ("timestamp", "rating") if c in inter.columns]
    sort_keys = ["user_idx", *(["timestamp"] if "timestamp" in keep else [])]
    tables: dict[str, pl.DataFrame] = {
        name: df.select("user_idx", "item_idx", *keep).sort(sort_keys, maintain_order=True)
        for name, df in parts.items()
    }

    side: dict[str, Any] = {}
    if raw.items is not None and "title" in raw.items.columns:
        item_vocab = item_vocab.join(
            raw.items.select("item_id", "title"), on="item_id", how="left", maintain_order="left"
        )
    if cfg.side_features:
        if raw.users is not None:
            tables["users"], side["users"] = movielens_user_features(raw.users, user_vocab)
        if raw.items is not None and "genres" in raw.items.columns:
            tables["items"], side["items"] = movielens_item_features(raw.items, item_vocab, ML100K_GENRES)
        elif raw.items is not None and "attributes" in raw.items.columns:
            tables["items"], side["items"] = attribute_item_features(raw.items, item_vocab)
    tables["user_vocab"] = user_vocab
    tables["item_vocab"] = item_vocab
    if below is not None:  # pairs of users and items the dataset still has
        tables[BELOW_THRESHOLD] = (
            below.join(user_vocab.select("user_id", "user_idx"), on="user_id", how="inner")
            .join(item_vocab.select("item_id", "item_idx"), on="item_id", how="inner")
            .select("user_idx", "item_idx", "split")
            .sort("user_idx", "item_idx")
        )

    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": cfg.display_name(),
        "source": cfg.source,
        "config": cfg.model_dump(mode="json", exclude={"path"}),  # the path is provenance
        "n_users": user_vocab.height,
        "n_items": item_vocab.height,
        "counts": {name: tables[name].height for name in SPLITS},
        "interactions_read": n_read + (raw.test.height if raw.test is not None else 0),
        "split_protocol": cfg.split.protocol,
        "split": split_info,
        "dropped": dropped,
        "columns": {name: tables[name].columns for name in tables},
        "files": sorted(tables),
        "side_features": side,
    }
    if below is not None:
        manifest["below_threshold_rows"] = tables[BELOW_THRESHOLD].height
    return tables, manifest


def _below_threshold_periods(below: pl.DataFrame, split: Split, info: dict[str, Any]) -> pl.DataFrame:
    """One row per (``user_id``, ``item_id``) of ``below`` (the pairs rated below the threshold, with
    provisional ``user_idx`` / ``item_idx`` and ``ORDER``), with ``split``: the period of the split in which
    the user first rated the item, by the rule that split the positives. A temporal split: the pair's time
    against the cuts; leave-one-out: its place in the user's order (time, then file order) against the
    user's validation and test items. The random protocols (``random_ratio``, ``presplit``'s carve-out) have
    no time order, so every such pair is ``"train"``: known whichever split is ranked, as before 2026-12-05.
    The re-ranker's fit counts a pair as known only when ranking a later period
    (:func:`recsys.rerank.known_before`); serving counts them all."""
    part: pl.Expr = pl.lit(0)
    if info["protocol"] == "temporal":
        part = temporal_part(info["cut_timestamp"], info["valid_cut_timestamp"])
    elif info["protocol"] == "leave_one_out":
        keys = [k for k in ("timestamp", ORDER) if k in below.columns]
        for name, frame in (("valid", split.valid), ("test", split.test)):
            target = frame.select(U, *[pl.col(k).alias(f"{name}_{k}") for k in keys])
            below = below.join(target, on=U, how="left", maintain_order="left")

        def after(name: str) -> pl.Expr:  # (time, file order) later than the user's `name` item's
            later = pl.col(keys[-1]) > pl.col(f"{name}_{keys[-1]}")
            for k in reversed(keys[:-1]):
                later = (pl.col(k) > pl.col(f"{name}_{k}")) | ((pl.col(k) == pl.col(f"{name}_{k}")) & later)
            return later.fill_null(False)  # users without a validation / test item

        part = pl.when(after("test")).then(2).when(after("valid")).then(1).otherwise(0)
    elif info["protocol"] in TIME_ORDERED_PROTOCOLS:  # a new time-ordered protocol needs its rule here
        raise NotImplementedError(f"no below-threshold period rule for split protocol {info['protocol']!r}")
    return (
        below.with_columns(part.alias("__part"))
        .group_by("user_id", "item_id")
        .agg(pl.col("__part").min())  # rated low more than once: seen since the first time
        .with_columns(
            pl.col("__part").replace_strict(dict(enumerate(SPLITS)), return_dtype=pl.String).alias("split")
        )
        .drop("__part")
    )


def _require_train_and_test(split: Split, info: dict[str, Any], files: dict[str, Path]) -> None:
    """An empty train or test split is an error, not a dataset: nothing to learn from, or nothing to test."""
    for name in ("train", "test"):
        if getattr(split, name).height:
            continue
        hint = f"split {info}, dropped {split.dropped}"
        if info["protocol"] == "temporal" and name == "train" and info.get("temporal_cut") is not None:
            hint += (
                "; every interaction at or after the cut timestamp goes to test, so with many equal "
                "timestamps a quantile cut cannot fall between them (set split.cut_timestamp)"
            )
        elif info["protocol"] == "temporal":
            hint += f"; is the cut before the first or after the last timestamp? ({name} gets none)"
        raise DataValidationError(
            files["test" if name == "test" and "test" in files else "interactions"],
            f"interactions in the {name} split",
            got="<none>",
            hint=hint,
        )


def _map(df: pl.DataFrame, user_vocab: pl.DataFrame, item_vocab: pl.DataFrame) -> pl.DataFrame:
    return df.join(user_vocab, on="user_id", how="left", maintain_order="left").join(
        item_vocab, on="item_id", how="left", maintain_order="left"
    )


def _compact(
    user_vocab: pl.DataFrame, item_vocab: pl.DataFrame, parts: dict[str, pl.DataFrame], keep_all_users: bool
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, pl.DataFrame]]:
    """Drop vocabulary entries that no split uses any more and renumber densely (order kept)."""
    for side, vocab in (("user", user_vocab), ("item", item_vocab)):
        col = f"{side}_idx"
        if side == "user" and keep_all_users:
            continue
        used = pl.concat([p[col] for p in parts.values()]).unique()
        if used.len() == vocab.height:
            continue
        remap = (
            vocab.filter(pl.col(col).is_in(used.implode()))
            .sort(col)
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("__new"))
        )
        lookup = remap.select(col, "__new")
        parts = {
            name: p.join(lookup, on=col, how="left", maintain_order="left").drop(col).rename({"__new": col})
            for name, p in parts.items()
        }
        vocab = remap.drop(col).rename({"__new": col}).select(col, f"{side}_id")
        if side == "user":
            user_vocab = vocab
        else:
            item_vocab = vocab
    return user_vocab, item_vocab, parts


def _split(
    cfg: DataConfig, inter: pl.DataFrame, test: pl.DataFrame | None, files: dict[str, Path]
) -> tuple[Split, dict[str, Any]]:
    s = cfg.split
    info: dict[str, Any] = {"protocol": s.protocol}
    if s.protocol == "random_ratio":
        info.update(test_ratio=s.test_ratio, valid_ratio=s.valid_ratio, seed=s.seed)
        out = random_ratio_split(inter, s.test_ratio, s.valid_ratio, s.seed, user=U, item=IT)
    elif s.protocol == "leave_one_out":
        info["order"] = "timestamp, then file order" if "timestamp" in inter.columns else "file order"
        out = leave_one_out_split(inter, user=U, item=IT)
    elif s.protocol == "temporal":
        cut = (
            s.cut_timestamp
            if s.cut_timestamp is not None
            else temporal_cut_value(inter, s.temporal_cut or 0.0)
        )
        valid_cut = s.valid_cut_timestamp
        if s.valid_temporal_cut is not None:
            valid_cut = temporal_cut_value(inter, s.valid_temporal_cut)
        if valid_cut is not None and valid_cut >= cut:
            raise DataValidationError(
                files["interactions"],
                f"a validation cut before the test cut {cut}",
                column="timestamp",
                got=valid_cut,
                hint="too many equal timestamps for distinct quantile cuts",
            )
        info.update(
            cut_timestamp=cut,
            valid_cut_timestamp=valid_cut,
            temporal_cut=s.temporal_cut,
            valid_temporal_cut=s.valid_temporal_cut,
        )
        out = temporal_split(inter, cut, valid_cut, user=U, item=IT)
    else:
        assert test is not None
        info.update(valid_from_train_ratio=s.valid_from_train_ratio, seed=s.seed, unseen=s.presplit_unseen)
        out = presplit(
            inter,
            test,
            valid_from_train_ratio=s.valid_from_train_ratio,
            seed=s.seed,
            unseen=s.presplit_unseen,
            test_file=files["test"],
            user=U,
            item=IT,
        )
    out.train, out.valid, out.test = (df.drop(LINE, strict=False) for df in (out.train, out.valid, out.test))
    return out, info


def _write_atomically(
    folder: Path, tables: dict[str, pl.DataFrame], manifest: dict[str, Any], *, replace_complete: bool = False
) -> None:
    """Write into a temporary folder beside ``folder`` (:func:`_temp_folder`), manifest last, then rename it
    into place.

    A complete folder for the same inputs that appeared meanwhile (another process preparing the same data)
    is kept, and this copy dropped: another reader may be loading it. ``replace_complete`` (``force``)
    replaces it all the same."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    with _temp_folder(folder) as tmp:
        for name, df in tables.items():
            df.write_parquet(tmp / f"{name}.parquet")
        seal_manifest(manifest, tmp)  # the files' and the manifest's sha256, checked by every load
        mtmp = tmp / (MANIFEST + ".part")
        mtmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str))
        os.replace(mtmp, tmp / MANIFEST)
        if not replace_complete and _complete_dataset(folder, manifest["content_hash"]) is not None:
            return
        if folder.exists():
            # An incomplete/damaged folder or force=True: move it aside first (a rename cannot replace a
            # non-empty folder), then delete it.
            trash = folder.parent / f".old-{folder.name}-{uuid.uuid4().hex[:8]}"
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished the same dataset first: keep theirs when complete.
            if not (folder / MANIFEST).exists():
                raise


@contextlib.contextmanager
def _temp_folder(folder: Path) -> Iterator[Path]:
    """A new ``.tmp-<name>-<random>`` folder beside ``folder``, removed at the end unless renamed away.

    Beside it, ``<that name>.lock`` is locked (``flock``) before the folder is made and until it is gone, so
    that :func:`_remove_leftovers` can tell a live writer's folder from one whose writer was killed: the
    operating system drops the lock when the process ends, however it ends, whatever its pid namespace."""
    token = uuid.uuid4().hex[:8]
    tmp = folder.parent / f".tmp-{folder.name}-{token}"
    lock_path = tmp.with_name(tmp.name + ".lock")
    # Locked under a name the cleaner does not look at, then renamed: a lock file it can see is always held.
    hidden = folder.parent / f".lck-{folder.name}-{token}"
    with open(hidden, "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        os.replace(hidden, lock_path)
        try:
            tmp.mkdir()
            yield tmp
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
            lock_path.unlink(missing_ok=True)


def _remove_leftovers(folder: Path) -> None:
    """Delete what a killed prepare of ``folder`` left behind: ``.old-`` copies (garbage from the moment they
    are made: a folder moved aside to be deleted) and ``.tmp-`` folders whose lock nobody holds. A temporary
    folder without a lock file (an older version's) is left alone; without ``fcntl`` (Windows) only the
    ``.old-`` copies go."""
    for old in folder.parent.glob(f".old-{folder.name}-*"):
        shutil.rmtree(old, ignore_errors=True)
    if fcntl is None:
        return
    for lock_path in folder.parent.glob(f".tmp-{folder.name}-*.lock"):
        try:  # read-only: flock needs no write access (another user's lock file), and nothing is created
            fd = os.open(lock_path, os.O_RDONLY)
        except (FileNotFoundError, PermissionError):
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its writer is alive
        else:
            shutil.rmtree(lock_path.with_suffix(""), ignore_errors=True)
            lock_path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _complete_dataset(folder: Path, content_hash: str) -> PreparedDataset | None:
    """``folder`` loaded, when it is a complete prepared dataset of the inputs ``content_hash`` names; None
    when it is missing, damaged (rebuilt by the caller) or of other inputs."""
    if not (folder / MANIFEST).exists():
        return None
    try:
        ds = PreparedDataset.load(folder)
    except DataValidationError:
        return None
    return ds if ds.manifest.get("content_hash") == content_hash else None


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:40] or "data"
