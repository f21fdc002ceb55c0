"""Recommendations for many users at once, written to one CSV or Parquet file: the offline batch job that fills
a key-value store or a table, so that nothing has to be computed at request time.

The file has one row per recommended item: ``user`` (text), ``item`` (text), ``score`` (float32, higher is
better; the re-ranker's score when a re-ranker is used) and ``rank`` (1 = best), sorted by user, in the order
the users were given, then by rank. Its ``user, item, score`` columns are what ``recsys evaluate --recs`` reads
(which orders equal scores by item id, where ``rank`` follows the index's rule, by catalogue position).
The items are those a served answer holds: a user's known items (every split) are never recommended, so such a
file is for serving, not for scoring a split (``recsys evaluate --run`` does that).

The file is streamed batch by batch into a temporary file beside the target and renamed into place at the end,
so memory stays bounded by one batch and an interrupted job leaves the previous file whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from serving._topk import check_k
from serving.errors import UnknownUserError

__all__ = ["BatchRecommender", "ExportSummary", "export_recommendations", "read_user_ids"]

COLUMNS = ("user", "item", "score", "rank")
# FAISS's exact search gave scores a last bit apart from one-user queries from 2,000 rows a call on (faiss
# 1.15.1; near-ties then swapped places), so that the file equals `recommend --user`, calls stay below that.
MAX_SEARCH_ROWS = 1024
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class BatchRecommender(Protocol):
    """What :func:`export_recommendations` needs: :class:`~serving.Retriever`,
    :class:`~serving.RerankingRetriever` and :class:`recsys.scorer_recommender.ScorerRecommender` provide it."""

    @property
    def user_ids(self) -> Sequence[str]:
        """Every user it can answer for, in a fixed order."""

    @property
    def item_ids(self) -> Sequence[str]:
        """The catalogue; ``recommend_positions`` indexes it."""

    def recommend_positions(self, user_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [B, K], positions [B, K])``, best first, padded with ``(-inf, -1)``."""


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_recommendations` wrote."""

    path: Path
    n_users: int  # users written (a user with no unseen item left has no row)
    n_rows: int
    skipped: tuple[str, ...]  # ids left out as unknown (``skip_unknown=True``)


def output_format(path: str | Path) -> str:
    """``"csv"`` or ``"parquet"`` from the file name; another extension or an existing folder is a ValueError
    naming the file."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"output file {path}: unknown extension {path.suffix!r} (expected .csv, .parquet or .pq)"
        )
    if path.is_dir():
        raise ValueError(f"output file {path} is a folder (expected a file name)")
    return fmt


def read_user_ids(path: str | Path) -> list[str]:
    """User ids from a text file, one per line (UTF-8, surrounding whitespace stripped).

    A blank line, a repeated id or an empty file is a ValueError naming the file and the line(s): each would
    otherwise make a job silently answer for other users than meant.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"users file {path} " + ("is a folder" if path.is_dir() else "does not exist")
        )
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"users file {path} is not UTF-8 text (byte {exc.start}): one user id per line"
        ) from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    # lines end at "\n" only: str.splitlines also splits at U+2028, \x1c and the like, inside an id
    lines = [line.removesuffix("\r") for line in raw.split("\n")]
    for number, line in enumerate(lines, 1):
        user = line.strip()
        if not user:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1].strip()):
                break  # a trailing blank line (or the empty piece after the last "\n") is harmless
            raise ValueError(f"users file {path}, line {number}: blank line (expected one user id per line)")
        if user in first_line:
            raise ValueError(
                f"users file {path}, line {number}: user {user!r} again (first on line {first_line[user]})"
            )
        first_line[user] = number
        ids.append(user)
    if not ids:
        raise ValueError(f"users file {path} is empty (expected one user id per line)")
    return ids


def export_recommendations(
    recommender: BatchRecommender,
    path: str | Path,
    user_ids: Sequence[str] | None = None,
    *,
    k: int = 10,
    batch_size: int = 1024,
    skip_unknown: bool = False,
) -> ExportSummary:
    """Write the top-``k`` recommendations of many users to ``path`` (``.csv``, ``.parquet`` or ``.pq``).

    Args:
        recommender: a :class:`~serving.Retriever`, a :class:`~serving.RerankingRetriever` or any
            :class:`BatchRecommender`.
        path: the file to write, replaced atomically (parent folders are created).
        user_ids: the users, in the order to write them; None: every user the recommender knows.
        k: items per user (fewer when the user's unseen catalogue is shorter).
        batch_size: users written per step, searched in calls of at most :data:`MAX_SEARCH_ROWS`; memory
            grows with it.
        skip_unknown: leave out ids the recommender does not know (listed in the summary) instead of raising
            :class:`~serving.UnknownUserError`.

    Returns:
        an :class:`ExportSummary`.
    """
    from recsys.atomic import atomic_write
    from serving.retriever import _as_id_list

    path = Path(path)
    fmt = output_format(path)
    k = check_k(k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    known = list(recommender.user_ids)
    skipped: list[str] = []
    if user_ids is None:
        ids = known
    else:
        ids = _as_id_list(user_ids, "user_ids")
        if not ids:  # not "none of the users is known": there were none
            raise ValueError("user_ids is empty; nothing was written (pass None for every known user)")
        repeated = sorted(u for u, n in Counter(ids).items() if n > 1)
        if repeated:
            raise ValueError(f"user_ids repeat {len(repeated)} id(s): {repeated[:5]}")
        known_set = set(known)
        skipped = [u for u in ids if u not in known_set]
        if skipped and not skip_unknown:
            raise UnknownUserError(skipped, len(known), "pass skip_unknown=True to leave them out")
        ids = [u for u in ids if u in known_set]
        if not ids:  # a users file for another dataset would otherwise blank yesterday's file
            raise UnknownUserError(skipped, len(known), "none of the users is known; nothing was written")
    items = np.asarray(list(recommender.item_ids), dtype=object)
    counts = {"rows": 0, "users": 0}

    def write(fh) -> None:
        import pyarrow as pa

        schema = pa.schema(
            [("user", pa.string()), ("item", pa.string()), ("score", pa.float32()), ("rank", pa.int32())]
        )
        if fmt == "parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(fh, schema)
        else:
            import pyarrow.csv as pacsv

            writer = pacsv.CSVWriter(fh, schema)
        with writer:
            for start in range(0, len(ids), batch_size):
                batch = ids[start : start + batch_size]
                parts = [
                    recommender.recommend_positions(batch[at : at + MAX_SEARCH_ROWS], k)
                    for at in range(0, len(batch), MAX_SEARCH_ROWS)
                ]
                scores = np.concatenate([scores for scores, _ in parts])
                positions = np.concatenate([positions for _, positions in parts])
                kept = positions >= 0  # padding (-1) where a user's unseen catalogue ran out
                per_user = kept.sum(axis=1)
                ranks = np.cumsum(kept, axis=1, dtype=np.int32)  # counts kept entries only
                table = pa.table(
                    {
                        "user": np.repeat(np.asarray(batch, dtype=object), per_user),
                        "item": items[positions[kept]],
                        "score": np.asarray(scores, dtype=np.float32)[kept],
                        "rank": ranks[kept],
                    },
                    schema=schema,
                )
                writer.write_table(table)
                counts["rows"] += table.num_rows
                counts["users"] += int(np.count_nonzero(per_user))

    atomic_write(path, write)
    return ExportSummary(path, counts["users"], counts["rows"], tuple(skipped))
