r"""DNIS: differentiable search of embedding dimensions, around any model trained on BPR triples.

Weiyu Cheng, Yanyan Shen, Linpeng Huang. "Differentiable Neural Input Search for Recommender Systems."
arXiv:2006.04466, 2020 (official code: SJTU-DMTai/AutoSrh, ``Dnis`` in ``model/nas.py`` and ``main_nas.py``).

A soft selection layer scales every dimension of every id's embedding by a learned weight in [0, 1].  Ids are
ranked by how often they occur in the training interactions (users and items together, most frequent first)
and cut into *feature blocks* (by default ten blocks of 10% of the ids each); the dimensions are cut into
*dimension blocks* (by default one per dimension).  One weight :math:`\alpha_{bj}` per (feature block b,
dimension block j) scales dimension block j of every id in block b:

.. math::
    \hat e_x = e_x \odot \alpha_{b(x)} \quad (\alpha_{b(x)} \text{ repeated over each block's dimensions}).

The wrapped model computes everything from :math:`\hat e` (its tables go through
:class:`recsys.embedding.IdEmbedding`, which applies the scale), so the search needs no knowledge of the model.

Training has three phases, counted in epochs:

1. *warm start* (``warm_start_epochs``): :math:`\alpha = 1`, the wrapped model trains as it would alone;
2. *search* (``search_epochs``): after every training step on a training batch, one step of :math:`\alpha`
   on a batch of the validation split, first-order (the gradient of the validation loss at the current
   weights, as the official code's default), by SGD with ``lr_alpha``; the gradient gets an L1 term
   ``l1 * sum|alpha|`` and is divided, per feature block, by its mean absolute value (the official code's
   ``alpha_grad_norm``, which keeps the rare ids' blocks from learning far slower than the frequent ones);
   :math:`\alpha` is clipped to [0, 1];
3. *tuning* (the remaining epochs): the smallest ``1 - keep`` share of the scaled embedding entries
   :math:`|\hat e_{xd}|` over all tables together are pruned (set to zero for good), :math:`\alpha` is frozen,
   and the weights train on.  Only this phase's validations take part in model selection and early stopping
   (a search-phase model is not the one that would be served).

The validation loss that :math:`\alpha` descends is the wrapped model's ``bpr`` part (its prediction loss,
without weight regularisation) on triples (user, validation item, item the user has neither in training nor in
validation).  The kept share counts embedding entries: ``kept_fraction`` is the fraction of the tables'
``U*d + I*d`` numbers that are not pruned, the memory a sparse or mixed-dimension table of the result needs.

Where this differs from the official code (docs/dnis.md): frequencies are counted on the training split only
(the code counts the whole data set, test included); the search continues from the last warm-start epoch
rather than from the best one on validation; pruning is part of training and is followed by tuning epochs
with early stopping (the code prunes in a notebook, with optional retraining).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import Field, field_validator, model_validator

from recsys.embedding import IdEmbedding, IdKind
from recsys.models.base import ModelConfig, Recommender

if TYPE_CHECKING:
    from recsys.distributed import DataParallel
    from recsys.models.dccf import DCCF
    from recsys.models.lightgcn import LightGCN
    from recsys.models.mf_bpr import MFBPR

# Models whose loss reports a ``bpr`` part on BPR triples and that use the trainer's BPR sampler.
SEARCHABLE = ("mf_bpr", "lightgcn", "dccf")
# Salt of the validation batches' generator, so that they are not the training sampler's draws.
_VALID_STREAM = 0xD215


class DNISConfig(ModelConfig):
    """DNIS hyper-parameters (the official code's CF defaults where it has them)."""

    name: Literal["dnis"] = "dnis"
    """Registry key."""
    base: dict[str, Any] = Field(default_factory=lambda: {"name": "mf_bpr"}, validate_default=True)
    """The wrapped model's config (``name`` one of mf_bpr, lightgcn, dccf), validated as that model's."""
    feature_blocks: list[float] = Field(default_factory=lambda: [0.1] * 10)
    """Shares of the ids in each feature block, most frequent ids first; they must sum to 1."""
    dim_blocks: int | None = Field(default=None, ge=1)
    """Number of dimension blocks; ``None``: one per dimension (the official code's 64 for d = 64)."""
    warm_start_epochs: int = Field(default=20, ge=0)
    """Epochs with alpha = 1 before the search."""
    search_epochs: int = Field(default=20, ge=1)
    """Epochs in which alpha is learned on validation batches."""
    lr_alpha: float = Field(default=0.01, gt=0)
    """SGD learning rate of alpha."""
    l1: float = Field(default=1e-5, ge=0)
    """Weight of ``sum |alpha|`` in alpha's objective."""
    normalize_alpha_grad: bool = True
    """Divide alpha's gradient, per feature block, by its mean absolute value."""
    keep: float = Field(default=1.0, gt=0, le=1)
    """Share of the embedding entries kept when the search ends (1: prune nothing)."""

    @field_validator("base")
    @classmethod
    def _valid_base(cls, base: dict[str, Any]) -> dict[str, Any]:
        from recsys.models import REGISTRY

        name = base.get("name") if isinstance(base, dict) else None
        if name not in SEARCHABLE:
            raise ValueError(
                f"name must be one of {', '.join(SEARCHABLE)} (models trained on BPR triples whose loss has a "
                f"'bpr' part), got {name!r}"
            )
        # Resolved with its defaults, so that the run's config records every value the wrapped model used.
        return REGISTRY[name].config_cls.model_validate(base).model_dump(mode="json")

    @field_validator("feature_blocks")
    @classmethod
    def _valid_shares(cls, shares: list[float]) -> list[float]:
        if not shares or any(not 0 < s <= 1 for s in shares):
            raise ValueError(f"every share must be in (0, 1], got {shares}")
        if abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"the shares must sum to 1, got {sum(shares):.6g}")
        return shares

    @model_validator(mode="after")
    def _dim_blocks_fit(self) -> DNISConfig:
        dim = self.base.get("dim")
        if self.dim_blocks is not None and isinstance(dim, int) and self.dim_blocks > dim:
            raise ValueError(f"dim_blocks ({self.dim_blocks}) cannot exceed the wrapped model's dim ({dim})")
        return self


def block_sizes(total: int, shares: list[float]) -> list[int]:
    """Split ``total`` ids into blocks of ``floor(share * total)``, the last taking the rest (as the official
    code does): ``block_sizes(10, [0.25, 0.75]) == [2, 8]``.  The floor forgives float error (``0.29 * 100``
    is 28.999...; ``(1 / 49) * 49`` is 0.999...), which would otherwise make a block one short, or empty."""
    sizes = [math.floor(s * total + 1e-9) for s in shares]
    sizes[-1] += total - sum(sizes)
    return sizes


def rank_blocks(counts: np.ndarray, shares: list[float]) -> np.ndarray:
    """Feature block of each id: ids sorted by ``counts`` descending (ties: in index order), cut by ``shares``.

    Args:
        counts: ``[N]`` occurrences of each id.
        shares: the feature blocks' shares of the ids.

    Returns:
        ``int64[N]``: block index of each id, 0 for the most frequent ids.
    """
    order = np.argsort(-counts, kind="stable")
    blocks = np.empty(len(counts), dtype=np.int64)
    blocks[order] = np.repeat(np.arange(len(shares)), block_sizes(len(counts), shares))
    return blocks


class BlockScale:
    """The scale DNIS installs on table ``k`` (:meth:`IdEmbedding.set_scale`): a small object rather than a
    closure, so that a deep copy of the model scales its tables by its own alpha and the model pickles."""

    def __init__(self, owner: DNIS, k: int) -> None:
        self.owner, self.k = owner, k

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.owner.scale(self.k, ids)


class DNIS(Recommender):
    """A model wrapped with DNIS's soft selection layer (Cheng et al., 2020; the method: this module's
    docstring and docs/dnis.md).

    Args:
        n_users: number of users U.
        n_items: number of items I.
        config: :class:`DNISConfig`.

    Attributes:
        base: the wrapped model; its ``IdEmbedding`` tables for users and items are scaled.
        alpha: buffer ``[F, J]``, the soft selection weights (F feature blocks, J dimension blocks).
        pruned: buffer ``bool[]``, whether the pruning at the end of the search has happened.
    """

    config_cls = DNISConfig
    config: DNISConfig
    dim_block: torch.Tensor
    alpha: torch.Tensor
    pruned: torch.Tensor

    def __init__(self, n_users: int, n_items: int, config: DNISConfig) -> None:
        super().__init__(n_users, n_items, config)
        from recsys.models import build_model

        # the config's validator let through only the SEARCHABLE models
        self.base = cast("MFBPR | LightGCN | DCCF", build_model(config.base, n_users, n_items))
        self.tables: list[IdEmbedding] = [
            m for m in self.base.modules() if isinstance(m, IdEmbedding) and m.ids is not None
        ]
        dims = {t.dim for t in self.tables}
        if not self.tables or len(dims) != 1:
            raise ValueError(f"DNIS needs user/item tables of one dimension, found {sorted(dims)}")
        self.dim = dims.pop()
        n_dim_blocks = config.dim_blocks or self.dim
        n_feature_blocks = len(config.feature_blocks)
        if sum(t.num for t in self.tables) < n_feature_blocks:
            raise ValueError(f"{n_feature_blocks} feature blocks need at least as many ids")
        # dimension j of the embedding belongs to dimension block dim_block[j]
        sizes = block_sizes(self.dim, [1 / n_dim_blocks] * n_dim_blocks)
        self.register_buffer(
            "dim_block", torch.repeat_interleave(torch.arange(n_dim_blocks), torch.tensor(sizes))
        )
        self.register_buffer("alpha", torch.ones(n_feature_blocks, n_dim_blocks))
        self.register_buffer("pruned", torch.tensor(False))
        for k, table in enumerate(self.tables):
            # filled by prepare() from the training interactions; kept in the state so a loaded model has them
            self.register_buffer(f"feature_block_{k}", torch.zeros(table.num, dtype=torch.long))
            self.register_buffer(f"keep_mask_{k}", torch.ones(table.num, table.dim, dtype=torch.bool))
            table.set_scale(BlockScale(self, k))
        self._checked = False  # the budget and the validation split, checked at the first epoch start
        self._live_alpha: torch.Tensor | None = None  # alpha as a leaf with gradient, during an alpha step
        self._valid_batches: Iterator[dict[str, torch.Tensor]] | None = None

    # ---- the soft selection layer ------------------------------------------------------------------------
    def scale(self, k: int, ids: torch.Tensor) -> torch.Tensor:
        """Multipliers of table ``k``'s vectors for ``ids`` ``LongTensor[...]``: ``Tensor[..., d]``, alpha of
        each id's feature block repeated over the dimension blocks, times the keep mask (all ones before
        pruning; multiplied always, so that no lookup waits on a flag)."""
        alpha = self.alpha if self._live_alpha is None else self._live_alpha
        per_dim = alpha[:, self.dim_block]  # [F, d]
        return per_dim[getattr(self, f"feature_block_{k}")[ids]] * getattr(self, f"keep_mask_{k}")[ids]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_valid_batches"] = None  # a generator, and an epoch's: a copy draws its own
        state["_live_alpha"] = None
        return state

    @property
    def phase(self) -> str:
        """``"warm"``, ``"search"`` or ``"tune"``, from the epochs the trainer has started (see hooks)."""
        return getattr(self, "_phase", "tune")

    @property
    def selection_open(self) -> bool:
        """Whether validations now may pick the weights to keep (the trainer asks; only the tuning phase)."""
        return self.phase == "tune"

    @torch.no_grad()
    def kept_fraction(self) -> float:
        """Share of the user/item tables' entries that are not pruned (1.0 before pruning)."""
        kept = sum(int(getattr(self, f"keep_mask_{k}").sum()) for k in range(len(self.tables)))
        return kept / sum(t.num * t.dim for t in self.tables)

    @torch.no_grad()
    def dimensions_per_block(self) -> list[float]:
        """Mean number of kept (non-zero) dimensions of the ids in each feature block, most frequent first."""
        totals = torch.zeros(self.alpha.shape[0], dtype=torch.float64)
        counts = torch.zeros_like(totals)
        for k, table in enumerate(self.tables):
            weight = table.weight * self.alpha[:, self.dim_block][getattr(self, f"feature_block_{k}")]
            alive = (weight != 0) & getattr(self, f"keep_mask_{k}")
            blocks = getattr(self, f"feature_block_{k}").cpu()
            totals.index_add_(0, blocks, alive.sum(1).cpu().double())
            counts.index_add_(0, blocks, torch.ones(table.num, dtype=torch.float64))
        return (totals / counts.clamp(min=1)).tolist()

    # ---- set-up ------------------------------------------------------------------------------------------
    def prepare(self, train: sp.csr_matrix) -> None:
        """Rank users and items together by their training interactions and assign feature blocks, then
        prepare the wrapped model."""
        train = sp.csr_matrix(train)
        occurrences = {
            "users": np.diff(train.indptr),
            "items": np.bincount(train.indices, minlength=train.shape[1]),
        }
        # self.tables holds only tables of user or item ids (ids not None: see __init__)
        counts = np.concatenate([occurrences[cast(IdKind, t.ids)][: t.num] for t in self.tables])
        counts = counts.astype(np.int64)
        blocks = rank_blocks(counts, self.config.feature_blocks)
        start = 0
        for k, table in enumerate(self.tables):
            getattr(self, f"feature_block_{k}").copy_(torch.from_numpy(blocks[start : start + table.num]))
            start += table.num
        self.base.prepare(train)

    def reset_parameters(self) -> None:
        self.base.reset_parameters()
        self.alpha.fill_(1.0)
        self.pruned.fill_(False)
        for k in range(len(self.tables)):  # an earlier pruning's masks would keep zeroing entries
            getattr(self, f"keep_mask_{k}").fill_(True)

    # ---- training hooks ----------------------------------------------------------------------------------
    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        """Set the phase of ``epoch``; at the first tuning epoch, prune; in search epochs, draw the epoch's
        validation batches (from a generator of (seed, epoch), so a resumed epoch replays them)."""
        cfg = self.config
        search_end = cfg.warm_start_epochs + cfg.search_epochs
        if not self._checked:
            self._check_budget(trainer, epoch, search_end)
            self._checked = True
        self._phase = "warm" if epoch < cfg.warm_start_epochs else "search" if epoch < search_end else "tune"
        self._valid_batches = None
        if self._phase == "search":
            self._valid_batches = self._validation_batches(trainer, epoch)
        elif self._phase == "tune" and not bool(self.pruned):
            self.prune()
            trainer.tracker.log_metrics({"dnis/kept_fraction": self.kept_fraction()}, step=epoch + 1)
        hook = getattr(self.base, "on_epoch_start", None)
        if callable(hook):
            hook(trainer, epoch)

    def _check_budget(self, trainer: Any, epoch: int, search_end: int) -> None:
        """Refuse, before any work, a run that would end before its pruned model exists, or has no validation
        split for alpha to learn on."""
        tc = trainer.tc
        if tc.epochs <= search_end:
            raise ValueError(
                f"train.epochs ({tc.epochs}) must exceed model.warm_start_epochs + model.search_epochs "
                f"({search_end}): the pruned model is chosen among the epochs after the search"
            )
        if tc.max_steps is not None:
            batches = len(trainer._sampler(epoch))
            steps = batches // trainer.dp.world_size if trainer.dp is not None else batches
            if tc.max_steps <= search_end * steps:
                raise ValueError(
                    f"train.max_steps ({tc.max_steps}) ends training before the first tuning epoch (after "
                    f"{search_end} epochs of {steps} steps): raise it, or shorten model.warm_start_epochs / "
                    "model.search_epochs"
                )
        if epoch < search_end and trainer.dataset.matrix("valid").nnz == 0:
            raise ValueError(
                "DNIS learns alpha on the validation split, but the dataset has none (set "
                "data.split.valid_ratio, or valid_from_train_ratio for pre-split data)"
            )

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict[str, float]) -> None:
        hook = getattr(self.base, "on_epoch_end", None)
        if callable(hook):
            hook(trainer, epoch, record)

    def on_step_end(self, trainer: Any) -> None:
        """In the search phase: one step of alpha on the next validation batch (under data-parallel
        training, on the mean gradient of every process's validation batch, as the weights step)."""
        if self._valid_batches is None:
            return
        batch = {k: v.to(self.alpha.device) for k, v in next(self._valid_batches).items()}
        self.alpha_step(batch, trainer.dp)

    def _validation_batches(self, trainer: Any, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        from recsys.sampling import BPRSampler

        valid = trainer.dataset.matrix("valid")
        seed = np.random.SeedSequence([trainer.cfg.seed, epoch, _VALID_STREAM]).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(seed))
        positives = BPRSampler(valid, mode="interactions", batch_size=trainer.tc.batch_size, generator=gen)
        # negatives: neither in the user's training nor in their validation items
        known = BPRSampler(
            (trainer.dataset.matrix("train") + valid).tocsr(),
            mode="interactions",
            batch_size=1,
            generator=gen,
        )

        def stream() -> Iterator[dict[str, torch.Tensor]]:
            for batch in itertools.chain.from_iterable(positives.iterate() for _ in itertools.count()):
                batch["neg"] = known.sample_negatives(batch["users"], gen)
                yield batch

        dp = trainer.dp
        if dp is None:
            return stream()
        # Every process draws the same stream and takes batch b for b mod N == rank, as with the training
        # batches (the skipped batches are still drawn, so the generator stays in step).
        return itertools.islice(stream(), dp.rank, None, dp.world_size)

    def alpha_step(self, batch: dict[str, torch.Tensor], dp: DataParallel | None = None) -> torch.Tensor:
        """One first-order step of alpha on a batch of validation triples; returns the validation loss.

        With ``dp`` (data-parallel training), the gradient is averaged over the processes before the step
        (each holds its own batch), so that every process's alpha stays the same without a broadcast."""
        grad, bpr = self.alpha_gradient(batch)
        if dp is not None:
            grad = dp.sum_(grad) / dp.world_size
        self.apply_alpha_gradient(grad)
        return bpr

    def alpha_gradient(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient ``[F, J]`` of the validation objective (``bpr`` part plus the L1 term) at the current
        weights with respect to alpha, and the ``bpr`` part (detached)."""
        live = self.alpha.detach().clone().requires_grad_(True)
        self._live_alpha = live
        try:
            _, parts = self.base.loss(batch)
            if "bpr" not in parts:
                raise ValueError(f"{type(self.base).__name__}.loss reports no 'bpr' part for DNIS to descend")
            objective = parts["bpr"] + self.config.l1 * live.abs().sum()
            (grad,) = torch.autograd.grad(objective, live)
        finally:
            self._live_alpha = None
        return grad, parts["bpr"].detach()

    @torch.no_grad()
    def apply_alpha_gradient(self, grad: torch.Tensor) -> None:
        """One SGD step of alpha on ``grad`` ``[F, J]`` (per-feature-block normalised when configured), then
        the clip to [0, 1]."""
        if self.config.normalize_alpha_grad:
            grad = grad / (grad.abs().mean(dim=1, keepdim=True) + 1e-8)
        self.alpha.sub_(self.config.lr_alpha * grad).clamp_(0.0, 1.0)

    @torch.no_grad()
    def prune(self) -> None:
        """Zero for good the ``round((1 - keep) * N)`` scaled entries ``|w_xd * alpha|`` with the smallest
        magnitudes among the N entries of all user/item tables together; equal magnitudes go in table, row,
        dimension order (a stable sort), so the kept share is exact."""
        masks = [getattr(self, f"keep_mask_{k}") for k in range(len(self.tables))]
        flat = torch.cat([(t.weight * self.scale(k, torch.arange(t.num, device=t.weight.device))).abs().flatten()
                          for k, t in enumerate(self.tables)])  # fmt: skip
        n_drop = int(round((1.0 - self.config.keep) * flat.numel()))
        keep = torch.ones_like(flat, dtype=torch.bool)
        keep[torch.sort(flat, stable=True).indices[:n_drop]] = False
        for mask, part in zip(masks, keep.split([m.numel() for m in masks]), strict=True):
            mask.copy_(part.view_as(mask))
        self.pruned.fill_(True)

    # ---- delegation ----------------------------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.base.loss(batch)

    def query_embeddings(self, users: torch.Tensor) -> torch.Tensor:
        return self.base.query_embeddings(users)

    def item_embeddings(self) -> torch.Tensor:
        return self.base.item_embeddings()

    @torch.no_grad()
    def embeddings(self, users: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.embeddings(users)

    def extra_repr(self) -> str:
        f, j = self.alpha.shape
        return f"{super().extra_repr()}, feature_blocks={f}, dim_blocks={j}, keep={self.config.keep:g}"
