"""Add new items to a served index without retraining: append their embeddings and ids to an index folder.

A two-tower model embeds an item from its features alone (``TwoTower.embed_new_items``), so an item that was
never trained on can be served as soon as its features are known.  :func:`add_items` reads a verified index
folder, appends the new rows (FAISS ids stay the row positions; existing positions and vectors do not
change), widens the users' seen matrix with empty columns, and writes the result as
:func:`serving.build_index` does — the same atomic, checksummed publication, so a reader never sees a
half-updated folder — holding the folder's write lock from the read to the publication.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_items"]


def add_items(
    index_dir: str | Path,
    item_emb: np.ndarray,
    item_ids: Sequence[str],
    *,
    item_titles: Sequence[str | None] | None = None,
    out_dir: str | Path | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Append items to the index at ``index_dir`` (in place unless ``out_dir`` is given); returns the folder.

    Args:
        index_dir: a folder written by :func:`serving.build_index`.
        item_emb: float ``[n, d]`` embeddings of the new items, from the same model (normalised here when the
            index is normalised).
        item_ids: n new, distinct ids, none already in the index.
        item_titles: optional n titles.
        out_dir: write the extended index there instead of replacing ``index_dir``.
        metadata: extra facts merged into the manifest's metadata (``added_items`` counts the additions).

    Raises:
        ValueError: a dimension mismatch, an id already in the index, or misaligned inputs.
        TypeError: as :func:`serving.build_index`, which writes the ids: ids that are not str (an int id is
            refused here, where the Retriever's queries read it as its text), one str for a list, embeddings
            that are not floating-point.

    An empty batch (no rows, no ids, no titles) changes nothing, unless ``metadata`` is given (then only the
    manifest's metadata changes); with ``out_dir`` it is a copy.
    """
    from serving._files import has_replaced_copy, write_lock
    from serving.index import _as_embeddings, _as_ids, _as_metadata, _as_titles, _require_folder

    if has_replaced_copy(Path(index_dir).absolute()):
        with write_lock(Path(index_dir).absolute()):
            pass  # a writer killed between its two renames: the lock's holder puts the served folder back
    # Everything that needs no index is checked before the lock is taken (taking it creates the lock file):
    # a mistyped path, bad inputs or an empty batch write nothing, and need no write access.
    _require_folder(index_dir)
    new = np.asarray(item_emb)
    if new.ndim != 2:
        raise ValueError(f"item_emb must have shape [n, d], got {new.shape}")
    # The checks build_index makes: a str is not a list of one-letter ids, None is not the id "None".
    ids = _as_ids(item_ids, new.shape[0], "item_ids", "item_emb")
    if not ids and out_dir is None and (item_titles is None or len(item_titles) == 0) and not metadata:
        return Path(index_dir)  # nothing new (a periodic job with no new items)
    new = _as_embeddings(new, "item_emb") if ids else new.astype(np.float32)
    titles = _as_titles(item_titles, len(ids))
    extra = _as_metadata(metadata)
    target = Path(out_dir if out_dir is not None else index_dir).absolute()
    # Load, extend and publish under the target's write lock: two add_items at once each published the
    # index plus its own items, and the second publication dropped the first one's items.
    with write_lock(target):
        return _add_items(index_dir, new, ids, titles, extra, out_dir, target)


def _add_items(
    index_dir: str | Path,
    new: np.ndarray,
    ids: list[str],
    titles: list[str | None],
    extra: dict[str, Any],
    out_dir: str | Path | None,
    target: Path,
) -> Path:
    """The rest of :func:`add_items` under the target's write lock, with its inputs checked: float32 ``new``
    [n, d], n ``ids`` and ``titles``, ``extra`` metadata."""
    import scipy.sparse as sp

    from serving.index import (
        ItemIndex,
        _as_seen,
        _check_replaceable,
        _publish_index,
        l2_normalize,
    )

    index = ItemIndex.load(index_dir)
    if new.shape[1] != index.dim:
        raise ValueError(
            f"item_emb must have shape [n, {index.dim}] (d of the index at {index_dir}), got {new.shape}"
        )
    clash = sorted(set(ids) & set(index.item_ids))
    if clash:
        raise ValueError(f"item ids already in the index at {index_dir}: {clash[:5]}")
    if index.normalized and ids:
        # Only the new rows: normalising the stored unit vectors again moved their last bits (and scores).
        new = l2_normalize(new, "item_emb")
    manifest = index.manifest
    meta = dict(manifest.get("metadata") or {})
    meta.update(extra)
    meta["added_items"] = int(meta.get("added_items", 0)) + len(ids)
    seen = None
    if index.has_seen:
        widened = sp.hstack([index.seen, sp.csr_matrix((index.n_users, len(ids)), dtype=index.seen.dtype)])
        seen = _as_seen(widened, index.n_users, index.n_items + len(ids))
    _check_replaceable(target)
    grown = ivf = None
    if index.nlist is not None:
        import faiss

        # The trained lists are kept (retraining them would move the answers of every existing item); the
        # new items join the lists nearest to them.
        grown = faiss.clone_index(index.faiss_index)
        grown.add(new)
        ivf = (index.nlist, int(manifest["nprobe"]))
    _publish_index(
        target,
        np.ascontiguousarray(np.concatenate([index.item_vectors(np.arange(index.n_items)), new]), np.float32),
        [*index.item_ids, *ids],
        [*index.item_titles, *titles],
        np.ascontiguousarray(index.user_emb, np.float32) if index.has_users else None,
        list(index.user_ids) if index.has_users else None,
        seen,
        index.run_id,
        meta,
        normalized=index.normalized,
        bias_columns=index.bias_columns,
        ivf=ivf,
        faiss_index=grown,
    )
    return Path(out_dir if out_dir is not None else index_dir)
