"""Batches of next-item training samples for sequence models (SASRec, GRU4Rec, ICSRec, DuoRec).

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
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from features.sequences import SubsequenceSamples


def require_samples(samples: SubsequenceSamples) -> None:
    """A ValueError when there is nothing to train on, before anything indexes into the samples."""
    if len(samples) == 0:
        raise ValueError("there are no training samples (every user's training sequence has < 2 items)")


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
        n_batches = len(self)
        if not 0 <= start <= n_batches:
            raise ValueError(f"start must be in [0, {n_batches}], got {start}")
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
