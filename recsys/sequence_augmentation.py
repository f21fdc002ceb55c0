r"""Random augmentations of item sequences: crop, mask and reorder (CL4SRec), vectorised over all users.

Xu Xie, Fei Sun, Zhaoyang Liu, Shiwen Wu, Jinyang Gao, Jiandong Zhang, Bolin Ding, Bin Cui. "Contrastive
Learning for Sequential Recommendation." ICDE 2022 (https://arxiv.org/abs/2010.14395), section IV-B; ICLRec
(Chen et al., WWW 2022) contrasts two such views of each training sequence, drawing one operator uniformly at
random for each view (its ``--augment_type random``).  For a sequence :math:`s_1 \dots s_n`:

* **crop** keeps a random contiguous window of :math:`c = \max(1, \lfloor \eta n \rfloor)` items, its start
  uniform over the :math:`n - c + 1` possible ones;
* **mask** replaces :math:`\lfloor \gamma n \rfloor` items, at positions drawn uniformly without replacement,
  by ``PAD``: the masked slots stay in place (positions do not shift) and the encoder treats them as padding,
  never attending to them.  ICLRec's code masks with the padding id 0 too; CL4SRec's paper uses a [mask]
  token, which would add a row to the item table;
* **reorder** shuffles a random contiguous window of :math:`r = \lfloor \beta n \rfloor` items (uniformly
  random permutation, window start uniform over the :math:`n - r + 1` possible ones); the rest stays in place.

Defaults :math:`\eta = 0.2, \gamma = 0.7, \beta = 0.2` are ICLRec's.  One difference from ICLRec's code
(``data_augmentation.py``): it draws the start of a crop or reorder window with ``randint(0, n - c - 1)``,
which never picks the window that ends at the last item; here every window is possible, as the paper defines
it.  A crop of :math:`\lfloor \eta n \rfloor < 1` items keeps one random item in both.

Vectorised: one call augments every sequence of a :class:`~features.sequences.UserSequences` with a fixed
number of draws from a ``torch.Generator`` (one operator and one window start per sequence, one key per
item), so a training epoch that draws its views at the start replays exactly from the generator's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from features.sequences import PAD, UserSequences

Operator = Literal["crop", "mask", "reorder"]
OPERATORS: tuple[Operator, ...] = ("crop", "mask", "reorder")


def augment_sequences(
    seqs: UserSequences,
    generator: torch.Generator,
    *,
    operators: Sequence[str] = OPERATORS,
    crop_ratio: float = 0.2,
    mask_ratio: float = 0.7,
    reorder_ratio: float = 0.2,
) -> UserSequences:
    """One random augmentation of every sequence; each picks one of ``operators`` uniformly at random.

    Args:
        seqs: U sequences (empty ones stay empty).
        generator: the CPU generator every draw comes from.
        operators: a non-empty subset of ``("crop", "mask", "reorder")``.
        crop_ratio / mask_ratio / reorder_ratio: :math:`\\eta, \\gamma, \\beta` in [0, 1].

    Returns:
        The U augmented sequences (a crop shortens a sequence; masked items hold ``PAD``).
    """
    ops = tuple(operators)
    unknown = sorted(set(ops) - set(OPERATORS))
    if not ops or unknown:
        raise ValueError(f"operators must be a non-empty subset of {list(OPERATORS)}, got {list(ops)}")
    for key, ratio in (
        ("crop_ratio", crop_ratio),
        ("mask_ratio", mask_ratio),
        ("reorder_ratio", reorder_ratio),
    ):
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{key} must lie in [0, 1], got {ratio}")
    n_seq, lengths = seqs.n_users, seqs.lengths
    n_items = seqs.items.size
    # the draws: their number depends on the shapes only, never on the values drawn
    choice = torch.randint(len(ops), (n_seq,), generator=generator).numpy()
    start_u = torch.rand(n_seq, generator=generator, dtype=torch.float64).numpy()
    keys = torch.rand(n_items, generator=generator, dtype=torch.float64).numpy()

    op = np.asarray([OPERATORS.index(o) for o in ops])[choice]  # index into OPERATORS per sequence
    is_crop, is_mask, is_reorder = op == 0, op == 1, op == 2
    # float64 floor of ratio * n equals the reference's int(ratio * n)
    width = np.zeros(n_seq, dtype=np.int64)
    width[is_crop] = np.maximum(np.floor(crop_ratio * lengths[is_crop]), 1)
    width[is_reorder] = np.floor(reorder_ratio * lengths[is_reorder])
    width = np.minimum(width, lengths)
    start = np.minimum(np.floor(start_u * (lengths - width + 1)), np.maximum(lengths - width, 0)).astype(
        np.int64
    )
    masked_count = np.where(is_mask, np.floor(mask_ratio * lengths), 0).astype(np.int64)

    seg = np.repeat(np.arange(n_seq), lengths)  # [N] sequence of every item
    pos = np.arange(n_items) - seqs.offsets[seg]  # [N] its position in the sequence
    in_window = (pos >= start[seg]) & (pos < start[seg] + width[seg])
    # mask: the items of the masked_count smallest keys in each sequence
    by_key = np.lexsort((keys, seg))
    rank = np.empty(n_items, dtype=np.int64)
    rank[by_key] = np.arange(n_items) - seqs.offsets[seg[by_key]]
    masked = rank < masked_count[seg]
    # reorder: the window's items get random sort keys inside [start, start + width), the others their position
    sort_key = pos.astype(np.float64)
    shuffled = is_reorder[seg] & in_window
    sort_key[shuffled] = start[seg][shuffled] + keys[shuffled] * width[seg][shuffled]
    order = np.lexsort((sort_key, seg))
    keep = (~is_crop[seg] | in_window)[order]
    out = np.where(masked, PAD, seqs.items)[order][keep]
    new_lengths = np.bincount(seg[order][keep], minlength=n_seq)
    offsets = np.zeros(n_seq + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    return UserSequences(offsets, out.astype(np.int64, copy=False))
