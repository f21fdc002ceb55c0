"""Add new items to a served index without retraining: append their embeddings and ids to an index folder.

A two-tower model embeds an item from its features alone (``TwoTower.embed_new_items``), so an item that was
never trained on can be served as soon as its features are known.  :func:`add_items` reads a verified index
folder, appends the new rows (FAISS ids stay the row positions; existing positions do not move), widens the
users' seen matrix with empty columns, and writes the result with :func:`serving.build_index` — the same
atomic, checksummed publication, so a reader never sees a half-updated folder.
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
    import scipy.sparse as sp

    from serving.index import ItemIndex, _as_embeddings, _as_ids, build_index

    index = ItemIndex.load(index_dir)
    new = np.asarray(item_emb)
    if new.ndim != 2 or new.shape[1] != index.dim:
        raise ValueError(
            f"item_emb must have shape [n, {index.dim}] (d of the index at {index_dir}), got {new.shape}"
        )
    # The checks build_index makes: a str is not a list of one-letter ids, None is not the id "None".
    ids = _as_ids(item_ids, new.shape[0], "item_ids", "item_emb")
    if not ids and out_dir is None and (item_titles is None or len(item_titles) == 0) and not metadata:
        return Path(index_dir)  # nothing new (a periodic job with no new items)
    new = _as_embeddings(new, "item_emb") if ids else new.astype(np.float32)
    clash = sorted(set(ids) & set(index.item_ids))
    if clash:
        raise ValueError(f"item ids already in the index at {index_dir}: {clash[:5]}")
    titles = list(item_titles) if item_titles is not None else [None] * len(ids)
    old = index.item_vectors(np.arange(index.n_items))
    manifest = index.manifest
    meta = dict(manifest.get("metadata") or {})
    meta.update(metadata or {})
    meta["added_items"] = int(meta.get("added_items", 0)) + len(ids)
    seen = None
    if index.has_seen:
        seen = sp.hstack(
            [index.seen, sp.csr_matrix((index.n_users, len(ids)), dtype=index.seen.dtype)]
        ).tocsr()
    return build_index(
        np.concatenate([old, new.astype(np.float32)]),
        [*index.item_ids, *ids],
        out_dir if out_dir is not None else index_dir,
        user_emb=index.user_emb if index.has_users else None,
        user_ids=list(index.user_ids) if index.has_users else None,
        seen=seen,
        item_titles=[*index.item_titles, *titles],
        run_id=index.run_id,
        metadata=meta,
        normalize=index.normalized,
    )
