"""Batches of training samples for sequence models (SASRec, GRU4Rec, ICSRec, DuoRec, ICLRec, BERT4Rec).

The sampler walks a seeded random permutation of all dynamic-sliding samples
(:func:`features.sequences.dynamic_sliding_samples`) once per epoch, like the reference trainers' shuffled
``DataLoader`` over the subsequence file.  It follows the contract of :class:`recsys.sampling.BPRSampler`:
an epoch is a pure function of the generator's state at its start, ``len(sampler)`` is the number of batches
and ``iterate(start=b)`` reproduces batches ``b, b+1, ...`` exactly, so the trainer's exact resume holds.

A batch is a dict of CPU tensors:

* ``users``: ``LongTensor[B]``, the user of each sample;
* ``inputs``: ``LongTensor[B, L]``, the input items, left-padded with ``features.sequences.PAD`` (-1);
* ``targets``: ``LongTensor[B]``, the item to predict;
* ``sample_ids``: ``LongTensor[B]``, the samples' indices in the sample set (ICSRec and DuoRec look up
  samples that share a target through them: :class:`CrossSubsequenceSampler`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

from features.sequences import PAD, SubsequenceSamples, UserSequences

MASK = -2
"""The cloze mask symbol of masked-item inputs (BERT4Rec): never an item (>= 0), never padding (``PAD``)."""


def require_samples(samples: SubsequenceSamples) -> None:
    """A ValueError when there is nothing to train on, before anything indexes into the samples."""
    if len(samples) == 0:
        raise ValueError("there are no training samples (every user's training sequence has < 2 items)")


def check_start(start: int, n_batches: int) -> int:
    """The batch an epoch resumes at must lie in ``[0, n_batches]``; returns ``n_batches``."""
    if not 0 <= start <= n_batches:
        raise ValueError(f"start must be in [0, {n_batches}], got {start}")
    return n_batches


class SequenceSampler:
    """Shuffled mini-batches of next-item samples.

    Args:
        samples: the training samples (N of them).
        batch_size: samples per batch B.
        generator: the CPU ``torch.Generator`` the epoch's permutation is drawn from.
        drop_last: drop the last, smaller batch.
    """

    def __init__(
        self,
        samples: SubsequenceSamples,
        *,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        require_samples(samples)
        self.samples = samples
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last
        self.n = len(samples)
        self._users = torch.from_numpy(samples.users)
        self._targets = torch.from_numpy(samples.targets)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on (the permutation is drawn whatever ``start``)."""
        gen = self.generator if generator is None else generator
        n_batches = check_start(start, len(self))
        perm = torch.randperm(self.n, generator=gen)
        for b in range(start, n_batches):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            inputs = self.samples.inputs(idx.numpy().astype(np.int64, copy=False))
            yield {
                "users": self._users[idx],
                "inputs": torch.from_numpy(inputs),
                "targets": self._targets[idx],
                "sample_ids": idx,
            }

    def __repr__(self) -> str:
        return (
            f"SequenceSampler(samples={self.n}, max_len={self.samples.max_len}, batch_size={self.batch_size}, "
            f"batches={len(self)})"
        )


# ---- cross subsequences -----------------------------------------------------------------------------------
class CrossSubsequences:
    """For every training sample, the other samples with the same target, as index arrays (no Python loop).

    Samples are sorted by (target, distinct input); a target *group* is a run of equal targets and, inside
    it, a *run* holds the samples whose inputs are identical too.  ICSRec's candidates for an anchor are its
    group minus its run: same target, different input (its reference code skips identical inputs too);
    DuoRec's are its group minus the anchor itself (:meth:`draw_same_target`).

    Args:
        samples: the N training samples.
    """

    def __init__(self, samples: SubsequenceSamples) -> None:
        require_samples(samples)  # an empty set used to end in numpy's "index 0 out-of-bounds in reduceat"
        n = len(samples)
        targets = samples.targets
        inputs = samples.inputs()  # [N, L]; rows are equal iff the subsequences are
        rows = np.ascontiguousarray(inputs).view(np.dtype((np.void, inputs.dtype.itemsize * inputs.shape[1])))
        _, input_key = np.unique(rows.ravel(), return_inverse=True)
        order = np.lexsort((np.arange(n), input_key.ravel(), targets))  # by target, input, sample id
        t_sorted, k_sorted = targets[order], input_key.ravel()[order]
        new_group = np.r_[True, t_sorted[1:] != t_sorted[:-1]]
        new_run = new_group | np.r_[True, k_sorted[1:] != k_sorted[:-1]]
        group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
        group_size = np.diff(np.r_[np.flatnonzero(new_group), n])[np.cumsum(new_group) - 1]
        run_size = np.diff(np.r_[np.flatnonzero(new_run), n])[np.cumsum(new_run) - 1]

        def by_sample(x: np.ndarray) -> np.ndarray:
            out = np.empty(n, dtype=np.int64)
            out[order] = x
            return out

        self.n = n
        self.order = order  # [N] sorted position -> sample id
        self.group_start, self.group_size = by_sample(group_start), by_sample(group_size)
        self.run_start, self.run_size = by_sample(run_start), by_sample(run_size)
        self.position = by_sample(np.arange(n))  # [N] sample id -> sorted position
        self.candidates = self.group_size - self.run_size  # [N] same target, different input
        self._last = self._last_candidate(order, new_group, new_run)

    def _last_candidate(self, order: np.ndarray, new_group: np.ndarray, new_run: np.ndarray) -> np.ndarray:
        """The reference code's fixed choice: the candidate with the largest sample id (the last in sample
        order), or the anchor itself when it has none."""
        run_id = np.cumsum(new_run) - 1  # [N] sorted position -> run
        group_of_run = (np.cumsum(new_group) - 1)[new_run]  # [R]
        run_max = np.maximum.reduceat(order, np.flatnonzero(new_run))  # [R] largest sample id in each run
        # runs sorted by (group, run_max): the last run of a group holds its largest id, the one before it
        # the largest id outside that run
        by = np.lexsort((run_max, group_of_run))
        g_sorted = group_of_run[by]
        is_top = np.r_[g_sorted[1:] != g_sorted[:-1], True]
        top_run = np.empty(group_of_run.max() + 1, dtype=np.int64)
        top_run[g_sorted[is_top]] = by[is_top]
        has_second = np.r_[False, g_sorted[1:] == g_sorted[:-1]] & is_top
        second_max = np.full(group_of_run.max() + 1, -1, dtype=np.int64)
        second_max[g_sorted[has_second]] = run_max[by[np.flatnonzero(has_second) - 1]]
        groups = group_of_run[run_id]  # [N] sorted position -> group
        own_is_top = top_run[groups] == run_id
        choice = np.where(own_is_top, second_max[groups], run_max[top_run[groups]])
        choice = np.where(choice < 0, order, choice)  # no candidate: the anchor itself
        out = np.empty(self.n, dtype=np.int64)
        out[order] = choice
        return out

    def last(self) -> np.ndarray:
        """``int64[N]``: the fixed positive of every sample (see :meth:`_last_candidate`)."""
        return self._last

    def draw(self, generator: torch.Generator) -> np.ndarray:
        """``int64[N]``: a uniformly drawn candidate for every sample (the sample itself when it has none);
        consumes one ``torch.rand(N)`` of ``generator``."""
        u = torch.rand(self.n, generator=generator, dtype=torch.float64).numpy()
        c = self.candidates
        r = np.minimum((u * c).astype(np.int64), np.maximum(c - 1, 0))  # rank among the candidates
        offset = self.group_start + r
        offset += np.where(offset >= self.run_start, self.run_size, 0)  # skip the anchor's own run
        chosen = self.order[np.minimum(offset, self.n - 1)]
        return np.where(c > 0, chosen, np.arange(self.n))

    def draw_same_target(self, generator: torch.Generator) -> np.ndarray:
        """``int64[N]``: for every sample, another sample with the same target drawn uniformly, identical
        inputs included (DuoRec's "supervised positive"), or the sample itself when it is its target's only
        one; consumes one ``torch.rand(N)`` of ``generator``."""
        u = torch.rand(self.n, generator=generator, dtype=torch.float64).numpy()
        c = self.group_size - 1
        r = np.minimum((u * c).astype(np.int64), np.maximum(c - 1, 0))  # rank among the others
        offset = self.group_start + r
        offset += offset >= self.position  # skip the anchor itself
        chosen = self.order[np.minimum(offset, self.n - 1)]
        return np.where(c > 0, chosen, np.arange(self.n))


class CrossSubsequenceSampler(SequenceSampler):
    """:class:`SequenceSampler` batches plus each anchor's cross subsequence.

    Extra batch keys: ``positive_ids`` (``LongTensor[B]``, the positive's sample index) and
    ``positive_inputs`` (``LongTensor[B, L]``).  The epoch's permutation is drawn first, exactly as SASRec's
    sampler draws it, then one positive per sample; so the epoch is still a pure function of the generator
    and ``iterate(start=b)`` replays it exactly.

    ``mode``: ``random`` (:meth:`CrossSubsequences.draw`, ICSRec), ``last`` (:meth:`CrossSubsequences.last`,
    no draw; ICSRec's reference code) or ``same_target`` (:meth:`CrossSubsequences.draw_same_target`, DuoRec).
    """

    MODES = ("random", "last", "same_target")

    def __init__(
        self,
        samples: SubsequenceSamples,
        cross: CrossSubsequences,
        mode: Literal["random", "last", "same_target"],
        *,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__(samples, batch_size=batch_size, generator=generator)
        if cross.n != len(samples):
            raise ValueError(f"cross-subsequence index covers {cross.n} samples, the sampler {len(samples)}")
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.cross = cross
        self.mode = mode

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        gen = self.generator if generator is None else generator
        batches = super().iterate(start, gen)
        first = next(batches, None)  # the permutation is drawn here
        if first is None:
            return
        if self.mode == "random":
            positives = torch.from_numpy(self.cross.draw(gen))
        elif self.mode == "same_target":
            positives = torch.from_numpy(self.cross.draw_same_target(gen))
        else:
            positives = torch.from_numpy(self.cross.last())
        for batch in itertools.chain([first], batches):
            pos = positives[batch["sample_ids"]]
            batch["positive_ids"] = pos
            batch["positive_inputs"] = torch.from_numpy(self.samples.inputs(pos.numpy()))
            yield batch


# ---- every position of a user's sequence ------------------------------------------------------------------
def inputs_and_targets(train: UserSequences) -> tuple[UserSequences, UserSequences]:
    """Every sequence without its last item (the inputs) and without its first (the targets, the item after
    each input position), aligned: two ``UserSequences`` of lengths ``max(n_u - 1, 0)``."""
    lengths = train.lengths
    keep_head = np.ones(train.items.size, dtype=bool)
    keep_tail = np.ones(train.items.size, dtype=bool)
    keep_head[train.offsets[1:][lengths > 0] - 1] = False
    keep_tail[train.offsets[:-1][lengths > 0]] = False
    offsets = np.r_[0, np.cumsum(np.maximum(lengths - 1, 0))]
    return UserSequences(offsets, train.items[keep_head]), UserSequences(offsets, train.items[keep_tail])


class PositionSampler:
    """Per-user batches with a target and a sampled negative at every position: the training data of the
    original SASRec (Kang & McAuley, ICDM 2018) and of the ICLRec code base's SASRec.

    A user with training sequence :math:`s_1 \\dots s_n` (n >= 2) is one example: the input
    :math:`s_1 \\dots s_{n-1}`, the targets :math:`s_2 \\dots s_n` (the item after each position) and one
    negative per target, drawn uniformly among the items the user has not trained on; input and targets are
    cut to their last L = ``max_len`` positions and left-padded with ``PAD``.  An epoch visits every such
    user once, in a seeded random order, ``batch_size`` users per batch.  The epoch's negatives are drawn
    after the permutation, all at once, so an epoch is a pure function of the generator and ``iterate(start=b)``
    replays it exactly.

    Batch keys: ``users`` ``LongTensor[B]``, ``inputs``, ``targets``, ``negatives`` ``LongTensor[B, L]``
    (``PAD`` where a position has no target).

    Args:
        train: the users' training sequences (all U users; those with fewer than 2 items are skipped).
        n_items: I, the size of the catalogue negatives are drawn from.
        max_len: L.
        batch_size: users per batch B.
        generator: the CPU ``torch.Generator`` of the epochs.
    """

    def __init__(
        self,
        train: UserSequences,
        n_items: int,
        *,
        max_len: int,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        from recsys.sampling import BPRSampler

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        lengths = train.lengths
        self.users = np.flatnonzero(lengths >= 2)
        if self.users.size == 0:
            raise ValueError("there are no training samples (every user's training sequence has < 2 items)")
        heads, tails = inputs_and_targets(train)
        self.input_sequences = heads  # every user's whole input, before the cut to L (augmentations need it)
        self.inputs = torch.from_numpy(heads.padded(self.users, max_len))  # [n, L]
        self.targets = torch.from_numpy(tails.padded(self.users, max_len))  # [n, L]
        self.positions = torch.nonzero(self.targets != PAD)  # [P, 2] (example, column) of every target
        users = np.repeat(np.arange(train.n_users), lengths)
        known = sp.csr_matrix(
            (np.ones(train.items.size), (users, train.items)), shape=(train.n_users, n_items)
        )
        # BPRSampler's membership keys and vectorised rejection draw the negatives (its batches are unused)
        self.negative_items = BPRSampler(known, mode="interactions", batch_size=1, generator=generator)
        self.batch_size = batch_size
        self.generator = generator
        self.max_len = max_len
        self.n = int(self.users.size)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on (the epoch is drawn whatever ``start``)."""
        gen = self.generator if generator is None else generator
        n_batches = check_start(start, len(self))
        perm = torch.randperm(self.n, generator=gen)
        example, column = self.positions[:, 0], self.positions[:, 1]
        users = torch.from_numpy(self.users)
        negatives = torch.full_like(self.targets, PAD)
        negatives[example, column] = self.negative_items.sample_negatives(users[example], gen)
        for b in range(start, n_batches):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield {
                "users": users[idx],
                "inputs": self.inputs[idx],
                "targets": self.targets[idx],
                "negatives": negatives[idx],
            }

    def __repr__(self) -> str:
        return (
            f"PositionSampler(users={self.n}, targets={self.positions.shape[0]}, max_len={self.max_len}, "
            f"batch_size={self.batch_size}, batches={len(self)})"
        )


class AugmentedPositionSampler(PositionSampler):
    """:class:`PositionSampler`'s batches plus two random augmentations of every example's input: the
    training data of ICLRec (Chen et al., WWW 2022) and CL4SRec (Xie et al., ICDE 2022).

    Each epoch, after the permutation and the negatives, two views of every user's whole input sequence are
    drawn (``augment``, e.g. :func:`recsys.sequence_augmentation.augment_sequences` with its ratios bound) and
    cut to their last L items, as ICLRec's code cuts them, so ``iterate(start=b)`` still replays an epoch
    exactly.  Extra batch keys: ``view1``, ``view2`` ``LongTensor[B, L]`` (left-padded; a masked item is PAD).

    Args:
        train, n_items, max_len, batch_size, generator: as :class:`PositionSampler`.
        augment: ``(sequences, generator) -> sequences``, one random augmentation of every sequence.
    """

    def __init__(
        self,
        train: UserSequences,
        n_items: int,
        *,
        max_len: int,
        batch_size: int,
        generator: torch.Generator,
        augment: Callable[[UserSequences, torch.Generator], UserSequences],
    ) -> None:
        super().__init__(train, n_items, max_len=max_len, batch_size=batch_size, generator=generator)
        self.augment = augment

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        gen = self.generator if generator is None else generator
        batches = super().iterate(start, gen)
        first = next(batches, None)  # the permutation and the negatives are drawn here
        if first is None:
            return
        views = [
            torch.from_numpy(self.augment(self.input_sequences, gen).padded(self.users, self.max_len))
            for _ in range(2)
        ]  # [n, L] each, rows in self.users' order
        for batch in itertools.chain([first], batches):
            rows = torch.from_numpy(np.searchsorted(self.users, batch["users"].numpy()))
            batch["view1"], batch["view2"] = views[0][rows], views[1][rows]
            yield batch


# ---- masked items (the cloze task) ------------------------------------------------------------------------
class ClozeSampler:
    """Per-user batches of masked training sequences: the cloze task of BERT4Rec (Sun et al., CIKM 2019,
    https://arxiv.org/abs/1904.06690, section 3.6).

    A user with training sequence :math:`s_1 \\dots s_n` (n >= 1) is one example: its last L = ``max_len``
    items, left-padded with ``PAD``, in which each item is replaced by :data:`MASK` with probability
    ``mask_ratio``; the masked items are the targets.  With probability ``last_item_ratio`` the example masks
    its last item only instead (the paper's extra samples that match the next-item query, a MASK after the
    history).  An example with no item drawn gets one, chosen uniformly among its items, so that every
    example has a target.  An epoch visits every such user once, in a seeded random order, ``batch_size``
    users per batch; all of the epoch's masks are drawn after the permutation, at once, so an epoch is a
    pure function of the generator and ``iterate(start=b)`` replays it exactly.

    Batch keys: ``users`` ``LongTensor[B]``, ``inputs`` ``LongTensor[B, L]`` (the masked sequences),
    ``targets`` ``LongTensor[B, L]`` (the item under each MASK, ``PAD`` elsewhere).

    Args:
        train: the users' training sequences (all U users; those without items are skipped).
        max_len: L.
        mask_ratio: the probability that an item is masked.
        last_item_ratio: the probability that an example masks its last item only.
        batch_size: users per batch B.
        generator: the CPU ``torch.Generator`` of the epochs.
    """

    def __init__(
        self,
        train: UserSequences,
        *,
        max_len: int,
        mask_ratio: float,
        last_item_ratio: float,
        batch_size: int,
        generator: torch.Generator,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (0.0 <= mask_ratio <= 1.0 and 0.0 <= last_item_ratio <= 1.0):
            raise ValueError(f"ratios must be in [0, 1], got {mask_ratio}, {last_item_ratio}")
        self.users = np.flatnonzero(train.lengths >= 1)
        if self.users.size == 0:
            raise ValueError("there are no training samples (every user's training sequence is empty)")
        self.items = torch.from_numpy(train.padded(self.users, max_len))  # [n, L]
        self.real = self.items != PAD  # [n, L]
        self.mask_ratio = mask_ratio
        self.last_item_ratio = last_item_ratio
        self.batch_size = batch_size
        self.generator = generator
        self.max_len = max_len
        self.n = int(self.users.size)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()

    def draw_masks(self, gen: torch.Generator) -> torch.Tensor:
        """``BoolTensor[n, L]``: the epoch's masked cells of every example (rows in ``self.users`` order).

        Consumes ``torch.rand(n, L)`` and twice ``torch.rand(n)`` of ``gen``, whatever the data."""
        masked = (torch.rand(self.items.shape, generator=gen) < self.mask_ratio) & self.real
        last_only = torch.rand(self.n, generator=gen) < self.last_item_ratio
        masked[last_only] = False
        masked[last_only, -1] = True  # the last cell always holds the newest item (n >= 1)
        # an example without a masked item: one of its items, uniformly (its k-th real cell from the right)
        count = self.real.sum(1)  # [n], >= 1
        k = torch.minimum((torch.rand(self.n, generator=gen, dtype=torch.float64) * count).long(), count - 1)
        empty = ~masked.any(1)
        masked[empty, self.max_len - 1 - k[empty]] = True  # real cells are the last `count` ones
        return masked

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on (the epoch is drawn whatever ``start``)."""
        gen = self.generator if generator is None else generator
        n_batches = check_start(start, len(self))
        perm = torch.randperm(self.n, generator=gen)
        masked = self.draw_masks(gen)
        inputs = self.items.masked_fill(masked, MASK)
        targets = self.items.masked_fill(~masked, PAD)
        users = torch.from_numpy(self.users)
        for b in range(start, n_batches):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield {"users": users[idx], "inputs": inputs[idx], "targets": targets[idx]}

    def __repr__(self) -> str:
        return (
            f"ClozeSampler(users={self.n}, max_len={self.max_len}, mask_ratio={self.mask_ratio:g}, "
            f"last_item_ratio={self.last_item_ratio:g}, batch_size={self.batch_size}, batches={len(self)})"
        )
