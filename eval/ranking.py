"""Blocked, exact full-ranking top-k with excluded items removed.

Users are scored in blocks (never a dense ``U x I`` matrix for all users); in each block the excluded
``(user, item)`` pairs are set to ``-inf`` (or, to measure another protocol, to a given finite
``excluded_score``, which keeps them in the ranking) and the top-k items are selected once, for the largest k.

**Tie rule.** Items are ranked by score, descending; equal scores rank the lower item index first.
``torch.topk`` promises no order among equal values, so it is never trusted to *choose* among ties.  It is
asked for ``k + 1`` values: when the k-th and (k+1)-th largest values differ, no tie crosses the cut, so the k
items it returned are the only valid set whatever its internal order, and they are then put in order by
sorting them by item index and *stable*-sorting that by score, descending.  Rows where the k-th and (k+1)-th
values are equal are redone exactly (``_exact_topk_positions``): ``v`` = the k-th largest value, which is the
same whatever the tie order; take every item scoring ``> v`` plus the lowest-indexed items scoring ``== v``
(a cumulative count along the item axis) until there are k, then order them the same way.  Items whose score
is ``-inf`` (excluded, or scored so by the model) are never returned: their slots hold ``-1``, as do the slots
beyond the catalogue when ``k > n_items``.  NaN scores raise ``ValueError``.

**Speed.** On a CPU, ``torch.topk`` over all ~41k items of a row costs more than the matrix product that
made the row, so the selection is pruned, exactly:

1. The scores of a *tile* of rows (about ``TILE_BYTES`` = 64 MiB, ~400 rows for 41k items) are written into a
   reused buffer whose rows are padded with ``-inf`` to whole chunks of ``CHUNK`` = 128 items, and each
   chunk's maximum is taken (one vectorised pass).  For embeddings the item matrix itself is padded with
   zero rows, so the product fills the padded tile directly; the aligned output rows also make MKL's product
   markedly faster than with 40,981 columns.
2. The k chunks with the largest maxima are kept; let ``t`` be the smallest kept maximum.  Those k maxima are
   k distinct items scoring ``>= t``, so the k-th best score is ``>= t``, while every item of a dropped chunk
   scores at most its chunk's maximum.  So if no dropped chunk's maximum *equals* ``t`` (checked with the
   (k+1)-th largest maximum), no item of a dropped chunk can enter the top-k, not even through a tie, and the
   ``k * CHUNK`` items of the kept chunks (2,560 for k = 20) are copied out as the row's candidates, in
   ascending item order.  Rows where a dropped chunk ties with ``t`` (constant scores, fully excluded chunks,
   fewer than k finite scores, NaN) are selected exactly over their full row at once.
3. The candidates of a *group* of at least ``GROUP_ROWS`` rows go through the exact selection above together,
   so the fixed cost of the small tensor operations is paid once per group.
4. Tiles are shared out, in jobs of consecutive tiles, to ``workers`` threads that each run torch with one
   intra-op thread (the products included).  Dozens of small operations per tile, each an OpenMP parallel
   region, would otherwise each wait at a barrier, which is slow on a quiet machine and very slow on a
   loaded one (a pre-empted thread stalls every region).  ``torch.set_num_threads`` is process-wide: the
   caller's value is restored before the call returns.  Score *functions* are always called from the calling
   thread, with the caller's settings; only their selection is shared out.

Tiles, groups and blocks only change how the work is cut, never the result; the fast path is checked against a
naive per-row ``lexsort`` in ``tests/test_eval_ranking.py``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import numpy as np
import scipy.sparse as sp
import torch

if TYPE_CHECKING:
    from recsys.models.base import Recommender

__all__ = ["full_ranking_topk", "full_ranking_topk_embeddings", "evaluate_model", "model_topk"]

# A score function maps a block of user indices LongTensor[B] to scores Tensor[B, I] (higher = better).
ScoreFn = Callable[[torch.Tensor], torch.Tensor]

#: Items per chunk of the exact pruning: a contiguous 512-byte run, so the chunk maxima are one vectorised
#: reduction and the kept chunks are copied out as whole rows.
CHUNK = 128
#: The pruning is used when the padded row has at least this many chunks per requested item.
PRUNE_MIN_CHUNKS_PER_K = 4
#: Target size of the reused score tile: about 400 rows of 41k float32 scores.  Larger tiles amortise the
#: per-call overhead of the small selection operations; the tile is allocated once per call.
TILE_BYTES = 64 * 2**20
#: Candidate rows selected together.
GROUP_ROWS = 256

_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------
# exact selection
# ---------------------------------------------------------------------------------------------------------
def _order_by_score(values: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order chosen positions ``pos[R, k]`` with scores ``values[R, k]`` by score descending, then position
    ascending: sort by position, then a *stable* descending sort by score keeps equal scores in that order.

    Returns:
        ``(positions, values)``, both ``[R, k]``, in rank order.
    """
    pos, order = torch.sort(pos, dim=1)
    values = values.gather(1, order)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return pos.gather(1, order), values


def _exact_topk_positions(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact, deterministic top-k of each row of ``x``, whatever the ties.

    Args:
        x: ``Tensor[R, M]`` of scores, no NaN, whose columns are in ascending item order.
        k: ``1 <= k <= M``.

    Returns:
        ``(positions, values)``: ``[R, k]`` column positions ranked by score descending (equal scores: lower
        position first) and their scores.
    """
    rows = x.shape[0]
    if rows == 0:
        return torch.empty(0, k, dtype=torch.long, device=x.device), x.new_empty(0, k)
    kth = torch.topk(x, k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)  # the k-th largest value
    above = x > kth
    tied = x == kth
    need = k - above.sum(dim=1, keepdim=True)  # how many tied values to take (>= 1)
    take = above | (tied & (tied.cumsum(dim=1) <= need))  # exactly k per row: the lowest-indexed ties
    pos = take.nonzero()[:, 1].view(rows, k)  # row-major order: ascending positions within a row
    return _order_by_score(x.gather(1, pos), pos)


def _topk_positions(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row of ``x``, same contract as :func:`_exact_topk_positions`.

    One ``topk`` of ``k + 1`` values; only rows where the k-th and (k+1)-th values are equal (a tie across the
    cut) need the exact selection.  Raises ``ValueError`` on NaN.
    """
    rows, m = x.shape
    if m <= k:  # every column is chosen: only the order matters
        pos = torch.arange(m, device=x.device).expand(rows, m)
        pos, values = _order_by_score(x, pos)
    else:
        values, pos = torch.topk(x, k + 1, dim=1)
        # NaN sorts first in topk; `>=` is False against NaN, so such rows go to the checked path below
        ambiguous = ~((values[:, k - 1] > values[:, k]) & (values[:, 0] >= values[:, k - 1]))
        pos, values = _order_by_score(values[:, :k], pos[:, :k])
        if bool(ambiguous.any()):
            redo = ambiguous.nonzero().squeeze(1)
            xr = x[redo]
            _check_no_nan(xr)
            pos[redo], values[redo] = _exact_topk_positions(xr, k)
    if bool(torch.isnan(values).any()):
        raise ValueError("the score function returned NaN scores")
    return pos, values


def topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` under the library's tie rule (see above): the ``k`` largest values of each row of
    ``scores`` (``[R, M]``, or one row ``[M]``), equal values by lower position first, where ``torch.topk``
    promises no order. What evaluation and the served index rank by, for callers that rank one score
    vector themselves (explanations).

    Returns:
        ``(values, positions)`` like ``torch.topk``, ``[R, k]`` (or ``[k]``); ``0 <= k <= M``.

    Raises:
        ValueError: a row holding NaN (where it would rank is undefined); a ``k`` that is no integer in
            ``[0, M]``.
    """
    x = scores[None] if scores.dim() == 1 else scores
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 0 <= k <= x.shape[1]:
        raise ValueError(
            f"k must be an integer in [0, {x.shape[1]}] (the number of scores per row), got {k!r}"
        )
    if k == 0:
        pos, values = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device), x[:, :0]
    else:
        try:
            pos, values = _topk_positions(x, int(k))
        except ValueError:
            raise ValueError("topk: the scores hold NaN") from None
    return (values[0], pos[0]) if scores.dim() == 1 else (values, pos)


def _as_tensor(x: Any, subject: str, shape: str) -> torch.Tensor:
    """Scores or embeddings as a tensor: NumPy arrays are taken as they are (AttributeErrors on ``.device``
    or ``.detach`` before), anything else is named (``subject``: "score_fn must return", "query must be")."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    raise TypeError(f"{subject} a torch.Tensor or NumPy array {shape}, got {type(x).__name__}")


def _exclusion_value(excluded_score: float | None) -> float:
    """The score excluded pairs get: ``-inf`` for ``None``, else the finite number given (``ValueError``
    otherwise; booleans and strings are refused)."""
    if isinstance(excluded_score, bool | str):
        raise ValueError(f"excluded_score must be None or a finite number, got {excluded_score!r}")
    if excluded_score is None:
        return _NEG_INF
    value = float(excluded_score)
    if not math.isfinite(value):
        raise ValueError(f"excluded_score must be None or a finite number, got {excluded_score!r}")
    return value


def _check_no_nan(x: torch.Tensor) -> None:
    if bool(torch.isnan(x).any()):
        raise ValueError("the score function returned NaN scores")


# ---------------------------------------------------------------------------------------------------------
# exclusion
# ---------------------------------------------------------------------------------------------------------
class _Exclusion:
    """The exclude matrix restricted to the evaluated users, ready to mask consecutive tiles in place: the
    excluded pairs get ``value`` (``-inf``: removed from the ranking)."""

    def __init__(
        self,
        exclude: sp.spmatrix | sp.sparray | None,
        users: np.ndarray,
        n_items: int,
        value: float = _NEG_INF,
    ) -> None:
        self.indptr: np.ndarray | None = None
        self.value = float(value)
        if exclude is None:
            return
        exclude = sp.csr_matrix(exclude)
        if exclude.shape[1] != n_items:
            raise ValueError(f"exclude has {exclude.shape[1]} columns but there are {n_items} items")
        if users.size and (users.min() < 0 or users.max() >= exclude.shape[0]):
            raise ValueError(f"user indices must lie in [0, {exclude.shape[0]}) (the rows of exclude)")
        sub = exclude[users]  # rows aligned with `users`; every stored entry is excluded, whatever its value
        self.indptr = sub.indptr.astype(np.int64)
        self.rows = np.repeat(np.arange(users.size, dtype=np.int64), np.diff(self.indptr))
        self.cols = sub.indices.astype(np.int64)

    def apply(self, tile: torch.Tensor, start: int) -> None:
        """Set the excluded pairs of rows ``start .. start + R - 1`` to ``value`` in ``tile[R, W]`` (in place;
        ``tile`` must be contiguous, its first ``n_items`` columns the items)."""
        if self.indptr is None:
            return
        n, width = tile.shape
        lo, hi = self.indptr[start], self.indptr[start + n]
        if hi > lo:
            flat = (self.rows[lo:hi] - start) * width + self.cols[lo:hi]
            tile.view(-1).index_fill_(0, torch.from_numpy(flat).to(tile.device), self.value)


def default_tile_rows(width: int, dtype: torch.dtype = torch.float32) -> int:
    """Rows of the reused score tile when none is given: about ``TILE_BYTES`` of scores, 16 to 4096 rows."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    return int(min(4096, max(16, TILE_BYTES // max(1, width * itemsize))))


def default_workers(device: torch.device | str = "cpu") -> int:
    """Selection threads used when none is given: torch's intra-op thread count on a CPU, 1 elsewhere."""
    return torch.get_num_threads() if torch.device(device).type == "cpu" else 1


# ---------------------------------------------------------------------------------------------------------
# the tile -> group -> result pipeline
# ---------------------------------------------------------------------------------------------------------
# A fill function writes the scores of rows ``row .. row + n - 1`` into ``tile[n, W]`` (its first ``n_items``
# columns; the others are padding that must hold -inf when it returns).
FillFn = Callable[[torch.Tensor, int], None]


class _Layout:
    """Sizes shared by every worker of one selection."""

    def __init__(self, n_items: int, k: int, dtype: torch.dtype, device: torch.device, tile_rows: int | None):
        self.n_items, self.k, self.dtype, self.device = n_items, k, dtype, torch.device(device)
        self.kk = min(k, n_items)  # items that can be returned per row
        self.n_chunks = math.ceil(n_items / CHUNK)
        self.pruned = self.kk > 0 and self.n_chunks >= PRUNE_MIN_CHUNKS_PER_K * self.kk
        self.width = self.n_chunks * CHUNK if self.pruned else n_items  # tile width: padded to whole chunks
        self.tile_rows = max(1, tile_rows if tile_rows is not None else default_tile_rows(self.width, dtype))


class _TileWorker:
    """Exact top-k of consecutive tiles of one row range, with its own buffers (one per thread).

    ``tile[T, W]`` receives the scores, ``cand[G, k * CHUNK]`` the candidates of a group of tiles and
    ``kept[G, k]`` their chunk indices; results go to rows of the shared ``out``.
    """

    def __init__(self, layout: _Layout, exclusion: _Exclusion, out: torch.Tensor) -> None:
        lay = self.layout = layout
        self.exclusion, self.out = exclusion, out
        self.tile = torch.full((lay.tile_rows, lay.width), _NEG_INF, dtype=lay.dtype, device=lay.device)
        if lay.pruned:
            self.group_rows = max(GROUP_ROWS, lay.tile_rows)
            self.cand = torch.empty(self.group_rows, lay.kk * CHUNK, dtype=lay.dtype, device=lay.device)
            self.kept = torch.empty(self.group_rows, lay.kk, dtype=torch.long, device=lay.device)
            self.chunk_base = torch.arange(lay.tile_rows, device=lay.device).unsqueeze(1) * lay.n_chunks
        self.group_start = self.filled = 0
        self.redone: list[tuple[int, torch.Tensor]] = []  # (row, items) selected over the whole row

    def run(self, start: int, end: int, fill: FillFn) -> None:
        """Select rows ``start .. end - 1``."""
        self.group_start, self.filled = start, 0
        for row in range(start, end, self.layout.tile_rows):
            n = min(self.layout.tile_rows, end - row)
            tile = self.tile[:n]
            fill(tile, row)
            self._push(tile, row)
        self._flush()

    def _push(self, tile: torch.Tensor, start: int) -> None:
        lay, n, kk = self.layout, tile.shape[0], self.layout.kk
        if kk == 0:
            return
        self.exclusion.apply(tile, start)
        if not lay.pruned:
            _check_no_nan(tile)
            pos, values = _topk_positions(tile, kk)
            self.out[start : start + n, :kk] = pos.masked_fill_(values == _NEG_INF, -1).cpu()
            self.group_start = start + n
            return

        if self.filled + n > self.group_rows:
            self._flush()
        maxima = tile.view(n, lay.n_chunks, CHUNK).amax(dim=2)  # NaN propagates into the maxima
        top_max, top_chunks = torch.topk(maxima, kk + 1, dim=1)
        # prunable: no dropped chunk ties with the k-th maximum, and no NaN (NaN sorts first; >= is False)
        prunable = (top_max[:, kk - 1] > top_max[:, kk]) & (top_max[:, 0] >= top_max[:, kk - 1])
        kept = torch.sort(top_chunks[:, :kk], dim=1).values  # ascending chunks -> ascending items
        g = self.filled
        self.kept[g : g + n] = kept
        torch.index_select(
            tile.view(n * lay.n_chunks, CHUNK),
            0,
            (kept + self.chunk_base[:n]).view(-1),
            out=self.cand[g : g + n].view(n * kk, CHUNK),
        )
        self.filled += n
        if not bool(prunable.all()):
            rows = (~prunable).nonzero().squeeze(1)
            full = tile[rows]
            _check_no_nan(full)
            pos, values = _topk_positions(full, kk)  # tile columns are item indices (padding is -inf)
            items = pos.masked_fill_(values == _NEG_INF, -1).cpu()
            self.redone.extend(zip((rows + start).tolist(), items, strict=True))

    def _flush(self) -> None:
        r, kk = self.filled, self.layout.kk
        if r:
            pos, values = _topk_positions(self.cand[:r], kk)
            chunk = self.kept[:r].gather(1, pos.div(CHUNK, rounding_mode="floor"))
            items = (chunk * CHUNK + pos.remainder(CHUNK)).masked_fill_(values == _NEG_INF, -1)
            self.out[self.group_start : self.group_start + r, :kk] = items.cpu()
        for row, items in self.redone:  # after the group's rows, which they overwrite
            self.out[row, :kk] = items
        self.redone.clear()
        self.group_start += r
        self.filled = 0


class _Selection:
    """Runs :class:`_TileWorker` s over row ranges, in the calling thread or in ``workers`` threads.

    With several workers each thread runs torch single-threaded (``torch.set_num_threads(1)``), so that the
    many small selection operations never wait at an OpenMP barrier for a thread that another process has
    pre-empted; ``torch.set_num_threads`` is process-wide, so the caller's setting is restored whenever
    :meth:`select` returns.  Use as a context manager.
    """

    def __init__(self, n_rows: int, layout: _Layout, exclusion: _Exclusion, workers: int | None) -> None:
        self.layout, self.exclusion = layout, exclusion
        self.out = torch.full((n_rows, layout.k), -1, dtype=torch.long)
        workers = default_workers(layout.device) if workers is None else workers
        self.workers = max(1, min(workers, math.ceil(n_rows / layout.tile_rows))) if n_rows else 1
        if layout.device.type != "cpu":
            self.workers = 1
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> _Selection:
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="eval-topk")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _worker(self) -> _TileWorker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            worker = self._local.worker = _TileWorker(self.layout, self.exclusion, self.out)
        return worker

    def select(self, start: int, end: int, fill: FillFn) -> None:
        """Select rows ``start .. end - 1``; ``fill`` must be safe to call from several threads at once."""
        if self._pool is None:
            self._worker().run(start, end, fill)
            return
        tiles = math.ceil((end - start) / self.layout.tile_rows)
        job = self.layout.tile_rows * max(1, round(tiles / (4 * self.workers)))  # ~4 jobs per worker: balance
        caller_threads = torch.get_num_threads()

        def run(job_start: int) -> None:
            torch.set_num_threads(1)
            with torch.no_grad():  # grad mode is per thread
                self._worker().run(job_start, min(end, job_start + job), fill)

        try:
            for _ in self._pool.map(run, range(start, end, job)):
                pass
        finally:
            torch.set_num_threads(caller_threads)


# ---------------------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------------------
def _as_index_array(users: torch.Tensor | np.ndarray | Any) -> np.ndarray:
    arr = users.detach().cpu().numpy() if isinstance(users, torch.Tensor) else np.asarray(users)
    if arr.ndim != 1:
        raise ValueError(f"users must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"users must be integer indices, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def full_ranking_topk(
    score_fn: ScoreFn,
    users: torch.Tensor,
    exclude: sp.spmatrix | sp.sparray | None,
    k: int,
    block_size: int = 4096,
    *,
    workers: int | None = None,
    excluded_score: float | None = None,
) -> torch.Tensor:
    """Top-k items of every user over the full catalogue, excluded items removed.

    Args:
        score_fn: maps ``LongTensor[B]`` user indices (on the device of ``users``) to ``Tensor[B, I]`` scores,
            higher is better (``model.scorer()`` is one).  Called from the calling thread only, one block at a
            time; its output is read, never modified.
        users: ``LongTensor[U]`` user indices, in the order of the result's rows.
        exclude: ``csr_matrix`` with rows indexed by user index and ``I`` columns; every stored entry
            ``(u, i)`` is excluded (its value is ignored).  ``None``: exclude nothing.
        k: number of items per user.
        block_size: users per ``score_fn`` call (each block is then selected in tiles of about 64 MiB).
        workers: threads that select the top-k of a block (the score function itself runs with the caller's
            torch settings); default: ``torch.get_num_threads()`` on a CPU, 1 on other devices.
        excluded_score: ``None`` (default): excluded pairs are removed.  A number: they stay in the ranking
            with this score instead (the ICLRec / ICSRec reference evaluation sets the history to 0).

    Returns:
        ``LongTensor[U, k]`` on the CPU: item indices by descending score, equal scores by ascending item
        index; ``-1`` where no item is left (every remaining score is ``-inf``, or ``k > I``).

    Raises:
        ValueError: bad arguments, a score block of the wrong shape, or NaN scores.
    """
    _check_positive("k", k)
    _check_positive("block_size", block_size)
    _check_positive("workers", workers, allow_none=True)
    users_np = _as_index_array(users)
    users_t = users if isinstance(users, torch.Tensor) else torch.from_numpy(users_np)
    n = users_np.size
    if n == 0:
        return torch.full((0, k), -1, dtype=torch.long)
    first = _as_tensor(score_fn(users_t[:block_size]), "score_fn must return", "[B, I]")
    if first.ndim != 2:
        raise ValueError(f"score_fn must return a [B, I] tensor, got shape {tuple(first.shape)}")
    n_items = first.shape[1]
    # Integer scores are ranked in float64: exact up to 2**53, where float32 would merge e.g. timestamps
    # (MPS has no float64: float32 there).
    wide = torch.float32 if first.device.type == "mps" else torch.float64
    dtype = first.dtype if first.is_floating_point() else wide
    layout = _Layout(n_items, k, dtype, first.device, None)
    exclusion = _Exclusion(exclude, users_np, n_items, _exclusion_value(excluded_score))
    scores: torch.Tensor | None = first
    del first  # scores holds the block from here on, and lets it go once it is ranked
    with _Selection(n, layout, exclusion, workers) as selection:
        for start in range(0, n, block_size):
            block = users_t[start : start + block_size]
            if scores is None:
                scores = _as_tensor(score_fn(block), "score_fn must return", "[B, I]")
            if scores.shape != (block.shape[0], n_items):
                raise ValueError(
                    f"score_fn returned shape {tuple(scores.shape)} for {block.shape[0]} users and {n_items} items"
                )

            def fill(tile: torch.Tensor, row: int, scores: torch.Tensor = scores, start: int = start) -> None:
                tile[:, :n_items].copy_(scores[row - start : row - start + tile.shape[0]])

            selection.select(start, start + block.shape[0], fill)
            scores = None  # free the block before the next is scored
    return selection.out


@torch.no_grad()
def full_ranking_topk_embeddings(
    query: torch.Tensor,
    items: torch.Tensor,
    exclude: sp.spmatrix | sp.sparray | None,
    k: int,
    block_size: int | None = None,
    users: torch.Tensor | np.ndarray | None = None,
    *,
    workers: int | None = None,
    excluded_score: float | None = None,
) -> torch.Tensor:
    """Top-k items by inner product ``query @ items.T``, each tile of scores written into a reused buffer.

    Faster than :func:`full_ranking_topk` with a matrix-product score function: no allocation per block,
    the products and the selection run together in ``workers`` threads, and the item matrix is padded with
    zero rows to a multiple of 128 items, which also makes the product itself faster on a CPU (aligned output
    rows); the padding scores ``-inf`` and is never returned.

    Args:
        query: ``Tensor[U, d]`` query (user) embeddings.
        items: ``Tensor[I, d]`` item embeddings, same dtype and device.
        exclude: ``csr_matrix`` of excluded pairs; its rows are indexed by ``users[r]`` (by ``r`` when
            ``users`` is None).  ``None``: exclude nothing.
        k: number of items per query.
        block_size: queries per matrix product (a tile of ``block_size x I`` scores per worker).  ``None``:
            about 64 MiB of scores (~400 rows for 41k items).
        users: optional ``LongTensor[U]``, the user index of each query row, used only to look up ``exclude``.
        workers: threads; default ``torch.get_num_threads()`` on a CPU, 1 on other devices.
        excluded_score: as in :func:`full_ranking_topk`.

    Returns:
        ``LongTensor[U, k]`` on the CPU, same order, tie rule and ``-1`` padding as :func:`full_ranking_topk`.
    """
    _check_positive("k", k)
    _check_positive("block_size", block_size, allow_none=True)
    _check_positive("workers", workers, allow_none=True)
    query, items = _as_tensor(query, "query must be", "[U, d]"), _as_tensor(items, "items must be", "[I, d]")
    if query.ndim != 2 or items.ndim != 2 or query.shape[1] != items.shape[1]:
        raise ValueError(
            f"query [U, d] and items [I, d] must agree in d, got {tuple(query.shape)} and {tuple(items.shape)}"
        )
    if items.dtype != query.dtype or items.device != query.device:
        raise ValueError(
            f"query and items differ in dtype/device: {query.dtype}/{query.device}, {items.dtype}/{items.device}"
        )
    query, items = query.detach(), items.detach()
    for name, emb in (("query", query), ("item", items)):
        # named here: the tiles' check would blame a score function there is none of
        bad = (~torch.isfinite(emb)).any(dim=1).nonzero()
        if bad.numel():
            raise ValueError(
                f"the {name} embeddings hold NaN or infinite values ({bad.numel()} row(s), first row "
                f"{int(bad[0])})"
            )
    n, n_items = query.shape[0], items.shape[0]
    users_np = np.arange(n, dtype=np.int64) if users is None else _as_index_array(users)
    if users_np.size != n:
        raise ValueError(f"users has {users_np.size} entries for {n} query rows")
    exclusion = _Exclusion(exclude, users_np, n_items, _exclusion_value(excluded_score))
    layout = _Layout(n_items, k, query.dtype, query.device, block_size)
    pad = layout.width - n_items
    if pad:  # zero item rows up to whole chunks, so that one product fills the padded tile
        items = torch.cat([items, items.new_zeros(pad, items.shape[1])])
    items_t = items.T

    def fill(tile: torch.Tensor, row: int) -> None:
        torch.mm(query[row : row + tile.shape[0]], items_t, out=tile)
        if pad:
            tile[:, n_items:] = _NEG_INF

    with _Selection(n, layout, exclusion, workers) as selection:
        selection.select(0, n, fill)
    return selection.out


def _with_zero_columns(score_fn: ScoreFn, z: int) -> ScoreFn:
    """``score_fn`` with ``z`` columns of zeros appended to every block of scores (``z = 0``: unchanged)."""
    if z == 0:
        return score_fn

    def padded(users: torch.Tensor) -> torch.Tensor:
        scores = _as_tensor(score_fn(users), "score_fn must return", "[B, I]")
        return torch.cat([scores, scores.new_zeros(scores.shape[0], z)], dim=1)

    return padded


def _uses_default_scorer(model: Any) -> TypeGuard[Recommender]:
    """Whether ``model.scorer()`` is the base class's inner product of ``model.embeddings()``."""
    try:
        from recsys.models.base import Recommender
    except ImportError:  # eval works without the model package (e.g. for recommendation files)
        return False
    return isinstance(model, Recommender) and type(model).scorer is Recommender.scorer


class EvaluatedModel(Protocol):
    """What :func:`evaluate_model` and :func:`model_topk` need of a model; a ``recsys.models.Recommender``
    has it."""

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]: ...


def evaluate_model(
    model: EvaluatedModel,
    dataset: Any,
    split: str = "test",
    ks: Sequence[int] = (20,),
    block_size: int = 4096,
    users: torch.Tensor | np.ndarray | None = None,
    *,
    excluded_score: float | None = None,
    zero_score_items: int = 0,
) -> dict[str, float]:
    """Full-ranking metrics of ``model`` on ``split`` of a prepared dataset.

    The training items are excluded (and the validation items too when ``split == "test"``); only users with
    at least one item in ``split`` are evaluated (``users``, if given, is restricted to those).  The model is
    put in eval mode for the call (its previous mode is restored afterwards) and scored under
    ``torch.no_grad()``.  A model that keeps the base ``Recommender.scorer`` (an inner product of
    ``query_embeddings`` and ``item_embeddings``) is ranked by :func:`full_ranking_topk_embeddings` with the
    same embeddings, which is the same ranking computed faster; any other model through ``model.scorer()`` and
    :func:`full_ranking_topk`.

    Args:
        model: a ``recsys.models.Recommender`` (anything with ``eval()``, ``train()`` and ``scorer()``).
        dataset: a ``features.PreparedDataset``: ``n_items`` and ``matrix(split)`` -> ``csr n_users x n_items``.
        split: ``"valid"`` or ``"test"``.
        ks: cut-offs; the top-k is computed once, for ``max(ks)``.
        block_size: users per ``scorer()`` call, for models with their own scorer. Models with the default
            scorer are queried once for all users (an expensive query side, such as graph propagation, is
            computed once) and ranked in blocks that :func:`full_ranking_topk_embeddings` sizes itself.
        users: optional user indices to evaluate.
        excluded_score: ``None`` (our protocol): the known items are removed from the ranking.  A number:
            they stay in it with this score, never relevant — the ICLRec / ICSRec reference evaluation
            (``rating_pred[history] = 0``), where a known item outranks every item with a negative score.
        zero_score_items: that many extra never-relevant entries scoring exactly 0 are ranked with the items
            (after real items with the same score).  The reference also ranks two rows of its item table that
            are no items — the padding row and an unused mask row, whose learned embeddings its cross-entropy
            pushes down as negatives; our item tables have no such rows, so they cannot be reproduced, and
            ``zero_score_items=2`` is a stand-in: pessimistic as long as those rows score below 0.  An extra
            entry in a top-k list holds a slot and counts as a miss (it is reported as ``-1``, possibly in
            the middle of a list).  Both switches exist to measure the reference protocol beside ours
            (``recsys evaluate --run RUN --excluded-score 0 --zero-score-items 2``); they are defaults nowhere.

    Returns:
        ``{"recall@20": ..., "ndcg@20": ..., ..., "coverage@20": ...}`` as :func:`eval.metrics.ranking_metrics`,
        with ``n_items = dataset.n_items``.

    Raises:
        ValueError: no user has an item in ``split``, or bad arguments.
    """
    from eval.metrics import check_ks, ranking_metrics

    ks = check_ks(ks)
    topk, users_np, truth = model_topk(
        model, dataset, split, max(ks), block_size=block_size, users=users,
        excluded_score=excluded_score, zero_score_items=zero_score_items,
    )  # fmt: skip
    return ranking_metrics(topk, truth, ks, n_items=int(dataset.n_items))


def check_split(split: str) -> None:
    """A ValueError unless ``split`` is ``"valid"`` or ``"test"``: ``"train"`` would be ranked with its own
    items excluded, every metric 0."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")


def model_topk(
    model: EvaluatedModel,
    dataset: Any,
    split: str,
    k: int,
    block_size: int = 4096,
    users: torch.Tensor | np.ndarray | None = None,
    *,
    excluded_score: float | None = None,
    zero_score_items: int = 0,
) -> tuple[torch.Tensor, np.ndarray, sp.csr_matrix]:
    """The ranking :func:`evaluate_model` scores, for callers that need more than the mean metrics (item
    slices, per-user metrics): ``(topk LongTensor[U, k], users int64[U], truth csr[U, I])`` for the users
    with truth in ``split``, with the same exclusions, query context and scoring route (``excluded_score``
    and ``zero_score_items`` as in :func:`evaluate_model`; an extra zero-score entry is a ``-1`` slot, possibly
    in the middle of a row)."""
    _check_positive("block_size", block_size)
    check_split(split)
    if (
        not isinstance(zero_score_items, int | np.integer)
        or isinstance(zero_score_items, bool)
        or zero_score_items < 0
    ):
        raise ValueError(f"zero_score_items must be a non-negative integer, got {zero_score_items!r}")
    _exclusion_value(excluded_score)  # validate before any scoring
    truth = sp.csr_matrix(dataset.matrix(split))
    exclude = sp.csr_matrix(dataset.matrix("train"))
    if split == "test":
        exclude = (exclude + sp.csr_matrix(dataset.matrix("valid"))).tocsr()
    has_truth = np.diff(truth.indptr) > 0
    if users is None:
        users_np = np.flatnonzero(has_truth)
    else:
        users_np = _as_index_array(users)
        if users_np.size and (users_np.min() < 0 or users_np.max() >= truth.shape[0]):
            raise ValueError(f"user indices must lie in [0, {truth.shape[0]})")
        users_np = users_np[has_truth[users_np]]
    if users_np.size == 0:
        raise ValueError(f"no user has an item in split {split!r}: nothing to evaluate")

    tensors = (
        itertools.chain(model.parameters(), model.buffers())
        if isinstance(model, torch.nn.Module)
        else iter(())
    )
    first_tensor = next(tensors, None)
    device = first_tensor.device if first_tensor is not None else torch.device("cpu")
    users_t = torch.from_numpy(users_np).to(device)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    # Sequence models build a user's query from the items before the evaluated target (the training items
    # for "valid", training and validation items for "test"); they say so through `query_context(split)`.
    query_context = getattr(model, "query_context", None)
    context = query_context(split) if callable(query_context) else contextlib.nullcontext()
    try:
        with torch.no_grad(), context:
            # zero_score_items: extra columns n_items .. n_items + z - 1, scoring 0 and never excluded
            n_items, z = truth.shape[1], int(zero_score_items)
            if exclude.shape[1] != n_items:
                raise ValueError(
                    f"the train matrix has {exclude.shape[1]} columns but {split!r} has {n_items}"
                )
            exclude = sp.csr_matrix(
                (exclude.data, exclude.indices, exclude.indptr), shape=(exclude.shape[0], n_items + z)
            )
            if _uses_default_scorer(model):
                # One call: models with an expensive query side (graph propagation) compute it once.
                query, items = model.embeddings(users_t)
                items = items.to(query.dtype)
                if z:  # zero rows: inner product exactly 0
                    items = torch.cat([items, items.new_zeros(z, items.shape[1])])
                topk = full_ranking_topk_embeddings(
                    query, items, exclude, k, users=users_np, excluded_score=excluded_score
                )
            else:
                topk = full_ranking_topk(
                    _with_zero_columns(model.scorer(), z), users_t, exclude, k, block_size=block_size,
                    excluded_score=excluded_score,
                )  # fmt: skip
            topk = topk.masked_fill(topk >= n_items, -1)  # an extra entry holds a slot but is no item
    finally:
        model.train(was_training)
    return topk, users_np, truth[users_np]
