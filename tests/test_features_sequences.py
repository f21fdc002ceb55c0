"""Per-user sequences and dynamic-sliding training samples (features/sequences.py).

The golden test compares our samples with the reference ICSRec code's dynamic segmentation of Beauty
(``../shared/data/golden/Beauty_subsequences.txt.gz``): each line is ``uid p1 .. pm`` and the reference
trainer turns it into the sample input ``p[:-3]`` (its last 50 items), target ``p[-3]``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features import DataConfig, prepare
from features.errors import DataValidationError
from features.sequences import (
    PAD,
    SubsequenceSamples,
    UserSequences,
    dynamic_sliding_samples,
    pad_sequences,
    read_amazon_sequences,
    user_sequences,
)

MAX_LEN = 50


def sample_set(user_ids, samples) -> set[tuple[str, tuple[int, ...], int]]:
    inputs = samples.input_lists()
    return {
        (user_ids[u], tuple(x), int(t))
        for u, x, t in zip(samples.users.tolist(), inputs, samples.targets.tolist(), strict=True)
    }


# ---- hand-made cases --------------------------------------------------------------------------------------
def test_samples_of_small_sequences():
    seqs = UserSequences.from_lists([[10, 11, 12, 13, 14], [20, 21], [], [30, 31, 32]])
    s = dynamic_sliding_samples(seqs, max_len=3, holdout=0)
    got = list(zip(s.users.tolist(), s.input_lists(), s.targets.tolist(), strict=True))
    assert got == [
        (0, [10], 11),
        (0, [10, 11], 12),
        (0, [10, 11, 12], 13),
        (0, [11, 12, 13], 14),  # truncated to the last max_len items
        (1, [20], 21),
        (3, [30], 31),
        (3, [30, 31], 32),
    ]
    assert s.inputs().tolist() == [
        [PAD, PAD, 10],
        [PAD, 10, 11],
        [10, 11, 12],
        [11, 12, 13],
        [PAD, PAD, 20],
        [PAD, PAD, 30],
        [PAD, 30, 31],
    ]
    assert s.inputs([3, 0]).tolist() == [[11, 12, 13], [PAD, PAD, 10]]


def test_holdout_items_are_never_targets():
    seqs = UserSequences.from_lists([[1, 2, 3, 4, 5], [6, 7, 8], [9, 10]])
    s = dynamic_sliding_samples(seqs, max_len=50, holdout=2)
    # n - 3 samples per user with n >= 3; the last two items of every user are never targets
    assert s.users.tolist() == [0, 0]
    assert s.targets.tolist() == [2, 3]
    assert len(dynamic_sliding_samples(UserSequences.from_lists([[]]), holdout=2)) == 0


def test_padded_histories_and_pad_sequences():
    seqs = UserSequences.from_lists([[1, 2, 3], [], [4]])
    assert seqs.lengths.tolist() == [3, 0, 1]
    assert seqs.padded([2, 0], max_len=2).tolist() == [[PAD, 4], [2, 3]]
    assert seqs.padded(max_len=4)[1].tolist() == [PAD] * 4
    assert pad_sequences([[5, 6, 7], [8]], max_len=2).tolist() == [[6, 7], [PAD, 8]]
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        seqs.padded([3])
    with pytest.raises(ValueError, match="max_len"):
        dynamic_sliding_samples(seqs, max_len=0)


def test_from_frame_orders_by_user_then_time_and_checks_columns():
    df = pl.DataFrame(
        {"user_idx": [1, 0, 1, 0, 1], "item_idx": [7, 5, 6, 4, 8], "timestamp": [5, 9, 3, 1, 7]}
    )
    seqs = UserSequences.from_frame(df, 3, order=("timestamp",))
    assert [seqs[u].tolist() for u in range(3)] == [[4, 5], [6, 7, 8], []]
    with pytest.raises(DataValidationError, match=r"expected columns \['item_idx'\]"):
        UserSequences.from_frame(df.drop("item_idx"), 3)
    with pytest.raises(DataValidationError, match=r"\[0, 1\)"):
        UserSequences.from_frame(df, 1)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_user_sequences_of_a_leave_one_out_dataset(tmp_path):
    folder = tmp_path / "seq"
    folder.mkdir()
    _write_lines(folder / "Toy.txt", ["11 3 1 2 5", "12 4 3 1", "13 2 5 4 1 3"])
    ds = prepare(DataConfig(source="amazon_seq", path=str(folder), name="Toy"))
    item_id = dict(zip(ds.item_vocab["item_idx"].to_list(), ds.item_vocab["item_id"].to_list(), strict=True))
    user_id = dict(zip(ds.user_vocab["user_idx"].to_list(), ds.user_vocab["user_id"].to_list(), strict=True))

    def as_ids(seqs):
        return {user_id[u]: [item_id[i] for i in seqs[u].tolist()] for u in range(len(seqs))}

    assert as_ids(user_sequences(ds)) == {"11": ["3", "1"], "12": ["4"], "13": ["2", "5", "4"]}
    assert as_ids(user_sequences(ds, ("train", "valid"))) == {
        "11": ["3", "1", "2"],
        "12": ["4", "3"],
        "13": ["2", "5", "4", "1"],
    }
    assert as_ids(user_sequences(ds, ("train", "valid", "test")))["13"] == ["2", "5", "4", "1", "3"]
    with pytest.raises(ValueError, match="splits"):
        user_sequences(ds, ("train", "nope"))


def test_user_sequences_refuses_an_unordered_protocol(tmp_path):
    csv = tmp_path / "x.csv"
    csv.write_text("user,item\n" + "".join(f"u{u},i{i}\n" for u in range(4) for i in range(6)))
    cfg = DataConfig(
        source="interactions",
        path=str(csv),
        columns={"user": "user", "item": "item"},
        split={"protocol": "random_ratio", "test_ratio": 0.3},
    )
    ds = prepare(cfg)
    assert user_sequences(ds).n_users == ds.n_users  # train alone is fine
    with pytest.raises(DataValidationError, match="random_ratio"):
        user_sequences(ds, ("train", "test"))


def test_read_amazon_sequences_rejects_non_integer_items(tmp_path):
    path = _write_lines(tmp_path / "Bad.txt", ["1 1 2 3", "2 4 x5 6"])
    with pytest.raises(DataValidationError, match=r"Bad\.txt.*'x5'"):
        read_amazon_sequences(path)


# ---- golden: the reference code's subsequences of Beauty --------------------------------------------------
def read_golden_lines(path: Path) -> list[tuple[str, tuple[int, ...], int]]:
    """The golden file's samples ``(user, input, target)`` in its line order."""
    out = []
    with gzip.open(path, "rt") as fh:
        for line in fh:
            uid, *rest = line.split()
            p = [int(x) for x in rest]
            out.append((uid, tuple(p[:-3][-MAX_LEN:]), p[-3]))
    return out


def read_golden(path: Path) -> set[tuple[str, tuple[int, ...], int]]:
    return set(read_golden_lines(path))


def prepared_beauty_samples(
    shared_data: Path,
) -> tuple[SubsequenceSamples, list[tuple[str, tuple[int, ...], int]]]:
    """The route the models take: prepare (leave-one-out) -> training sequences -> samples; with each sample
    as ``(user, input, target)`` in original ids, in sample order."""
    ds = prepare(DataConfig(source="amazon_seq", path=str(shared_data / "amazon-seq"), name="Beauty"))
    samples = dynamic_sliding_samples(user_sequences(ds), max_len=MAX_LEN)
    item_ids = np.array([int(x) for x in ds.item_vocab.sort("item_idx")["item_id"].to_list()])
    user_ids = ds.user_vocab.sort("user_idx")["user_id"].to_list()
    rows = [
        (user_ids[u], tuple(item_ids[row[row != PAD]].tolist()), int(item_ids[t]))
        for u, row, t in zip(samples.users.tolist(), samples.inputs(), samples.targets.tolist(), strict=True)
    ]
    return samples, rows


def golden_beauty_path(shared_data: Path) -> Path:
    """The reference code's Beauty subsequence file; skips the test when it is absent."""
    path = shared_data / "golden" / "Beauty_subsequences.txt.gz"
    if not path.exists():
        pytest.skip(f"golden file not found: {path}")
    return path


@pytest.fixture(scope="module")
def golden_beauty(shared_data) -> set[tuple[str, tuple[int, ...], int]]:
    return read_golden(golden_beauty_path(shared_data))


def test_golden_beauty_subsequences_from_the_reader(shared_data, golden_beauty):
    user_ids, seqs = read_amazon_sequences(shared_data / "amazon-seq" / "Beauty.txt")
    samples = dynamic_sliding_samples(seqs, max_len=MAX_LEN, holdout=2)
    assert len(samples) == 131_413 == len(golden_beauty)
    assert sample_set(user_ids, samples) == golden_beauty


def test_golden_beauty_subsequences_from_the_prepared_dataset(shared_data, golden_beauty):
    """The route the models take: prepare (leave-one-out) -> training sequences -> samples, ids mapped back."""
    _, rows = prepared_beauty_samples(shared_data)
    assert len(rows) == len(golden_beauty)  # no sample twice (a set comparison alone would not see it)
    assert set(rows) == golden_beauty
