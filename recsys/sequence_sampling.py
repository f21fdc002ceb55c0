"""Batches of next-item training samples for sequence models (SASRec, GRU4Rec, ICSRec).

The sampler walks a seeded random permutation of all dynamic-sliding samples
(:func:`features.sequences.dynamic_sliding_samples`) once per epoch, like the reference trainers' shuffled
``DataLoader`` over the subsequence file.  It follows the contract of :class:`recsys.sampling.BPRSampler`:
an epoch is a pure function of the generator's state at its start, ``len(sampler)`` is the number of batches
and ``iterate(start=b)`` reproduces batches ``b, b+1, ...`` exactly, so the trainer's exact resume holds.

A batch is a dict of CPU tensors:

* ``users``: ``LongTensor[B]``, the user of each sample;
* ``inputs``: ``LongTensor[B, L]``, the input items, left-padded with ``features.sequences.PAD`` (-1);
* ``targets``: ``LongTensor[B]``, the item to predict;
* ``sample_ids``: ``LongTensor[B]``, the samples' indices in the sample set (ICSRec looks up samples that
  share a target through them).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

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
