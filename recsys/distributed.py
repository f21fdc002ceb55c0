"""Data-parallel training with ``torch.distributed``: one process per core or GPU, launched by ``torchrun``.

``torchrun --standalone --nproc-per-node N .venv/bin/recsys train -c CONFIG`` starts N copies of ``recsys
train``; torchrun sets ``RANK``, ``WORLD_SIZE`` and the rendezvous address, :func:`process_group` joins them
(gloo on CPU, NCCL on CUDA), and the :class:`~recsys.trainer.Trainer` wraps the model's loss in
:class:`torch.nn.parallel.DistributedDataParallel`: each step, every process takes its own batch of the
epoch (batch ``b`` goes to process ``b mod N``) and DDP averages the gradients, so every process holds the
same weights after every step. An epoch is still one pass over the training samples, in N times fewer steps
of N batches each (the usual data-parallel trade: the learning rate is the config's, not scaled).

Process 0 does everything else alone: it prepares the data first (the others then read the cache), owns the
run folder, the checkpoints, the MLflow run and the validation, and tells the others when early stopping
fires. Nothing here is home-made beyond that split: the synchronisation is DDP's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from recsys.models.base import Recommender


# How long a process waits for the others: at each evaluation they wait for process 0's validation, and at the
# end for its test. Allow for long ones.
TIMEOUT = timedelta(hours=2)

_BARRIERS = itertools.count()


def _default_store() -> Any:
    """The key-value store the process group was formed through (torchrun's)."""
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class DataParallelError(ValueError):
    """A process of a data-parallel training stopped: before training (then every process stops with the
    reason) or during it (then the others lose their connection)."""


@dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel training: ``rank`` in ``0 .. world_size - 1``."""

    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: Any) -> Any:
        """Process 0's ``value`` (any picklable object), returned in every process."""
        import torch.distributed as dist

        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def raise_if_any_failed(self, error: str | None) -> None:
        """Tell every process this one's setup ``error`` (None: it went well) and learn theirs; any error
        stops every process with a :class:`DataParallelError` that names them all."""
        import torch.distributed as dist

        errors: list[str | None] = [None] * self.world_size
        dist.all_gather_object(errors, error)
        if any(errors):
            raise DataParallelError("; ".join(e for e in errors if e))

    def barrier(self) -> None:
        """Wait until every process has reached this point (and called ``barrier`` as often).

        Through the rendezvous store, not ``dist.barrier()``: gloo frees its barrier's work on a worker thread
        just after waking the waiting processes, and that work holds a tensor that Python owns, freed under
        the GIL. A process that leaves at once (the final barrier) could be finalizing Python by then, and the
        worker thread taking the GIL during finalization aborts the process ("terminate called without an
        active exception"): 5 runs in 100 of a two-process training on this 2-core machine under load. A
        store barrier queues no gloo work."""
        from torch.distributed.elastic.utils.store import barrier

        # once per key: the key counts this process's barriers (every process calls them in the same order)
        # and torchrun's restarts of the group, which keep its store
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        key = f"recsys/barrier/{restart}/{next(_BARRIERS)}"
        barrier(_default_store(), self.world_size, key, barrier_timeout=TIMEOUT.total_seconds())

    def concat(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's 1-d ``tensor`` (lengths may differ), concatenated in rank order, in every process."""
        import torch.distributed as dist

        size = torch.tensor([tensor.numel()], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = torch.zeros(longest, dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.numel()] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)  # equal shapes only: padded to the longest, cut back below
        return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes, strict=True)])

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place."""
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def current() -> DataParallel | None:
    """The data-parallel group this process trains in, or None when it trains alone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DataParallel(dist.get_rank(), dist.get_world_size())
    return None


def launched_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when the process was started alone)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(raw)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE: expected an integer, got {raw!r}") from None
    if size < 1:
        raise ValueError(f"environment variable WORLD_SIZE: expected >= 1, got {size}")
    return size


@contextmanager
def process_group(device: torch.device) -> Iterator[tuple[DataParallel, torch.device]]:
    """Join the process group torchrun described in the environment (gloo on CPU, NCCL on CUDA) and leave it
    at the end. Yields this process's :class:`DataParallel` and its device (``cuda:LOCAL_RANK`` on CUDA)."""
    import torch.distributed as dist

    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: start data-parallel "
            "training with torchrun (torchrun --standalone --nproc-per-node N .venv/bin/recsys train ...)"
        )
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"device {device}: data-parallel training runs on cpu (gloo) or cuda (NCCL)")
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    try:
        yield DataParallel(dist.get_rank(), dist.get_world_size()), device
    finally:
        dist.destroy_process_group()


class LossModule(torch.nn.Module):
    """``model.loss(batch)`` as ``forward``: DistributedDataParallel synchronises gradients for what its
    ``forward`` computed, and our models' training entry point is ``loss``, not ``forward``."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)


def shard_batches(batches: Any, n_batches: int, dp: DataParallel | None) -> tuple[Any, int]:
    """This process's share of an epoch of ``n_batches`` batches: batch ``b`` for ``b mod N == rank``, the
    same number for every process (the last ``n_batches mod N`` batches are left out: a process with one more
    step than the others would wait for them forever). Returns ``(iterable, count)``."""
    if dp is None:
        return batches, n_batches

    per_process = n_batches // dp.world_size
    if per_process == 0:
        raise ValueError(
            f"an epoch has {n_batches} batch(es), fewer than the {dp.world_size} training processes: lower "
            "train.batch_size or start fewer processes"
        )
    return itertools.islice(batches, dp.rank, per_process * dp.world_size, dp.world_size), per_process
