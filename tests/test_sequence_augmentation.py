"""Crop, mask and reorder (CL4SRec's augmentations, as ICLRec draws them): what each operator keeps, that every
window and every masked set can come out and how often, and that the draws replay from the generator."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from features.sequences import PAD, UserSequences
from recsys.sequence_augmentation import augment_sequences

SEQ = list(range(100, 110))  # n = 10: crop keeps 2, mask hides 7, reorder shuffles 2
SEQS = UserSequences.from_lists([SEQ, [], [5], [7, 8], list(range(200, 223))])


def draws(op: str, times: int, seqs: UserSequences = SEQS, seed: int = 0, **ratios) -> list[UserSequences]:
    gen = torch.Generator().manual_seed(seed)
    return [augment_sequences(seqs, gen, operators=[op], **ratios) for _ in range(times)]


def chi2_ok(counts: list[int]) -> bool:
    """Pearson's chi-square of counts against the uniform law, within 6 sd of its mean."""
    c = np.asarray(counts, dtype=float)
    expected, dof = c.sum() / c.size, c.size - 1
    return float(((c - expected) ** 2).sum() / expected) < dof + 6 * math.sqrt(2 * dof)


def test_crop_keeps_a_window_of_a_fifth_and_every_window_is_drawn_uniformly():
    starts = Counter()
    for out in draws("crop", 900):
        for u in range(SEQS.n_users):
            n, got = len(SEQS[u]), out[u].tolist()
            c = min(max(1, int(0.2 * n)), n)
            assert len(got) == c
            if n:
                start = SEQS[u].tolist().index(got[0])
                assert got == SEQS[u].tolist()[start : start + c]  # contiguous, in order
                if u == 0:
                    starts[start] += 1
    # 10 items, windows of 2: starts 0..8, the last one (ending at the last item) included
    assert sorted(starts) == list(range(9)) and chi2_ok([starts[s] for s in range(9)])


def test_mask_hides_floor_gamma_n_items_in_place_each_equally_often():
    hidden = np.zeros(len(SEQ))
    for out in draws("mask", 600):
        for u in range(SEQS.n_users):
            orig, got = SEQS[u], out[u]
            assert got.size == orig.size
            assert int((got == PAD).sum()) == int(0.7 * orig.size)  # the reference's int(gamma * n)
            kept = got != PAD
            assert np.array_equal(got[kept], orig[kept])  # nothing moves
        hidden += out[0] == PAD
    assert chi2_ok(hidden.astype(int).tolist())
    # the count is the reference's int(ratio * n) for every length, floating point included
    for n in range(0, 60):
        seqs = UserSequences.from_lists([list(range(n))])
        (out,) = draws("mask", 1, seqs, mask_ratio=0.7)
        assert int((out[0] == PAD).sum()) == int(0.7 * n)


def test_reorder_shuffles_one_window_uniformly_anywhere_in_the_sequence():
    seqs = UserSequences.from_lists([SEQ, list(range(20))])  # windows of 2 and of 4
    moved_at = Counter()
    for out in draws("reorder", 800, seqs):
        for u, width in ((0, 2), (1, 4)):
            orig, got = seqs[u].tolist(), out[u].tolist()
            assert sorted(got) == sorted(orig)
            moved = [i for i in range(len(orig)) if got[i] != orig[i]]
            if moved:
                assert moved[-1] - moved[0] < width  # inside one window of the operator's width
        moved_at.update(i for i in range(20) if out[1][i] != i)
    # windows all along the sequence: the first and the last item move too (the reference never moves the last)
    assert sorted(moved_at) == list(range(20))
    # the whole sequence as the window: all 24 orders of 4 items, equally often
    perms = Counter(
        tuple(out[0].tolist())
        for out in draws("reorder", 2400, UserSequences.from_lists([[0, 1, 2, 3]]), reorder_ratio=1.0)
    )
    assert len(perms) == 24 and chi2_ok(list(perms.values()))


def test_random_picks_each_operator_a_third_of_the_time():
    kinds = Counter()
    gen = torch.Generator().manual_seed(3)
    seqs = UserSequences.from_lists([SEQ] * 300)
    out = augment_sequences(seqs, gen)
    for u in range(300):
        got = out[u]
        kinds["crop" if got.size == 2 else "mask" if (got == PAD).any() else "reorder"] += 1
    assert set(kinds) == {"crop", "mask", "reorder"} and chi2_ok(list(kinds.values()))
    only = augment_sequences(seqs, gen, operators=["mask"])
    assert all((only[u] == PAD).sum() == 7 for u in range(300))


def test_draws_replay_from_the_generator_and_do_not_depend_on_the_values():
    a = augment_sequences(SEQS, torch.Generator().manual_seed(9))
    b = augment_sequences(SEQS, torch.Generator().manual_seed(9))
    assert np.array_equal(a.items, b.items) and np.array_equal(a.offsets, b.offsets)
    # the same lengths with other items leave the generator in the same state: draws depend on shapes only
    other = UserSequences(SEQS.offsets, SEQS.items + 1000)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    augment_sequences(SEQS, g1)
    augment_sequences(other, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_bad_operators_and_ratios_are_refused():
    gen = torch.Generator()
    with pytest.raises(ValueError, match="non-empty subset"):
        augment_sequences(SEQS, gen, operators=["crop", "insert"])
    with pytest.raises(ValueError, match="non-empty subset"):
        augment_sequences(SEQS, gen, operators=[])
    with pytest.raises(ValueError, match="mask_ratio must lie in"):
        augment_sequences(SEQS, gen, mask_ratio=1.5)


def test_each_operator_uses_its_own_ratio():
    seqs = UserSequences.from_lists([list(range(20))])
    ratios = {"crop_ratio": 0.5, "mask_ratio": 0.25, "reorder_ratio": 0.1}
    assert all(out[0].size == 10 for out in draws("crop", 20, seqs, **ratios))
    assert all(int((out[0] == PAD).sum()) == 5 for out in draws("mask", 20, seqs, **ratios))
    spans = set()
    ratios = {"crop_ratio": 0.1, "mask_ratio": 0.1, "reorder_ratio": 0.5}
    for out in draws("reorder", 200, seqs, **ratios):
        moved = [i for i in range(20) if out[0][i] != i]
        if moved:
            spans.add(moved[-1] - moved[0])
    assert max(spans) == 9  # windows of 10 items
