"""One trainer for every model.

The :class:`Trainer` owns the optimiser and the loop; models own only their loss (``loss(batch)``) and may
plug model-specific work in through hooks (``on_epoch_start`` / ``on_step_end`` / ``on_epoch_end`` methods on
the model, or :class:`Hook` objects), e.g. re-clustering intents each epoch, or a search step on a validation
batch after each training step (DNIS).  A model whose validations may not yet pick the weights to keep (DNIS
before its search ends) says so with a ``selection_open`` attribute that is False.

Exact resume: a checkpoint is written atomically (temp file, then ``os.replace``) at the end of every
``checkpoint_every`` epochs and holds the model, the optimiser, the trainer state and every RNG state.  The
sampler of epoch ``e`` draws from a generator seeded by ``(seed, e)`` alone, so an epoch interrupted
mid-way is replayed from its start with exactly the same batches; a run killed and resumed ends bit-for-bit
where an uninterrupted run with the same seed ends (on CPU). A checkpoint written under another config
fingerprint, or on other data (the dataset's manifest hash), is refused rather than resumed, and so is one
whose zip records fail their CRC-32 (:func:`load_torch_file`).

Data-parallel (several processes launched by ``torchrun``, :mod:`recsys.distributed`): each process takes
its share of every epoch's batches and DDP averages the gradients; process 0 alone validates, writes the
checkpoints and logs, and tells the others when early stopping fires.
"""

from __future__ import annotations

import errno
import math
import random
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import numpy as np
import torch

from recsys import distributed
from recsys.atomic import atomic_write
from recsys.config import ExperimentConfig
from recsys.tracking import RunTracker

if TYPE_CHECKING:
    from recsys.models.base import Recommender

CHECKPOINT = "checkpoint.pt"
BEST = "best_model.pt"


class Hook(Protocol):
    """Optional callbacks; every method is optional."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_step_end(self, trainer: Trainer) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, float]) -> None: ...


@dataclass
class TrainState:
    """Everything about progress that a resumed run needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best_metric: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    stopped_early: bool = False
    finished: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    # Wall seconds spent in fit() up to the last checkpoint, summed over every process of a resumed run
    # (checkpoints written before this field existed count from their resume on).
    train_seconds: float = 0.0


def lr_factor(step: int, budget: int, warmup_steps: int, schedule: str) -> float:
    """The learning rate of optimiser step ``step`` (1 to ``budget``) as a fraction of ``train.lr``: ``step /
    warmup_steps`` during the warm-up, then 1 (``constant``) or falling linearly (``linear``) from 1 at the
    first step after the warm-up to ``1 / (budget - warmup_steps)`` at the last, reaching 0 one step after it.
    BERT4Rec (Sun et al. 2019) trains with BERT's schedule, a linear warm-up and a linear decay to 0; BERT's
    code counts the decay from step 0, so that it resumes after the warm-up at ``1 - warmup_steps / budget``
    rather than 1 (the same for a warm-up short against the budget: 100 of 400,000 steps there)."""
    if step <= warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    return max(budget - step + 1, 0) / max(budget - warmup_steps, 1)


def restore_rng(rng: dict[str, Any]) -> None:
    """Put back the random states a checkpoint saved. The checkpoint is loaded onto the training device, but
    torch's generators (CPU and CUDA alike) take their state as a CPU byte tensor only."""
    torch.set_rng_state(rng["torch"].cpu())
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in rng["cuda"]])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``, after checking
    that this machine has it (a ValueError naming the device, not torch's assertion in the first batch)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (
        torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    ):
        raise ValueError(
            f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s) usable by torch; "
            "use device=cpu or auto"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The sampler's generator for one epoch: a function of (seed, epoch) only, for exact replay."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63 - 1))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write ``obj`` to ``path`` via a temp file and rename, so a crash never leaves a torn checkpoint."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def load_torch_file(path: Path, what: str, remedy: str, **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)``, with a ``ValueError`` that names the file and ``what`` it holds when the
    file is damaged or truncated (torch then raises nearly anything, naming neither), and says what to do
    (``remedy``). Failures that are not the file's fault (memory, the device, a permission, a missing file)
    pass unchanged: the advice to remove it would lose a good run.

    torch reads its zip archives without checking their CRC-32s, so a flipped byte inside tensor data used to
    load as a changed weight; every record's CRC is checked here first (about 20 ms for a 15 MB
    checkpoint), on the open file that is then loaded (a file replaced in between is not loaded unchecked)."""
    try:
        with open(path, "rb") as fh:
            bad = _failed_zip_record(fh)
            if bad is None:
                fh.seek(0)
                return torch.load(fh, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unpickling damaged bytes raises nearly anything; sorted below
        if not _damaged_file_error(exc):
            raise
        raise ValueError(
            f"{path}: cannot read the {what}: the file is damaged or truncated ({type(exc).__name__}: {exc}); "
            f"{remedy}"
        ) from exc
    raise ValueError(
        f"{path}: cannot read the {what}: the file is damaged or truncated (its zip record {bad!r} fails its "
        f"CRC-32 check); {remedy}"
    )


def _failed_zip_record(fh: BinaryIO) -> str | None:
    """The name of the first record of the zip archive open in ``fh`` whose bytes fail their CRC-32, or None
    when all pass. Files that do not read as a whole zip archive (torch's legacy format, or a truncated file)
    are left to ``torch.load``, which tells those apart, and so are archives written without CRCs
    (``torch.serialization.set_crc32_options(False)`` stores 0 for every record)."""
    try:
        with zipfile.ZipFile(fh) as archive:  # leaves ``fh`` open
            records = archive.infolist()
            if all(r.CRC == 0 for r in records if r.file_size > 0):
                return None
            return archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError):
        return None  # not a whole zip archive (or one using a feature zipfile lacks): torch.load decides


# torch's RuntimeErrors that are about this machine, not the file: memory, and the device to map onto.
_NOT_THE_FILE = (
    "can't allocate memory",
    "Cannot allocate memory",
    "DefaultCPUAllocator",
    "out of memory",
    "CUDA",
    "device",
)


def _damaged_file_error(exc: BaseException) -> bool:
    """Whether ``torch.load`` failed because of the file's bytes. A damaged file raises anything from EOFError
    to a zip-reader RuntimeError, a UnicodeDecodeError, an AttributeError, ``struct.error`` or
    ``OSError(EINVAL)``; memory, device, permission, other operating-system errors and a module missing from
    this environment are not the file's fault."""
    # ImportError: a module the pickle names is missing here (e.g. another NumPy version), not damage
    if isinstance(exc, torch.OutOfMemoryError | MemoryError | ImportError):
        return False
    if isinstance(exc, OSError):
        return type(exc) is OSError and exc.errno == errno.EINVAL  # a truncated zip, as torch reads it
    if isinstance(exc, RuntimeError):
        return not any(s in str(exc) for s in _NOT_THE_FILE)
    return True


class Trainer:
    """Train ``model`` on ``dataset`` as ``cfg.train`` says, evaluating with ``cfg.eval``.

    Args:
        model: a :class:`recsys.models.base.Recommender`, already ``prepare``-d on the training matrix.
        dataset: the :class:`features.PreparedDataset`.
        cfg: the resolved experiment config.
        run_dir: folder for the checkpoint and the best weights.
        tracker: where metrics go (MLflow); a disabled tracker logs nothing.
        device: where the model runs.
        hooks: extra callbacks.
    """

    def __init__(
        self,
        model: Recommender,
        dataset: Any,
        cfg: ExperimentConfig,
        run_dir: Path,
        tracker: RunTracker | None = None,
        device: torch.device | None = None,
        hooks: list[Any] | tuple[Any, ...] = (),
    ) -> None:
        self.model = model
        self.dataset = dataset
        self.cfg = cfg
        self.tc = cfg.train
        self.run_dir = Path(run_dir)
        self.tracker = tracker or RunTracker(None, False, None)
        self.device = device or torch.device("cpu")
        self.hooks = [model, *hooks]
        self.state = TrainState()
        self._clock: float | None = None  # when state.train_seconds was last brought up to date
        self.optimizer: torch.optim.Optimizer | None = None
        self.dp = distributed.current()  # None unless launched by torchrun with several processes
        self.is_main = self.dp is None or self.dp.is_main
        if self.tc.steps_per_epoch is not None and callable(getattr(model, "make_sampler", None)):
            raise ValueError(
                f"train.steps_per_epoch: model {type(model).__name__} brings its own sampler, whose epoch is "
                "one pass over its training samples; remove train.steps_per_epoch"
            )
        self.monitor_split = "valid" if dataset.manifest["counts"].get("valid", 0) > 0 else "test"
        if self.tc.early_stopping is not None and self.monitor_split != "valid":
            from recsys.config import VALIDATION_KEYS

            protocol = dataset.manifest.get("split", {}).get("protocol")
            key = VALIDATION_KEYS.get(protocol, "a validation share of data.split")
            raise ValueError(
                f"train.early_stopping needs a validation split, but the dataset has none (set {key}, or "
                "remove train.early_stopping)"
            )

    # ---- pieces -------------------------------------------------------------------------------------------
    def _make_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups: list[dict[str, Any]] = [{"params": params}]
        if self.tc.decay_scope == "matrices":
            # Two groups in a fixed order (the model's parameter order within each), so that a checkpoint's
            # optimiser state loads into the same groups on resume.
            groups = [
                {"params": [p for p in params if p.dim() >= 2]},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
            ]
        # The fused kernel is several times faster than the per-tensor loop on CPU and GPU alike (on
        # Gowalla's 4.5M embedding parameters: ~8 ms vs ~60 ms per step), with the same update rule.
        optimizer = torch.optim.AdamW if self.tc.optimizer == "adamw" else torch.optim.Adam
        return optimizer(groups, lr=self.tc.lr, weight_decay=self.tc.weight_decay, fused=True)

    def _scheduled(self) -> bool:
        return self.tc.lr_schedule != "constant" or self.tc.warmup_steps > 0

    def _budget(self, steps_per_epoch: int) -> int:
        """The run's optimiser steps: ``train.max_steps``, else ``epochs`` epochs of ``steps_per_epoch``."""
        steps = self.tc.epochs * steps_per_epoch
        return steps if self.tc.max_steps is None else min(steps, self.tc.max_steps)

    def _sampler(self, epoch: int):
        from recsys.sampling import NoNegativeItemError

        try:
            return self._make_sampler(epoch)
        except NoNegativeItemError as exc:  # name the users by their ids, not the dense indices
            vocab = getattr(self.dataset, "user_vocab", None)
            if vocab is None:
                raise
            ids = dict(zip(vocab["user_idx"].to_list(), vocab["user_id"].to_list(), strict=True))
            raise NoNegativeItemError(exc.users, [str(ids[u]) for u in exc.users]) from None

    def _make_sampler(self, epoch: int):
        from recsys.sampling import BPRSampler

        train = self._train_csr
        gen = epoch_generator(self.cfg.seed, epoch)
        make_sampler = getattr(self.model, "make_sampler", None)
        if callable(make_sampler):
            # Models whose batches are not BPR triples (sequence models) build their own sampler, with the
            # BPRSampler contract: a pure function of `gen`, len() batches, iterate(start=b).
            return make_sampler(self.tc, gen)
        if self.tc.sampler == "users":
            # default: the sampler's ceil(nnz / batch), the official LightGCN code's epoch (this rounded down)
            return BPRSampler(
                train,
                mode="users",
                batch_size=self.tc.batch_size,
                generator=gen,
                steps=self.tc.steps_per_epoch,
            )
        return BPRSampler(train, mode="interactions", batch_size=self.tc.batch_size, generator=gen)

    def evaluate(self, split: str) -> dict[str, float]:
        from eval import evaluate_model

        return evaluate_model(
            self.model, self.dataset, split=split, ks=self.cfg.eval.ks, block_size=self.cfg.eval.block_size
        )

    def _call_hooks(self, name: str, *args: Any) -> None:
        for hook in self.hooks:
            fn = getattr(hook, name, None)
            if callable(fn):
                fn(self, *args)

    # ---- checkpoints --------------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "state": asdict(self.state),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
            },
            "fingerprint": self.cfg.fingerprint(),
            # A step is one batch per process: a run resumed with another number of processes would change
            # what its steps (and train.max_steps) mean half-way.
            "processes": self.dp.world_size if self.dp is not None else 1,
            # The config names the data files, not their content: this tells a resume that they changed.
            "dataset_manifest_hash": getattr(self.dataset, "manifest_hash", None),
        }

    def save_checkpoint(self) -> None:
        now = time.perf_counter()
        if self._clock is not None:
            self.state.train_seconds += now - self._clock
        self._clock = now
        atomic_torch_save(self._checkpoint(), self.run_dir / CHECKPOINT)

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint in ``run_dir``, checked against this config and data (a ``ValueError`` names the file
        and the reason), or None when there is none. Nothing is restored yet (see :meth:`load_checkpoint`)."""
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            return None
        ckpt = load_torch_file(
            path,
            "training checkpoint",
            "remove it to train from the start",
            map_location=self.device,
            weights_only=False,
        )
        if not isinstance(ckpt, dict) or not {"model", "optimizer", "state", "rng"} <= set(ckpt):
            raise ValueError(f"{path}: expected a training checkpoint, got another file; remove it")
        if ckpt.get("fingerprint") != self.cfg.fingerprint():
            raise ValueError(
                f"{path}: checkpoint was written by a different config "
                f"({ckpt.get('fingerprint')} != {self.cfg.fingerprint()}); remove it or use another run folder"
            )
        processes = self.dp.world_size if self.dp is not None else 1
        saved_processes = ckpt.get("processes", 1)  # checkpoints older than the key were single-process
        if saved_processes != processes:
            raise ValueError(
                f"{path}: checkpoint was trained by {saved_processes} data-parallel process(es), this run has "
                f"{processes}: resume it with as many (torchrun --nproc-per-node {saved_processes}; 1 is "
                "without torchrun), or remove it to train afresh"
            )
        saved, current = ckpt.get("dataset_manifest_hash"), getattr(self.dataset, "manifest_hash", None)
        # Checkpoints written before the hash was stored hold none; they resume as before.
        if saved is not None and current is not None and saved != current:
            raise ValueError(
                f"{path}: checkpoint was trained on dataset {saved[:12]}, but the config's data now gives "
                f"{current[:12]} ({self.dataset.root}): the source files changed since. Remove the checkpoint "
                "to train afresh on the new data"
            )
        return ckpt

    def load_checkpoint(self, ckpt: dict[str, Any] | None = None) -> bool:
        """Restore from ``ckpt`` (from :meth:`read_checkpoint`), else from ``run_dir/checkpoint.pt`` if
        present; returns whether it resumed."""
        if ckpt is None:
            ckpt = self.read_checkpoint()
        if ckpt is None:
            return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer = self._make_optimizer()
        if ckpt["optimizer"] is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        restore_rng(ckpt["rng"])
        return True

    # ---- the loop -----------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, checkpoint: dict[str, Any] | None = None) -> TrainState:
        """Train until the epoch/step budget is spent or early stopping fires. Returns the final state.

        ``resume``: continue from the run folder's checkpoint when there is one (``checkpoint``: that
        checkpoint, already read by :meth:`read_checkpoint`)."""
        if self.tc.num_threads:
            torch.set_num_threads(self.tc.num_threads)
        self._train_csr = self.dataset.matrix("train")
        self.model.to(self.device)
        if not getattr(self.model, "trainable", True):
            # Closed-form models were fitted in ``prepare``: nothing to optimise.
            self.state = TrainState(finished=True)
            return self.state
        # Epochs after the checkpoint that the run logged before it stopped are replayed (the same numbers on
        # CPU); they are not logged again, so each epoch has one point per metric.
        logged_until = 0
        if resume and self.load_checkpoint(checkpoint):
            logged_until = self.tracker.last_step("epoch_time_s") or 0
        else:
            seed_everything(self.cfg.seed)
            self.optimizer = self._make_optimizer()
            self.state = TrainState()
        optimizer = self.optimizer
        assert optimizer is not None  # made by load_checkpoint or in the branch above
        self._clock = time.perf_counter()  # this process's share of state.train_seconds starts here
        step = self._data_parallel_step() if self.dp is not None else self.model.loss
        step_hooks = [h for h in self.hooks if callable(getattr(h, "on_step_end", None))]
        scheduled = self._scheduled()

        from tqdm.auto import tqdm

        while not self._done():
            epoch = self.state.epoch
            t0 = time.perf_counter()  # the epoch's own preparation (e.g. ICSRec's clustering) counts too
            self._call_hooks("on_epoch_start", epoch)
            if self.dp is not None and not self.dp.is_main:
                # Dropout and other draws differ between processes, as their batches do. Process 0 keeps the
                # single-process stream (its checkpoint's RNG state is what a resume restores); the others
                # draw from (seed, rank, epoch), so that a resumed run replays them too.
                seq = np.random.SeedSequence([self.cfg.seed, self.dp.rank, epoch])
                torch.manual_seed(int(seq.generate_state(1)[0]))
            self.model.train()
            sums: dict[str, float] = {}
            n_batches = 0
            grad_norms = 0.0
            sampler = self._sampler(epoch)
            batches, n_own = distributed.shard_batches(sampler, len(sampler), self.dp)
            bar = tqdm(
                batches,
                total=n_own,
                desc=f"epoch {epoch + 1}",
                leave=False,
                disable=None if self.tc.progress and self.is_main else True,
            )
            budget = self._budget(n_own)
            for batch in bar:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
                total, parts = step(batch)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if self.tc.max_grad_norm is not None:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.max_grad_norm)
                    grad_norms += float(norm)  # after the data-parallel average: the same in every process
                if scheduled:
                    # A function of the step alone, which the checkpoint keeps: a resumed run continues the
                    # schedule with no scheduler state of its own.
                    lr = self.tc.lr * lr_factor(
                        self.state.step + 1, budget, self.tc.warmup_steps, self.tc.lr_schedule
                    )
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.step()
                self.state.step += 1
                for hook in step_hooks:
                    hook.on_step_end(self)
                n_batches += 1
                sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
                for name, value in parts.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
                if n_batches % 20 == 0:
                    bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}")
                if self.tc.max_steps is not None and self.state.step >= self.tc.max_steps:
                    break
            own_batches = n_batches
            if self.dp is not None:  # the epoch's mean losses over every process's batches
                n_batches, sums = self._sum_over_processes(n_batches, sums)
            record: dict[str, float] = {f"train/{k}": v / max(n_batches, 1) for k, v in sums.items()}
            record["epoch_time_s"] = time.perf_counter() - t0
            self.state.epoch = epoch + 1
            if self.state.epoch % self.tc.eval_every == 0 or self._done():
                if self.is_main:
                    t1 = time.perf_counter()
                    metrics = self.evaluate(self.monitor_split)
                    record.update({f"{self.monitor_split}/{k}": v for k, v in metrics.items()})
                    record["eval_time_s"] = time.perf_counter() - t1
                    self._track_best(metrics)
                if self.dp is not None:  # every process stops when process 0's validation says so
                    self.state.stopped_early = self.dp.broadcast(self.state.stopped_early)
            record["step"] = float(self.state.step)
            if self.tc.max_grad_norm is not None:
                record["grad_norm"] = grad_norms / max(own_batches, 1)  # the epoch's mean, before clipping
            if scheduled:
                record["lr"] = float(optimizer.param_groups[0]["lr"])  # the epoch's last step's
            self.state.history.append({"epoch": float(self.state.epoch), **record})
            if self.state.epoch > logged_until:
                self.tracker.log_metrics(record, step=self.state.epoch)
            self._call_hooks("on_epoch_end", epoch, record)
            if self.is_main and (self.state.epoch % self.tc.checkpoint_every == 0 or self._done()):
                self.save_checkpoint()
        self.state.finished = True
        if not self.is_main:  # process 0 keeps the checkpoint and tests the best weights
            return self.state
        self.save_checkpoint()
        if self.monitor_split == "valid" and (self.run_dir / BEST).exists():
            # Test the weights that were best on validation, never a choice made on the test split.
            best = load_torch_file(
                self.run_dir / BEST,
                "best weights on validation",
                f"train again: remove {self.run_dir}, or its {BEST} and {CHECKPOINT}",
                map_location=self.device,
            )
            self.model.load_state_dict(best)
        # Training is over: whoever uses the model next (export, serving) gets it without dropout.
        self.model.eval()
        return self.state

    def _data_parallel_step(self):
        """The model's loss under DistributedDataParallel (which makes every process's weights process 0's
        now, and averages the gradients of each backward pass over the processes)."""
        from torch.nn.parallel import DistributedDataParallel

        assert self.dp is not None
        ids = [self.device] if self.device.type == "cuda" else None
        # Some models hold parameters that no loss reaches (the two-tower query tower's default vectors, or a
        # loss switched off by an ablation), and plain DDP refuses the second step of such a model. Our models
        # use the same parameters in every step, so static_graph lets DDP find the unused ones in the first
        # (find_unused_parameters would search every step, and warn for models that have none).
        return DistributedDataParallel(distributed.LossModule(self.model), device_ids=ids, static_graph=True)

    def _sum_over_processes(self, n_batches: int, sums: dict[str, float]) -> tuple[int, dict[str, float]]:
        assert self.dp is not None
        names = sorted(sums)  # the same loss parts in every process (the same model)
        # on the training device: NCCL reduces CUDA tensors only
        values = [float(n_batches), *(sums[k] for k in names)]
        totals = self.dp.sum_(torch.tensor(values, dtype=torch.float64, device=self.device)).cpu()
        return int(totals[0]), {k: float(v) for k, v in zip(names, totals[1:].tolist(), strict=True)}

    def _done(self) -> bool:
        s, tc = self.state, self.tc
        return (
            s.finished
            or s.stopped_early
            or s.epoch >= tc.epochs
            or (tc.max_steps is not None and s.step >= tc.max_steps)
        )

    @property
    def monitored_metric(self) -> str:
        """The validation metric that picks the weights to test (``ExperimentConfig.selection_metric``)."""
        return self.cfg.selection_metric()

    def _track_best(self, metrics: dict[str, float]) -> None:
        if self.monitor_split != "valid" or not getattr(self.model, "selection_open", True):
            return
        es, key = self.tc.early_stopping, self.monitored_metric
        if key not in metrics:
            raise ValueError(
                f"train.early_stopping.metric: {key!r} is not computed; available: {sorted(metrics)}"
            )
        value = metrics[key]
        if value > self.state.best_metric:
            self.state.best_metric = value
            self.state.best_epoch = self.state.epoch
            self.state.bad_evals = 0
            atomic_torch_save(self.model.state_dict(), self.run_dir / BEST)
        else:
            self.state.bad_evals += 1
            if es is not None and self.state.bad_evals >= es.patience:
                self.state.stopped_early = True
