"""The serving artifact: a FAISS inner-product index over item embeddings, in a self-verifying folder.

The index is exact (``IndexFlatIP``, the default) or, for large catalogues, approximate: an inverted file
(``IndexIVFFlat``, ``build_index(..., nlist=N)``) that clusters the items into ``nlist`` lists and searches
the ``nprobe`` lists nearest to each query (Jegou et al., "Product quantization for nearest neighbor search",
TPAMI 2011, the IVF part; FAISS's implementation). Exclusions and the "k items whenever k unseen exist"
guarantee hold for both: a row the probed lists cannot fill is searched again with twice the lists, up to all.

Folder layout (``schema_version`` 1)::

    <out_dir>/
      manifest.json      format, schema_version, dim, counts, metric "inner_product", index_type
                         ("IndexFlatIP", or "IndexIVFFlat" with "nlist" and the default "nprobe"),
                         normalized, bias_columns (absent in folders written before 2026-12-05: 0),
                         run_id, created_at, faiss_version, metadata, and for every other file
                         {"sha256": hex, "bytes": size}; written last
      items.faiss        faiss.write_index of the index holding item_emb; FAISS id i = row i = position i
      item_ids.parquet   position: int64 (0..I-1), item_id: string, title: string (nullable)
      users.parquet      position: int64 (0..U-1), user_id: string                [only with user embeddings]
      user_emb.npy       float32 [U, d] precomputed query embeddings, row = users.parquet position   [idem]
      seen.npz           scipy.sparse.save_npz of a U x I CSR; a stored entry (u, i) means user position u has
                         seen item position i and is never recommended it            [only when seen given]

Scores are plain inner products of the model's query and item embeddings (the models' own score), unless the
index was built with ``normalize=True`` (cosine similarity; queries given later are normalised too).

``bias_columns`` trailing columns of the item vectors may hold a per-item bias rather than a direction: the
model scores ``q . v_i + b_i`` and its query carries a constant 1 there (BERT4Rec's output bias, the
most-popular baseline's counts). They count in every user or sequence score, but not when items are compared
with each other (:meth:`ItemIndex.item_vectors` with ``bias=False``: :meth:`Retriever.similar_items`, the
re-ranker's ``history_cosine``), and cosine normalisation, which would mix them into the direction, is
refused.

The folder is built under a hidden temporary name next to ``out_dir`` and moved into place only when complete
(see :func:`serving._files.publish_folder`); loading re-reads every file once, checks its size and SHA256
against the manifest and parses the verified bytes, so what was checked is exactly what is served.

FAISS, pyarrow and scipy are imported inside the functions that use them, so importing :mod:`serving` is cheap.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from serving._files import (
    FolderSnapshot,
    check_replaceable,
    fsync_path,
    new_sibling,
    publish_folder,
    read_snapshot,
    sha256_bytes,
    sha256_file,
    write_lock,
)
from serving._topk import ExcludedItems, check_k, select_topk
from serving.errors import IndexIntegrityError, UnknownItemError, UnknownUserError

if TYPE_CHECKING:
    import scipy.sparse as sp

FORMAT = "recsys.serving.index"
SCHEMA_VERSION = 1
METRIC = "inner_product"
INDEX_TYPE = "IndexFlatIP"  # exact
IVF_TYPE = "IndexIVFFlat"  # approximate: an inverted file of nlist lists, nprobe of them searched
DEFAULT_NPROBE = 16

MANIFEST = "manifest.json"
ITEMS_INDEX = "items.faiss"
ITEM_IDS = "item_ids.parquet"
USERS = "users.parquet"
USER_EMB = "user_emb.npy"
SEEN = "seen.npz"

# Upper bound on B x (candidates per row) held at once by ItemIndex.search; larger batches are cut into
# row blocks (about 200 MB of scores, positions and keys at this size).
_MAX_CANDIDATES = 1 << 24


# ---- build -------------------------------------------------------------------------------------------------
def build_index(
    item_emb: np.ndarray,
    item_ids: Sequence[str],
    out_dir: str | Path,
    *,
    user_emb: np.ndarray | None = None,
    user_ids: Sequence[str] | None = None,
    seen: sp.spmatrix | sp.sparray | None = None,
    item_titles: Sequence[str | None] | None = None,
    run_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    normalize: bool = False,
    bias_columns: int = 0,
    nlist: int | None = None,
    nprobe: int | None = None,
) -> Path:
    """Write a serving index folder for a trained model and return its path (``out_dir``).

    Args:
        item_emb: float [I, d] item embeddings (cast to float32); row i belongs to ``item_ids[i]``.
        item_ids: I distinct original item ids (str).
        out_dir: the folder to create. An existing index folder there is replaced, but only after the new
            one is completely written; a failure leaves the previous folder untouched and no temporary folder
            behind. A non-empty folder that is not a serving index is never replaced.
        user_emb: optional float [U, d] precomputed query embeddings; row u belongs to ``user_ids[u]``.
        user_ids: U distinct original user ids; required with ``user_emb`` and only with it.
        seen: optional sparse [U, I] matrix, rows aligned with ``user_ids`` and columns with ``item_ids``;
            every stored entry (even an explicit zero) marks an item the user has seen and must not be
            recommended. Requires ``user_emb``/``user_ids``.
        item_titles: optional I titles (str or None) returned with recommendations.
        run_id: the MLflow run that produced the embeddings, recorded in the manifest.
        metadata: extra JSON-serialisable facts for the manifest (model name, dataset hash, ...).
        normalize: L2-normalise item and user embeddings so that scores are cosine similarities. Off by
            default: the models score by plain inner product and serving must rank as they do.
        bias_columns: how many trailing columns of ``item_emb`` are per-item biases met by a constant in the
            query (0..d; see the module docstring): left out when items are compared with each other. Not
            with ``normalize``.
        nlist: None (default): an exact index. An int: an approximate inverted-file index of ``nlist``
            lists, trained by k-means on the item embeddings (FAISS's seeded clustering; at least
            ``nlist`` items, and FAISS wants about 39 per list). Worth it when an exact search of the
            catalogue is too slow; see docs/benchmarks.md for recall against speed.
        nprobe: lists searched per query by default (1..nlist; default ``min(16, nlist)``); a loader may
            override it (:meth:`ItemIndex.load`). More lists: closer to exact, slower.

    Raises:
        ValueError / TypeError: inputs with mismatched shapes, duplicate or non-str ids, NaN/inf values,
            zero vectors with ``normalize=True``, or metadata that is not JSON-serialisable.
        FileExistsError: ``out_dir`` is a file, a symlink, or a non-empty folder without ``manifest.json``.
    """
    out_dir = Path(out_dir)
    items = _as_embeddings(item_emb, "item_emb")
    n_items, dim = items.shape
    ids = _as_ids(item_ids, n_items, "item_ids", "item_emb")
    titles = _as_titles(item_titles, n_items)

    users: np.ndarray | None = None
    uids: list[str] | None = None
    if (user_emb is None) != (user_ids is None):
        raise ValueError(
            "user_emb and user_ids go together: pass both (row u of user_emb is user_ids[u]) or neither"
        )
    if user_emb is not None:
        users = _as_embeddings(user_emb, "user_emb", dim=dim)
        uids = _as_ids(user_ids, users.shape[0], "user_ids", "user_emb")
    seen_csr = None
    if seen is not None:
        if uids is None:
            raise ValueError("seen needs user_emb and user_ids: its rows are aligned with user_ids")
        seen_csr = _as_seen(seen, len(uids), n_items)
    if run_id is not None and not isinstance(run_id, str):
        raise TypeError(f"run_id must be a str or None, got {type(run_id).__name__}")
    meta = _as_metadata(metadata)
    ivf = _as_ivf(nlist, nprobe, n_items)
    if isinstance(bias_columns, bool) or not isinstance(bias_columns, int | np.integer):
        raise TypeError(f"bias_columns must be an int, got {type(bias_columns).__name__}")
    if not 0 <= bias_columns <= dim:
        raise ValueError(f"bias_columns must be from 0 to the {dim} columns of item_emb, got {bias_columns}")
    if normalize and bias_columns:
        raise ValueError(
            f"normalize=True with bias_columns={bias_columns}: a cosine would fold the per-item bias into the "
            "item's direction and no longer rank as the model scores; build the index without normalising"
        )
    if normalize:
        items = l2_normalize(items, "item_emb")
        if users is not None:
            users = l2_normalize(users, "user_emb")
    with write_lock(out_dir.absolute()):
        _check_replaceable(out_dir)
        _publish_index(
            out_dir.absolute(), items, ids, titles, users, uids, seen_csr, run_id, meta, normalized=normalize,
            bias_columns=int(bias_columns), ivf=ivf,
        )  # fmt: skip
    return out_dir


def _as_ivf(nlist: Any, nprobe: Any, n_items: int) -> tuple[int, int] | None:
    """Checked ``(nlist, nprobe)`` of an inverted-file index, or None for an exact one."""
    if nlist is None:
        if nprobe is not None:
            raise ValueError("nprobe is for an inverted-file index: give nlist too (or neither: exact)")
        return None
    if isinstance(nlist, bool) or not isinstance(nlist, int | np.integer) or not 1 <= nlist <= n_items:
        raise ValueError(f"nlist must be an int from 1 to the {n_items} items, got {nlist!r}")
    nprobe = min(DEFAULT_NPROBE, int(nlist)) if nprobe is None else nprobe
    _check_nprobe(nprobe, int(nlist))
    return int(nlist), int(nprobe)


def _check_nprobe(nprobe: Any, nlist: int) -> None:
    if isinstance(nprobe, bool) or not isinstance(nprobe, int | np.integer) or not 1 <= nprobe <= nlist:
        raise ValueError(f"nprobe must be an int from 1 to nlist = {nlist}, got {nprobe!r}")


def _train_ivf(items: np.ndarray, nlist: int):
    """An ``IndexIVFFlat`` (inner product) over float32 ``items`` [I, d], its lists trained by k-means on
    them; the quantizer stays referenced by the index (FAISS's Python wrapper keeps it alive)."""
    import faiss

    dim = items.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234  # FAISS's default, written down: the same items give the same lists
    index.train(items)
    index.add(items)
    return index


def _publish_index(
    final: Path,
    items: np.ndarray,
    ids: list[str],
    titles: list[str | None],
    users: np.ndarray | None,
    uids: list[str] | None,
    seen_csr: sp.csr_matrix | None,
    run_id: str | None,
    meta: dict[str, Any],
    *,
    normalized: bool,
    bias_columns: int = 0,
    ivf: tuple[int, int] | None = None,
    faiss_index: Any = None,
) -> None:
    """Write checked inputs (float32 ``items`` [I, d], their ids and titles, optional ``users`` [U, d] with
    ids and the seen matrix [U, I]) as the index folder ``final``: a temporary sibling, then
    :func:`serving._files.publish_folder`. The caller holds ``final``'s write lock. ``ivf``: ``(nlist,
    nprobe)`` of an inverted-file index, else exact; ``faiss_index``: an index already holding ``items``
    (of that kind), written as it is instead of being built."""
    import faiss
    import pyarrow as pa

    n_items, dim = items.shape
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_sibling(final, "building")
    tmp.mkdir()
    try:
        if faiss_index is not None:
            index = faiss_index
        elif ivf is None:
            index = faiss.IndexFlatIP(dim)
            index.add(items)
        else:
            index = _train_ivf(items, ivf[0])
        faiss.write_index(index, str(tmp / ITEMS_INDEX))
        written = [ITEMS_INDEX]
        _write_parquet(
            tmp / ITEM_IDS,
            pa.table(
                {
                    "position": pa.array(np.arange(n_items, dtype=np.int64)),
                    "item_id": pa.array(ids, type=pa.string()),
                    "title": pa.array(titles, type=pa.string()),
                }
            ),
        )
        written.append(ITEM_IDS)
        if users is not None:
            assert uids is not None  # the callers pass the user embeddings with their ids, or neither
            _write_parquet(
                tmp / USERS,
                pa.table(
                    {
                        "position": pa.array(np.arange(len(uids), dtype=np.int64)),
                        "user_id": pa.array(uids, type=pa.string()),
                    }
                ),
            )
            with open(tmp / USER_EMB, "wb") as f:
                np.save(f, users, allow_pickle=False)
            written += [USERS, USER_EMB]
        if seen_csr is not None:
            import scipy.sparse as sp

            with open(tmp / SEEN, "wb") as f:
                sp.save_npz(f, seen_csr, compressed=True)
            written.append(SEEN)

        files = {}
        for name in written:
            fsync_path(tmp / name)
            digest, size = sha256_file(tmp / name)
            files[name] = {"sha256": digest, "bytes": size}
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
            "metric": METRIC,
            "index_type": INDEX_TYPE if ivf is None else IVF_TYPE,
            **({} if ivf is None else {"nlist": ivf[0], "nprobe": ivf[1]}),
            "normalized": bool(normalized),
            "bias_columns": int(bias_columns),
            "dim": int(dim),
            "n_items": int(n_items),
            "n_users": len(uids) if uids is not None else 0,
            "has_user_embeddings": users is not None,
            "has_seen": seen_csr is not None,
            "n_seen": int(seen_csr.nnz) if seen_csr is not None else 0,
            "faiss_version": getattr(faiss, "__version__", "unknown"),
            "files": files,
            "metadata": meta,
        }
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        publish_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


def _as_embeddings(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point values, got dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(
            f"{name} has dimension {arr.shape[1]} but item_emb has dimension {dim}; query and item "
            "embeddings must share d"
        )
    cast = arr.dtype != np.float32
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise ValueError(
            f"{name} has NaN or inf values in {rows.size} row(s), e.g. rows {rows[:5].tolist()}"
            + (" (after casting to float32)" if cast else "")
        )
    return arr


def _as_ids(ids: Any, n: int, name: str, emb_name: str) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of str ids, not a single {type(ids).__name__}")
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(
            f"{name} has {len(ids)} entries but {emb_name} has {n} rows; they must be aligned "
            f"(row i of {emb_name} belongs to {name}[i])"
        )
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            raise TypeError(
                f"{name} must be str; entry {i} is {x!r} ({type(x).__name__}); convert ids with str()"
            )
    ids = [str(x) for x in ids]  # numpy.str_ -> str
    if len(set(ids)) != n:
        dups = [x for x, c in Counter(ids).items() if c > 1]
        raise ValueError(f"{name} has {len(dups)} duplicated id(s), e.g. {dups[:5]}")
    return ids


def _as_titles(titles: Any, n: int) -> list[str | None]:
    if titles is None:
        return [None] * n
    if isinstance(titles, (str, bytes)):
        raise TypeError("item_titles must be a sequence of titles, not a single string")
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(
            f"item_titles has {len(titles)} entries but item_emb has {n} rows; they must be aligned"
        )
    for i, t in enumerate(titles):
        if t is not None and not isinstance(t, str):
            raise TypeError(f"item_titles must be str or None; entry {i} is {t!r} ({type(t).__name__})")
    return [None if t is None else str(t) for t in titles]


def _as_seen(seen: Any, n_users: int, n_items: int):
    import scipy.sparse as sp

    if not sp.issparse(seen):
        raise TypeError(f"seen must be a scipy.sparse matrix [U, I], got {type(seen).__name__}")
    if seen.shape != (n_users, n_items):
        raise ValueError(
            f"seen has shape {seen.shape} but must be (len(user_ids), len(item_ids)) = ({n_users}, {n_items})"
        )
    csr = sp.csr_matrix(seen, copy=True)
    csr.sum_duplicates()  # also sorts column indices within each row
    # Structure only: every stored entry counts as seen (excluding too much is safe, too little is not).
    return sp.csr_matrix(
        (np.ones(csr.nnz, dtype=np.uint8), csr.indices.astype(np.int32), csr.indptr.astype(np.int64)),
        shape=csr.shape,
    )


def _as_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metadata must be JSON-serialisable (str keys, no NaN): {exc}") from None


def unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of float ``x`` [n, d] scaled to unit L2 norm, a zero row kept zero (unlike :func:`l2_normalize`,
    for comparisons where such an item simply matches nothing), and the norms: float32 [n, d] and [n]."""
    norms = np.linalg.norm(x, axis=1).astype(np.float32)
    unit = np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0)[:, None], dtype=np.float32)
    return unit, norms


def l2_normalize(x: np.ndarray, name: str) -> np.ndarray:
    """Rows of float32 ``x`` [n, d] scaled to unit L2 norm; a zero row is an error (it has no direction)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(
            f"{name} has {zero.size} all-zero row(s) (e.g. rows {zero[:5].tolist()}); cannot normalise"
        )
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def check_out_folder(out_dir: str | Path) -> None:
    """Raise the error :func:`build_index` would raise for an ``out_dir`` it may not replace (a file, a symlink,
    a non-empty folder that is not a serving index), for a caller to refuse it before the work that precedes
    the build; the build checks again."""
    _check_replaceable(Path(out_dir))


def _check_replaceable(out_dir: Path) -> None:
    # Many folders hold a manifest.json (prepared datasets, web apps): only our format marks an index.
    check_replaceable(
        out_dir,
        lambda folder: _manifest_format(folder / MANIFEST) == FORMAT,
        "serving index",
        f"a {MANIFEST} of format {FORMAT!r} (or a damaged index)",
    )


def _manifest_format(path: Path) -> object:
    """The ``format`` a manifest file names, or None when it is missing, unreadable or not a JSON object."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("format") if isinstance(manifest, dict) else None


# ---- load --------------------------------------------------------------------------------------------------
_LOAD_ATTEMPTS = 5


def _folder_missing(folder: Path) -> FileNotFoundError:
    return FileNotFoundError(f"serving index folder {str(folder)!r} does not exist or is not a folder")


def _require_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise _folder_missing(folder)
    return folder


def load_index(path: str | Path, *, verify: bool = True) -> ItemIndex:
    """Load and check a folder written by :func:`build_index`. Same as :meth:`ItemIndex.load`."""
    return ItemIndex.load(path, verify=verify)


class ItemIndex:
    """A loaded, verified serving index: the FAISS item index plus id maps, user embeddings and seen items.

    Everything is held in memory (nothing is memory-mapped), so the folder may be replaced or deleted while
    the index is in use. Instances are immutable after loading and safe to share between threads.

    Attributes (read-only): ``path``, ``manifest``, ``dim`` (d), ``n_items`` (I), ``n_users`` (U),
    ``normalized``, ``bias_columns``, ``run_id``, ``item_ids`` (tuple of I str), ``item_titles`` (tuple of I
    str | None), ``user_ids`` (tuple of U str), ``user_emb`` (float32 [U, d] or None), ``seen`` (CSR [U, I]
    or None),
    ``faiss_index``.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        faiss_index: Any,
        item_ids: Sequence[str],
        item_titles: Sequence[str | None],
        user_ids: Sequence[str] | None,
        user_emb: np.ndarray | None,
        seen: Any,
    ) -> None:
        self._path = path
        self._manifest = manifest
        self._faiss = faiss_index
        self._item_ids = tuple(item_ids)
        self._item_titles = tuple(item_titles)
        self._item_pos = {x: i for i, x in enumerate(self._item_ids)}
        self._user_ids = tuple(user_ids) if user_ids is not None else ()
        self._user_pos = {x: i for i, x in enumerate(self._user_ids)}
        if user_emb is not None:
            user_emb = np.ascontiguousarray(user_emb, dtype=np.float32)
            user_emb.flags.writeable = False
        self._user_emb = user_emb
        if seen is not None:
            import scipy.sparse as sp

            if not (sp.isspmatrix_csr(seen) and seen.has_canonical_format):
                seen = sp.csr_matrix(seen, copy=True)  # the per-call exclusions rely on sorted, distinct rows
                seen.sum_duplicates()
            for arr in (seen.data, seen.indices, seen.indptr):
                arr.flags.writeable = False
        self._seen = seen
        # the same arrays, for the per-call path: slicing a scipy matrix costs more than a small FAISS search
        self._seen_rows = ExcludedItems(seen.indptr, seen.indices, checked=True) if seen is not None else None
        self._directions: ItemIndex | None = None  # built on first use (directions())
        self._directions_lock = threading.Lock()

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, nprobe: int | None = None) -> ItemIndex:
        """Read ``path``, check it and return the index.

        ``nprobe``: for an inverted-file index, the lists searched per query (1..nlist) instead of the
        manifest's default; an error for an exact index, which has no lists.

        Every file listed in the manifest is read once; its size is always checked and, with ``verify=True``
        (the default), its SHA256 too; then the verified bytes are parsed and cross-checked against the
        manifest (FAISS ntotal and dimension, row counts, matrix shapes).

        Raises:
            FileNotFoundError: ``path`` is not an existing folder.
            IndexIntegrityError: a missing, truncated, corrupted or inconsistent file, or an unknown
                schema version; the message names the folder, the file, and what was expected vs found.
        """
        folder = Path(path)
        manifest, blobs = read_snapshot(
            folder,
            lambda snap: cls._read_files(folder, snap, verify),
            absent=lambda: _folder_missing(folder),
            attempts=_LOAD_ATTEMPTS,
        )
        return cls._from_blobs(folder, manifest, blobs, nprobe)

    @staticmethod
    def _read_files(
        folder: Path, snap: FolderSnapshot, verify: bool
    ) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The manifest and the verified bytes of every file it lists, all from one folder."""
        raw = snap.read(MANIFEST)
        if raw is None:
            raise IndexIntegrityError(
                folder, MANIFEST, "a manifest written by build_index", "no such file",
                "the folder is incomplete or is not a serving index; rebuild it",
            )  # fmt: skip
        manifest = _parse_manifest(folder, raw)
        blobs: dict[str, bytes] = {}
        for name, record in manifest["files"].items():
            data = snap.read(name)
            if data is None:
                raise IndexIntegrityError(folder, name, "a file listed in manifest.json", "no such file")
            if len(data) != record["bytes"]:
                raise IndexIntegrityError(
                    folder, name, f"{record['bytes']} bytes", f"{len(data)} bytes",
                    "the file was truncated or overwritten after the index was built",
                )  # fmt: skip
            if verify:
                digest = sha256_bytes(data)
                if digest != record["sha256"]:
                    raise IndexIntegrityError(
                        folder, name, f"sha256 {record['sha256']}", f"sha256 {digest}",
                        "the file was modified or corrupted after the index was built",
                    )  # fmt: skip
            blobs[name] = data
        return manifest, blobs

    @classmethod
    def _from_blobs(
        cls, folder: Path, m: dict[str, Any], blobs: dict[str, bytes], nprobe: int | None = None
    ) -> ItemIndex:
        import faiss

        dim, n_items, n_users = m["dim"], m["n_items"], m["n_users"]
        try:
            index = faiss.deserialize_index(np.frombuffer(blobs[ITEMS_INDEX], dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexIntegrityError(
                folder, ITEMS_INDEX, "a FAISS index", f"an unreadable file ({exc})"
            ) from None
        kind = m["index_type"]
        if type(index).__name__ != kind or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexIntegrityError(
                folder, ITEMS_INDEX, f"an {kind} (inner product; manifest.json 'index_type')",
                f"{type(index).__name__} with metric type {index.metric_type}",
            )  # fmt: skip
        if kind == IVF_TYPE:
            assert isinstance(index, faiss.IndexIVFFlat)  # its class is named kind (checked above)
            if index.nlist != m["nlist"]:
                raise IndexIntegrityError(
                    folder, ITEMS_INDEX, f"{m['nlist']} lists (manifest.json 'nlist')", f"{index.nlist}",
                    "manifest.json and items.faiss disagree",
                )  # fmt: skip
            if nprobe is not None:
                _check_nprobe(nprobe, index.nlist)
            index.nprobe = int(nprobe if nprobe is not None else m["nprobe"])
            index.make_direct_map()  # item_vectors() reconstructs rows by id
        elif nprobe is not None:
            raise ValueError(f"nprobe is for an inverted-file index; {str(folder)!r} is an exact index")
        if index.d != dim:
            raise IndexIntegrityError(
                folder, ITEMS_INDEX, f"dimension {dim} (manifest.json 'dim')", f"dimension {index.d}",
                "manifest.json and items.faiss disagree",
            )  # fmt: skip
        if index.ntotal != n_items:
            raise IndexIntegrityError(
                folder, ITEMS_INDEX, f"{n_items} vectors (manifest.json 'n_items')", f"{index.ntotal}",
                "manifest.json and items.faiss disagree",
            )  # fmt: skip

        items = _read_id_table(folder, ITEM_IDS, blobs[ITEM_IDS], "item_id", n_items, "n_items")
        item_ids = items.column("item_id").to_pylist()
        item_titles = items.column("title").to_pylist() if "title" in items.column_names else [None] * n_items

        user_ids = user_emb = seen = None
        if m["has_user_embeddings"]:
            users = _read_id_table(folder, USERS, blobs[USERS], "user_id", n_users, "n_users")
            user_ids = users.column("user_id").to_pylist()
            try:
                user_emb = np.load(io.BytesIO(blobs[USER_EMB]), allow_pickle=False)
            except (ValueError, OSError, EOFError) as exc:
                raise IndexIntegrityError(
                    folder, USER_EMB, "a .npy array", f"an unreadable file ({exc})"
                ) from None
            if user_emb.dtype != np.float32 or user_emb.shape != (n_users, dim):
                raise IndexIntegrityError(
                    folder, USER_EMB, f"float32 array of shape ({n_users}, {dim}) (manifest.json)",
                    f"{user_emb.dtype} array of shape {user_emb.shape}",
                )  # fmt: skip
        if m["has_seen"]:
            import scipy.sparse as sp

            try:
                seen = sp.load_npz(io.BytesIO(blobs[SEEN]))
            except (ValueError, OSError, EOFError, KeyError) as exc:
                raise IndexIntegrityError(
                    folder, SEEN, "a scipy sparse .npz", f"an unreadable file ({exc})"
                ) from None
            seen = sp.csr_matrix(seen)
            if seen.shape != (n_users, n_items) or seen.nnz != m["n_seen"]:
                raise IndexIntegrityError(
                    folder, SEEN, f"a ({n_users}, {n_items}) matrix with {m['n_seen']} entries (manifest.json)",
                    f"shape {seen.shape} with {seen.nnz} entries",
                )  # fmt: skip
            seen.sum_duplicates()
        return cls(folder, m, index, item_ids, item_titles, user_ids, user_emb, seen)

    # -- read-only views -----------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._manifest))  # a copy: callers cannot alter the loaded index

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    @property
    def n_items(self) -> int:
        return len(self._item_ids)

    @property
    def n_users(self) -> int:
        return len(self._user_ids)

    @property
    def normalized(self) -> bool:
        return bool(self._manifest["normalized"])

    @property
    def bias_columns(self) -> int:
        """Trailing columns of the item vectors that are per-item biases (0 for most models)."""
        return int(self._manifest.get("bias_columns", 0))

    @property
    def run_id(self) -> str | None:
        return self._manifest.get("run_id")

    @property
    def item_ids(self) -> tuple[str, ...]:
        return self._item_ids

    @property
    def item_titles(self) -> tuple[str | None, ...]:
        return self._item_titles

    @property
    def user_ids(self) -> tuple[str, ...]:
        return self._user_ids

    @property
    def user_emb(self) -> np.ndarray | None:
        return self._user_emb

    @property
    def seen(self):
        return self._seen

    @property
    def has_users(self) -> bool:
        return self._user_emb is not None

    @property
    def has_seen(self) -> bool:
        return self._seen is not None

    @property
    def faiss_index(self):
        return self._faiss

    @property
    def index_type(self) -> str:
        """``"IndexFlatIP"`` (exact) or ``"IndexIVFFlat"`` (approximate, see :attr:`nlist`, :attr:`nprobe`)."""
        return str(self._manifest["index_type"])

    @property
    def nlist(self) -> int | None:
        """Lists of an inverted-file index (None: exact)."""
        return int(self._faiss.nlist) if self.index_type == IVF_TYPE else None

    @property
    def nprobe(self) -> int | None:
        """Lists an inverted-file index searches per query (None: exact)."""
        return int(self._faiss.nprobe) if self.index_type == IVF_TYPE else None

    def directions(self) -> ItemIndex:
        """The items' unit directions as an exact in-memory index: what cosine item-to-item search uses.

        Each item's vector without its bias columns, scaled to unit length (a zero vector stays zero: its
        cosine with every item is 0); an exact ``IndexFlatIP`` whatever this index is, so a search costs
        I x (d - bias_columns) multiply-adds per query. An exact normalised index without bias columns is its
        own directions (an inverted-file one gets the exact copy too). Built on the first call (float32
        [I, d - bias_columns] and an id map, beside this index's), then kept; thread-safe.

        Raises:
            ValueError: every column is a bias (``bias_columns == dim``): the items have no directions.
        """
        if self.normalized and not self.bias_columns and self.index_type == INDEX_TYPE:
            return self
        with self._directions_lock:
            if self._directions is None:
                self._directions = self._build_directions()
            return self._directions

    def _build_directions(self) -> ItemIndex:
        import faiss

        width = self.dim - self.bias_columns
        if width == 0:
            model = self._manifest.get("metadata", {}).get("model")
            raise ValueError(
                f"the items of the index {str(self._path)!r}{f' (model {model!r})' if model else ''} have no "
                "vectors to compare: each holds only a per-item score (bias_columns = dim)"
            )
        vectors = self.item_vectors(np.arange(self.n_items, dtype=np.int64), bias=False)
        unit, _ = unit_rows(vectors)
        flat = faiss.IndexFlatIP(width)
        flat.add(unit)
        manifest = {
            key: value for key, value in self._manifest.items() if key not in ("nlist", "nprobe", "files")
        }
        manifest.update(
            dim=width, normalized=True, bias_columns=0, index_type=INDEX_TYPE, n_users=0, n_seen=0,
            has_user_embeddings=False, has_seen=False,
        )  # fmt: skip
        return ItemIndex(self._path, manifest, flat, self._item_ids, self._item_titles, None, None, None)

    def __len__(self) -> int:
        return self.n_items

    def __repr__(self) -> str:
        return (
            f"ItemIndex(path={str(self._path)!r}, n_items={self.n_items}, dim={self.dim}, "
            f"n_users={self.n_users}, seen={self.has_seen}, normalized={self.normalized}, run_id={self.run_id!r}"
            + (f", nlist={self.nlist}, nprobe={self.nprobe})" if self.nlist else ")")
        )

    # -- id maps -------------------------------------------------------------------------------------------
    def item_positions(self, item_ids: Sequence[str]) -> np.ndarray:
        """int64 [n] positions of ``item_ids``; raises :class:`UnknownItemError` naming every unknown id."""
        return _positions(self._item_pos, item_ids, lambda missing: UnknownItemError(missing, self.n_items))

    def user_positions(self, user_ids: Sequence[str]) -> np.ndarray:
        """int64 [n] positions of ``user_ids``; raises :class:`UnknownUserError` naming every unknown id."""
        return _positions(
            self._user_pos,
            user_ids,
            lambda missing: UnknownUserError(
                missing, self.n_users, "for a new or anonymous user, embed them and use recommend_for_vector"
            ),
        )

    def seen_items(self, positions: np.ndarray) -> ExcludedItems:
        """The seen items of the users at int ``positions`` [n] (rows ``0..n-1``), ready for :meth:`search`."""
        if self._seen_rows is None:
            raise ValueError(f"index {str(self._path)!r} was built without seen items")
        return self._seen_rows.take(positions)

    def item_vectors(self, positions: np.ndarray, *, bias: bool = True) -> np.ndarray:
        """float32 [n, d] stored item vectors at int positions [n] (normalised if the index is); with
        ``bias=False`` the item's direction alone, [n, d - bias_columns], what item-to-item comparisons
        use."""
        positions = np.ascontiguousarray(positions, dtype=np.int64)
        width = self.dim if bias else self.dim - self.bias_columns
        if positions.size == 0:
            return np.zeros((0, width), dtype=np.float32)
        vectors = self._faiss.reconstruct_batch(positions)
        return vectors if bias else np.ascontiguousarray(vectors[:, :width])

    # -- search --------------------------------------------------------------------------------------------
    def as_queries(self, queries: Any) -> np.ndarray:
        """Check and convert query embeddings to C-contiguous float32 [B, d] (normalised if the index is)."""
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape [B, {self.dim}] (d of this index), got {q.shape}")
        if not np.issubdtype(q.dtype, np.floating):
            raise TypeError(f"queries must hold floating-point values, got dtype {q.dtype}")
        q = np.ascontiguousarray(q, dtype=np.float32)
        bad = ~np.isfinite(q).all(axis=1)
        if bad.any():
            raise ValueError(f"queries contain NaN or inf in rows {np.flatnonzero(bad)[:5].tolist()}")
        return l2_normalize(q, "queries") if self.normalized else q

    def search(self, queries: np.ndarray, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query row, skipping excluded items: exact, or for an
        inverted-file index the best of the ``nprobe`` probed lists (a row they cannot fill with its owed
        items is searched again with twice the lists, up to all of them, which is exact).

        Args:
            queries: float32 [B, d], already in the index's space (see :meth:`as_queries`).
            k: results per row, >= 1.
            exclude: optional scipy sparse [B, I]; every stored entry (b, j) removes item position j from
                row b. Or an :class:`~serving._topk.ExcludedItems` of B rows (what :meth:`seen_items` gives).

        Returns:
            ``(scores, positions)``: float32 [B, K] and int64 [B, K] with ``K = min(k, I)`` (no list is longer
            than the catalogue, whatever k a client asks for), best first, equal scores by lower position. A
            row with fewer than K items left after exclusion holds all of them, then is padded with
            ``(-inf, -1)``; otherwise it holds exactly K items.

        Rows are grouped by the candidates they need, ``k + |exclude_b| + 1`` (so that after exclusion at
        least k remain), within a factor of 2; one FAISS search serves each group (row blocks only beyond
        ~16M candidates), asking for the group's largest count. A row is searched again with more candidates
        only when the candidate list may have cut through a group of equal scores at the k-th place (so that
        ties are broken by position exactly, not by FAISS's order).
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape [B, {self.dim}], got {q.shape}")
        n_rows, n_items = q.shape[0], self.n_items
        k = min(check_k(k), n_items)
        out_scores = np.full((n_rows, k), -np.inf, dtype=np.float32)
        out_pos = np.full((n_rows, k), -1, dtype=np.int64)
        if n_rows == 0:
            return out_scores, out_pos
        if isinstance(exclude, ExcludedItems):
            if not exclude.checked:
                exclude = exclude.check(n_rows, n_items)
            elif exclude.n_rows != n_rows:
                raise ValueError(f"exclude has {exclude.n_rows} rows, expected {n_rows}")
        elif exclude is not None:
            exclude = ExcludedItems.from_sparse(exclude, n_rows, n_items)
        counts = exclude.counts() if exclude is not None else np.zeros(n_rows, dtype=np.int64)
        need = np.minimum(k, n_items - counts)

        # Rows are searched in groups of similar candidate counts (within a factor of 2): one user with a long
        # history asked for its candidate count in every row of the batch (10k users: 1.6 s -> 20 s).
        wanted = np.minimum(k + counts + 1, n_items)
        if n_rows == 1 or wanted.max() <= 2 * wanted.min():  # one group (a single query: no sorting to pay)
            groups = [np.arange(n_rows)]
        else:
            group = np.ceil(np.log2(wanted)).astype(np.int64)
            order = np.argsort(group, kind="stable")
            groups = np.split(order, np.flatnonzero(np.diff(group[order])) + 1)
        for rows in groups:
            block = max(1, _MAX_CANDIDATES // int(wanted[rows].max()))
            for start in range(0, rows.size, block):
                pending = rows[start : start + block]
                self._search_rows(
                    q, k, exclude, need, pending, int(wanted[pending].max()), out_scores, out_pos
                )
        return out_scores, out_pos

    def _search_rows(self, q, k, exclude, need, pending, fetch, out_scores, out_pos) -> None:
        """Search rows ``pending`` (ascending int64) of ``q`` for ``fetch`` candidates each, into
        ``out_scores``/``out_pos``. A row whose answer is not final yet (:func:`select_topk`) is asked again
        with twice the candidates; in an inverted file, a row whose probed lists ran out before it was filled
        is asked again with twice the lists instead. Each row's lists are its own, so a row's answer does not
        depend on the other rows of the batch."""
        n_rows, n_items = q.shape[0], self.n_items
        ivf = self.index_type == IVF_TYPE
        if ivf:
            import faiss

            nlist, probe = int(self._faiss.nlist), int(self._faiss.nprobe)
        else:
            nlist = probe = 0
        work = [(pending, fetch, probe)]  # (rows, candidates, lists to probe) still to search
        while work:
            pending, fetch, probe = work.pop()
            whole = pending.size == n_rows  # the first pass of a single block: nothing to slice
            rows = q if whole else q[pending]
            complete = fetch >= n_items
            if ivf:  # the lists to probe go with each call: no shared state to change (thread-safe)
                lists = nlist if complete else probe
                # faiss's Python wrapper sets fields from keywords (class_wrappers.handle_SearchParameters);
                # its stub declares __init__ without them
                params = faiss.SearchParametersIVF(nprobe=lists)  # type: ignore[call-arg]
                dist, pos = self._faiss.search(rows, fetch, params=params)
            else:
                dist, pos = self._faiss.search(rows, fetch)
            sub = exclude if exclude is None or whole else exclude.take(pending)
            done, s, p = select_topk(dist, pos, sub, need[pending], k, n_items, complete=complete)
            more_lists = np.zeros(pending.size, dtype=bool)
            if ivf and not complete:
                # FAISS returned every item of the probed lists (it padded with -1), so more candidates
                # would be the same ones. A filled row is final (no tie at the cut is left unseen among the
                # probed items); the others need more lists (all of them at most), not more candidates.
                ran_out = (pos < 0).any(axis=1)
                filled = (p >= 0).sum(axis=1) >= need[pending]
                done |= ran_out & filled
                if probe < nlist:
                    more_lists = ran_out & ~done
            out_scores[pending[done]] = s[done]
            out_pos[pending[done]] = p[done]
            if more_lists.any():
                work.append((pending[more_lists], fetch, min(2 * probe, nlist)))
            again = ~done & ~more_lists
            if again.any():
                work.append((pending[again], min(2 * fetch, n_items), probe))


def _positions(table: dict[str, int], ids: Sequence[str], error) -> np.ndarray:
    get = table.get
    pos = np.fromiter((get(x, -1) for x in ids), dtype=np.int64, count=len(ids))
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        raise error([ids[j] for j in missing.tolist()])
    return pos


def _read_id_table(folder: Path, name: str, data: bytes, id_col: str, n: int, count_key: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        raise IndexIntegrityError(folder, name, "a Parquet file", f"an unreadable file ({exc})") from None
    for col in ("position", id_col):
        if col not in table.column_names:
            raise IndexIntegrityError(folder, name, f"a column {col!r}", f"columns {table.column_names}")
    if table.num_rows != n:
        raise IndexIntegrityError(
            folder, name, f"{n} rows (manifest.json {count_key!r})", f"{table.num_rows} rows",
            "manifest.json and the id table disagree",
        )  # fmt: skip
    position = table.column("position").to_numpy()
    if not np.array_equal(position, np.arange(n)):
        raise IndexIntegrityError(folder, name, "positions 0..n-1 in order", "another order")
    ids = table.column(id_col)
    if ids.null_count or not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        raise IndexIntegrityError(
            folder, name, f"non-null string {id_col!r}", f"type {ids.type}, {ids.null_count} nulls"
        )
    if len(set(ids.to_pylist())) != n:
        raise IndexIntegrityError(folder, name, f"{n} distinct {id_col}s", "duplicates")
    return table


def _parse_manifest(folder: Path, raw: bytes) -> dict[str, Any]:
    def bad(expected: str, found: object, hint: str | None = None) -> IndexIntegrityError:
        return IndexIntegrityError(folder, MANIFEST, expected, found, hint)

    try:
        m = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad("valid JSON", f"unparsable text ({exc})") from None
    if not isinstance(m, dict):
        raise bad("a JSON object", type(m).__name__)
    if m.get("format") != FORMAT:
        raise bad(f"format {FORMAT!r}", repr(m.get("format")), "not a recsys serving index")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise bad(
            f"schema_version {SCHEMA_VERSION} (the only version this recsys reads)",
            f"schema_version {m.get('schema_version')!r}",
            "the index was written by another recsys version; rebuild it or upgrade recsys",
        )

    def field(key: str, kind: type, check=lambda v: True, what: str = "") -> Any:
        v = m.get(key)
        if type(v) is not kind or not check(v):  # `type is`, not isinstance: True is not a count
            raise bad(f"{key!r}: {what or kind.__name__}", repr(v))
        return v

    field("dim", int, lambda v: v > 0, "a positive int")
    field("n_items", int, lambda v: v > 0, "a positive int")
    field("n_users", int, lambda v: v >= 0, "a non-negative int")
    field("n_seen", int, lambda v: v >= 0, "a non-negative int")
    field("has_user_embeddings", bool)
    field("has_seen", bool)
    field("normalized", bool)
    if "bias_columns" in m:  # written since 2026-12-05; an older folder has none
        field("bias_columns", int, lambda v: 0 <= v <= m["dim"] and not (v and m["normalized"]),
              "an int from 0 to 'dim', 0 when 'normalized'")  # fmt: skip
    field("metric", str, lambda v: v == METRIC, repr(METRIC))
    field("index_type", str, lambda v: v in (INDEX_TYPE, IVF_TYPE), f"{INDEX_TYPE!r} or {IVF_TYPE!r}")
    if m["index_type"] == IVF_TYPE:
        nlist = field("nlist", int, lambda v: 1 <= v <= m["n_items"], "an int from 1 to 'n_items'")
        field("nprobe", int, lambda v: 1 <= v <= nlist, "an int from 1 to 'nlist'")
    if m["has_seen"] and not m["has_user_embeddings"]:
        raise bad("'has_seen' only with 'has_user_embeddings'", "seen items without users")
    files = field("files", dict, what="an object of file records")
    expected = {ITEMS_INDEX, ITEM_IDS}
    if m["has_user_embeddings"]:
        expected |= {USERS, USER_EMB}
    if m["has_seen"]:
        expected.add(SEEN)
    if set(files) != expected:
        missing, extra = sorted(expected - set(files)), sorted(set(files) - expected)
        raise bad(f"file records for {sorted(expected)}", f"missing {missing}, unexpected {extra}")
    for name, rec in files.items():
        ok = (
            isinstance(rec, dict)
            and type(rec.get("bytes")) is int
            and isinstance(rec.get("sha256"), str)
            and len(rec["sha256"]) == 64
        )
        if not ok:
            raise bad(f"files[{name!r}] = {{'sha256': 64 hex chars, 'bytes': int}}", repr(rec))
    return m
