"""A small HTTP app over a serving index: JSON endpoints for the :class:`~serving.retriever.Retriever` (and an
optional :class:`~serving.rerank.RerankingRetriever`), built with FastAPI.

Typical use (``recsys serve --index DIR`` does the same with uvicorn)::

    app = create_app(index_dir, reranker_dir=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints (every list of recommendations is ``[{"item_id", "score", "title"}, ...]``, best first, as
``recsys recommend --json`` prints it):

* ``GET /health``: the index folder, its run id, item and user counts, its dimension, its kind (exact or
  inverted file, with the lists probed per query), whether a re-ranker and a sequence encoder are loaded.
* ``GET /recommend?user=U&k=10[&exclude_seen=true][&rerank=false]``: one user's list.
  ``POST /recommend`` ``{"users": [...], "k": 10, "exclude_seen": true, "rerank": false}``: one list per
  user, in the order given. ``rerank`` reorders the retrieved candidates with the re-ranker (its scores
  replace the inner products); a server started without one answers 400.
* ``GET /similar?item=I&k=10`` and ``POST /similar`` ``{"items": [...], "k": 10}``: nearest items by inner
  product, the item itself left out.
* ``POST /recommend_for_vector`` ``{"vectors": [[...]], "k": 10, "exclude_items": [[...]]}``: lists for query
  embeddings computed outside the index (new or anonymous users); ``exclude_items`` is optional, one list of
  item ids per vector.
* ``GET /recommend_for_sequence?items=A&items=B&k=10[&exclude_history=true]`` and
  ``POST /recommend_for_sequence`` ``{"sequences": [[...]], "k": 10, "exclude_history": true}``: next items
  after sequences of item ids, oldest first (anonymous sessions), ranked with a sequence model's encoder
  (:meth:`~serving.retriever.Retriever.recommend_for_sequences`); the items of a sequence are left out unless
  ``exclude_history`` is false. Only when the app holds an encoder (``sequence_encoder``; ``recsys serve
  --run RUN`` of SASRec, GRU4Rec, DuoRec, ICSRec, ICLRec or BERT4Rec passes the run's); otherwise a 400.

A run without an index (EASE, RP3beta: item-item scores) is served by :func:`create_model_app` instead, its model
scoring each request: the same endpoints and bodies, but no ``metric``, re-ranker or query vectors.

Errors: an unknown user or item id is a 404 whose ``detail`` is the library's sentence naming the ids; a
bad ``k``, a malformed body, a vector of the wrong dimension or holding NaN/inf, or a sequence holding an item
added to the index after training (which the encoder cannot encode) is a 422 (FastAPI's own validation
details, or the library's sentence as ``detail``); a re-ranked list from a server without a re-ranker, a
sequence query to a server without an encoder, or a query the index was not built for (no user embeddings,
no seen items), is a 400. Bad input never gives a 500.

Concurrency: the index is loaded once, at :func:`create_app`, and shared read-only. The endpoints that
search are plain ``def`` functions, which FastAPI runs in its thread pool; the retriever and the re-ranking
retriever are safe to share between threads, and so is a sequence encoder (a model in evaluation mode, run
without gradients, changes no state). FAISS's own threads per search are set with ``num_threads``.
"""

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, get_origin

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from serving.errors import UnencodableItemError, UnknownIdError, UnknownUserError
from serving.rerank import Reranker, RerankingRetriever
from serving.retriever import Recommendation, Retriever, SequenceEncoder

# k is capped: the search asks FAISS for k + |seen| + 1 candidates per row and the answer is k JSON objects
# per row, so one cheap request for k = 10**6 would make the server rank and serialise the whole catalogue
# for every user it names. A client that wants more than a page of 1000 items wants the library, not HTTP.
MAX_K = 1000
# The same reasoning bounds the rows of one request (users, items, vectors or sequences) ...
MAX_BATCH = 1000
# ... and their product: 1000 users x k = 1000 was one 8 KB request for a 1,000,000-item answer (84 MB of
# JSON, about 7 s and 1.3 GB on the 2-core machine), during which the server answered /health in seconds.
MAX_RESULTS = 100_000
# Floats of one query vector: it must have the index's dimension anyway; this bounds what is parsed first.
MAX_DIM = 8192
# Items of one sequence: the encoder reads only the last few (50 for the configs here), but all of them are
# left out of the answer, so a long history is worth sending; beyond this, trim it on the client.
MAX_SEQUENCE = 10_000

# Ids as the index stores them: text, or an integer read as its text (7 is "7"), as the library accepts them.
# Strict types: JSON true or 1.5 is refused (422) rather than turned into an id that may exist ("1", "1.5").
Id = StrictStr | StrictInt
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"items per list, 1 to {MAX_K}")]
KQuery = Annotated[int, Query(ge=1, le=MAX_K, description=f"items per list, 1 to {MAX_K}")]

_USER_HINT = "for a new or anonymous user, embed them with the model and POST /recommend_for_vector"


def _check_query(request: Request) -> None:
    """Refuse (422) a query parameter the endpoint does not take, and a single-valued one given twice:
    FastAPI keeps the last of a repeated one and ignores unknown ones, so ``?user=1&user=2`` answered for
    user 2 alone and ``?user=1&kk=5`` for k = 10, as the POST bodies' misspelt keys would have been without
    ``extra="forbid"``. The parameters are the matched endpoint's own (its signature)."""
    taken = {
        p.alias: get_origin(p.field_info.annotation) is list
        for p in request.scope["route"].dependant.query_params
    }
    for key, count in Counter(key for key, _ in request.query_params.multi_items()).items():
        if key not in taken:
            raise HTTPException(
                422, f"unknown query parameter {key!r}; {request.url.path} takes {sorted(taken)}"
            )
        if count > 1 and not taken[key]:
            raise HTTPException(
                422, f"query parameter {key!r} given {count} times; {request.url.path} takes one (POST "
                "takes a list)",
            )  # fmt: skip


_QUERY_CHECKED = [Depends(_check_query)]

#: How /similar compares items (serving.retriever.SIMILARITY_METRICS; the first is the default).
Metric = Literal["cosine", "inner_product"]


class RecommendRequest(BaseModel):
    """Top-k lists for users the index knows."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key ("exclude_sen") is a 422, not ignored

    users: list[Id] = Field(max_length=MAX_BATCH)
    k: K = 10
    exclude_seen: StrictBool = True
    rerank: StrictBool = False


class SimilarRequest(BaseModel):
    """Nearest items of items in the catalogue."""

    model_config = ConfigDict(extra="forbid")

    items: list[Id] = Field(max_length=MAX_BATCH)
    k: K = 10
    metric: Metric = "cosine"


class VectorRequest(BaseModel):
    """Top-k lists for query embeddings of the index's dimension."""

    model_config = ConfigDict(extra="forbid")

    # StrictFloat: "1.0" and true are refused (JSON integers are still numbers)
    vectors: list[Annotated[list[StrictFloat], Field(max_length=MAX_DIM)]] = Field(max_length=MAX_BATCH)
    k: K = 10
    exclude_items: list[Annotated[list[Id], Field(max_length=MAX_SEQUENCE)]] | None = None


class SequenceRequest(BaseModel):
    """Next items after sequences of item ids (oldest first), ranked with the app's sequence encoder."""

    model_config = ConfigDict(extra="forbid")

    sequences: list[Annotated[list[Id], Field(max_length=MAX_SEQUENCE)]] = Field(max_length=MAX_BATCH)
    k: K = 10
    exclude_history: StrictBool = True


class Item(BaseModel):
    """One recommended item: ``score`` is the inner product (a cosine in a normalised index), or the
    re-ranker's score in a re-ranked list."""

    item_id: str
    score: float
    title: str | None = None


class Health(BaseModel):
    status: str
    index: str
    run_id: str | None
    n_items: int
    n_users: int
    dim: int
    index_type: str
    nprobe: int | None
    reranker: bool
    sequences: bool


def create_app(
    index_dir: str | Path,
    *,
    reranker_dir: str | Path | None = None,
    num_threads: int | None = None,
    sequence_encoder: SequenceEncoder | None = None,
    nprobe: int | None = None,
) -> FastAPI:
    """The HTTP app serving the index folder ``index_dir`` (see the module docstring for the endpoints).

    Args:
        index_dir: a folder written by :func:`serving.build_index` (e.g. by ``recsys index``).
        reranker_dir: optional folder of a fitted re-ranker (``recsys rerank``); ``rerank=true`` uses it.
        num_threads: FAISS's threads per search (a process-wide setting); None leaves it unchanged.
        sequence_encoder: optional query side of the sequence model the index was built from
            (``recsys.pipeline.sequence_query_encoder(run.model)``); ``/recommend_for_sequence`` uses it.
            It must be the index's own model: another run's encoder would rank without any error, wrongly.
        nprobe: lists searched per query of an inverted-file index (default: its manifest's).

    Raises (at once, before any request is served):
        FileNotFoundError, IndexIntegrityError (a ValueError): a missing, corrupted or incomplete index folder.
        ValueError: a re-ranker folder that is not one, or a re-ranker fitted for another run or index; an
            index of more than ``MAX_DIM`` dimensions; an encoder whose vectors do not have the index's.
    """
    retriever = Retriever.load(index_dir, num_threads=num_threads, nprobe=nprobe)
    reranking = None
    if reranker_dir is not None:
        reranking = RerankingRetriever(retriever, Reranker.load(reranker_dir))
    index = retriever.index
    if index.dim > MAX_DIM:
        raise ValueError(
            f"index {str(index.path)!r} has dimension {index.dim}; this app serves up to {MAX_DIM}"
        )
    if sequence_encoder is not None:
        # A wrong encoder would make every sequence request fail; it is the server's fault, so say it now.
        probe = np.asarray(sequence_encoder([np.zeros(0, dtype=np.int64)]))
        if probe.shape != (1, index.dim):
            raise ValueError(
                f"the sequence encoder gives vectors of shape {probe.shape} for one sequence; the index "
                f"{str(index.path)!r} needs (1, {index.dim}): is it the index's own model?"
            )

    def check_size(rows: int, k: int) -> None:
        _check_size(rows, k, index.n_items)

    app = FastAPI(
        title="recsys",
        summary="Top-k recommendations from a FAISS serving index",
        description=__doc__.split("\n\n")[0],
    )
    app.state.retriever = retriever
    app.state.reranking = reranking

    def recommend(users: list[Any], k: int, exclude_seen: bool, rerank: bool) -> list[list[dict]]:
        if rerank:
            if reranking is None:
                raise HTTPException(
                    400,
                    "this server has no re-ranker (start it with --reranker DIR); ask without rerank=true",
                )
            if not exclude_seen:
                raise HTTPException(
                    422, "rerank=true always leaves seen items out (the re-ranker ranks unseen candidates); "
                    "ask with exclude_seen=true",
                )  # fmt: skip
        elif not index.has_users:
            raise HTTPException(
                400, "this index was built without user embeddings; POST /recommend_for_vector instead"
            )
        elif exclude_seen and not index.has_seen:
            raise HTTPException(
                400, "this index was built without seen items, so they cannot be excluded; ask with "
                "exclude_seen=false to rank over all items",
            )  # fmt: skip
        check_size(len(users), k)
        with _client_errors():
            if rerank:
                assert reranking is not None  # refused above otherwise
                recs = reranking.recommend(users, k=k)
            else:
                recs = retriever.recommend(users, k=k, exclude_seen=exclude_seen)
        return _as_json(recs)

    def similar(items: list[Any], k: int, metric: str) -> list[list[dict]]:
        check_size(len(items), k)
        with _client_errors():
            return _as_json(retriever.similar_items(items, k=k, metric=metric))

    @app.get("/health", response_model=Health)
    async def health() -> dict:  # on the event loop: answers while every worker thread is busy searching
        return {
            "status": "ok",
            "index": str(index.path),
            "run_id": index.run_id,
            "n_items": index.n_items,
            "n_users": index.n_users,
            "dim": index.dim,
            "index_type": index.index_type,
            "nprobe": index.nprobe,
            "reranker": reranking is not None,
            "sequences": sequence_encoder is not None,
        }

    _add_recommend_routes(app, recommend, user_description="a user id the index knows")

    @app.get("/similar", response_model=list[Item], dependencies=_QUERY_CHECKED)
    def similar_item(
        item: Annotated[str, Query(description="an item id of the catalogue")],
        k: KQuery = 10,
        metric: Annotated[
            Metric, Query(description="cosine of the item vectors, or inner product")
        ] = "cosine",
    ) -> Response:
        """The k items most similar to one item (by the cosine of their vectors, or their inner product),
        itself left out."""
        return _json(similar([item], k, metric)[0])

    @app.post("/similar", response_model=list[list[Item]])
    def similar_items(body: SimilarRequest) -> Response:
        """The k items most similar to each item, in the order given."""
        return _json(similar(body.items, body.k, body.metric))

    @app.post("/recommend_for_vector", response_model=list[list[Item]])
    def recommend_for_vector(body: VectorRequest) -> Response:
        """Top-k items for each query vector (the model's query side, in the index's dimension)."""
        lengths = sorted({len(v) for v in body.vectors})
        if len(lengths) > 1:
            raise HTTPException(
                422, f"vectors must all have the index's dimension {index.dim}, got lengths {lengths[:10]}"
            )
        check_size(len(body.vectors), body.k)
        width = lengths[0] if lengths else index.dim
        query = np.asarray(body.vectors, dtype=np.float64).reshape(len(body.vectors), width)
        with _client_errors():
            recs = retriever.recommend_for_vector(query, k=body.k, exclude_items=body.exclude_items)
        bad = [b for b, row in enumerate(recs) if not all(math.isfinite(r.score) for r in row)]
        if bad:  # finite float32 values whose inner products overflow: no ranking to give (nor JSON for inf)
            raise HTTPException(
                422, f"the scores of vectors {bad[:5]} overflow float32: scale these vectors down"
            )
        return _json(_as_json(recs))

    def next_items(sequences: list[list[Any]], k: int, exclude_history: bool) -> list[list[dict]]:
        if sequence_encoder is None:
            raise HTTPException(
                400, "this server has no sequence encoder: start it with `recsys serve --run RUN` of a sequence "
                "model (SASRec, GRU4Rec, BERT4Rec, ...), or embed the sequence and POST /recommend_for_vector",
            )  # fmt: skip
        check_size(len(sequences), k)
        with _client_errors():
            return _as_json(
                retriever.recommend_for_sequences(
                    sequences, sequence_encoder, k=k, exclude_history=exclude_history
                )
            )

    _add_sequence_routes(
        app,
        next_items,
        items_description="the sequence's item ids, oldest first",
        one="The k next items after one sequence of item ids (``?items=A&items=B``).",
        each="The k next items after each sequence, in the order given.",
    )

    return app


class ScoringRecommender(Protocol):
    """What :func:`create_model_app` serves: a run without an index whose model scores the catalogue
    (:class:`recsys.scorer_recommender.ScorerRecommender`)."""

    @property
    def run_id(self) -> str | None: ...
    @property
    def model_name(self) -> str: ...
    @property
    def user_ids(self) -> Sequence[str]: ...
    @property
    def item_ids(self) -> Sequence[str]: ...
    @property
    def scores_item_sets(self) -> bool: ...
    @property
    def has_similar_items(self) -> bool: ...

    def recommend(
        self, user_ids: Sequence[str], k: int, exclude_seen: bool
    ) -> list[list[Recommendation]]: ...

    def recommend_for_sequences(
        self, sequences: Sequence[Sequence[str]], k: int, exclude_history: bool
    ) -> list[list[Recommendation]]: ...

    def similar_items(self, item_ids: Sequence[str], k: int) -> list[list[Recommendation]]: ...


class ModelSimilarRequest(BaseModel):
    """Nearest items of items in the catalogue, by the model's item-item weights (no metric to choose)."""

    model_config = ConfigDict(extra="forbid")

    items: list[Id] = Field(max_length=MAX_BATCH)
    k: K = 10


class ModelHealth(BaseModel):
    status: str
    run_id: str | None
    model: str
    n_items: int
    n_users: int
    sequences: bool
    similar: bool


def create_model_app(recommender: ScoringRecommender) -> FastAPI:
    """The HTTP app of a run without an index (EASE, RP3beta): its model scores the whole catalogue per
    request (:class:`recsys.scorer_recommender.ScorerRecommender`; ``recsys serve --run RUN`` of such a run).

    The endpoints are :func:`create_app`'s, with the same bodies, limits and errors, except:

    * ``/health`` names the model instead of an index (``sequences``: whether it answers item-id sessions;
      ``similar``: whether it ranks neighbours by its item-item weights);
    * ``/similar`` takes no ``metric`` (the neighbours are the model's weights: a ``metric`` is a 422);
    * ``/recommend_for_sequence`` reads a session as the *set* of its items, as the model reads a user's
      history (order and repeats do not matter), and needs no encoder;
    * ``rerank=true`` and ``POST /recommend_for_vector`` are a 400: there are no vectors to re-rank or search.

    Concurrency: requests run in FastAPI's thread pool, each scoring its rows against the whole catalogue
    (rows x items floats); the recommender is read-only.
    """
    n_items = len(recommender.item_ids)
    run = f"run {recommender.run_id} ({recommender.model_name})"
    app = FastAPI(
        title="recsys",
        summary=f"Top-k recommendations scored by the model of {run}",
        description=(create_model_app.__doc__ or "").split("\n\n")[0],
    )
    app.state.recommender = recommender

    def recommend(users: list[Any], k: int, exclude_seen: bool, rerank: bool) -> list[list[dict]]:
        if rerank:
            raise HTTPException(400, f"{run} has no index, so no re-ranker: ask without rerank=true")
        _check_size(len(users), k, n_items)
        with _client_errors(user_hint=_model_user_hint(recommender)):
            return _as_json(recommender.recommend(users, k=k, exclude_seen=exclude_seen))

    def similar(items: list[Any], k: int) -> list[list[dict]]:
        if not recommender.has_similar_items:
            raise HTTPException(400, f"{run} has no item-item weights to rank neighbours by")
        _check_size(len(items), k, n_items)
        with _client_errors():
            return _as_json(recommender.similar_items(items, k=k))

    def next_items(sequences: list[list[Any]], k: int, exclude_history: bool) -> list[list[dict]]:
        if not recommender.scores_item_sets:
            raise HTTPException(400, f"{run} does not score item sets; ask /recommend for its users")
        _check_size(len(sequences), k, n_items)
        with _client_errors():
            return _as_json(
                recommender.recommend_for_sequences(sequences, k=k, exclude_history=exclude_history)
            )

    @app.get("/health", response_model=ModelHealth)
    async def health() -> dict:
        return {
            "status": "ok",
            "run_id": recommender.run_id,
            "model": recommender.model_name,
            "n_items": n_items,
            "n_users": len(recommender.user_ids),
            "sequences": recommender.scores_item_sets,
            "similar": recommender.has_similar_items,
        }

    _add_recommend_routes(app, recommend, user_description="a user id the run knows")

    @app.get("/similar", response_model=list[Item], dependencies=_QUERY_CHECKED)
    def similar_item(
        item: Annotated[str, Query(description="an item id of the catalogue")], k: KQuery = 10
    ) -> Response:
        """The k items the model's item-item weights tie most to one item, itself left out."""
        return _json(similar([item], k)[0])

    @app.post("/similar", response_model=list[list[Item]])
    def similar_items(body: ModelSimilarRequest) -> Response:
        """The k most similar items of each item, in the order given."""
        return _json(similar(body.items, body.k))

    @app.post("/recommend_for_vector", response_model=list[list[Item]])
    def recommend_for_vector(body: VectorRequest) -> Response:
        """Not for this model: it has no vectors (a 400 saying what to ask instead)."""
        raise HTTPException(
            400, f"{run} scores item sets, not vectors: POST /recommend_for_sequence with the user's items"
        )

    _add_sequence_routes(
        app,
        next_items,
        items_description="the session's item ids (a set: order ignored)",
        one="The k items after one session of item ids (``?items=A&items=B``).",
        each="The k items after each session, in the order given.",
    )

    return app


def _add_recommend_routes(
    app: FastAPI,
    recommend: Callable[[list[Any], int, bool, bool], list[list[dict]]],
    *,
    user_description: str,
) -> None:
    """``GET`` and ``POST /recommend`` of either app, answered by ``recommend(users, k, exclude_seen,
    rerank)``; ``user_description`` describes the query parameter in the API's schema."""

    @app.get("/recommend", response_model=list[Item], dependencies=_QUERY_CHECKED)
    def recommend_user(
        user: Annotated[str, Query(description=user_description)],
        k: KQuery = 10,
        exclude_seen: bool = True,
        rerank: bool = False,
    ) -> Response:
        """Top-k items for one user."""
        return _json(recommend([user], k, exclude_seen, rerank)[0])

    @app.post("/recommend", response_model=list[list[Item]])
    def recommend_users(body: RecommendRequest) -> Response:
        """Top-k items for each user, in the order given."""
        return _json(recommend(body.users, body.k, body.exclude_seen, body.rerank))


def _add_sequence_routes(
    app: FastAPI,
    next_items: Callable[[list[list[Any]], int, bool], list[list[dict]]],
    *,
    items_description: str,
    one: str,
    each: str,
) -> None:
    """``GET`` and ``POST /recommend_for_sequence`` of either app, answered by ``next_items(sequences, k,
    exclude_history)``; ``items_description`` describes the query parameter, ``one`` / ``each`` are the two
    endpoints' descriptions in the API's schema (the apps read a sequence differently)."""

    ItemsQuery = Annotated[list[str], Query(max_length=MAX_SEQUENCE, description=items_description)]

    def recommend_for_sequence(
        items: ItemsQuery = [],  # noqa: B006 - not shared: FastAPI gives each request a copy of a default
        k: KQuery = 10,
        exclude_history: bool = True,
    ) -> Response:
        return _json(next_items([list(items)], k, exclude_history)[0])

    def recommend_for_sequences(body: SequenceRequest) -> Response:
        return _json(next_items(body.sequences, body.k, body.exclude_history))

    # FastAPI reads an endpoint's description from its docstring when the route is added
    recommend_for_sequence.__doc__, recommend_for_sequences.__doc__ = one, each
    app.get("/recommend_for_sequence", response_model=list[Item], dependencies=_QUERY_CHECKED)(
        recommend_for_sequence
    )
    app.post("/recommend_for_sequence", response_model=list[list[Item]])(recommend_for_sequences)


def _model_user_hint(recommender: ScoringRecommender) -> str:
    if recommender.scores_item_sets:
        return "for a new or anonymous user, POST their items to /recommend_for_sequence"
    return "this model recommends only for the users it was trained on"


def _check_size(rows: int, k: int, n_items: int) -> None:
    if rows * min(k, n_items) > MAX_RESULTS:
        raise HTTPException(
            422, f"{rows} lists of {k} items would be more than {MAX_RESULTS} results in one answer; ask "
            "for fewer lists or a smaller k (whole catalogues of users: serving.export_recommendations)",
        )  # fmt: skip


@contextmanager
def _client_errors(user_hint: str = _USER_HINT) -> Iterator[None]:
    """The library's errors about the request, as HTTP errors carrying its sentence. Only around library
    calls whose arguments came from the request, so that a server fault still surfaces as a 500."""
    try:
        yield
    except UnknownUserError as exc:  # the library's hint names a Python method; name the endpoint instead
        raise HTTPException(404, str(UnknownUserError(exc.ids, exc.n_known, user_hint))) from None
    except UnknownIdError as exc:
        raise HTTPException(404, str(exc)) from None
    except UnencodableItemError as exc:  # in the catalogue, but added after training: the request's fault
        raise HTTPException(422, str(exc)) from None
    except (ValueError, TypeError) as exc:  # a vector of another dimension, NaN/inf, mismatched row counts
        raise HTTPException(422, str(exc)) from None


def _json(payload: Any) -> Response:
    """The answer as JSON bytes, rendered here, in the worker thread that searched: FastAPI would validate and
    render a returned list on its event loop, which then answers nothing else meanwhile. ``allow_nan=False``:
    a non-finite score would be invalid JSON, so it fails as a server error instead."""
    # UTF-8 as is, as FastAPI sends it (\uXXXX escapes made CJK titles 21% longer); ids and titles come from
    # Parquet files, valid UTF-8, so no lone surrogate can fail the encoding
    body = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return Response(body.encode("utf-8"), media_type="application/json")


def _as_json(recs: Sequence[Sequence[Recommendation]]) -> list[list[dict]]:
    return [[{"item_id": r.item_id, "score": r.score, "title": r.title} for r in row] for row in recs]
