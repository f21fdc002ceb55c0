"""The prepared dataset: a folder of Parquet files plus ``manifest.json`` (see docs/architecture.md).

Layout::

    <root>/train.parquet  valid.parquet  test.parquet   user_idx: Int64, item_idx: Int64, [timestamp: Int64],
                                                        [rating: Float64]; sorted by user, then time
    <root>/user_vocab.parquet                           user_idx: Int64, user_id: Utf8
    <root>/item_vocab.parquet                           item_idx: Int64, item_id: Utf8, [title: Utf8]
    <root>/users.parquet, items.parquet (optional)      side features keyed by user_idx / item_idx
    <root>/below_threshold.parquet (optional)           user_idx, item_idx: pairs rated below
                                                        data.rating_threshold (seen, not positives);
                                                        split: Utf8, the period the user first rated it
                                                        in (since 2026-12-05; "train" under random splits)
    <root>/manifest.json                                written last: a folder without it is incomplete

Models see only dense indices; ``user_vocab`` / ``item_vocab`` map them back to the original ids.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from features._hashing import sha256_bytes
from features.errors import DataValidationError

if TYPE_CHECKING:  # scipy is imported where a matrix is built, keeping `import features` light
    import scipy.sparse as sp

__all__ = ["BELOW_THRESHOLD", "PreparedDataset", "SCHEMA_VERSION", "SPLITS", "MANIFEST"]

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
BELOW_THRESHOLD = "below_threshold"
MANIFEST = "manifest.json"
REQUIRED_KEYS = (
    "schema_version",
    "name",
    "source",
    "n_users",
    "n_items",
    "counts",
    "split",
    "config",
    "source_files",
    "content_hash",
    "files",
)


class PreparedDataset:
    """A prepared dataset loaded in memory (a few hundred MB at most for the benchmark sets).

    Attributes:
        root: the folder.
        manifest: the parsed ``manifest.json``.
        train, valid, test: ``[user_idx, item_idx, (timestamp), (rating)]`` frames; ``valid`` may be empty.
        user_vocab: ``[user_idx, user_id]``; item_vocab: ``[item_idx, item_id, (title)]``.
        users, items: side-feature tables keyed by ``user_idx`` / ``item_idx``, or None.
        manifest_hash: sha256 of the manifest without its ``provenance`` (where/when it was built), as
            canonical JSON: identifies the dataset in run logs, and is the same when identical inputs are
            prepared again, elsewhere or later.
        cache_hit: True when :func:`features.prepare` reused an existing folder.
    """

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        manifest_hash: str,
        tables: dict[str, pl.DataFrame],
        cache_hit: bool = False,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.manifest_hash = manifest_hash
        self.train = tables["train"]
        self.valid = tables["valid"]
        self.test = tables["test"]
        self.user_vocab = tables["user_vocab"]
        self.item_vocab = tables["item_vocab"]
        self.users: pl.DataFrame | None = tables.get("users")
        self.items: pl.DataFrame | None = tables.get("items")
        self.below_threshold: pl.DataFrame | None = tables.get(BELOW_THRESHOLD)
        self.cache_hit = cache_hit
        self._matrices: dict[str, sp.csr_matrix] = {}
        self._known: sp.csr_matrix | None = None

    @property
    def n_users(self) -> int:
        return int(self.manifest["n_users"])

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    def split(self, name: str) -> pl.DataFrame:
        """The ``train``, ``valid`` or ``test`` frame by name."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)

    def matrix(self, split: str) -> sp.csr_matrix:
        """Binary interaction matrix of a split: ``csr_matrix[n_users, n_items]``, float32 ones.

        Repeated pairs (only possible with ``dedup: false``) still give 1.  Cached per instance, since eval
        asks for the train matrix on every validation round.
        """
        if split not in self._matrices:
            import scipy.sparse as sp

            df = self.split(split)
            rows = df["user_idx"].to_numpy()
            cols = df["item_idx"].to_numpy()
            m = sp.csr_matrix(
                (np.ones(len(rows), dtype=np.float32), (rows, cols)),
                shape=(self.n_users, self.n_items),
                dtype=np.float32,
            )
            m.sum_duplicates()
            m.data[:] = 1.0
            self._matrices[split] = m
        return self._matrices[split]

    def known_matrix(self) -> sp.csr_matrix:
        """Every (user, item) pair the dataset knows, as binary ``csr_matrix[n_users, n_items]``: the three
        splits and the pairs rated below ``data.rating_threshold`` (seen, though not positives). What serving
        excludes as seen; evaluation excludes only the splits its protocol names."""
        if self._known is None:
            import scipy.sparse as sp

            known = self.matrix("train") + self.matrix("valid") + self.matrix("test")
            if self.below_threshold is not None and self.below_threshold.height:
                rows = self.below_threshold["user_idx"].to_numpy()
                cols = self.below_threshold["item_idx"].to_numpy()
                ones = np.ones(len(rows), dtype=np.float32)
                known = known + sp.csr_matrix((ones, (rows, cols)), shape=(self.n_users, self.n_items))
            known = sp.csr_matrix(known)
            known.sum_duplicates()
            known.data[:] = 1.0
            self._known = known
        return self._known

    @classmethod
    def load(cls, root: Path | str) -> PreparedDataset:
        """Load and check a prepared folder.

        Raises :class:`DataValidationError` (naming the file and the key) when ``manifest.json`` is missing
        or lacks a key, a listed file is missing, or a file's row count or index range disagrees with it.
        Folders written since 2026-12-02 also record, in ``provenance``, the sha256 of every file and of the
        manifest's own body: a changed byte anywhere (a flipped bit in a Parquet page, an edited manifest) is
        refused. Older folders, which lack them, are checked as before.
        """
        root = Path(root)
        mpath = root / MANIFEST
        if not mpath.exists():
            raise DataValidationError(
                mpath,
                "a manifest.json (a folder without one is incomplete; prepare() rebuilds it)",
                got="<missing file>",
            )
        try:
            raw = mpath.read_bytes()
        except OSError as exc:  # e.g. moved away meanwhile by a concurrent prepare(force=True)
            raise DataValidationError(mpath, "a readable manifest.json", got=f"<{exc}>") from None
        try:
            manifest = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataValidationError(mpath, "valid JSON", got=f"<{exc}>") from None
        if not isinstance(manifest, dict):
            raise DataValidationError(mpath, "a JSON object", got=f"<JSON {type(manifest).__name__}>")
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise DataValidationError(
                mpath, f"keys {list(REQUIRED_KEYS)}", column=missing[0], got=f"<missing {missing}>"
            )
        if manifest["schema_version"] != SCHEMA_VERSION:
            raise DataValidationError(
                mpath,
                f"schema_version {SCHEMA_VERSION}",
                column="schema_version",
                got=manifest["schema_version"],
            )
        for key, kind, what in (
            ("n_users", int, "an integer"),
            ("n_items", int, "an integer"),
            ("counts", dict, "an object of row counts per split"),
            ("files", list, "a list of file names"),
        ):
            value = manifest[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DataValidationError(mpath, what, column=key, got=value)
        sealed = _seal(manifest, mpath)
        if sealed is not None:
            digest, file_sha = sealed
            if manifest_digest(manifest) != digest:
                raise DataValidationError(
                    mpath, "the manifest as prepare() wrote it", column="provenance.manifest_sha256",
                    got="<an edited manifest: its sha256 differs from the one recorded>",
                    hint="prepare() rebuilds the folder",
                )  # fmt: skip
            if sorted(file_sha) != sorted(manifest["files"]):
                raise DataValidationError(
                    mpath, f"the files {sorted(file_sha)} recorded when it was written", column="files",
                    got=f"<files {manifest['files']}>",
                )  # fmt: skip
        n_users, n_items = manifest["n_users"], manifest["n_items"]
        expected_rows = {
            **{s: manifest["counts"].get(s) for s in SPLITS},
            "user_vocab": n_users,
            "item_vocab": n_items,
            "users": n_users,
            "items": n_items,
            BELOW_THRESHOLD: manifest.get("below_threshold_rows"),
        }
        tables: dict[str, pl.DataFrame] = {}
        for name in manifest["files"]:
            path = root / f"{name}.parquet"
            if not path.exists():
                raise DataValidationError(
                    path, f"the file listed in {MANIFEST} under 'files'", got="<missing file>"
                )
            try:
                data = path.read_bytes()
            except OSError as exc:  # e.g. removed meanwhile by a concurrent prepare(force=True)
                raise DataValidationError(path, "a readable file", got=f"<{exc}>") from None
            if sealed is not None and sha256_bytes(data) != sealed[1][name]:
                raise DataValidationError(
                    path, f"the sha256 recorded in {MANIFEST}", got="<other bytes: the file is damaged>",
                    hint="prepare() rebuilds the folder",
                )  # fmt: skip
            try:
                df = pl.read_parquet(io.BytesIO(data))
            except Exception as exc:  # noqa: BLE001 - any decoder error means the file is damaged
                raise DataValidationError(path, "a readable Parquet file", got=f"<{exc}>") from None
            want = expected_rows.get(name)
            if want is not None and df.height != want:
                raise DataValidationError(
                    path, f"{want} rows (as {MANIFEST} says)", column="rows", got=df.height
                )
            tables[name] = df
        for name in (*SPLITS, "user_vocab", "item_vocab"):
            if name not in tables:
                raise DataValidationError(
                    mpath,
                    f"'{name}' among the listed files",
                    column="files",
                    got=f"<files {list(manifest['files'])}>",
                )
        for name in (*SPLITS, *([BELOW_THRESHOLD] if BELOW_THRESHOLD in tables else [])):
            _check_index(root / f"{name}.parquet", tables[name], "user_idx", n_users)
            _check_index(root / f"{name}.parquet", tables[name], "item_idx", n_items)
        return cls(root, manifest, manifest_digest(manifest), tables)

    def __repr__(self) -> str:
        c = self.manifest["counts"]
        return (
            f"PreparedDataset({self.manifest['name']!r}, {self.n_users:,} users, {self.n_items:,} items, "
            f"train={c['train']:,} valid={c['valid']:,} test={c['test']:,}, "
            f"split={self.manifest['split']['protocol']!r}, root={str(self.root)!r})"
        )


def seal_manifest(manifest: dict[str, Any], folder: Path) -> None:
    """Record in ``manifest["provenance"]`` the sha256 of each listed file in ``folder`` and of the manifest's
    body (all but ``provenance``), for :meth:`PreparedDataset.load` to verify. ``manifest_hash`` is unchanged,
    since it leaves ``provenance`` out."""
    files = {name: sha256_bytes((folder / f"{name}.parquet").read_bytes()) for name in manifest["files"]}
    # the digest of the body as it will read back from the JSON file (prepare writes it with default=str)
    written = json.loads(json.dumps(manifest, default=str))
    manifest.setdefault("provenance", {}).update(
        {"file_sha256": files, "manifest_sha256": manifest_digest(written)}
    )


def _seal(manifest: dict[str, Any], mpath: Path) -> tuple[str, dict[str, str]] | None:
    """``(manifest digest, {file: sha256})`` recorded by :func:`seal_manifest`, or None (an older folder).
    A malformed record (``provenance`` is outside the digest) is a DataValidationError, so prepare rebuilds."""
    prov = manifest.get("provenance")
    if not isinstance(prov, dict) or ("manifest_sha256" not in prov and "file_sha256" not in prov):
        return None
    digest, files = prov.get("manifest_sha256"), prov.get("file_sha256")
    if not (
        isinstance(digest, str)
        and isinstance(files, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        raise DataValidationError(
            mpath,
            "provenance.manifest_sha256 (a string) and provenance.file_sha256 (file -> sha256)",
            column="provenance",
            got=f"<{str({'manifest_sha256': digest, 'file_sha256': files})[:80]}>",
        )
    return digest, files


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of a manifest without ``provenance``."""
    body = {k: v for k, v in manifest.items() if k != "provenance"}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _check_index(path: Path, df: pl.DataFrame, col: str, n: int) -> None:
    if col not in df.columns or df.schema[col] != pl.Int64:
        raise DataValidationError(
            path, f"an Int64 column {col!r}", column=col, got=f"<{df.schema.get(col, 'missing column')}>"
        )
    if df[col].null_count():
        raise DataValidationError(
            path, f"a {col} in every row", column=col, got=f"<{df[col].null_count()} missing>"
        )
    if df.height:
        # an Int64 column without nulls (both checked above): its extremes are ints
        low, high = cast(int, df[col].min()), cast(int, df[col].max())
        if low < 0 or high >= n:
            raise DataValidationError(path, f"{col} in [0, {n})", column=col, got=f"<range [{low}, {high}]>")
