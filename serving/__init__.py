"""Serving: a FAISS index folder over item embeddings and an embedded :class:`Retriever`.

``build_index`` writes a self-verifying folder (``manifest.json`` with checksums, ``items.faiss``, the item id
map, optional user embeddings and seen items); ``load_index`` / ``ItemIndex.load`` refuse a corrupted or
mismatched folder with :class:`IndexIntegrityError`; ``Retriever`` answers top-k queries, and
``RerankingRetriever`` reorders a known user's retrieved candidates with a LightGBM ``Reranker``;
``export_recommendations`` writes many users' lists to one CSV or Parquet file (batch jobs);
``serving.http.create_app`` serves them over HTTP (FastAPI: import that module explicitly).

Importing this package is cheap: the names below are resolved on first use, and FAISS, pyarrow and scipy are
imported only inside the functions that need them, so ``recsys --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__all__ = [
    "add_items",
    "IndexIntegrityError",
    "ItemIndex",
    "Recommendation",
    "Reranker",
    "RerankingRetriever",
    "Retriever",
    "UnknownItemError",
    "UnencodableItemError",
    "UnknownUserError",
    "build_index",
    "export_recommendations",
    "load_index",
    "read_user_ids",
]

_WHERE = {
    "add_items": "serving.add_items",
    "IndexIntegrityError": "serving.errors",
    "UnknownItemError": "serving.errors",
    "UnencodableItemError": "serving.errors",
    "UnknownUserError": "serving.errors",
    "ItemIndex": "serving.index",
    "build_index": "serving.index",
    "export_recommendations": "serving.export",
    "read_user_ids": "serving.export",
    "load_index": "serving.index",
    "Recommendation": "serving.retriever",
    "Reranker": "serving.rerank",
    "RerankingRetriever": "serving.rerank",
    "Retriever": "serving.retriever",
}

if TYPE_CHECKING:
    from serving.add_items import add_items
    from serving.errors import IndexIntegrityError, UnencodableItemError, UnknownItemError, UnknownUserError
    from serving.export import export_recommendations, read_user_ids
    from serving.index import ItemIndex, build_index, load_index
    from serving.rerank import Reranker, RerankingRetriever
    from serving.retriever import Recommendation, Retriever


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'serving' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
