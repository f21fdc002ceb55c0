"""Samplers of BPR training triples ``(user, positive item, negative item)``.

Batches are dicts of ``LongTensor[B]`` named ``users``, ``pos`` and ``neg`` (see docs/architecture.md), on
the CPU; the trainer moves them to the model's device.

Reproducibility and exact resume.  Everything is drawn from the ``torch.Generator`` the sampler is given:
at the start of an epoch the sampler draws, from that generator, the epoch's permutation (``interactions``
mode) and one 62-bit seed per batch; batch ``b`` is then drawn from a private generator seeded with the
``b``-th seed.  So an epoch is a pure function of the generator's state at its start, and
``iterate(start=b)`` reproduces batches ``b, b+1, ...`` of the epoch exactly without drawing the earlier
ones — the trainer seeds a fresh generator per epoch from ``(seed, epoch)`` and resumes mid-epoch at no cost.

Negatives are uniform over all items, rejected (and only the rejected ones redrawn, vectorised) while the
item is in the user's training set.  Membership is a binary search (``torch.searchsorted``) in the sorted
array of keys ``user * n_items + item`` of the training pairs: O(B log nnz) per round, no per-user Python
sets and no dense user x item mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch

SamplerMode = Literal["interactions", "users"]

# Seeds of the per-batch generators are drawn in [0, 2**62).
_SEED_HIGH = 2**62


def csr_to_torch(train: sp.spmatrix) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indptr LongTensor[U+1], indices LongTensor[nnz])`` of a binarised, deduplicated, row-sorted copy
    of ``train`` (any scipy sparse format; the input is not modified)."""
    csr = sp.csr_matrix(train, copy=True)
    csr.sum_duplicates()  # also sorts the column indices of every row
    csr.eliminate_zeros()
    indptr = torch.from_numpy(csr.indptr.astype(np.int64))
    indices = torch.from_numpy(csr.indices.astype(np.int64))
    return indptr, indices


class NoNegativeItemError(ValueError):
    """Users who interacted with every item in training: BPR finds no negative item for them.

    Attributes:
        users: their dense user indices (the trainer names them by their ids).
    """

    def __init__(self, users: list[int], names: list[str] | None = None) -> None:
        self.users = users
        shown = ", ".join(repr(n) for n in (names or [f"index {u}" for u in users])[:5])
        super().__init__(
            f"{len(users)} user(s) interacted with every item in training (user {shown}): BPR has no negative "
            "item for them; remove them from the data, or train a model without negative sampling (popularity, "
            "rp3beta, ease, sasrec, gru4rec, duorec, icsrec)"
        )


class BPRSampler:
    """Uniform BPR triples from a user x item training matrix.

    Args:
        train: ``n_users x n_items`` scipy sparse matrix of training interactions (a pair with a non-zero
            summed value is an interaction; its value is ignored).
        mode: ``"interactions"``: an epoch visits a random permutation of all training pairs ``(u, i)`` once,
            in batches (every pair is a positive exactly once per epoch); ``"users"``: each triple draws a
            user uniformly (with replacement) among the users with at least one training item, then one of
            that user's training items uniformly — the sampler of the official LightGCN code and of DCCF.
        batch_size: triples per batch ``B``.
        generator: the CPU ``torch.Generator`` every random draw derives from.
        steps: ``"users"`` mode only: batches per epoch.  Default ``ceil(nnz / batch_size)``, i.e. as many
            triples per epoch as there are training pairs (the official LightGCN code's epoch).
        drop_last: ``"interactions"`` mode only: drop the last, smaller batch of the permutation.

    Iterating yields ``{"users", "pos", "neg"}``, each ``LongTensor[B]`` (the last batch of an
    ``interactions`` epoch may be smaller).  ``len(sampler)`` is the number of batches per epoch.
    """

    def __init__(
        self,
        train: sp.spmatrix,
        *,
        mode: SamplerMode,
        batch_size: int,
        generator: torch.Generator,
        steps: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if mode not in ("interactions", "users"):
            raise ValueError(f"mode must be 'interactions' or 'users', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps is not None and mode != "users":
            raise ValueError("steps only applies to mode='users' (an interactions epoch visits every pair)")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.n_users, self.n_items = train.shape
        self.mode: SamplerMode = mode
        self.batch_size = batch_size
        self.generator = generator
        self.drop_last = drop_last

        self.indptr, self.indices = csr_to_torch(train)
        self.degree = self.indptr[1:] - self.indptr[:-1]  # LongTensor[U]
        self.nnz = int(self.indices.numel())
        if self.nnz == 0:
            raise ValueError("the training matrix has no interactions")
        full = torch.nonzero(self.degree >= self.n_items).flatten()
        if full.numel():
            raise NoNegativeItemError(full.tolist())
        # The user of every training pair, in CSR order, and the sorted membership keys user * I + item
        # (sorted because rows are in order and the columns inside a row are sorted).
        self.pair_users = torch.repeat_interleave(torch.arange(self.n_users), self.degree)
        self.keys = self.pair_users * self.n_items + self.indices
        self.active_users = torch.nonzero(self.degree > 0).flatten()
        self.steps = steps if steps is not None else math.ceil(self.nnz / batch_size)

    # ---- sizes --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self.mode == "users":
            return self.steps
        return self.nnz // self.batch_size if self.drop_last else math.ceil(self.nnz / self.batch_size)

    # ---- membership and negatives -------------------------------------------------------------------------
    def contains(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``BoolTensor[B]``: whether each ``(users[b], items[b])`` is a training pair."""
        query = users * self.n_items + items
        at = torch.searchsorted(self.keys, query).clamp_(max=self.nnz - 1)
        return self.keys[at] == query

    def sample_negatives(self, users: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``LongTensor[B]`` of items drawn uniformly outside each user's training set (rejection sampling:
        only the collided draws are redrawn, each round vectorised)."""
        neg = torch.randint(0, self.n_items, users.shape, generator=generator)
        todo = torch.nonzero(self.contains(users, neg)).flatten()
        while todo.numel():
            redraw = torch.randint(0, self.n_items, todo.shape, generator=generator)
            neg[todo] = redraw
            todo = todo[self.contains(users[todo], redraw)]
        return neg

    # ---- iteration ----------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()

    def iterate(
        self, start: int = 0, generator: torch.Generator | None = None
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on.

        The epoch is drawn from ``generator`` (default: the sampler's own), which it advances by a fixed
        amount whatever ``start`` is; batches ``start, start+1, ...`` equal those of ``iterate(0)`` from the
        same generator state."""
        gen = self.generator if generator is None else generator
        n_batches = len(self)
        if not 0 <= start <= n_batches:
            raise ValueError(f"start must be in [0, {n_batches}], got {start}")
        perm = torch.randperm(self.nnz, generator=gen) if self.mode == "interactions" else None
        seeds = torch.randint(0, _SEED_HIGH, (n_batches,), generator=gen).tolist()
        for b in range(start, n_batches):
            batch_gen = torch.Generator().manual_seed(seeds[b])
            if perm is not None:
                pairs = perm[b * self.batch_size : (b + 1) * self.batch_size]
                users, pos = self.pair_users[pairs], self.indices[pairs]
            else:
                users, pos = self._draw_user_positives(batch_gen)
            yield {"users": users, "pos": pos, "neg": self.sample_negatives(users, batch_gen)}

    def _draw_user_positives(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``users`` mode: B users uniform over the active users, one uniform training item of each."""
        pick = torch.randint(0, self.active_users.numel(), (self.batch_size,), generator=gen)
        users = self.active_users[pick]
        deg = self.degree[users]
        # floor(U[0,1) * deg) is uniform on {0..deg-1}; float64 keeps it exact for any realistic degree.
        offset = (torch.rand(self.batch_size, generator=gen, dtype=torch.float64) * deg).long()
        offset = torch.minimum(offset, deg - 1)
        pos = self.indices[self.indptr[users] + offset]
        return users, pos

    def __repr__(self) -> str:
        return (
            f"BPRSampler(mode={self.mode!r}, n_users={self.n_users}, n_items={self.n_items}, "
            f"nnz={self.nnz}, batch_size={self.batch_size}, batches={len(self)})"
        )
