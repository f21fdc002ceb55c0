"""Typed data configuration (the ``data:`` section of an experiment YAML).

Every model has ``extra="forbid"``, so a misspelt key is an error that names it.  Cross-field rules (a
temporal split needs timestamps, a rating threshold needs ratings, ...) are checked here, before any file is
read, so that a bad config fails in milliseconds rather than after parsing a large file.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Source = Literal["interactions", "movielens_100k", "user_lines", "amazon_seq"]
Protocol = Literal["random_ratio", "leave_one_out", "temporal", "presplit"]

# The protocol used when the config does not name one: the one the benchmark papers use for that format.
_DEFAULT_PROTOCOL: dict[str, Protocol] = {
    "interactions": "random_ratio",
    "movielens_100k": "random_ratio",
    "user_lines": "presplit",
    "amazon_seq": "leave_one_out",
}


class NoBooleanNumbers(BaseModel):
    """Refuses ``true`` / ``false`` for a number field: pydantic's lax mode would read ``epochs: true`` as 1.
    Base of every config model (data, experiment, models)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # a list of numbers is checked item by item: eval.ks=[true, 10] would read as [1, 10]
        items = value if isinstance(value, list) else [value]
        flag = next((v for v in items if isinstance(v, bool)), None)
        if flag is not None and info.field_name is not None:
            ann = cls.model_fields[info.field_name].annotation
            wanted = {ann, *getattr(ann, "__args__", ())}
            if wanted & {int, float} and bool not in wanted:
                raise ValueError(f"expected a number, got the boolean {flag}")
        return value


class _Strict(NoBooleanNumbers):
    # Attribute docstrings become field descriptions (shown in the JSON schema).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ColumnsConfig(_Strict):
    """Column names of a generic interactions file (CSV/TSV/Parquet)."""

    user: str = "user_id"
    """Column holding the user id (any string or integer)."""
    item: str = "item_id"
    """Column holding the item id (any string or integer)."""
    rating: str | None = None
    """Column holding an explicit rating (a number); ``None``: the file has no ratings."""
    timestamp: str | None = None
    """Column holding the interaction time: integers (e.g. unix seconds) or ISO-8601 dates / date-times
    (``T`` or a space; ``Z`` or a UTC offset; none: UTC), stored as unix seconds (a date-time with a fraction
    of a second is refused: give such times as integers, e.g. unix milliseconds)."""

    @model_validator(mode="after")
    def _one_column_one_role(self) -> ColumnsConfig:
        # one column read as two roles failed inside Polars (a duplicate column), or made items of timestamps
        roles: dict[str, str] = {}
        for role in ("user", "item", "rating", "timestamp"):
            column = getattr(self, role)
            if column is not None and column in roles:
                raise ValueError(f"column {column!r} is given as both {roles[column]} and {role}")
            roles.setdefault(column, role)
        return self


# The split keys each protocol reads; written for another protocol, a key would be ignored without a word.
# A key read by several protocols maps to all of them (the seed draws random_ratio's split and presplit's
# validation carve-out; leave_one_out and temporal draw nothing).
PROTOCOL_OF_KEY: dict[str, str | tuple[str, ...]] = {
    "seed": ("random_ratio", "presplit"),
    "test_ratio": "random_ratio",
    "valid_ratio": "random_ratio",
    "temporal_cut": "temporal",
    "cut_timestamp": "temporal",
    "valid_temporal_cut": "temporal",
    "valid_cut_timestamp": "temporal",
    "valid_from_train_ratio": "presplit",
    "presplit_unseen": "presplit",
}


class SplitConfig(_Strict):
    """How interactions are divided into train / valid / test.

    * ``random_ratio``: per user, a seeded random ``test_ratio`` (and ``valid_ratio``) of the user's
      interactions; a user with >= 2 interactions always keeps >= 1 in train.
    * ``leave_one_out``: per user, the last interaction (by timestamp, then file order) is test, the second
      last is valid; users with fewer than 3 interactions stay entirely in train.
    * ``temporal``: one global cut: train < cut <= test (optionally a valid window before the cut); users and
      items of valid/test that never occur in train are dropped and counted in the manifest.
    * ``presplit``: the benchmark's own train/test files as they are, optionally carving a per-user random
      validation set out of train (``valid_from_train_ratio``).
    """

    protocol: Protocol = Field(
        default="random_ratio",
        json_schema_extra={"default_text": "by `data.source` (see `data.split` above)"},
    )
    """The protocol (see the ``data.split`` section above)."""
    seed: int = Field(default=0, ge=0)
    """Seed of the random splits (``random_ratio``, ``valid_from_train_ratio``); under another protocol, or
    ``presplit`` without a carve-out, a seed other than 0 warns and is set back to 0 (it would draw nothing)."""
    test_ratio: float = Field(default=0.2, gt=0.0, lt=1.0)
    """random_ratio: share of each user's interactions in test: ``n * test_ratio`` rounded half up, exactly
    (0.35 of 90 interactions is 32)."""
    valid_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    """random_ratio: share of each user's interactions in valid (0 = no validation split)."""
    temporal_cut: float | None = Field(default=None, gt=0.0, lt=1.0)
    """temporal: the cut as a quantile of all timestamps. Test holds the events at or after the quantile's
    timestamp, an actual one (the lower neighbour), so 0.8 puts at least the last 20% of time-ordered events in
    test: 3 of 10 events with distinct timestamps, 21 of 100, and every event that shares the cut's time (before
    test events of users or items unseen in training are dropped)."""
    cut_timestamp: int | None = None
    """temporal: the cut as an absolute timestamp (same unit as the data); alternative to ``temporal_cut``."""
    valid_temporal_cut: float | None = Field(default=None, gt=0.0, lt=1.0)
    """temporal: optional start of the validation window as a quantile (must be before the test cut)."""
    valid_cut_timestamp: int | None = None
    """temporal: optional start of the validation window as an absolute timestamp."""
    valid_from_train_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    """presplit: share of each user's train interactions moved to valid (0 = no validation split). The test
    file stays whole: its items are checked against the whole train file, so an item whose only training
    interactions moved to valid is tested without any (a warning counts such test rows; Gowalla, 0.1, seed
    2020: 9 of 217,242)."""
    presplit_unseen: Literal["error", "drop"] = "error"
    """presplit: what to do with test items that never occur in train: an error naming the line, or drop. Test
    users without training interactions are kept (and evaluated without a history)."""

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.protocol == "random_ratio" and self.test_ratio + self.valid_ratio >= 1.0:
            raise ValueError(
                f"split.test_ratio + split.valid_ratio must be < 1, got {self.test_ratio} + {self.valid_ratio}"
            )
        if self.protocol == "temporal":
            if (self.temporal_cut is None) == (self.cut_timestamp is None):
                raise ValueError(
                    "split.protocol 'temporal' needs exactly one of split.temporal_cut (a quantile in (0, 1)) "
                    "or split.cut_timestamp (an absolute timestamp)"
                )
            if self.valid_temporal_cut is not None and self.valid_cut_timestamp is not None:
                raise ValueError("give at most one of split.valid_temporal_cut and split.valid_cut_timestamp")
            if (
                self.valid_temporal_cut is not None
                and self.temporal_cut is not None
                and self.valid_temporal_cut >= self.temporal_cut
            ):
                raise ValueError(
                    f"split.valid_temporal_cut ({self.valid_temporal_cut}) must be before split.temporal_cut "
                    f"({self.temporal_cut})"
                )
            if (
                self.valid_cut_timestamp is not None
                and self.cut_timestamp is not None
                and self.valid_cut_timestamp >= self.cut_timestamp
            ):
                raise ValueError(
                    f"split.valid_cut_timestamp ({self.valid_cut_timestamp}) must be before split.cut_timestamp "
                    f"({self.cut_timestamp})"
                )
        return self

    def unread_keys(self) -> dict[str, str]:
        """The keys given a value of their own (not their default) that this protocol does not read, each with
        the reason: ``{"seed": "applies to split.protocol 'random_ratio' or 'presplit' only"}`` under
        ``leave_one_out``.  Such a key would change nothing in the split, yet the prepared data's cache key and
        the run fingerprint hash it."""
        defaults = type(self).model_fields
        unread = {}
        for key in sorted(self.model_fields_set - {"protocol"}):
            if getattr(self, key) == defaults[key].default:
                continue  # a dumped config lists every key at its default: quiet
            owner = PROTOCOL_OF_KEY.get(key, self.protocol)
            owners = (owner,) if isinstance(owner, str) else owner
            if self.protocol not in owners:
                unread[key] = f"applies to split.protocol {' or '.join(map(repr, owners))} only"
            elif key == "seed" and self.protocol == "presplit" and self.valid_from_train_ratio == 0:
                unread[key] = "draws only the validation carve-out (split.valid_from_train_ratio > 0)"
        return unread


# The reading keys only one source reads; given to another, each is reset as unread split keys are.
_SOURCE_OF_KEY = {
    "columns": "interactions",
    "separator": "interactions",
    "has_header": "interactions",
    "train_file": "user_lines",
    "test_file": "user_lines",
}


def _shown(value: Any) -> str:
    """A key's value as the warning shows it: a section as its set keys (``{'user': 'uid'}``)."""
    if isinstance(value, BaseModel):
        return repr(value.model_dump(exclude_defaults=True))
    return repr(value)


class DataConfig(_Strict):
    """Where the raw data is, how to read it, how to filter it and how to split it.

    ``source`` picks the reader:

    * ``interactions``: one CSV/TSV/Parquet file; ``columns`` names its columns.
    * ``movielens_100k``: the MovieLens-100K folder (``u.data``, ``u.user``, ``u.item``, ``u.genre``) or
      RecBole's atomic files (``ml-100k.inter``/``.user``/``.item``); ``path: auto`` obtains it (the local
      benchmark copy, else the ``recbole==1.2.1`` wheel from PyPI, checksum-verified).
    * ``user_lines``: ``uid iid iid ...`` per line (LightGCN's Gowalla); ``path`` is the folder holding
      ``train_file`` and (for ``presplit``) ``test_file``, or one file.
    * ``amazon_seq``: ``uid i1 i2 ...`` in time order per line (S3-Rec / ICSRec Amazon files); ``path`` is
      the folder and ``name`` the dataset (``Beauty`` -> ``Beauty.txt``, ``Beauty_item2attributes.json``).

    A reading key of another source (``separator`` under ``movielens_100k``, ``test_file`` under
    ``amazon_seq``) warns and is set back to its default, as an unread split key does.
    """

    source: Source
    """The reader (see the ``data`` section above)."""
    path: str
    """The file or folder to read, relative to the folder the command runs in (``movielens_100k``: or
    ``auto``)."""
    name: str | None = None
    """amazon_seq: dataset name (file stem); elsewhere only used to name the prepared folder."""
    columns: ColumnsConfig = Field(default_factory=ColumnsConfig)
    separator: str | None = None
    """interactions: field separator; inferred from the suffix (.csv -> ',', .tsv -> tab) when omitted."""
    has_header: bool = True
    """interactions (CSV/TSV): whether the first line holds column names (else name columns 'column_1', ...)."""
    train_file: str = "train.txt"
    """user_lines: the train file inside ``path``."""
    test_file: str | None = "test.txt"
    """user_lines: the test file inside ``path`` (used when it exists; required for ``presplit``)."""
    rating_threshold: float | None = None
    """Keep interactions with rating >= threshold and treat them as implicit positives. The others are neither
    trained on nor excluded by the evaluation; they are kept aside as seen pairs (``below_threshold``), which
    serving never recommends back."""
    dedup: bool = True
    """Keep only the earliest interaction of each (user, item) pair."""
    min_user_interactions: int = Field(default=0, ge=0)
    """k-core: drop users with fewer interactions, iterated with the item rule until stable (0 = off). It runs on
    the whole log before the split, as benchmark preparations do: under ``temporal`` a user's later (test-period)
    interactions count towards keeping them."""
    min_item_interactions: int = Field(default=0, ge=0)
    """k-core: drop items with fewer interactions (0 = off)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """The split protocol; when omitted: presplit for user_lines, leave-one-out for amazon_seq, else
    random_ratio. A key that the protocol does not read (``test_ratio`` under leave_one_out) warns and is set
    back to its default, so that it changes neither the prepared data's cache key nor the run fingerprint."""
    side_features: bool = True
    """Write users.parquet / items.parquet with encoded side features when the source has them."""

    @model_validator(mode="before")
    @classmethod
    def _default_split(cls, data: Any) -> Any:
        # The right default protocol depends on the source, so it is filled in before field validation
        # (and then stored in the manifest and hashed like an explicit one).
        if isinstance(data, dict) and data.get("source") in _DEFAULT_PROTOCOL:
            default = _DEFAULT_PROTOCOL[data["source"]]
            split = data.get("split")
            if split is None:
                data = {**data, "split": {"protocol": default}}
            elif isinstance(split, dict) and "protocol" not in split:
                data = {**data, "split": {**split, "protocol": default}}
        return data

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        src, proto = self.source, self.split.protocol
        if self.path == "auto" and src != "movielens_100k":
            raise ValueError(f"data.path 'auto' is only supported for source 'movielens_100k', not {src!r}")
        if src == "amazon_seq" and not self.name and not self.path.endswith(".txt"):
            raise ValueError(
                "source 'amazon_seq' needs data.name (e.g. 'Beauty') or a data.path to a .txt file"
            )
        if self.separator is not None and len(self.separator) != 1:
            raise ValueError(f"data.separator must be a single character, got {self.separator!r}")
        has_rating = src == "movielens_100k" or (src == "interactions" and self.columns.rating is not None)
        if self.rating_threshold is not None and not has_rating:
            raise ValueError(
                f"data.rating_threshold needs ratings, but source {src!r} has none"
                + (" (set data.columns.rating)" if src == "interactions" else "")
            )
        has_time = src == "movielens_100k" or (src == "interactions" and self.columns.timestamp is not None)
        if proto == "temporal" and src == "amazon_seq":
            # its "timestamps" are positions within each user's line: one global cut over them is no time
            raise ValueError(
                "split.protocol 'temporal' needs timestamps, but source 'amazon_seq' has only each user's "
                "order (positions 0, 1, 2, ...); use split.protocol: leave_one_out"
            )
        if proto == "temporal" and not has_time:
            raise ValueError(
                f"split.protocol 'temporal' needs timestamps, but source {src!r} has none"
                + (" (set data.columns.timestamp)" if src == "interactions" else "")
            )
        if proto == "presplit":
            if src != "user_lines":
                raise ValueError(
                    f"split.protocol 'presplit' needs a source with its own train/test files ('user_lines'), "
                    f"not {src!r}"
                )
            if not self.test_file:
                raise ValueError("split.protocol 'presplit' needs data.test_file")
            if self.min_user_interactions or self.min_item_interactions:
                # Filtering a published split would silently change the benchmark it reproduces.
                raise ValueError(
                    "k-core filtering (data.min_user_interactions / data.min_item_interactions) is not "
                    "applied to a presplit benchmark; set them to 0 or use another split.protocol"
                )
        return self

    @model_validator(mode="after")
    def _reset_unread_keys(self, info: ValidationInfo) -> DataConfig:
        # A warning, not an error, so that a file can switch protocols or sources with an override; the key
        # goes back to its default so that the same data is not prepared and cached again under another key
        # (nor a run's checkpoints kept apart).  Here rather than in the YAML loader so that a DataConfig
        # built in Python hashes the same; the loader names its file through the validation context.
        source = (info.context or {}).get("source")
        prefix = f"{source}: " if source else ""
        for key, why in self.split.unread_keys().items():
            warnings.warn(
                f"{prefix}data.split.{key}={getattr(self.split, key)!r} {why}; "
                f"ignored under {self.split.protocol!r}",
                stacklevel=_caller_stacklevel(),
            )
            setattr(self.split, key, type(self.split).model_fields[key].default)
        for key, reader in _SOURCE_OF_KEY.items():
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            if self.source != reader and getattr(self, key) != default:
                warnings.warn(
                    f"{prefix}data.{key}={_shown(getattr(self, key))} applies to source {reader!r} only; "
                    f"ignored under source {self.source!r}",
                    stacklevel=_caller_stacklevel(),
                )
                setattr(self, key, default)
        return self

    def display_name(self) -> str:
        """A short readable name for folder names and logs (``Beauty``, ``ml-100k``, ``train``)."""
        if self.name:
            return self.name
        if self.source == "movielens_100k":
            return "ml-100k"
        stem = self.path.rstrip("/").rsplit("/", 1)[-1]
        return stem.rsplit(".", 1)[0] or self.source


# Frames a config warning is not about: this module, pydantic's validation, and the YAML loader (which names
# its file in the message). What Python 3.12's ``warnings.warn(skip_file_prefixes=...)`` does; 3.11 has none.
_VALIDATION_FILES = (
    str(Path(__file__).resolve()),
    str(Path(pydantic.__file__).resolve().parent),
    str(Path(__file__).resolve().parents[1] / "recsys" / "config.py"),
)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller point at the first frame outside
    :data:`_VALIDATION_FILES`: the user's line that built the config, not pydantic's internals."""
    frame = sys._getframe(1)  # the function that warns: stacklevel 1
    level = 1
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
        _VALIDATION_FILES
    ):
        frame, level = frame.f_back, level + 1
    return level
